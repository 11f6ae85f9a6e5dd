"""The loaded model: verified ONNX session, feature spec and threshold, and its feature encoding.

:func:`load_runtime` refuses a model whose bytes, spec or graph do not match what the store
recorded, and runs a warm-up prediction; a model that fails any check is never served.
The served model is one self-contained ONNX file: a graph whose tensors live in *external data*
files (outside the hashed ``model.onnx``) is refused, and the session is built from the verified
bytes, so nothing but those bytes is ever read as model content.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from data_contracts.artifacts import META_HOLDOUT, SPEC_FILE
from data_contracts.artifacts import ONNX_FILE as MODEL_FILE
from data_contracts.spec import MISSING_CATEGORY, FeatureKind, FeatureSpec, parse_spec

PROBABILITIES = "probabilities"


# why a model was refused (ModelLoadError.reason; the follower's refusal reasons)
MISSING = "missing"  # a file of the stored model is not there
BAD_HASH = "bad_hash"  # sha256 or spec hash differs from what the store recorded
BAD_GRAPH = "bad_graph"  # ONNX Runtime cannot load or run it, or its graph does not fit the spec
VERIFICATION = "verification"  # anything else: metadata, spec file, threshold

# ONNX Runtime writes its own errors (a failed warm-up run, for one) to stderr as raw coloured
# lines; they reach the service as exceptions, logged in JSON, so only fatal ones are printed
ORT_LOG_FATAL = 4
ort.set_default_logger_severity(ORT_LOG_FATAL)


class ModelLoadError(RuntimeError):
    """The stored model is missing, corrupt or inconsistent with its metadata; ``reason`` is
    :data:`MISSING`, :data:`BAD_HASH`, :data:`BAD_GRAPH` or :data:`VERIFICATION`."""

    def __init__(self, message: str, reason: str = VERIFICATION) -> None:
        super().__init__(message)
        self.reason = reason


# ONNX protobuf messages that can hold tensors, and the fields leading to them (onnx.proto).
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _TRAINING, _SPARSE, _TENSOR = range(8)
_NESTED: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_LOCATION_EXTERNAL = 1
_MAX_DEPTH = 64


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError(f"truncated or overlong varint at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _scan(data: memoryview, start: int, end: int, kind: int, depth: int, found: list[str]) -> None:
    """Walk one protobuf message; append the names of tensors that use external data."""
    if depth > _MAX_DEPTH:
        raise ValueError("graphs nested too deeply")
    name, external = "", False
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            if kind == _TENSOR and field == _TENSOR_DATA_LOCATION:
                external = external or value == _LOCATION_EXTERNAL
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise ValueError(f"field {field} runs past the end of its message")
            child = _NESTED.get(kind, {}).get(field)
            if child is not None:
                _scan(data, pos, pos + length, child, depth + 1, found)
            elif kind == _TENSOR and field == _TENSOR_NAME:
                name = bytes(data[pos : pos + length]).decode("utf-8", "replace")
            elif kind == _TENSOR and field == _TENSOR_EXTERNAL_DATA:
                external = True
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {field})")
        if pos > end:
            raise ValueError(f"field {field} runs past the end of its message")
    if external:
        found.append(name or "<unnamed>")


def external_data_tensors(model_bytes: bytes) -> list[str]:
    """Names of the tensors of a serialised ONNX model that point at external data files.

    A plain protobuf walk (the serving closure has no ``onnx`` package) over the graph's
    initializers, sparse initializers, node attribute tensors, subgraphs, functions and
    training graphs. Raises ``ValueError`` when the bytes are not a well-formed protobuf.
    """
    found: list[str] = []
    view = memoryview(model_bytes)
    _scan(view, 0, len(view), _MODEL, 0, found)
    return found


def check_self_contained(model_bytes: bytes, *, tag: str) -> None:
    """Refuse an ONNX model that is not one self-contained file (external data, bad protobuf).

    Tensors stored outside ``model.onnx`` would escape the sha256 check and let the model
    read arbitrary files. On the flows side, ``flows.training.onnx_export.onnx_session`` refuses the
    same models at export, so none reaches the bento store.
    """
    try:
        external = external_data_tensors(model_bytes)
    except ValueError as err:
        try:
            ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        except Exception as ort_err:  # onnxruntime raises its own exception types
            raise ModelLoadError(
                f"model {tag}: ONNX Runtime cannot load {MODEL_FILE}: {ort_err}", BAD_GRAPH
            ) from ort_err
        raise ModelLoadError(
            f"model {tag}: {MODEL_FILE} cannot be checked for external data: {err}", BAD_GRAPH
        ) from err
    if external:
        shown = ", ".join(repr(n) for n in external[:5])
        more = f" and {len(external) - 5} more" if len(external) > 5 else ""
        raise ModelLoadError(
            f"model {tag}: {MODEL_FILE} stores tensors as ONNX external data ({shown}{more}); "
            "only self-contained ONNX files are served: re-export the model with every "
            "initializer inside the file (onnx.save_model(..., save_as_external_data=False))",
            BAD_GRAPH,
        )


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
    holdout: Mapping[str, float] = field(default_factory=dict)  # the release's holdout metrics

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
    options.log_severity_level = ORT_LOG_FATAL
    return options


def _check_graph(session: ort.InferenceSession, spec: FeatureSpec, spec_hash: str) -> None:
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    names = [n for n, _ in inputs]
    if names != spec.feature_names:
        raise ModelLoadError(
            f"ONNX inputs {names} do not match the feature spec's pinned order "
            f"{spec.feature_names}",
            BAD_GRAPH,
        )
    for (name, onnx_type), feature in zip(inputs, spec.features, strict=True):
        expected = "tensor(float)" if feature.is_numeric else "tensor(string)"
        if onnx_type != expected:
            raise ModelLoadError(
                f"ONNX input {name!r} is {onnx_type}, expected {expected}", BAD_GRAPH
            )
    outputs = [o.name for o in session.get_outputs()]
    if PROBABILITIES not in outputs:
        raise ModelLoadError(
            f"ONNX model has no {PROBABILITIES!r} output (outputs: {outputs})", BAD_GRAPH
        )
    graph_hash = session.get_modelmeta().custom_metadata_map.get("feature_spec_hash")
    if graph_hash is not None and graph_hash != spec_hash:
        raise ModelLoadError(
            f"ONNX graph was exported for spec {graph_hash}, the stored spec is {spec_hash}",
            BAD_HASH,
        )


def verify_files(
    model_dir: Path, metadata: Mapping[str, Any], *, tag: str
) -> tuple[FeatureSpec, str]:
    """Check a stored model's files against its metadata; return its spec and sha256.

    Cheap (one read and hash of the model file), so the service also runs it when it is
    imported: a corrupt, mismatched or not self-contained model stops ``bentoml serve`` and
    ``bentoml build`` at once.
    """
    spec, digest, _ = _verified_files(model_dir, metadata, tag=tag)
    return spec, digest


def _verified_files(
    model_dir: Path, metadata: Mapping[str, Any], *, tag: str
) -> tuple[FeatureSpec, str, bytes]:
    """:func:`verify_files`, also returning the verified bytes of the ONNX file."""
    model_path, spec_path = model_dir / MODEL_FILE, model_dir / SPEC_FILE
    for path in (model_path, spec_path):
        if not path.is_file():
            raise ModelLoadError(f"model {tag}: {path.name} is missing from {model_dir}", MISSING)
    for key in ("sha256", "spec_hash", "threshold"):
        if key not in metadata:
            raise ModelLoadError(f"model {tag}: store metadata has no {key!r}")
    model_bytes = model_path.read_bytes()
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != metadata["sha256"]:
        raise ModelLoadError(
            f"model {tag}: {MODEL_FILE} is corrupt: sha256 {digest} does not match the "
            f"recorded {metadata['sha256']}",
            BAD_HASH,
        )
    check_self_contained(model_bytes, tag=tag)
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
            f"{metadata['spec_hash']}",
            BAD_HASH,
        )
    return spec, digest, model_bytes


def _holdout(metadata: Mapping[str, Any]) -> dict[str, float]:
    """The holdout metrics recorded in the store metadata (none for older imports)."""
    raw = metadata.get(META_HOLDOUT)
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}


def load_runtime(
    model_dir: Path,
    metadata: Mapping[str, Any],
    *,
    tag: str,
    labels: Mapping[str, str] | None = None,
    threads: int = 1,
) -> ModelRuntime:
    """Load and verify a stored model; raise :class:`ModelLoadError` saying what is wrong.

    Checks: both files exist, the ONNX sha256 equals the recorded one, the ONNX file is
    self-contained (no external data), the spec parses and its hash equals the recorded one,
    the graph's inputs follow the spec, the threshold is a probability, and a warm-up
    prediction returns a probability. The session is built from the verified bytes.
    """
    spec, digest, model_bytes = _verified_files(model_dir, metadata, tag=tag)
    spec_hash = spec.spec_hash()
    threshold = float(metadata["threshold"])
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ModelLoadError(f"model {tag}: threshold {threshold} is not a probability")
    try:
        session = ort.InferenceSession(
            model_bytes, session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelLoadError(
            f"model {tag}: ONNX Runtime cannot load {MODEL_FILE}: {err}", BAD_GRAPH
        ) from err
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
        holdout=_holdout(metadata),
    )
    try:
        warm = runtime.score_one(example_record(spec))
    except Exception as err:
        raise ModelLoadError(f"model {tag}: warm-up prediction failed: {err}", BAD_GRAPH) from err
    if not (math.isfinite(warm) and 0.0 <= warm <= 1.0):
        raise ModelLoadError(
            f"model {tag}: warm-up prediction {warm} is not a probability", BAD_GRAPH
        )
    return runtime
