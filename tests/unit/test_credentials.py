"""The production profile's credentials: made once into 0600 files, named in its environment."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from data_contracts.api_keys import client_key, read_key_file
from flows.serving import tls
from flows.stack import credentials
from flows.stack.config import ProductionConfig


@pytest.fixture
def config(tmp_path, monkeypatch) -> ProductionConfig:
    for name in ("FRAUD_API_KEYS", "FRAUD_API_KEYS_FILE", "FRAUD_TLS_CERT", "FRAUD_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRAUD_PROD_HOME", str(tmp_path / "prod"))
    return ProductionConfig()


def test_the_profile_makes_a_key_and_a_certificate_once(config):
    assert credentials.ensure_api_keys(config) and credentials.ensure_tls(config)
    env = config.stack_environ()
    key = client_key(env)
    assert key and len(read_key_file(config.api_keys_path)) == 1
    assert stat.S_IMODE(config.api_keys_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.secrets_dir.stat().st_mode) == 0o700
    assert tls.serving_cert(env) == env["FRAUD_TLS_CERT"]
    assert env["FRAUD_TLS_CA"].endswith("/tls/ca.pem")
    # the second start reuses them
    assert not credentials.ensure_api_keys(config) and not credentials.ensure_tls(config)
    assert client_key(config.stack_environ()) == key
    assert key not in repr(env)  # the environment names files, never values


def test_given_keys_and_certificate_are_used_as_they_are(config, monkeypatch, tmp_path):
    monkeypatch.setenv("FRAUD_API_KEYS", "k" * 20)
    monkeypatch.setenv("FRAUD_TLS_CERT", str(tmp_path / "real.pem"))
    given = ProductionConfig()
    assert not credentials.ensure_api_keys(given) and not credentials.ensure_tls(given)
    env = given.stack_environ()
    assert "FRAUD_API_KEYS_FILE" not in env and env["FRAUD_TLS_CERT"] == str(tmp_path / "real.pem")
    assert not given.api_keys_path.exists() and not (given.tls_dir / "haproxy.pem").exists()


def test_the_prefect_auth_reaches_server_and_clients_through_a_private_profile(config):
    import subprocess
    import sys
    import tomllib

    credentials.ensure_prefect_auth(config)
    auth = credentials.prefect_auth_string(config)
    assert auth and auth.startswith("fraud:") and len(auth) > 30
    env = config.stack_environ()
    profiles = env["PREFECT_PROFILES_PATH"]
    for path in (config.secrets_dir / "prefect-auth", config.secrets_dir / "prefect-profiles.toml"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth not in repr(env)
    table = tomllib.loads(Path(profiles).read_text())
    profile = table["profiles"][table["active"]]
    assert profile == {"PREFECT_API_AUTH_STRING": auth, "PREFECT_SERVER_API_AUTH_STRING": auth}
    credentials.ensure_prefect_auth(config)  # a second `up` keeps the password
    assert credentials.prefect_auth_string(config) == auth
    # Prefect itself reads both settings from that file (the server's and the clients')
    code = (
        "from prefect.settings import get_current_settings as g; s = g(); "
        "print(s.api.auth_string.get_secret_value() == s.server.api.auth_string.get_secret_value()"
        f" == {auth!r})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PREFECT_PROFILES_PATH": profiles, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "True", out.stderr
