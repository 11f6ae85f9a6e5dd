"""``fraud api-keys``: rotate the bento's API keys in ``FRAUD_API_KEYS_FILE`` without a restart.

``rotate`` puts a new key first (the one callers send from now on) and keeps the others, so
callers still holding an old key go on working; ``retire`` keeps only the first key once every
caller has the new one; ``status`` says how many keys the file holds and their fingerprints.
Keys are written atomically (0600, the file's owner kept: replicas read it through the mounted
folder) and never printed: callers read the file (``FRAUD_API_KEYS_FILE``). Replicas and
``bentoml serve`` take a change within a second.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

from data_contracts.api_keys import (
    KEYS_FILE_ENV,
    ApiKeyError,
    key_source,
    new_key,
    read_key_file,
    write_key_file,
)


def fingerprint(key: bytes) -> str:
    """A short sha256 prefix that names a key without revealing it."""
    return hashlib.sha256(key).hexdigest()[:12]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] + f" The file is {KEYS_FILE_ENV}."
    parser.add_argument("action", choices=("rotate", "retire", "status"))
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait after a change (default 2)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        source = key_source()
        if source.path is None:
            raise ApiKeyError(
                f"{KEYS_FILE_ENV} is not set: rotation works on a key file (the production "
                "profile sets it; `fraud stack --profile production env` prints it)"
            )
        keys = [k.decode() for k in read_key_file(source.path)]
        if args.action == "rotate":
            keys = [new_key(), *keys]
        elif args.action == "retire":
            keys = keys[:1]
        if args.action != "status":
            write_key_file(source.path, keys)
            time.sleep(max(0.0, args.settle))  # replicas re-read the file once a second
    except (ApiKeyError, OSError) as err:
        print(f"fraud api-keys: {err}", file=sys.stderr)
        return 2
    shown = ", ".join(fingerprint(k.encode()) for k in keys)
    print(f"{source.path}: {len(keys)} keys (current first), sha256 prefixes: {shown}")
    return 0
