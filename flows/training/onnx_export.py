"""ONNX export of the fitted pipeline and the parity gate against scikit-learn."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import _get_all_tensors, uses_external_data
from pydantic import BaseModel, ConfigDict
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.pipeline import Pipeline

from data_contracts.schemas import model_frame, onnx_feed
from data_contracts.spec import FeatureSpec
from flows.training.calibration import Calibrator, calibrator_of

PROBABILITIES = "probabilities"
LABEL = "label"
CALIBRATION_META = "calibration"  # graph metadata: how the scores were calibrated


def export_onnx(model: Pipeline | Any, spec: FeatureSpec) -> bytes:
    """Convert the whole model: one named (n, 1) input per feature, in the pinned order.

    Numbers are float32 inputs, categories string inputs; the output ``probabilities`` is an
    (n, 2) float tensor (``zipmap=False``). A calibrated model
    (:class:`flows.training.calibration.CalibratedModel`) is its pipeline's graph followed by
    the calibrator's nodes (:func:`append_calibration`), so the served scores are calibrated.
    """
    calibrator = calibrator_of(model)
    pipeline = model.pipeline if calibrator is not None else model
    initial_types = [
        (f.name, FloatTensorType([None, 1]) if f.is_numeric else StringTensorType([None, 1]))
        for f in spec.features
    ]
    graph = to_onnx(
        pipeline,
        initial_types=initial_types,
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
        final_types=[(LABEL, None), (PROBABILITIES, FloatTensorType([None, 2]))],
    )
    if calibrator is not None:
        append_calibration(graph, calibrator)
    graph.doc_string = f"{spec.name} spec {spec.spec_hash()}"
    meta = graph.metadata_props.add()
    meta.key, meta.value = "feature_spec_hash", spec.spec_hash()
    if calibrator is not None:
        meta = graph.metadata_props.add()
        meta.key, meta.value = CALIBRATION_META, calibrator.describe()
    return graph.SerializeToString()


def _const(graph: onnx.GraphProto, name: str, values: Any, dtype: Any = np.float32) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
    return name


def append_calibration(model: onnx.ModelProto, calibrator: Calibrator) -> None:
    """Map the graph's ``probabilities`` through the calibrator, in place.

    The pipeline's outputs are renamed ``raw_*`` (internal), and new ``label`` and
    ``probabilities`` outputs computed in float32: log-odds of the positive score, clipped to
    the knots, then ``value[i] + (z - knot[i]) * slope[i]`` on the segment ``i`` that holds it
    (the count of inner knots at or below ``z``), as :meth:`Calibrator.apply` does in float64.
    """
    g = model.graph
    renamed = {LABEL: "raw_label", PROBABILITIES: "raw_probabilities"}
    for node in g.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    del g.output[:]
    knots = np.asarray(calibrator.knots)
    inner = knots[1:-1] if len(knots) > 2 else np.array([np.inf])
    c = {
        "knots": _const(g, "cal_knots", knots),
        "values": _const(g, "cal_values", calibrator.values),
        "slopes": _const(g, "cal_slopes", np.append(calibrator.slopes(), 0.0)),
        "inner": _const(g, "cal_inner", inner.reshape(1, -1)),
        "lo": _const(g, "cal_lo", knots[0]),
        "hi": _const(g, "cal_hi", knots[-1]),
        "one": _const(g, "cal_one", 1.0),
        "zero": _const(g, "cal_zero", 0.0),
        "col": _const(g, "cal_col", 1, np.int64),
        "axis1": _const(g, "cal_axis1", [1], np.int64),
    }
    node = helper.make_node
    g.node.extend(
        [
            node("Gather", ["raw_probabilities", c["col"]], ["cal_p"], axis=1),
            node("Sub", [c["one"], "cal_p"], ["cal_q"]),
            node("Log", ["cal_p"], ["cal_logp"]),
            node("Log", ["cal_q"], ["cal_logq"]),
            node("Sub", ["cal_logp", "cal_logq"], ["cal_z"]),
            node("Clip", ["cal_z", c["lo"], c["hi"]], ["cal_zc"]),
            node("Unsqueeze", ["cal_zc", c["axis1"]], ["cal_zc2"]),
            node("GreaterOrEqual", ["cal_zc2", c["inner"]], ["cal_ge"]),
            node("Cast", ["cal_ge"], ["cal_ge_int"], to=TensorProto.INT64),
            node("ReduceSum", ["cal_ge_int", c["axis1"]], ["cal_seg"], keepdims=0),
            node("Gather", [c["knots"], "cal_seg"], ["cal_k"], axis=0),
            node("Gather", [c["values"], "cal_seg"], ["cal_v"], axis=0),
            node("Gather", [c["slopes"], "cal_seg"], ["cal_s"], axis=0),
            node("Sub", ["cal_zc", "cal_k"], ["cal_dz"]),
            node("Mul", ["cal_dz", "cal_s"], ["cal_step"]),
            node("Add", ["cal_v", "cal_step"], ["cal_raw_pos"]),
            node("Clip", ["cal_raw_pos", c["zero"], c["one"]], ["cal_pos"]),
            node("Sub", [c["one"], "cal_pos"], ["cal_neg"]),
            node("Unsqueeze", ["cal_neg", c["axis1"]], ["cal_neg2"]),
            node("Unsqueeze", ["cal_pos", c["axis1"]], ["cal_pos2"]),
            node("Concat", ["cal_neg2", "cal_pos2"], [PROBABILITIES], axis=1),
            node("ArgMax", [PROBABILITIES], [LABEL], axis=1, keepdims=0),
        ]
    )
    g.output.extend(
        [
            helper.make_tensor_value_info(LABEL, TensorProto.INT64, [None]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, [None, 2]),
        ]
    )
    onnx.checker.check_model(model)


def sha256(data: bytes) -> str:
    """Hex sha256 of the serialised model: its identity in the registry and the bento store."""
    return hashlib.sha256(data).hexdigest()


def onnx_session(model_bytes: bytes) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; refuses models that reference external data files."""
    model = onnx.load_from_string(model_bytes)
    external = [t.name for t in _get_all_tensors(model) if uses_external_data(t)]
    if external:
        raise ValueError(f"ONNX model uses external data ({', '.join(external[:3])}); refused")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def onnx_predict_proba(
    session: ort.InferenceSession, df: pd.DataFrame, spec: FeatureSpec
) -> np.ndarray:
    """Positive-class probability from the ONNX model for each row of ``df``."""
    if len(df) == 0:
        return np.zeros(0, dtype=np.float32)
    feed = onnx_feed(model_frame(df, spec), spec)
    return session.run([PROBABILITIES], feed)[0][:, 1]


class ParityReport(BaseModel):
    """How far ONNX Runtime's scores are from scikit-learn's on the same rows."""

    model_config = ConfigDict(frozen=True)

    rows: int
    max_abs_diff: float
    decision_flips: int
    tolerance: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.decision_flips == 0


def parity(
    p_sklearn: np.ndarray, p_onnx: np.ndarray, threshold: float, tolerance: float
) -> ParityReport:
    """Compare two score vectors: max |difference| and decisions that flip at ``threshold``."""
    if p_sklearn.shape != p_onnx.shape:
        raise ValueError(f"parity: shapes differ {p_sklearn.shape} vs {p_onnx.shape}")
    diff = np.abs(p_sklearn.astype(np.float64) - p_onnx.astype(np.float64))
    flips = int(np.sum((p_sklearn >= threshold) != (p_onnx >= threshold)))
    return ParityReport(
        rows=len(diff),
        max_abs_diff=float(diff.max()) if len(diff) else 0.0,
        decision_flips=flips,
        tolerance=tolerance,
        threshold=threshold,
    )
