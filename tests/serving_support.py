"""Test support for the serving layer: a tiny trained ONNX model in a throw-away BentoML store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_contracts.schemas import validate_frame
from data_contracts.spec import FeatureKind, FeatureSpec
from data_contracts.synthetic import GeneratorConfig, generate
from flows.delivery.store import import_model
from flows.training.onnx_export import export_onnx, onnx_predict_proba, onnx_session
from flows.training.train import TrainParams, fit

MODEL_NAME = "fraud-detector"
THRESHOLD = 0.5


@dataclass(frozen=True)
class TinyModel:
    """A small model trained on generated rows, stored as ``fraud-detector:v<version>``."""

    tag: str
    bentoml_home: Path
    model_bytes: bytes
    spec: FeatureSpec
    threshold: float
    rows: pd.DataFrame  # validated rows with the features in spec order

    def records(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` rows as request bodies (JSON-typed, keyed by feature name)."""
        return [to_request(row, self.spec) for row in self.rows.head(n).to_dict("records")]

    def offline_scores(self, n: int) -> np.ndarray:
        """ONNX Runtime probabilities of the first ``n`` rows, computed without the service."""
        session = onnx_session(self.model_bytes)
        return onnx_predict_proba(session, self.rows.head(n), self.spec)


def to_request(row: dict[str, Any], spec: FeatureSpec) -> dict[str, Any]:
    """One row as a request body: JSON types as the spec declares them, null for missing."""
    out: dict[str, Any] = {}
    for f in spec.features:
        v = row[f.name]
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out[f.name] = None
        elif f.kind == FeatureKind.CATEGORICAL:
            out[f.name] = str(v)
        elif f.kind == FeatureKind.BOOLEAN:
            out[f.name] = bool(v)
        elif f.kind == FeatureKind.INTEGER:
            out[f.name] = int(v)
        else:
            out[f.name] = float(v)
    return out


def train_tiny_model(
    spec: FeatureSpec, bentoml_home: Path, version: int = 1, rows: int = 4000
) -> TinyModel:
    """Train a small pipeline (20 boosting rounds), export it to ONNX, import it into a store."""
    frame = generate(GeneratorConfig(rows=rows, seed=5))
    valid = validate_frame(frame, spec).valid
    pipeline = fit(valid, spec, TrainParams(max_iter=20, max_leaf_nodes=8))
    model_bytes = export_onnx(pipeline, spec)
    stored = import_model(
        bentoml_home,
        MODEL_NAME,
        version,
        model_bytes,
        json.loads(json.dumps(spec.model_dump(mode="json"))),
        threshold=THRESHOLD,
        spec_hash=spec.spec_hash(),
        labels={"model_name": MODEL_NAME, "model_version": str(version), "run_id": "test"},
    )
    return TinyModel(
        tag=stored.tag,
        bentoml_home=bentoml_home,
        model_bytes=model_bytes,
        spec=spec,
        threshold=THRESHOLD,
        rows=valid[spec.feature_names].reset_index(drop=True),
    )


# loopback calls never go through a proxy configured in the environment
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(url: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    """GET (no body) or POST ``body`` (JSON, or raw bytes) to a served bento; status and reply."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with _DIRECT.open(req, timeout=10) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def stop_process_group(proc: subprocess.Popen) -> int:
    """SIGTERM a server started in its own session (by its PID), wait, escalate if needed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(10)
    return proc.returncode


# --------------------------------------------------------------------------- hostile bodies
# The reproductions of issue 14, shared by tests/integration/test_hostile.py and
# benchmarks/serve/hostile.py. Deep bodies are built as bytes: json.dumps itself recurses.

_KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def unknown_keys(n: int = 1000) -> dict[str, None]:
    """``n`` distinct unknown two-letter keys (``aa``, ``ab``, ...), each with ``null``."""
    keys = (a + b for a in _KEY_ALPHABET for b in _KEY_ALPHABET)
    return {k: None for k, _ in zip(keys, range(n), strict=False)}


def key_flood_batch(records: int, keys: int = 1000) -> bytes:
    """A batch of ``records`` records, each nothing but ``keys`` unknown keys (1.8 MB at 150)."""
    one = json.dumps(unknown_keys(keys))
    return ('{"records": [' + ", ".join([one] * records) + "]}").encode()


def empty_records_batch(records: int = 10_000) -> bytes:
    """``{"records": [{}, {}, ...]}``: every record misses every field (40 KB at 10,000)."""
    return b'{"records": [' + b", ".join([b"{}"] * records) + b"]}"


def deep_array(depth: int) -> bytes:
    """``[[[...]]]`` nested ``depth`` deep."""
    return b"[" * depth + b"]" * depth


def deep_field_record(record: dict[str, Any], field: str, depth: int) -> bytes:
    """``record`` with ``field`` replaced by an array nested ``depth`` deep."""
    marker = "__deep_marker__"
    text = json.dumps({**record, field: marker}).encode()
    return text.replace(f'"{marker}"'.encode(), deep_array(depth))


def deep_record_batch(record: dict[str, Any], depth: int) -> bytes:
    """A batch of one valid record followed by one record nested ``depth`` deep."""
    return b'{"records": [' + json.dumps(record).encode() + b", " + deep_array(depth) + b"]}"
