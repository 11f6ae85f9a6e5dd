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
"""

from __future__ import annotations

import os

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
