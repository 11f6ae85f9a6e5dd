"""What a fleet replica gets of the secrets: files in folders mounted read-only, never values.

``docker inspect`` shows every environment variable of a container, those of ``--env-file``
included, and ``ps`` shows the ``docker run`` command line: a key in either is a key anyone with
access to the engine can read. So each replica gets

- the transaction-id hash key in ``<fleet>/secrets/<replica>/id-hash.key`` (0600), its folder
  mounted at ``/run/fraud/secrets`` and named by ``FRAUD_ID_HASH_KEY_FILE``;
- the API keys: the folder of ``FRAUD_API_KEYS_FILE`` mounted at ``/run/fraud/api-keys`` (so
  a rotation of that file reaches the running replicas: the folder is mounted, not the file,
  whose rename would not be seen), or inline ``FRAUD_API_KEYS`` written beside the id key.

Files and folders are owned by the image's user (uid 1034, BentoML's ``bentoml`` user), mode
0600/0700: the service runs as that user and reads them; no other user of the host can.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from data_contracts.api_keys import KEYS_FILE_ENV, key_source, write_key_file
from data_contracts.id_key import KEY_FILE_ENV as ID_KEY_FILE_ENV

BENTO_UID = 1034  # the user BentoML images run the service as
CONTAINER_SECRETS = "/run/fraud/secrets"
CONTAINER_API_KEYS = "/run/fraud/api-keys"


def _own(path: Path, mode: int) -> None:
    """Mode ``mode``, and owned by the image's user when this process may give it away."""
    path.chmod(mode)
    if os.geteuid() == 0 and path.stat().st_uid != BENTO_UID:
        os.chown(path, BENTO_UID, BENTO_UID)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    _own(path, 0o600)


def secrets_folder(fleet_root: Path, replica: str) -> Path:
    return fleet_root / "secrets" / replica


def replica_secret_args(
    fleet_root: Path, replica: str, id_key: bytes, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The ``docker run`` arguments (mounts, and variables naming files) of one replica."""
    env = os.environ if environ is None else environ
    folder = secrets_folder(fleet_root, replica)
    folder.mkdir(parents=True, exist_ok=True)
    folder.parent.chmod(0o700)  # a bind mount needs no access to the folders above it
    _own(folder, 0o700)
    _write_private(folder / "id-hash.key", id_key.decode() + "\n")
    args = ["-v", f"{folder}:{CONTAINER_SECRETS}:ro",
            "-e", f"{ID_KEY_FILE_ENV}={CONTAINER_SECRETS}/id-hash.key"]  # fmt: skip
    source = key_source(env)
    if source.path is not None:
        path = source.path.absolute()
        _own(path.parent, 0o700)
        _own(path, 0o600)
        args += ["-v", f"{path.parent}:{CONTAINER_API_KEYS}:ro",
                 "-e", f"{KEYS_FILE_ENV}={CONTAINER_API_KEYS}/{path.name}"]  # fmt: skip
    elif source.inline:
        write_key_file(folder / "api-keys", [k.decode() for k in source.inline])
        _own(folder / "api-keys", 0o600)
        args += ["-e", f"{KEYS_FILE_ENV}={CONTAINER_SECRETS}/api-keys"]
    return args


def remove_replica_secrets(fleet_root: Path, replica: str) -> None:
    """Delete a removed replica's secret files."""
    shutil.rmtree(secrets_folder(fleet_root, replica), ignore_errors=True)
