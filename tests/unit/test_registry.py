"""Registration is idempotent: a retried task or a rerun of the same release gets one version."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from flows.core.settings import Settings
from flows.registry import registry

MODEL = "idempotent-model"


@pytest.fixture
def client(tmp_path, monkeypatch) -> MlflowClient:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FRAUD_MLFLOW_TRACKING_URI", raising=False)
    return registry.configure(Settings(home=tmp_path))


def logged_run() -> tuple[str, str]:
    with mlflow.start_run() as run:
        mlflow.log_text("model bytes", "model/model.txt")
        uri = mlflow.get_artifact_uri("model")
    return run.info.run_id, uri


def register(client: MlflowClient, run_id: str, uri: str, key: str, outcome: str) -> str:
    tags = {registry.KEY_TAG: key, "gate.outcome": outcome}
    return str(registry.register_version(client, MODEL, uri, run_id, tags).version)


def test_retry_of_the_same_run_reuses_its_version(client):
    run_id, uri = logged_run()
    assert register(client, run_id, uri, "k1", "promote") == "1"
    assert register(client, run_id, uri, "k1", "promote") == "1"
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1


def test_rerun_with_the_same_key_reuses_the_version_and_keeps_its_identity(client):
    first_run, first_uri = logged_run()
    second_run, second_uri = logged_run()
    client.create_registered_model(MODEL)
    identity = {registry.KEY_TAG: "same-release", "run_id": first_run, "onnx_sha256": "aaa"}
    client.create_model_version(
        MODEL, first_uri, run_id=first_run, tags={**identity, "gate.outcome": "blocked"}
    )
    rerun_tags = {registry.KEY_TAG: "same-release", "run_id": second_run, "onnx_sha256": "bbb"}
    version = registry.register_version(
        client, MODEL, second_uri, second_run, {**rerun_tags, "gate.outcome": "promote"}
    )
    assert str(version.version) == "1"
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    assert version.run_id == first_run and version.source == first_uri
    assert {k: version.tags[k] for k in identity} == identity  # what v1 stores, unchanged
    assert version.tags["gate.outcome"] == "promote"  # the latest gate
    assert version.tags["release.rerun_run_id"] == second_run


def test_a_different_key_is_a_new_version(client):
    first_run, first_uri = logged_run()
    second_run, second_uri = logged_run()
    assert register(client, first_run, first_uri, "k1", "promote") == "1"
    assert register(client, second_run, second_uri, "k2", "promote") == "2"


def test_nothing_found_before_the_model_exists(client):
    assert registry.find_version(client, MODEL, "no-run", "no-key") is None
