"""Calibrated scores end to end: the calibrator (centred isotonic on log-odds, slopes capped),
the candidate it makes (cross-fitted on the training rows, threshold on the calibrated scale),
and the served ONNX graph with the calibrator inside, at parity with scikit-learn."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper
from threadpoolctl import threadpool_limits

from data_contracts.schemas import LABEL_INT, validate_frame
from data_contracts.spec import FeatureSpec, parse_spec
from flows.training.calibration import (
    MAX_SLOPE,
    Z_MAX,
    CalibratedModel,
    Calibrator,
    auto_folds,
    fit_calibrator,
    logit,
)
from flows.training.calibration_evidence import brier, ece
from flows.training.onnx_export import (
    CALIBRATION_META,
    LABEL,
    PROBABILITIES,
    append_calibration,
    export_onnx,
    onnx_predict_proba,
    onnx_session,
    parity,
)
from flows.training.release import train_candidate
from flows.training.train import TrainParams, split


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    with threadpool_limits(1, user_api="openmp"):
        yield


def skewed_spec() -> FeatureSpec:
    features = [{"name": f"x{i}", "kind": "numeric"} for i in range(1, 4)]
    features.append({"name": "kind", "kind": "categorical", "categories": ["a", "b"]})
    return parse_spec(
        {
            "name": "toy",
            "id_column": "row_id",
            "label": {"name": "y", "positive": 1, "negative": 0},
            "features": features,
        }
    )


def skewed_rows(rows: int = 6_000, seed: int = 0) -> pd.DataFrame:
    """About 5% positives whose log-odds are linear in x1..x3: class weights inflate them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    log_odds = 1.6 * x[:, 0] - 1.2 * x[:, 1] + 0.8 * x[:, 2] - 4.3
    frame = pd.DataFrame(x, columns=["x1", "x2", "x3"])
    frame["kind"] = rng.choice(["a", "b"], size=rows)
    frame.insert(0, "row_id", [f"r{i}" for i in range(rows)])
    frame["y"] = (rng.random(rows) < 1 / (1 + np.exp(-log_odds))).astype(int)
    return frame


@pytest.fixture(scope="module")
def data():
    spec = skewed_spec()
    return spec, split(validate_frame(skewed_rows(), spec).valid, spec, 0.25, 0.2)


@pytest.fixture(scope="module", params=["hgb", "logistic"])
def candidate(request, data):
    spec, splits = data
    params = TrainParams(classifier=request.param, max_iter=60, learning_rate=0.2)
    return train_candidate(splits, spec, params)


def test_the_calibrator_is_monotone_gently_sloped_and_keeps_the_rate():
    rng = np.random.default_rng(1)
    raw = rng.uniform(0, 1, 20_000)
    y = (rng.random(20_000) < raw**3).astype(int)  # raw overstates every probability
    cal = fit_calibrator(raw, y, folds=3)
    assert np.all(np.diff(cal.knots) > 0) and np.all(np.diff(cal.values) >= 0)
    assert cal.slopes().max() <= MAX_SLOPE + 1e-12
    q = cal.apply(raw)
    assert q.min() >= 0 and q.max() <= 1
    assert q.mean() == pytest.approx(y.mean(), abs=2e-3)  # pooling keeps the mean
    assert ece(y, q) < 0.02 < ece(y, raw)
    assert (cal.rows, cal.positives, cal.folds) == (20_000, int(y.sum()), 3)
    assert "cross-fitted on 20,000 training rows" in cal.describe()


def test_small_tables_get_more_folds_so_fold_models_score_like_the_served_one():
    assert auto_folds(3_000) == auto_folds(20_000) == 10  # each fold model sees 90% of the rows
    assert auto_folds(50_000) == 5
    assert auto_folds(128_000) == auto_folds(640_000) == 3
    assert auto_folds(640_000, asked=5) == 5


def test_a_single_block_is_a_constant():
    cal = fit_calibrator(np.array([0.2, 0.3, 0.4]), np.array([1, 0, 0]), folds=2)
    np.testing.assert_allclose(cal.apply(np.array([0.0, 0.5, 1.0])), 1 / 3)


