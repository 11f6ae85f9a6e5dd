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

The bento, the baseline and their shared load driver are measured in one session, so their
ratio is taken on the same machine state. The load driver is :mod:`benchmarks.serve.wrk`, the
model, the bodies and the servers' processes are in :mod:`benchmarks.serve.harness`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess  # nosec B404 # argv lists only (wrk, py-spy), never a shell
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.serve.harness import (
    BATCH_RECORDS,
    ROOT,
    VENV_BIN,
    base_env,
    prepare_model,
    start,
    start_bento,
    stop,
    tree_rss_mb,
    wait_ready,
    write_bodies,
)
from benchmarks.serve.wrk import LoadResult, run_wrk, wrk_missing
from flows.core.http import free_port

# the baseline as the article runs it (uvicorn's default access log on) and a stricter variant
ARTICLE = "baseline (article)"
STRICT = "baseline (no-access-log)"


@dataclass
class Report:
    machine: dict[str, Any]
    loads: list[LoadResult] = field(default_factory=list)
    rss_mb: dict[str, float] = field(default_factory=dict)
    ready_s: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)


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
    proc, log = start_bento(bentoml_home, tag, work, port)
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
    "our endpoint (encode, respond, log, metrics)": ("http_app.py", "bento/asgi.py"),
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
    if wrk_missing():
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
