"""ONNX export of the fitted pipeline and the parity gate against scikit-learn."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from onnx.external_data_helper import _get_all_tensors, uses_external_data
from pydantic import BaseModel, ConfigDict
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.pipeline import Pipeline

from data_contracts.schemas import model_frame, onnx_feed
from data_contracts.spec import FeatureSpec

PROBABILITIES = "probabilities"
LABEL = "label"


def export_onnx(pipeline: Pipeline, spec: FeatureSpec) -> bytes:
    """Convert the whole pipeline: one named (n, 1) input per feature, in the pinned order.

    Numbers are float32 inputs, categories string inputs; the output ``probabilities`` is an
    (n, 2) float tensor (``zipmap=False``).
    """
    initial_types = [
        (f.name, FloatTensorType([None, 1]) if f.is_numeric else StringTensorType([None, 1]))
        for f in spec.features
    ]
    model = to_onnx(
        pipeline,
        initial_types=initial_types,
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
        final_types=[(LABEL, None), (PROBABILITIES, FloatTensorType([None, 2]))],
    )
    model.doc_string = f"{spec.name} spec {spec.spec_hash()}"
    meta = model.metadata_props.add()
    meta.key, meta.value = "feature_spec_hash", spec.spec_hash()
    return model.SerializeToString()


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
