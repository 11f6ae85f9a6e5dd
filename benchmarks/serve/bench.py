"""Serving benchmark: the bento against the FastAPI baseline, same model, same load, one run.

    uv run python -m benchmarks.serve.bench [--duration 20] [--rounds 1]

Steps: train a model on generated data (the flow's default classifier) and import it into a
temporary BentoML store (or use ``--model-tag`` from ``$FRAUD_HOME/bentoml``); start each server
on a free 127.0.0.1 port with one worker; drive ``POST /predict`` with wrk (one load thread, a
rotating set of 1,000 distinct transactions) at 8 and 64 connections; drive the bento's
``/predict_batch`` with 1,000-record bodies; read the serving processes' RSS. Servers log to
files and are stopped by PID. Prints a table and writes JSON to ``--out``.

Targets (issue "Serve the champion as a bento"): single-row throughput >= 1.5x the baseline
with zero non-2xx at c=8 and c=64, p99 at c=8 <= 25 ms, batch >= 100,000 records/s,
serving RSS <= 350 MB. Absolute figures depend on the machine and on what else runs on it:
compare the ratios, and look at the load average printed with them.

One script on purpose (about 490 lines): the bento, the baseline and their shared load driver
are measured in one session, so their ratio is taken on the same machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess  # nosec B404 # argv lists only (wrk, bentoml, py-spy), never a shell
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flows.core.http import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DISTINCT_RECORDS = 1000
# the baseline as the article runs it (uvicorn's default access log on) and a stricter variant
ARTICLE = "baseline (article)"
STRICT = "baseline (no-access-log)"
BATCH_RECORDS = 1000
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local i = 0
local headers = {["Content-Type"] = "application/json"}
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"non2xx\\": %%d, " ..
    "\\"socket_errors\\": %%d, \\"p50_us\\": %%d, \\"p90_us\\": %%d, \\"p99_us\\": %%d, " ..
    "\\"max_us\\": %%d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass
class LoadResult:
    target: str
    path: str
    connections: int
    seconds: float
    requests: int
    rps: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    records_per_request: int = 1

    @property
    def records_per_s(self) -> float:
        return self.rps * self.records_per_request


@dataclass
class Report:
    machine: dict[str, Any]
    loads: list[LoadResult] = field(default_factory=list)
    rss_mb: dict[str, float] = field(default_factory=dict)
    ready_s: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> float:
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


def run_wrk(
    url: str, bodies: Path, connections: int, seconds: int, target: str, per_request: int = 1
) -> LoadResult:
    script = bodies.with_suffix(".lua")
    script.write_text(WRK_SCRIPT % {"bodies": bodies})
    out = subprocess.run(  # nosec B603 B607 # fixed wrk argv, wrk from PATH
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    data = json.loads(line[len("WRKJSON ") :])
    secs = data["duration_us"] / 1e6
    return LoadResult(
        target=target,
        path=url.rsplit("/", 1)[1],
        connections=connections,
        seconds=round(secs, 2),
        requests=data["requests"],
        rps=data["requests"] / secs,
        non2xx=data["non2xx"],
        socket_errors=data["socket_errors"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        records_per_request=per_request,
    )


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
    """1,000 distinct single-record bodies (one per line) and one 1,000-record batch body."""
    from data_contracts.schemas import validate_frame
    from data_contracts.spec import default_spec
    from data_contracts.synthetic import GeneratorConfig, generate
    from flows.packaging.smoke import request_records

    spec = default_spec()
    frame = validate_frame(generate(GeneratorConfig(rows=3000, seed=99)), spec).valid
    records = request_records(frame.head(DISTINCT_RECORDS), spec)
    single = work / "single.jsonl"
    single.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    batch = work / "batch.jsonl"
    batch.write_text(json.dumps({"records": records[:BATCH_RECORDS]}) + "\n")
    return single, batch


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "BENTOML_"))}
    env.update(BENTOML_DO_NOT_TRACK="true", NO_PROXY="127.0.0.1,localhost")
    return env


def bench_baseline(
    report: Report, name: str, model_dir: Path, threshold: float, args, single: Path, work: Path
) -> None:
    port = free_port()
    env = base_env() | {"BASELINE_MODEL_DIR": str(model_dir), "BASELINE_THRESHOLD": str(threshold)}
    cmd = [str(VENV_BIN / "uvicorn"), "benchmarks.serve.baseline_app:app", "--workers", "1"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    if "no-access-log" in name:
        cmd.append("--no-access-log")
    log = work / f"{name}.log"
    proc = start(cmd, env, log)
    try:
        report.ready_s[name] = wait_ready(f"http://127.0.0.1:{port}/health", proc, log)
        run_wrk(f"http://127.0.0.1:{port}/predict", single, 8, 2, name)  # warm-up
        for c in args.connections:
            report.loads.append(
                run_wrk(f"http://127.0.0.1:{port}/predict", single, c, args.duration, name)
            )
        report.rss_mb[name] = tree_rss_mb(proc.pid)["total"]
    finally:
        stop(proc)


def bench_bento(
    report: Report, bentoml_home: Path, tag: str, args, single: Path, batch: Path, work: Path
) -> None:
    port = free_port()
    env = base_env() | {
        "BENTOML_HOME": str(bentoml_home),
        "FRAUD_MODEL_TAG": tag,
        "FRAUD_HOME": str(work / "home"),
    }
    cmd = [str(VENV_BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = work / "bento.log"
    proc = start(cmd, env, log)
    try:
        report.ready_s["bento"] = wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
        run_wrk(f"http://127.0.0.1:{port}/predict", single, 8, 2, "bento")  # warm-up
        for c in args.connections:
            report.loads.append(
                run_wrk(f"http://127.0.0.1:{port}/predict", single, c, args.duration, "bento")
            )
        rss = tree_rss_mb(proc.pid)
        for c in (1, 2):
            report.loads.append(
                run_wrk(
                    f"http://127.0.0.1:{port}/predict_batch",
                    batch,
                    c,
                    max(5, args.duration // 2),
                    "bento",
                    per_request=BATCH_RECORDS,
                )
            )
        after = tree_rss_mb(proc.pid)
        report.rss_mb["bento"] = rss.get("worker", 0.0)
        report.rss_mb["bento (after batches)"] = after.get("worker", 0.0)
        report.rss_mb["bento (whole process tree)"] = after["total"]
        if args.profile:
            report.profile = profile_bento(proc.pid, port, single, work)
    finally:
        stop(proc)


def profile_bento(pid: int, port: int, single: Path, work: Path) -> dict[str, Any]:
    """Sample the worker with py-spy under c=8 load; the share of samples per layer."""
    import psutil

    spy = shutil.which("py-spy")
    if spy is None:
        return {"skipped": "py-spy not on PATH"}
    worker = next(
        p.pid
        for p in psutil.Process(pid).children(recursive=True)
        if "worker" in " ".join(p.cmdline())
    )
    raw = work / "profile.txt"
    load = subprocess.Popen(  # nosec B603 B607 # fixed wrk argv, wrk from PATH
        [
            "wrk",
            "-t1",
            "-c8",
            "-d14s",
            "-s",
            str(single.with_suffix(".lua")),
            f"http://127.0.0.1:{port}/predict",
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(2)
    subprocess.run(  # nosec B603 # py-spy found by shutil.which, fixed argv
        [
            spy,
            "record",
            "-p",
            str(worker),
            "-d",
            "10",
            "-r",
            "500",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--nonblocking",
        ],
        capture_output=True,
        check=False,
    )
    load.wait()
    return summarize_profile(raw)


LAYERS = {
    "onnxruntime (model)": ("Session.run", "onnxruntime_inference_collection"),
    "request validation (pydantic-core)": ("model_validate_json",),
    "our endpoint (encode, respond, log, metrics)": ("http_app.py",),
    "BentoML metrics middleware": ("instruments.py",),
    "OpenTelemetry middleware (URL exclusion check)": ("opentelemetry",),
    "BentoML timeout/context middleware": ("traffic.py", "_bentoml_impl/server/app.py"),
    "Starlette routing/middleware": ("starlette/",),
    "uvicorn HTTP protocol (parse, socket writes)": ("httptools_impl.py", "uvicorn/"),
    "event loop idle/other": ("Runner.run",),
}


def summarize_profile(raw: Path) -> dict[str, Any]:
    """Self time attributed to the innermost frame that belongs to a known layer."""
    if not raw.is_file():
        return {"skipped": "py-spy produced no profile (ptrace not permitted?)"}
    totals: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        layer = "other"
        for frame in reversed(frames):
            hit = next((k for k, keys in LAYERS.items() if any(x in frame for x in keys)), None)
            if hit:
                layer = hit
                break
        totals[layer] = totals.get(layer, 0) + n
    return {k: round(v / total, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def print_report(report: Report) -> dict[str, Any]:
    print(f"\nmachine: {report.machine}")
    print(
        f"{'target':<26}{'path':<15}{'conn':>5}{'req/s':>10}{'rec/s':>11}{'p50':>8}{'p99':>8}"
        f"{'max':>8}{'non2xx':>8}{'sockerr':>8}"
    )
    for r in report.loads:
        print(
            f"{r.target:<26}{r.path:<15}{r.connections:>5}{r.rps:>10.0f}{r.records_per_s:>11.0f}"
            f"{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{r.max_ms:>8.1f}{r.non2xx:>8}{r.socket_errors:>8}"
        )
    summary: dict[str, Any] = {}
    bento = {r.connections: r for r in report.loads if r.target == "bento" and r.path == "predict"}
    for c, b in bento.items():
        for name, key in ((ARTICLE, "article"), (STRICT, "no_access_log")):
            base = next((r for r in report.loads if r.target == name and r.connections == c), None)
            if base is not None:
                summary[f"ratio_c{c}_vs_{key}"] = round(b.rps / base.rps, 2)
        summary[f"non2xx_c{c}"] = b.non2xx + b.socket_errors
    if 8 in bento:
        summary["p99_c8_ms"] = round(bento[8].p99_ms, 2)
    batches = [r for r in report.loads if r.path == "predict_batch"]
    if batches:
        summary["batch_records_per_s"] = round(max(r.records_per_s for r in batches))
    summary["rss_mb"] = {k: round(v, 1) for k, v in report.rss_mb.items()}
    summary["ready_s"] = {k: round(v, 2) for k, v in report.ready_s.items()}
    checks = {
        "throughput >= 1.5x the article's baseline (c=8, c=64)": all(
            summary.get(f"ratio_c{c}_vs_article", 0) >= 1.5 for c in bento
        ),
        "throughput >= 1.5x the baseline without access log (c=8, c=64)": all(
            summary.get(f"ratio_c{c}_vs_no_access_log", 0) >= 1.5 for c in bento
        ),
        "zero non-2xx (c=8, c=64)": all(summary.get(f"non2xx_c{c}", 1) == 0 for c in bento),
        "p99 at c=8 <= 25 ms": summary.get("p99_c8_ms", 1e9) <= 25,
        "batch >= 100,000 records/s": summary.get("batch_records_per_s", 0) >= 100_000,
        "serving RSS <= 350 MB": report.rss_mb.get("bento (after batches)", 1e9) <= 350,
    }
    print("\nsummary:", json.dumps(summary, indent=2))
    for name, ok in checks.items():
        print(f"  [{'PASS' if ok else 'MISS'}] {name}")
    if report.profile:
        print("\nprofile of the bento worker under c=8 (share of samples by layer):")
        for k, v in report.profile.items():
            print(f"  {v:>7}  {k}")
    return {"summary": summary, "checks": checks}


def main() -> int:
    parser = argparse.ArgumentParser(description="bento vs FastAPI baseline serving benchmark")
    parser.add_argument("--duration", type=int, default=20, help="seconds per load run")
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--model-tag", help="use this model from $FRAUD_HOME/bentoml instead")
    parser.add_argument("--profile", action="store_true", help="py-spy profile of the bento")
    parser.add_argument("--out", type=Path, default=ROOT / ".fraud" / "bench" / "serve.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"work dir (server logs; removed after a successful run): {work}")
    bentoml_home, tag, threshold = prepare_model(work, args.model_tag)
    name, _, version = tag.partition(":")
    model_dir = bentoml_home / "models" / name / version
    single, batch = write_bodies(work)
    report = Report(
        machine={
            "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
            "model": tag,
            "python": sys.version.split()[0],
        }
    )
    for baseline in (ARTICLE, STRICT):
        bench_baseline(report, baseline, model_dir, threshold, args, single, work)
    bench_bento(report, bentoml_home, tag, args, single, batch, work)
    report.machine["loadavg_after"] = os.getloadavg()
    result = print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                **result,
                "loads": [asdict(r) for r in report.loads],
                "machine": report.machine,
                "profile": report.profile,
            },
            indent=2,
        )
    )
    print(f"\nwritten: {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
