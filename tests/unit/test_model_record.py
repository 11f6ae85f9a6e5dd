"""What MLflow records about a candidate: one nested run per searched configuration, the ONNX
model's signature and input example, metrics linked to the logged model, registry descriptions
and the plots beside the PR curve."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from data_contracts.schemas import LABEL_INT
from flows.core.settings import Settings
from flows.registry import registry, search_runs
from flows.training.explain import feature_importance
from flows.training.onnx_export import export_onnx
from flows.training.reporting import (
    calibration_figure,
    importance_figure,
    roc_figure,
    threshold_figure,
)
from flows.training.search import SearchSettings, run_search
from flows.training.train import TrainParams


@pytest.fixture
def client(tmp_path, monkeypatch) -> MlflowClient:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FRAUD_MLFLOW_TRACKING_URI", raising=False)
    return registry.configure(Settings(home=tmp_path))


@pytest.fixture(scope="module")
def search_result(spec, splits):
    ticks = itertools.count(step=10.0)  # two candidates start within the budget, two skip
    settings = SearchSettings(budget_seconds=45, max_rows=2_000, folds=2, trials=2)
    return run_search(splits.train, spec, TrainParams(max_iter=30), settings,
                      clock=lambda: next(ticks))  # fmt: skip


def test_every_candidate_is_a_nested_run_of_the_release_run(client, search_result):
    with mlflow.start_run() as parent:
        pass
    first = search_runs.log_search_runs(parent.info.run_id, search_result)
    again = search_runs.log_search_runs(parent.info.run_id, search_result)  # a retried task
    assert first == again
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == len(search_result.ranking) == 4
    by_name = {r.data.tags[search_runs.CANDIDATE_TAG]: r for r in children}
    winner = by_name[search_result.winner.name]
    assert winner.data.tags["search.winner"] == "true"
    assert winner.data.metrics["cv_average_precision"] == pytest.approx(
        search_result.winner.cv_ap_mean
    )
    assert winner.data.metrics["rank"] == 1
    skipped = [r for r in children if r.data.tags["search.status"] == "skipped: budget"]
    assert len(skipped) == 2 and all("cv_average_precision" not in r.data.metrics
                                     for r in skipped)  # fmt: skip
    assert winner.data.params["family"] == search_result.winner.family


def test_onnx_model_has_a_signature_an_input_example_and_linked_metrics(
    client, trained, spec, splits, tmp_path
):
    model_bytes = export_onnx(trained.pipeline, spec)
    with mlflow.start_run():
        info = registry.log_onnx_model_info(
            model_bytes, spec, trained.threshold, tmp_path / "w", {},
            input_example=splits.holdout[spec.feature_names].head(3),
        )  # fmt: skip
        mlflow.log_metrics({"holdout_f1": trained.metrics.f1}, model_id=info.model_id)
    inputs = info.signature.inputs.to_dict()
    assert [i["name"] for i in inputs] == spec.feature_names
    kinds = {i["name"]: i["tensor-spec"]["dtype"] for i in inputs}
    assert kinds["amount"] == "float32" and kinds["channel"] == "object"
    assert {o["name"] for o in info.signature.outputs.to_dict()} == {"label", "probabilities"}
    example = mlflow.models.Model.load(info.model_uri).load_input_example(
        mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl"))
    )
    assert set(example) == set(spec.feature_names)
    assert np.asarray(example["amount"]).shape == (3, 1)
    logged = mlflow.get_logged_model(info.model_id)
    assert {m.key: m.value for m in logged.metrics}["holdout_f1"] == pytest.approx(
        trained.metrics.f1
    )


def test_registry_entries_carry_descriptions(client):
    with mlflow.start_run() as run:
        mlflow.log_text("model", "model/model.txt")
        uri = mlflow.get_artifact_uri("model")
    version = registry.register_version(client, "described", uri, run.info.run_id, {})
    registry.describe(client, "described", str(version.version), "the model", "this version")
    assert client.get_registered_model("described").description == "the model"
    assert client.get_model_version("described", version.version).description == "this version"


def test_plots_beside_the_pr_curve(trained, spec, splits):
    y = splits.holdout[LABEL_INT].to_numpy()
    for fig in (
        roc_figure(y, trained.holdout_scores, trained.metrics),
        threshold_figure(y, trained.holdout_scores, trained.metrics),
        calibration_figure(y, trained.holdout_scores),
    ):
        assert fig.axes[0].lines, fig.axes[0].get_title()
        plt.close(fig)


def test_permutation_importance_finds_what_the_model_uses(trained, spec, splits):
    table = feature_importance(trained.pipeline, splits.holdout, spec, max_rows=1_000, repeats=1)
    assert list(table.columns) == ["feature", "mean", "std"]
    assert set(table["feature"]) == set(spec.feature_names)
    assert table["mean"].is_monotonic_decreasing
    assert table["mean"].iloc[0] > 0.05  # the top feature carries real signal
    fig = importance_figure(table)
    assert len(fig.axes[0].patches) == min(20, len(spec.feature_names))  # the top 20
    plt.close(fig)


def test_permutation_importance_keeps_a_rare_class_and_skips_a_single_one(trained, spec, splits):
    holdout = splits.holdout
    rare = pd.concat([holdout[holdout[LABEL_INT] == 1].head(2), holdout[holdout[LABEL_INT] == 0]])
    table = feature_importance(trained.pipeline, rare, spec, max_rows=500, repeats=1)
    assert table is not None and len(table) == len(spec.feature_names)
    only_legit = holdout[holdout[LABEL_INT] == 0]
    assert feature_importance(trained.pipeline, only_legit, spec, max_rows=500) is None
