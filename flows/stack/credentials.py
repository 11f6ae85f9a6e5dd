"""The production profile's credentials: created once, kept in 0600 files under its home.

Each credential is a setting of :class:`flows.stack.config.ProductionConfig` (a file path, or the
value in the environment); what is not given is generated here into
``<prod home>/secrets/`` the first time the profile starts, and read from there after. Values are
never printed, logged nor put on a command line: servers and replicas are given file paths.

- The bento's API keys: ``FRAUD_API_KEYS`` / ``FRAUD_API_KEYS_FILE`` (default
  ``<secrets>/api/keys``, its own folder: the fleet mounts that folder into each replica).
- The serving port's TLS certificate: ``FRAUD_TLS_CERT`` (HAProxy's PEM, chain + key, 0600) and
  ``FRAUD_TLS_CA`` (what callers trust); default: a private CA and a certificate for 127.0.0.1
  in ``<secrets>/tls/``, made once (:func:`flows.serving.tls.make_certificate`).
- The Prefect server's basic auth: ``<secrets>/prefect-auth`` (:func:`ensure_prefect_auth`).
- The MLflow server's users: ``<secrets>/mlflow/{admin,pipeline,reader}`` and the server's
  auth config ``<secrets>/mlflow/auth.ini`` (:func:`ensure_mlflow_auth`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from data_contracts.api_keys import KEYS_ENV, new_key, write_key_file
from flows.serving import tls
from flows.serving.secrets import BENTO_UID
from flows.stack.config import MLFLOW_AUTH_CACHE_SECONDS, MLFLOW_USERS, ProductionConfig


def ensure_api_keys(config: ProductionConfig) -> bool:
    """Generate the API key file when no key is given and none exists; True when it did."""
    if os.environ.get(KEYS_ENV):
        return False
    path = config.api_keys_path
    if path.exists():
        return False
    config.secrets_dir.mkdir(parents=True, exist_ok=True)
    config.secrets_dir.chmod(0o700)
    # owned by the serving image's user when we may give it away: replicas mount the folder
    write_key_file(path, [new_key()], owner=BENTO_UID if os.geteuid() == 0 else None)
    return True


def ensure_tls(config: ProductionConfig) -> bool:
    """Make the profile's certificate when none is given and none exists; True when it did."""
    if config.tls_cert is not None or (config.tls_dir / "haproxy.pem").exists():
        return False
    config.secrets_dir.mkdir(parents=True, exist_ok=True)
    config.secrets_dir.chmod(0o700)
    tls.make_certificate(config.tls_dir)
    return True


PREFECT_USER = "fraud"
PREFECT_PROFILE = "fraud-production"


def prefect_auth_string(config: ProductionConfig) -> str | None:
    """``user:password`` of the profile's Prefect server (None before the first ``up``)."""
    path = config.secrets_dir / "prefect-auth"
    return path.read_text().strip() if path.exists() else None


def ensure_prefect_auth(config: ProductionConfig) -> None:
    """Basic auth on the profile's Prefect server, given to it and to every client by file.

    ``<secrets>/prefect-auth`` holds ``fraud:<random>`` (generated once, 0600; replace it and
    restart the profile to rotate). From it, ``<secrets>/prefect-profiles.toml`` (0600) is
    rewritten: a Prefect profile setting ``PREFECT_SERVER_API_AUTH_STRING`` (the server) and
    ``PREFECT_API_AUTH_STRING`` (workers, flow runs, the CLI), found through
    ``PREFECT_PROFILES_PATH`` in the profile's environment. No process gets the value in its
    environment or argv.
    """
    config.secrets_dir.mkdir(parents=True, exist_ok=True)
    config.secrets_dir.chmod(0o700)
    auth = config.secrets_dir / "prefect-auth"
    if not auth.exists():
        _write_private(auth, f"{PREFECT_USER}:{secrets.token_urlsafe(24)}\n")
    value = auth.read_text().strip()
    if not value or '"' in value or "\\" in value or "\n" in value or ":" not in value:
        raise ValueError(f"{auth}: one line `user:password` without quotes or backslashes")
    _write_private(
        config.secrets_dir / "prefect-profiles.toml",
        f'active = "{PREFECT_PROFILE}"\n\n[profiles.{PREFECT_PROFILE}]\n'
        f'PREFECT_API_AUTH_STRING = "{value}"\nPREFECT_SERVER_API_AUTH_STRING = "{value}"\n',
    )


