"""What the serving benchmarks share: the model, the request bodies and the server's process.

``bench``, ``soak`` and ``hostile`` each measure one ``bentoml serve`` (``bench`` the FastAPI
baseline too) started here in its own process group on a free 127.0.0.1 port, logging to a
file, waited for, sampled for RSS and stopped by PID. Kept apart from the benchmarks so that
each of them reads as what it measures, and so that they serve the same model the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess  # nosec B404 # argv lists only (bentoml, uvicorn), never a shell
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DISTINCT_RECORDS = 1000
BATCH_RECORDS = 1000
LARGE_BATCH_RECORDS = 10_000
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> float:
    """Seconds until ``url`` answers 200; raises when the server exits or ``timeout`` passes."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}; log: {log}")
        try:
            with _DIRECT.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout} s; log: {log}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (created with it, id = its PID); escalate."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def tree_rss_mb(pid: int) -> dict[str, float]:
    """RSS of a process and its descendants, in MB, keyed by role."""
    import psutil

    root = psutil.Process(pid)
    out: dict[str, float] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = " ".join(p.cmdline())
            rss = p.memory_info().rss / 1e6
        except psutil.Error:
            continue
        role = "worker" if "worker.service" in cmd or (p is root and "uvicorn" in cmd) else "other"
        out[role] = out.get(role, 0.0) + rss
        out["total"] = out.get("total", 0.0) + rss
    return out


class RssSampler(threading.Thread):
    """Samples the serving worker's RSS every ``interval`` seconds until stopped: (seconds since
    the sampler was made, MB)."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.samples.append(
                (round(time.monotonic() - self._t0, 1), tree_rss_mb(self.pid).get("worker", 0.0))
            )

    def stop(self) -> list[tuple[float, float]]:
        self._done.set()
        self.join()
        return self.samples


def error_lines(log: Path) -> list[str]:
    """The server log's ERROR/CRITICAL lines and tracebacks (JSON log lines or plain text)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line or "Traceback" in line:
            out.append(line[:300])
    return out


def prepare_model(work: Path, model_tag: str | None) -> tuple[Path, str, float]:
    """A BentoML home holding the benchmark model; returns (bentoml_home, tag, threshold)."""
    if model_tag:
        home = Path(os.environ.get("FRAUD_HOME", ROOT / ".fraud")) / "bentoml"
        name, _, version = model_tag.partition(":")
        meta = (home / "models" / name / version / "model.yaml").read_text()
        threshold = float(next(ln for ln in meta.splitlines() if "threshold:" in ln).split()[-1])
        return home, model_tag, threshold
    from data_contracts.schemas import validate_frame
    from data_contracts.spec import default_spec
    from data_contracts.synthetic import GeneratorConfig, generate
    from flows.packaging.store import import_model
    from flows.training.onnx_export import export_onnx
    from flows.training.train import TrainParams, fit, predict_proba, tune_threshold

    spec = default_spec()
    valid = validate_frame(generate(GeneratorConfig(rows=30_000, seed=7)), spec).valid
    pipeline = fit(valid, spec, TrainParams())
    threshold = tune_threshold(valid["_label"].to_numpy(), predict_proba(pipeline, valid, spec))
    home = work / "bentoml"
    stored = import_model(
        home,
        spec.name,
        1,
        export_onnx(pipeline, spec),
        spec.model_dump(mode="json"),
        threshold=threshold,
        spec_hash=spec.spec_hash(),
        labels={"model_name": spec.name, "model_version": "1", "run_id": "benchmark"},
    )
    return home, stored.tag, threshold


def write_bodies(work: Path) -> tuple[Path, Path]:
    """1,000 distinct single-record bodies (one per line) and one 1,000-record batch body;
    ``batch_large.json`` beside them holds a valid 10,000-record batch body."""
    from data_contracts.schemas import validate_frame
    from data_contracts.spec import default_spec
    from data_contracts.synthetic import GeneratorConfig, generate
    from flows.packaging.smoke import request_records

    spec = default_spec()
    frame = validate_frame(generate(GeneratorConfig(rows=12_000, seed=99)), spec).valid
    many = request_records(frame.head(LARGE_BATCH_RECORDS), spec)
    (work / "batch_large.json").write_text(json.dumps({"records": many}))
    records = many[:DISTINCT_RECORDS]
    single = work / "single.jsonl"
    single.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    batch = work / "batch.jsonl"
    batch.write_text(json.dumps({"records": records[:BATCH_RECORDS]}) + "\n")
    return single, batch


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a server command in its own process group (see :func:`stop`), logging to ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(  # nosec B603 # benchmark's own server commands
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def base_env() -> dict[str, str]:
    """This environment without the caller's FRAUD_/BENTOML_ settings, loopback unproxied."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "BENTOML_"))}
    env.update(BENTOML_DO_NOT_TRACK="true", NO_PROXY="127.0.0.1,localhost")
    return env


def start_bento(
    bentoml_home: Path, tag: str, work: Path, port: int
) -> tuple[subprocess.Popen, Path]:
    """``bentoml serve`` of ``tag`` from ``bentoml_home`` on 127.0.0.1:``port``, its state
    (inference log included) under ``work/home``; the process and its log file."""
    env = base_env() | {
        "BENTOML_HOME": str(bentoml_home),
        "FRAUD_MODEL_TAG": tag,
        "FRAUD_HOME": str(work / "home"),
    }
    cmd = [str(VENV_BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = work / "bento.log"
    return start(cmd, env, log), log
