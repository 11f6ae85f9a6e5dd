"""The loaded model: verified ONNX session, feature spec and threshold, and its feature encoding.

:func:`load_runtime` refuses a model whose bytes, spec or graph do not match what the store
recorded, and runs a warm-up prediction; a model that fails any check is never served.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bento.store import MODEL_FILE, SPEC_FILE, sha256_file
from data_contracts.spec import MISSING_CATEGORY, FeatureKind, FeatureSpec, parse_spec

PROBABILITIES = "probabilities"


class ModelLoadError(RuntimeError):
    """The stored model is missing, corrupt or inconsistent with its metadata."""


class FeatureEncoder:
    """Turns validated records into the ONNX feed: one (n, 1) input per feature, pinned order.

    Numbers (numeric, integer, boolean) are float32 with null as NaN (the pipeline imputes
    them); categories are strings with null as :data:`MISSING_CATEGORY`, as in training.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.numeric = [f.name for f in spec.features if f.is_numeric]
        self.categorical = [f.name for f in spec.features if not f.is_numeric]

    def encode_one(self, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Feed for one record (a mapping of feature name to validated value)."""
        block = np.array([values[n] for n in self.numeric], dtype=np.float32).reshape(-1, 1, 1)
        feed = {name: block[i] for i, name in enumerate(self.numeric)}
        for name in self.categorical:
            v = values[name]
            feed[name] = np.array([[MISSING_CATEGORY if v is None else v]], dtype=object)
        return feed

    def encode_columns(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """Feed for many records given column-wise (feature name -> list of values)."""
        feed: dict[str, np.ndarray] = {}
        for name in self.numeric:
            feed[name] = np.array(columns[name], dtype=np.float32).reshape(-1, 1)
        for name in self.categorical:
            feed[name] = np.array(
                [MISSING_CATEGORY if v is None else v for v in columns[name]], dtype=object
            ).reshape(-1, 1)
        return feed


@dataclass(frozen=True)
class ModelRuntime:
    """Everything needed to score: session, spec, threshold and identity of the model."""

    session: ort.InferenceSession
    spec: FeatureSpec
    encoder: FeatureEncoder
    threshold: float
    model_version: str
    tag: str
    sha256: str
    spec_hash: str
    labels: Mapping[str, str]

    def score_feed(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Positive-class probabilities (float32) for an encoded feed."""
        return self.session.run([PROBABILITIES], feed)[0][:, 1]

    def score_one(self, values: Mapping[str, Any]) -> float:
        """Fraud probability of one validated record."""
        return float(self.score_feed(self.encoder.encode_one(values))[0])


def example_record(spec: FeatureSpec) -> dict[str, Any]:
    """A valid record built from the spec alone (mid-range numbers, first category)."""
    record: dict[str, Any] = {}
    for f in spec.features:
        if f.kind == FeatureKind.CATEGORICAL:
            record[f.name] = (f.categories or ("x",))[0]
        elif f.kind == FeatureKind.BOOLEAN:
            record[f.name] = False
        else:
            lo = f.min if f.min is not None else 0.0
            hi = f.max if f.max is not None else lo + 1.0
            mid = lo + (hi - lo) / 100.0
            record[f.name] = float(round(mid)) if f.kind == FeatureKind.INTEGER else mid
    return record


def session_options(threads: int = 1) -> ort.SessionOptions:
    """CPU session options: a fixed small thread pool (one worker process per core scales out)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def _check_graph(session: ort.InferenceSession, spec: FeatureSpec, spec_hash: str) -> None:
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    names = [n for n, _ in inputs]
    if names != spec.feature_names:
        raise ModelLoadError(
            f"ONNX inputs {names} do not match the feature spec's pinned order {spec.feature_names}"
        )
    for (name, onnx_type), feature in zip(inputs, spec.features, strict=True):
        expected = "tensor(float)" if feature.is_numeric else "tensor(string)"
        if onnx_type != expected:
            raise ModelLoadError(f"ONNX input {name!r} is {onnx_type}, expected {expected}")
    outputs = [o.name for o in session.get_outputs()]
    if PROBABILITIES not in outputs:
        raise ModelLoadError(f"ONNX model has no {PROBABILITIES!r} output (outputs: {outputs})")
    graph_hash = session.get_modelmeta().custom_metadata_map.get("feature_spec_hash")
    if graph_hash is not None and graph_hash != spec_hash:
        raise ModelLoadError(
            f"ONNX graph was exported for spec {graph_hash}, the stored spec is {spec_hash}"
        )


def verify_files(
    model_dir: Path, metadata: Mapping[str, Any], *, tag: str
) -> tuple[FeatureSpec, str]:
    """Check a stored model's files against its metadata; return its spec and sha256.

    Cheap (one hash of the model file), so the service also runs it when it is imported: a
    corrupt or mismatched model stops ``bentoml serve`` and ``bentoml build`` at once.
    """
    model_path, spec_path = model_dir / MODEL_FILE, model_dir / SPEC_FILE
    for path in (model_path, spec_path):
        if not path.is_file():
            raise ModelLoadError(f"model {tag}: {path.name} is missing from {model_dir}")
    for key in ("sha256", "spec_hash", "threshold"):
        if key not in metadata:
            raise ModelLoadError(f"model {tag}: store metadata has no {key!r}")
    digest = sha256_file(model_path)
    if digest != metadata["sha256"]:
        raise ModelLoadError(
            f"model {tag}: {MODEL_FILE} is corrupt: sha256 {digest} does not match the "
            f"recorded {metadata['sha256']}"
        )
    try:
        spec = parse_spec(json.loads(spec_path.read_text(encoding="utf-8")))
    except ValueError as err:
        raise ModelLoadError(
            f"model {tag}: {SPEC_FILE} is not a valid feature spec: {err}"
        ) from err
    spec_hash = spec.spec_hash()
    if spec_hash != metadata["spec_hash"]:
        raise ModelLoadError(
            f"model {tag}: feature spec hash {spec_hash} does not match the recorded "
            f"{metadata['spec_hash']}"
        )
    return spec, digest


def load_runtime(
    model_dir: Path,
    metadata: Mapping[str, Any],
    *,
    tag: str,
    labels: Mapping[str, str] | None = None,
    threads: int = 1,
) -> ModelRuntime:
    """Load and verify a stored model; raise :class:`ModelLoadError` saying what is wrong.

    Checks: both files exist, the ONNX sha256 equals the recorded one, the spec parses and its
    hash equals the recorded one, the graph's inputs follow the spec, the threshold is a
    probability, and a warm-up prediction returns a probability.
    """
    spec, digest = verify_files(model_dir, metadata, tag=tag)
    spec_hash = spec.spec_hash()
    model_path = model_dir / MODEL_FILE
    threshold = float(metadata["threshold"])
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ModelLoadError(f"model {tag}: threshold {threshold} is not a probability")
    try:
        session = ort.InferenceSession(
            str(model_path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"model {tag}: ONNX Runtime cannot load {MODEL_FILE}: {err}") from err
    _check_graph(session, spec, spec_hash)
    runtime = ModelRuntime(
        session=session,
        spec=spec,
        encoder=FeatureEncoder(spec),
        threshold=threshold,
        model_version=str(metadata.get("model_version", tag.rpartition(":v")[2])),
        tag=tag,
        sha256=digest,
        spec_hash=spec_hash,
        labels=dict(labels or {}),
    )
    try:
        warm = runtime.score_one(example_record(spec))
    except Exception as err:
        raise ModelLoadError(f"model {tag}: warm-up prediction failed: {err}") from err
    if not (math.isfinite(warm) and 0.0 <= warm <= 1.0):
        raise ModelLoadError(f"model {tag}: warm-up prediction {warm} is not a probability")
    return runtime