def ensure_mlflow_auth(config: ProductionConfig) -> Path:
    """The MLflow server's users and auth config (all 0600); returns the config's path.

    Each user's credentials file (MLflow's ``[mlflow]`` ini) is generated once with a random
    password; ``admin`` administers users, ``pipeline`` writes (flows, workers, ``fraud``
    commands), ``reader`` reads (people, dashboards). ``auth.ini`` is rewritten from them on
    every ``up``: MLflow's ``[mlflow]`` section (users and grants in the ``<prefix>_mlflow_auth``
    database, ``default_permission = READ``, the admin's bootstrap password) and the ``[fraud]``
    section of :mod:`flows.registry.mlflow_server` (the Flask secret key, kept across rewrites).
    """
    import configparser

    from flows.registry.mlflow_auth import read_credentials, write_credentials

    folder = config.mlflow_secrets_dir
    folder.mkdir(parents=True, exist_ok=True)
    config.secrets_dir.chmod(0o700)
    folder.chmod(0o700)
    for user in MLFLOW_USERS:
        if not config.mlflow_user_file(user).exists():
            write_credentials(config.mlflow_user_file(user), user, secrets.token_urlsafe(24))
    admin, admin_password = read_credentials(config.mlflow_user_file("admin"))
    pipeline, _ = read_credentials(config.mlflow_user_file("pipeline"))
    path = folder / "auth.ini"
    old = configparser.ConfigParser(interpolation=None)
    old.read(path)
    secret_key = old.get("fraud", "secret_key", fallback="") or secrets.token_urlsafe(32)
    pg = f"{config.pg_user}@127.0.0.1:{config.pg_port}"
    _write_private(
        path,
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = postgresql+psycopg2://{pg}/{config.databases[2]}\n"
        f"admin_username = {admin}\nadmin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a password check costs ~125 ms of scrypt per request; MLflow caches a verified login
        # for this long in its one worker (--workers 1), and a password changed through its API
        # (fraud stack ... mlflow-password rotate) leaves that cache at once
        f"auth_cache_ttl_seconds = {MLFLOW_AUTH_CACHE_SECONDS}\n\n"
        f"[fraud]\nsecret_key = {secret_key}\n"
        f"pipeline_credentials = {config.mlflow_user_file('pipeline')}\n"
        f"reader_credentials = {config.mlflow_user_file('reader')}\ncreators = {pipeline}\n",
    )
    return path


def rotate_mlflow_password(config: ProductionConfig, user: str, timeout: float = 30) -> None:
    """A new random password for ``user`` (admin, pipeline or reader) of the MLflow server.

    The running server gets it first (MLflow's ``users/update-password`` API, called as the
    admin), then the user's credentials file is replaced; clients read that file at each
    request, so they switch at once without a restart (a request in the instant between the two
    steps can get a 401). For the admin, ``auth.ini`` is rewritten too. The value is never
    printed.
    """
    import requests

    from flows.registry.mlflow_auth import read_credentials, write_credentials

    if user not in MLFLOW_USERS:
        raise ValueError(f"--user {user!r}: one of {', '.join(MLFLOW_USERS)}")
    admin = read_credentials(config.mlflow_user_file("admin"))
    name, current = read_credentials(config.mlflow_user_file(user))
    password = secrets.token_urlsafe(24)
    # MLflow asks for the current password when the admin changes its own
    body = {"username": name, "password": password, "current_password": current}
    try:
        answer = requests.patch(
            f"{config.mlflow_url}/api/2.0/mlflow/users/update-password",
            json=body, auth=admin, timeout=timeout,
        )  # fmt: skip
    except requests.RequestException as err:
        raise RuntimeError(
            f"the MLflow server at {config.mlflow_url} does not answer ({type(err).__name__}); "
            "rotating a password needs it running (fraud stack --profile production up)"
        ) from None
    if not answer.ok:
        raise RuntimeError(f"MLflow refused the new password of {name}: HTTP {answer.status_code}")
    write_credentials(config.mlflow_user_file(user), name, password)
    if user == "admin":
        ensure_mlflow_auth(config)


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
