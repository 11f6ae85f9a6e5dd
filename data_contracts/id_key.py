"""The key of the transaction-id hash: one secret shared by the bento and the feedback join.

Transaction ids are stored as ``HMAC-SHA256(key, id)``, never in clear. A bare sha256 of an
enumerable id (``tx-1``, a card number, an order number) is reversed by hashing every candidate;
with a key, it is not. The bento hashes what it logs with the key, the drift check hashes clear
ids of labelled feedback with the same key, so the two meet on the hash.

Where the key comes from, first match wins:

1. ``FRAUD_ID_HASH_KEY``: the key itself (at least 16 characters);
2. ``FRAUD_ID_HASH_KEY_FILE``: a file holding it (a mounted secret in containers);
3. the embedded default: ``<FRAUD_HOME>/secrets/id-hash.key``, generated once (32 random bytes,
   hex, mode 0600) by whoever needs it first and reused by everyone after.

The flows may also name a Prefect Secret block (see ``flows.monitoring.feedback``). The key is
never logged; :func:`key_fingerprint` names it in reports without revealing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from data_contracts.artifacts import fraud_home

KEY_ENV = "FRAUD_ID_HASH_KEY"
KEY_FILE_ENV = "FRAUD_ID_HASH_KEY_FILE"
MIN_KEY_CHARS = 16


class IdKeyError(ValueError):
    """The configured id-hash key is unusable (too short, unreadable)."""


def default_key_path(environ: Mapping[str, str] | None = None) -> Path:
    """``<FRAUD_HOME>/secrets/id-hash.key`` (``FRAUD_HOME`` defaults to ``<repo>/.fraud``)."""
    return fraud_home(environ) / "secrets" / "id-hash.key"


def _checked(raw: str, where: str) -> bytes:
    key = raw.strip()
    if len(key) < MIN_KEY_CHARS:
        raise IdKeyError(f"{where}: the id-hash key must be at least {MIN_KEY_CHARS} characters")
    return key.encode("utf-8")


def _create(path: Path) -> None:
    """Write a new random key to ``path`` unless it exists (O_EXCL: two writers, one key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.parent.chmod(0o700)
    # a name of its own per call: threads of one process share the PID, and a shared temporary
    # file would be truncated, rewritten or unlinked under another thread's link
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)  # atomic, and fails when another process created the key first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def load_id_key(environ: Mapping[str, str] | None = None, *, create: bool = True) -> bytes:
    """The id-hash key from the environment, its file, or the home folder (created if missing).

    Raises :class:`IdKeyError` naming the variable or file when the key is unusable, and
    ``FileNotFoundError`` when there is none and ``create`` is false.
    """
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        return _checked(env[KEY_ENV], KEY_ENV)
    if env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        try:
            return _checked(path.read_text(encoding="utf-8"), f"{KEY_FILE_ENV}={path}")
        except OSError as err:
            why = f"cannot read the key ({err.strerror})"
            raise IdKeyError(f"{KEY_FILE_ENV}={path}: {why}") from None
    path = default_key_path(env)
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no id-hash key at {path} and {KEY_ENV} is unset")
        _create(path)
    return _checked(path.read_text(encoding="utf-8"), str(path))


def serving_id_key(environ: Mapping[str, str] | None = None) -> tuple[bytes, str | None]:
    """The key for a serving process, and a warning when it had to make one up.

    A configured key that is unusable raises (the process must not start hashing with the wrong
    key). Without any configuration and with a home folder that cannot hold the key (a read-only
    image), a key of this process only is used: ids stay unreadable, but feedback cannot be
    joined to them, and the warning says how to fix that.
    """
    env = os.environ if environ is None else environ
    try:
        return load_id_key(env), None
    except IdKeyError:
        raise
    except OSError as err:
        if env.get(KEY_ENV) or env.get(KEY_FILE_ENV):
            raise
        warning = (
            f"no id-hash key ({KEY_ENV} / {KEY_FILE_ENV} unset, {default_key_path(env)}: "
            f"{err.strerror}): transaction ids are hashed with a key of this process only, so "
            "labelled feedback cannot be joined to them"
        )
        return secrets.token_hex(32).encode("utf-8"), warning


def hash_id(value: str, key: bytes) -> str:
    """``HMAC-SHA256(key, value)`` as hex: how a transaction id is stored and joined."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def key_fingerprint(key: bytes) -> str:
    """A short name of the key for reports (12 hex of a hash of it), never the key itself."""
    return hashlib.sha256(b"fraud-id-hash-key:" + key).hexdigest()[:12]
