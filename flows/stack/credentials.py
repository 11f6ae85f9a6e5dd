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
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from data_contracts.api_keys import KEYS_ENV, new_key, write_key_file
from flows.serving import tls
from flows.serving.secrets import BENTO_UID
from flows.stack.config import ProductionConfig


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


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
