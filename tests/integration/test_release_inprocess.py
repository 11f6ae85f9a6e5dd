"""train-and-release end to end in-process (Prefect test harness, MLflow on a tmp SQLite store)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from data_contracts.spec import load_spec
from data_contracts.synthetic import GeneratorConfig, generate
from flows.core.settings import Settings
from flows.packaging import publish
from flows.promotion import audit
from flows.registry import registry
from flows.train_and_release import train_and_release
from flows.training.gate import GatePolicy
from flows.training.onnx_export import onnx_predict_proba, onnx_session, sha256
from flows.training.train import TrainParams

pytestmark = pytest.mark.integration  # an in-process Prefect test server

EXAMPLES = Path(__file__).resolve().parents[2] / "data_contracts" / "examples"
FAST = TrainParams(max_iter=60)
NO_IMAGE = {"build_image": False}  # the image path is tested in tests/integration/test_image.py


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def data_file(tmp_path, small_data) -> Path:
    path = tmp_path / "transactions.parquet"
    small_data.to_parquet(path, index=False)
    return path


def client_for(home: Path) -> MlflowClient:
    return registry.configure(Settings(home=home))


def test_release_then_blocked_candidate_leaves_the_alias(fraud_home, data_file):
    first = train_and_release(data_path=str(data_file), params=FAST, return_state=True, **NO_IMAGE)
    assert first.is_completed(), first.message
    out = first.result()
    assert out["outcome"] == "promote" and out["version"] == "1"

    client = client_for(fraud_home)
    champion = client.get_model_version_by_alias("fraud-detector", "champion")
    assert str(champion.version) == "1"
    model = registry.download_model(champion, fraud_home / "dl")
    assert model.sha256 == champion.tags["onnx_sha256"] == sha256(model.model_bytes)
    assert model.spec_hash == champion.tags["feature_spec_hash"]
    assert 0 < model.threshold < 1
    run = client.get_run(champion.run_id)
    assert run.data.metrics["holdout_f1"] == pytest.approx(out["holdout_f1"])
    assert {"pr_curve.png", "confusion_matrix.png", "feature_spec.json"} <= {
        a.path for a in client.list_artifacts(champion.run_id)
    }
    assert run.inputs.dataset_inputs[0].dataset.digest == run.data.tags["data_digest"]

    assert publish.read_champion(Settings(home=fraud_home), "fraud-detector") == "fraud-detector:v1"
    assert champion.tags["release.outcome"] == "released"
    moves = audit.history(client, "fraud-detector")
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [("release", None, "1")]
    assert moves[0].actor.startswith("flow-run:") and "holdout F1" in moves[0].reason

    second = train_and_release(
        data_path=str(data_file), params=TrainParams(max_iter=30, cripple=True), return_state=True
    )
    assert second.is_completed() and second.name == "Blocked"
    assert "f1_floor" in second.message
    blocked = client.get_model_version("fraud-detector", "2")
    assert blocked.tags["gate.outcome"] == "blocked"
    assert "champion v1" in blocked.tags["gate.reasons"]
    assert str(client.get_model_version_by_alias("fraud-detector", "champion").version) == "1"
    assert len(audit.history(client, "fraud-detector")) == 1  # a blocked run moves nothing
    assert publish.read_champion(Settings(home=fraud_home), "fraud-detector") == "fraud-detector:v1"


def test_bring_your_own_data_and_spec(fraud_home):
    state = train_and_release(
        data_path=str(EXAMPLES / "credit_risk.csv"),
        spec_path=str(EXAMPLES / "credit_risk.yaml"),
        return_state=True,
        **NO_IMAGE,
    )
    assert state.is_completed(), state.message
    assert state.result()["model_name"] == "credit-risk"
    version = client_for(fraud_home).get_model_version_by_alias("credit-risk", "champion")
    model = registry.download_model(version, fraud_home / "dl")
    spec = load_spec(EXAMPLES / "credit_risk.yaml")
    rows = pd.read_csv(EXAMPLES / "credit_risk.csv").head(50)
    scores = onnx_predict_proba(onnx_session(model.model_bytes), rows, spec)
    assert scores.shape == (50,) and np.all((scores >= 0) & (scores <= 1))


def test_contract_violation_stops_the_run_and_keeps_the_quarantine(fraud_home, tmp_path):
    df = generate(GeneratorConfig(rows=3000, seed=4, invalid_rows=300))
    path = tmp_path / "bad.parquet"
    df.to_parquet(path, index=False)
    state = train_and_release(
        data_path=str(path), policy=GatePolicy(max_quarantine_share=0.05), return_state=True
    )
    assert state.is_failed()
    assert "above the limit of 5.00%" in state.message
    files = list((fraud_home / "quarantine").glob("*.parquet"))
    assert len(files) == 1 and len(pd.read_parquet(files[0])) == 300
    assert client_for(fraud_home).search_registered_models() == []


def test_missing_column_stops_the_run_naming_it(fraud_home, tmp_path, small_data):
    path = tmp_path / "nocol.csv"
    small_data.drop(columns=["credit_limit"]).head(500).to_csv(path, index=False)
    state = train_and_release(data_path=str(path), return_state=True)
    assert state.is_failed() and "column 'credit_limit': missing from the data" in state.message


def test_single_class_label_stops_before_training(fraud_home, tmp_path, small_data):
    path = tmp_path / "legit.parquet"
    small_data[small_data["is_fraud"] == 0].head(2000).to_parquet(path, index=False)
    state = train_and_release(data_path=str(path), return_state=True)
    assert state.is_failed() and "label 'is_fraud' is constant" in state.message


def test_missing_data_file_is_named(fraud_home, tmp_path):
    state = train_and_release(data_path=str(tmp_path / "nope.parquet"), return_state=True)
    assert state.is_failed() and "nope.parquet does not exist" in state.message


def test_configure_does_not_leak_the_uri_into_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.configure(Settings(home=tmp_path / "a"))
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert Settings(home=tmp_path / "b").tracking_uri.endswith(f"{tmp_path}/b/mlflow/mlflow.db")


def test_promotion_retried_after_the_alias_moved_finishes_it(fraud_home, data_file, monkeypatch):
    """The audit write fails once after the alias moved: the retry completes the promotion
    (one audit entry, released) instead of refusing its own move."""
    real = audit.record_move
    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs["to_version"])
        if len(calls) == 1:
            raise ConnectionError("tracking server went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(audit, "record_move", flaky)
    state = train_and_release(data_path=str(data_file), params=FAST, return_state=True, **NO_IMAGE)
    assert state.is_completed() and state.name == "Completed", state.message
    assert calls == ["1", "1"]
    client = client_for(fraud_home)
    assert str(client.get_model_version_by_alias("fraud-detector", "champion").version) == "1"
    assert client.get_model_version("fraud-detector", "1").tags["release.outcome"] == "released"
    moves = audit.history(client, "fraud-detector")
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [("release", None, "1")]
