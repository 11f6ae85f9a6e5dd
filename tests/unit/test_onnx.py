import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from flows.training.onnx_export import (
    PROBABILITIES,
    export_onnx,
    onnx_predict_proba,
    onnx_session,
    parity,
    sha256,
)
from flows.training.release import train_candidate
from flows.training.train import TrainParams


@pytest.fixture(scope="module")
def model_bytes(trained, spec):
    return export_onnx(trained.pipeline, spec)


def test_one_named_input_per_feature_in_pinned_order(model_bytes, spec):
    model = onnx.load_from_string(model_bytes)
    assert [i.name for i in model.graph.input] == spec.feature_names
    kinds = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    for f in spec.features:
        expected = onnx.TensorProto.STRING if not f.is_numeric else onnx.TensorProto.FLOAT
        assert kinds[f.name] == expected
    assert PROBABILITIES in [o.name for o in model.graph.output]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["feature_spec_hash"] == spec.spec_hash()


def test_parity_on_the_holdout(model_bytes, trained, splits, spec):
    p_onnx = onnx_predict_proba(onnx_session(model_bytes), splits.holdout, spec)
    report = parity(trained.holdout_scores, p_onnx, trained.threshold, 1e-4)
    assert report.passed, report
    assert report.rows == len(splits.holdout)


def test_logistic_pipeline_with_scaler_also_converts(spec, splits):
    cand = train_candidate(splits, spec, TrainParams(classifier="logistic"))
    model = export_onnx(cand.pipeline, spec)
    p = onnx_predict_proba(onnx_session(model), splits.holdout, spec)
    assert parity(cand.holdout_scores, p, cand.threshold, 1e-4).passed


def test_parity_detects_differences_and_flips():
    a = np.array([0.1, 0.49, 0.9])
    assert parity(a, a + 1e-3, 0.5, 1e-4).max_abs_diff == pytest.approx(1e-3)
    flipped = parity(a, np.array([0.1, 0.51, 0.9]), 0.5, 0.1)
    assert flipped.decision_flips == 1 and not flipped.passed


def test_unknown_category_is_scored_not_crashing(model_bytes, splits, spec):
    rows = splits.holdout.head(3).copy()
    rows["channel"] = "carrier-pigeon"
    p = onnx_predict_proba(onnx_session(model_bytes), rows, spec)
    assert p.shape == (3,) and np.isfinite(p).all()


def test_sha256_is_of_the_bytes(model_bytes):
    assert sha256(model_bytes) == sha256(bytes(model_bytes))
    assert len(sha256(model_bytes)) == 64


def test_external_data_models_are_refused(tmp_path):
    weights = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 64])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_session(model.SerializeToString())  # the same model with inline weights is accepted
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin",
                    size_threshold=0)  # fmt: skip
    stripped = onnx.load(path, load_external_data=False)
    assert any(uses_external_data(t) for t in _get_all_tensors(stripped))
    with pytest.raises(ValueError, match="external data"):
        onnx_session(stripped.SerializeToString())