def test_candidates_serve_calibrated_probabilities(candidate, data):
    spec, splits = data
    y = splits.holdout[LABEL_INT].to_numpy()
    raw = candidate.pipeline.raw_proba(splits.holdout[spec.feature_names])
    calibrated = candidate.holdout_scores
    assert isinstance(candidate.pipeline, CalibratedModel)
    assert raw.mean() > 1.5 * y.mean()  # balanced class weights inflate the raw score
    assert abs(calibrated.mean() - y.mean()) < 0.015
    assert ece(y, calibrated) < ece(y, raw) and brier(y, calibrated) < brier(y, raw)
    # cross-fitted on the training rows, described with how many
    cal = candidate.calibrator
    assert cal.rows == len(splits.train) and cal.folds == auto_folds(len(splits.train)) == 10
    assert f"{len(splits.train):,} training rows" in candidate.calibration_text()


def test_the_threshold_is_tuned_on_the_calibrated_scale_between_two_scores(candidate, data):
    spec, splits = data
    val = candidate.pipeline.predict_proba(splits.validation[spec.feature_names])[:, 1]
    assert candidate.threshold not in set(np.round(val, 12))  # no tuning row sits on it
    assert candidate.threshold < 0.9  # a probability, not the inflated scale's 0.9-ish


def test_calibrated_graph_parity_covers_the_whole_graph(candidate, data):
    spec, splits = data
    model_bytes = export_onnx(candidate.pipeline, spec)
    p_onnx = onnx_predict_proba(onnx_session(model_bytes), splits.holdout, spec)
    report = parity(candidate.holdout_scores, p_onnx, candidate.threshold, 1e-4)
    assert report.passed, report
    # the graph serves the calibrated score, not the raw one
    raw = candidate.pipeline.raw_proba(splits.holdout[spec.feature_names])
    assert np.abs(p_onnx - raw).max() > 0.05
    model = onnx.load_from_string(model_bytes)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[CALIBRATION_META] == candidate.calibrator.describe()
    assert [o.name for o in model.graph.output] == [LABEL, PROBABILITIES]


def test_calibration_off_serves_the_pipeline_as_before(data):
    spec, splits = data
    cand = train_candidate(splits, spec, TrainParams(max_iter=30, calibration="none"))
    assert cand.calibrator is None and "none" in cand.calibration_text()
    meta = {p.key for p in onnx.load_from_string(export_onnx(cand.pipeline, spec)).metadata_props}
    assert CALIBRATION_META not in meta


def _probability_graph() -> onnx.ModelProto:
    """A graph that outputs the given positive score as ``probabilities`` (and a label)."""
    nodes = [
        helper.make_node("Constant", [], ["one"], value_float=1.0),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], [PROBABILITIES], axis=1),
        helper.make_node("ArgMax", [PROBABILITIES], [LABEL], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info(LABEL, TensorProto.INT64, [None]),
         helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, [None, 2])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("knots", [2, 7, 40])
def test_the_graph_nodes_compute_what_the_calibrator_does(knots):
    x = np.linspace(-6, Z_MAX, knots)
    cal = Calibrator(knots=tuple(x), values=tuple(np.sort(1 / (1 + np.exp(-(x - 2))))),
                     rows=1, positives=1, folds=3)  # fmt: skip
    model = _probability_graph()
    append_calibration(model, cal)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # the extremes included: exact 0 and 1, scores float32 cannot tell from 1, tiny ones
    p = np.r_[0.0, 1e-30, 1e-9, np.linspace(0.001, 0.999, 2001), 1 - 1e-7, 1.0].astype(np.float32)
    probs, label = session.run([PROBABILITIES, LABEL], {"p": p.reshape(-1, 1)})
    expected = cal.apply(p.astype(np.float64))
    assert np.abs(probs[:, 1] - expected).max() < 1e-5
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(label, (probs[:, 1] > probs[:, 0]).astype(np.int64))


def test_log_odds_are_capped_where_float32_stops_telling_scores_apart():
    assert logit(np.array([1.0]))[0] == Z_MAX
    assert logit(np.array([0.5]))[0] == 0.0
    assert np.isfinite(logit(np.array([0.0]))).all()
