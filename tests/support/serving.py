"""Test support for the serving layer: a tiny trained ONNX model in a throw-away BentoML store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from data_contracts.schemas import validate_frame
from data_contracts.spec import FeatureKind, FeatureSpec
from data_contracts.synthetic import GeneratorConfig, generate
from flows.core.http import free_port
from flows.packaging.store import import_model
from flows.training.onnx_export import export_onnx, onnx_predict_proba, onnx_session
from flows.training.train import TrainParams, fit

ROOT = Path(__file__).resolve().parents[2]
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


def failing_graph(spec: FeatureSpec) -> bytes:
    """An ONNX graph with the spec's inputs and a ``probabilities`` output whose every run
    fails (a Reshape to an impossible shape): it loads, then fails its warm-up prediction."""
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info(
            f.name, TensorProto.STRING if not f.is_numeric else TensorProto.FLOAT, [None, 1]
        )
        for f in spec.features
    ]
    first = next(f.name for f in spec.features if f.is_numeric)
    shape = helper.make_tensor("impossible", TensorProto.INT64, [2], [3, 5])
    node = helper.make_node("Reshape", [first, "impossible"], ["probabilities"])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "fails", inputs, [out], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def import_raw_model(
    spec: FeatureSpec, bentoml_home: Path, version: int, model_bytes: bytes
) -> str:
    """Store ``model_bytes`` as ``fraud-detector:v<version>`` with a true sha256; its tag."""
    return import_model(
        bentoml_home, MODEL_NAME, version, model_bytes,
        json.loads(json.dumps(spec.model_dump(mode="json"))),
        threshold=THRESHOLD, spec_hash=spec.spec_hash(),
        labels={"model_name": MODEL_NAME, "model_version": str(version), "run_id": "test"},
    ).tag  # fmt: skip


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


# --------------------------------------------------------------------------- bentoml serve

BENTOML = [sys.executable, "-m", "bentoml"]


@dataclass
class BentoServer:
    """A ``bentoml serve`` process in its own session on 127.0.0.1, logging to a file."""

    proc: subprocess.Popen
    base: str
    log: Path
    inference_log: Path | None = None

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM the server's process group (its own PID), wait, escalate if needed."""
        return stop_process_group(self.proc)


def serve_env(home: Path, bentoml_home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without the pipeline's settings, pointed at one store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "BENTOML_"))}
    env.update(BENTOML_HOME=str(bentoml_home), BENTOML_DO_NOT_TRACK="true",
               FRAUD_HOME=str(home), NO_PROXY="127.0.0.1,localhost")  # fmt: skip
    env.update(extra)  # an extra setting wins over the defaults above
    return env


def model_env(home: Path, model: TinyModel, **extra: str) -> dict[str, str]:
    """:func:`serve_env` serving ``model``, with its inference log under ``home``."""
    defaults = {
        "FRAUD_MODEL_TAG": model.tag,
        "FRAUD_INFERENCE_LOG_DIR": str(home / "inference_log"),
    }
    return serve_env(home, model.bentoml_home, **(defaults | extra))


def start_bento(
    env: dict[str, str], log: Path, *args: str, cwd: Path = ROOT, host: str = "127.0.0.1"
) -> BentoServer:
    """Start ``bentoml serve ARGS`` on a free loopback port; output to ``log``, not ours."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*BENTOML, "serve", *args, "--host", host, "--port", str(port)],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    inference_log = env.get("FRAUD_INFERENCE_LOG_DIR")
    return BentoServer(
        proc, f"http://{host}:{port}", log, Path(inference_log) if inference_log else None
    )


def wait_ready(server: BentoServer, timeout: float = 90) -> None:
    """Return once ``/readyz`` answers 200; fail the test (with the log) on exit or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"bentoml serve exited {server.proc.returncode}:\n{server.text()[-3000:]}")
        with contextlib.suppress(OSError):
            if call(f"{server.base}/readyz")[0] == 200:
                return
        time.sleep(0.3)
    pytest.fail(f"not ready in {timeout:.0f} s:\n{server.text()[-3000:]}")


@contextlib.contextmanager
def running_bento(
    env: dict[str, str], log: Path, *args: str, cwd: Path = ROOT
) -> Iterator[BentoServer]:
    """A ready ``bentoml serve`` for the ``with`` block, stopped by PID afterwards."""
    server = start_bento(env, log, *args, cwd=cwd)
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()
