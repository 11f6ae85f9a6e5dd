"""The production profile's credentials: made once into 0600 files, named in its environment."""

from __future__ import annotations

import stat

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
