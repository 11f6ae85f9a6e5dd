"""MLflow credentials kept in a 0600 file, sent by every MLflow client of the pipeline.

The production profile's tracking server requires a login (MLflow's basic-auth app, see
:mod:`flows.registry.mlflow_server`). Its clients (flow runs on the process worker and in Docker
pool containers, ``fraud`` commands, tests) find their user in a credentials file in MLflow's
own format (what ``~/.mlflow/credentials`` holds)::

    [mlflow]
    mlflow_tracking_username = pipeline
    mlflow_tracking_password = ...

named by ``FRAUD_MLFLOW_CREDENTIALS_FILE``, and ``MLFLOW_TRACKING_AUTH=fraud-credentials-file``
selects this module's request auth provider (an MLflow plugin, registered in pyproject.toml).
The password is never in an environment variable, argv or a job template: a flow container gets
the file's path (the profile home is mounted at the same path) and reads the file at each
request, so a rotated file is used from the next request on. MLflow calls the provider without
our settings object, so it reads its one variable itself.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider
from requests.auth import HTTPBasicAuth

PROVIDER = "fraud-credentials-file"
FILE_ENV = "FRAUD_MLFLOW_CREDENTIALS_FILE"
SECTION = "mlflow"
USER_KEY = "mlflow_tracking_username"
PASSWORD_KEY = "mlflow_tracking_password"  # nosec B105 # the key's name, not a password


class CredentialsError(ValueError):
    """A credentials file is missing, open to others or incomplete; the message names it."""


def read_credentials(path: Path) -> tuple[str, str]:
    """``(username, password)`` from a credentials file; refuses one readable by others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as err:
        raise CredentialsError(f"{FILE_ENV}={path}: cannot read it ({err.strerror})") from None
    if mode & 0o077:
        raise CredentialsError(f"{FILE_ENV}={path}: mode {mode & 0o777:o}; must be 0600")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
        user = parser.get(SECTION, USER_KEY, fallback="").strip()
        password = parser.get(SECTION, PASSWORD_KEY, fallback="").strip()
    except configparser.Error as err:
        raise CredentialsError(f"{FILE_ENV}={path}: not an [mlflow] ini file ({err})") from None
    if not user or not password:
        raise CredentialsError(f"{FILE_ENV}={path}: needs {USER_KEY} and {PASSWORD_KEY}")
    return user, password


def credentials_text(user: str, password: str) -> str:
    """The file's content for ``user`` (MLflow's own ini reads it too, so no ``%``)."""
    if not password or any(c in password for c in "%\n\r") or password != password.strip():
        raise CredentialsError(f"the password of {user!r} must be one line without '%'")
    return f"[{SECTION}]\n{USER_KEY} = {user}\n{PASSWORD_KEY} = {password}\n"


def write_credentials(path: Path, user: str, password: str) -> None:
    """Replace ``path`` atomically with ``user``'s credentials, mode 0600 from the start."""
    text = credentials_text(user, password)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


class CredentialsFileAuth(RequestAuthProvider):
    """MLflow request auth: HTTP basic auth with the user of ``FRAUD_MLFLOW_CREDENTIALS_FILE``."""

    def get_name(self) -> str:
        return PROVIDER

    def get_auth(self) -> HTTPBasicAuth:

        path = os.environ.get(FILE_ENV)
        if not path:
            raise CredentialsError(f"MLFLOW_TRACKING_AUTH={PROVIDER} needs {FILE_ENV}")
        return HTTPBasicAuth(*read_credentials(Path(path)))
