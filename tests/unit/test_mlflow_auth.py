"""The MLflow server's users: generated once into 0600 files, sent by clients from a file."""

from __future__ import annotations

import configparser
import stat

import pytest
from requests.auth import HTTPBasicAuth

from flows.core.http import free_port
from flows.registry import mlflow_auth
from flows.registry.mlflow_auth import CredentialsError, CredentialsFileAuth, read_credentials
from flows.registry.mlflow_server import fraud_section
from flows.stack import credentials
from flows.stack.config import ProductionConfig


@pytest.fixture
def config(tmp_path, monkeypatch) -> ProductionConfig:
    for name in ("MLFLOW_TRACKING_USERNAME", "FRAUD_MLFLOW_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRAUD_PROD_HOME", str(tmp_path / "prod"))
    monkeypatch.setenv("FRAUD_PG_PORT", "6543")
    monkeypatch.setenv("FRAUD_MLFLOW_PORT", str(free_port()))  # nothing listens there
    return ProductionConfig()


def test_the_profile_makes_three_users_and_the_servers_config_once(config):
    path = credentials.ensure_mlflow_auth(config)
    users = {
        u: read_credentials(config.mlflow_user_file(u)) for u in ("admin", "pipeline", "reader")
    }
    assert [name for name, _ in users.values()] == ["admin", "pipeline", "reader"]
    passwords = {pw for _, pw in users.values()}
    assert len(passwords) == 3 and all(len(pw) >= 24 for pw in passwords)
    for file in [path, *(config.mlflow_user_file(u) for u in users)]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert stat.S_IMODE(config.mlflow_secrets_dir.stat().st_mode) == 0o700
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(path)
    mlflow = ini["mlflow"]
    assert mlflow["admin_password"] == users["admin"][1] != "password1234"
    assert mlflow["default_permission"] == "READ"
    assert mlflow.getint("auth_cache_ttl_seconds") == 60  # no scrypt check on every request
    assert mlflow["database_uri"] == (
        f"postgresql+psycopg2://fraud@127.0.0.1:6543/{config.mlflow_db}_auth"
    )
    assert config.databases[2] == f"{config.mlflow_db}_auth"
    fraud = fraud_section(path)
    assert fraud["creators"] == "pipeline" and len(fraud["secret_key"]) >= 32
    # a second `up` keeps every password and the secret key
    credentials.ensure_mlflow_auth(config)
    assert {u: read_credentials(config.mlflow_user_file(u)) for u in users} == users
    assert fraud_section(path)["secret_key"] == fraud["secret_key"]


def test_clients_are_given_the_pipeline_users_file_never_a_password(config, monkeypatch):
    credentials.ensure_mlflow_auth(config)
    env = config.stack_environ()
    assert env["MLFLOW_TRACKING_AUTH"] == "fraud-credentials-file"
    assert env["FRAUD_MLFLOW_CREDENTIALS_FILE"] == str(config.mlflow_user_file("pipeline"))
    for user in ("admin", "pipeline", "reader"):
        assert read_credentials(config.mlflow_user_file(user))[1] not in repr(env)
    # MLflow's own variables, when given, are used as they are
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    assert "MLFLOW_TRACKING_AUTH" not in ProductionConfig().stack_environ()


def test_the_request_auth_reads_the_named_file_at_each_call(config, monkeypatch):
    credentials.ensure_mlflow_auth(config)
    auth = CredentialsFileAuth()
    assert auth.get_name() == "fraud-credentials-file"
    monkeypatch.delenv(mlflow_auth.FILE_ENV, raising=False)
    with pytest.raises(CredentialsError, match=mlflow_auth.FILE_ENV):
        auth.get_auth()
    path = config.mlflow_user_file("reader")
    monkeypatch.setenv(mlflow_auth.FILE_ENV, str(path))
    sent = auth.get_auth()
    assert isinstance(sent, HTTPBasicAuth)
    assert (sent.username, sent.password) == read_credentials(path)
    mlflow_auth.write_credentials(path, "reader", "rotated-password-0123456789")
    assert auth.get_auth().password == "rotated-password-0123456789"


def test_a_bad_credentials_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "creds"
    with pytest.raises(CredentialsError, match="cannot read"):
        read_credentials(path)
    mlflow_auth.write_credentials(path, "pipeline", "a-long-enough-password")
    path.chmod(0o644)
    with pytest.raises(CredentialsError, match="must be 0600"):
        read_credentials(path)
    path.chmod(0o600)
    path.write_text("[mlflow]\nmlflow_tracking_username = pipeline\n")
    with pytest.raises(CredentialsError, match=f"{path}: needs"):
        read_credentials(path)
    with pytest.raises(CredentialsError, match="without '%'"):
        mlflow_auth.credentials_text("pipeline", "100%-sure-password")


def test_the_creation_rule_covers_experiments_and_registered_models():
    """The routes the server refuses to non-creators are MLflow's own create routes."""
    from mlflow.server import auth

    from flows.registry.mlflow_server import creation_routes

    routes = creation_routes(auth)
    for path in (
        "/api/2.0/mlflow/registered-models/create",
        "/ajax-api/2.0/mlflow/registered-models/create",
        "/api/2.0/mlflow/experiments/create",
        "/ajax-api/2.0/mlflow/experiments/create",
    ):
        assert (path, "POST") in routes
    assert ("/api/2.0/mlflow/model-versions/create", "POST") not in routes  # MLflow's own check


def test_a_refused_alias_read_of_a_missing_model_counts_as_missing():
    """MLflow's basic-auth app answers 403 (not 404) for an alias of a model that does not exist."""
    from unittest import mock

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST

    from flows.registry.registry import current_champion

    refused = MlflowException("Permission denied", error_code=PERMISSION_DENIED)
    absent = MlflowException("not found", error_code=RESOURCE_DOES_NOT_EXIST)
    client = mock.Mock()
    client.get_model_version_by_alias.side_effect = refused
    client.get_registered_model.side_effect = absent
    assert current_champion(client, "fraud-detector", "champion") is None
    client.get_registered_model.side_effect = None  # the model exists: a real refusal
    with pytest.raises(MlflowException, match="Permission denied"):
        current_champion(client, "fraud-detector", "champion")


def test_rotating_needs_a_known_user_and_the_running_server(config):
    credentials.ensure_mlflow_auth(config)
    before = read_credentials(config.mlflow_user_file("pipeline"))
    with pytest.raises(ValueError, match="--user 'root'"):
        credentials.rotate_mlflow_password(config, "root")
    with pytest.raises(RuntimeError, match="does not answer"):  # nothing listens on its port
        credentials.rotate_mlflow_password(config, "pipeline", timeout=2)
    assert read_credentials(config.mlflow_user_file("pipeline")) == before  # file untouched
