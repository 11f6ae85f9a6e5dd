"""The served model's page at ``/`` and ``GET /model``, and the holdout metrics they show."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from starlette.testclient import TestClient

from bento.config import ServingConfig
from bento.http_app import ServingApp
from bento.model_page import describe_runtime, render_page
from bento.runtime import load_runtime
from flows.packaging.store import holdout_metrics
from tests.support.serving import TinyModel, train_tiny_model


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("page") / "bentoml")


@pytest.fixture(scope="module")
def runtime(tiny):
    name, _, version = tiny.tag.partition(":")
    model_dir = Path(tiny.bentoml_home) / "models" / name / version
    meta = yaml.safe_load((model_dir / "model.yaml").read_text())["metadata"]
    meta["holdout"] = {"f1": 0.81234, "precision": 0.9, "recall": 0.74}
    labels = {"model_name": name, "run_id": "abc123", "git_commit": "deadbeef"}
    return load_runtime(model_dir, meta, tag=tiny.tag, labels=labels)


def test_the_card_names_the_model_its_metrics_features_and_origin(runtime, spec):
    card = describe_runtime(runtime)
    assert (card["name"], card["version"], card["tag"]) == ("fraud-detector", "1", runtime.tag)
    assert card["holdout"]["f1"] == pytest.approx(0.81234)
    assert [f["name"] for f in card["features"]] == spec.feature_names
    channel = next(f for f in card["features"] if f["name"] == "channel")
    assert channel["kind"] == "categorical" and channel["categories"]
    amount = next(f for f in card["features"] if f["name"] == "amount")
    assert "min" in amount and "max" in amount
    assert card["source"] == {
        "mlflow_run": "abc123",
        "git_commit": "deadbeef",
        "data_digest": "unknown",
    }


def test_the_page_shows_the_card_escaped(runtime):
    card = describe_runtime(runtime) | {"name": "<script>x</script>"}
    page = render_page(card)
    assert "<script>x" not in page and "&lt;script&gt;x" in page
    assert "0.8123" in page and "deadbeef" in page and "channel" in page
    assert "not reported" in page  # no follower status given


def test_served_over_http_with_the_swagger_page_moved_to_docs(runtime):
    serving = ServingApp()
    with TestClient(serving.app) as client:
        assert client.get("/model").status_code == 503
        assert client.get("/").status_code == 503
        serving.bind(runtime, ServingConfig(inference_log_enabled=False), None, None)
        body = client.get("/model").json()
        assert body["version"] == "1" and body["threshold"] == runtime.threshold
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "fraud-detector" in page.text and "Holdout metrics" in page.text
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_holdout_metrics_come_from_the_training_run():
    run = SimpleNamespace(
        data=SimpleNamespace(metrics={"holdout_f1": 0.8, "holdout_pr_auc": 0.7, "cv_ap": 0.6})
    )
    client = SimpleNamespace(get_run=lambda run_id: run)
    assert holdout_metrics(client, "r1") == {"f1": 0.8, "pr_auc": 0.7}
    assert holdout_metrics(client, None) == {}

    def broken(run_id):
        raise RuntimeError("tracking server down")

    assert holdout_metrics(SimpleNamespace(get_run=broken), "r1") == {}


def test_the_page_says_how_fraud_probability_was_calibrated(runtime):
    card = describe_runtime(runtime)  # a store label-less model: registered before calibration
    assert card["calibration"].startswith("not calibrated")
    labelled = runtime.__class__(**{**runtime.__dict__, "labels": {
        **runtime.labels, "calibration": "isotonic (centred, on log-odds), cross-fitted on "
        "128,000 training rows (2,792 positives, 3 folds); 40 knots"}})  # fmt: skip
    page = render_page(describe_runtime(labelled))
    assert "fraud_probability calibrated" in page and "128,000 training rows" in page
