"""Serving benchmark: the bento against the FastAPI baseline, same model, same load, one run.

    uv run python -m benchmarks.serve.bench [--duration 20] [--rounds 1]

Steps: train a model on generated data (the flow's default classifier) and import it into a
temporary BentoML store (or use ``--model-tag`` from ``$FRAUD_HOME/bentoml``); start each server
on a free 127.0.0.1 port with one worker; drive ``POST /predict`` with wrk (one load thread, a
rotating set of 1,000 distinct transactions) at 1, 8 and 64 connections while one paced client
(:mod:`benchmarks.serve.latency`) measures what a single caller sees, second by second (the
bento is scraped at ``/metrics`` every second meanwhile); then, on the bento only: single-row
wrk at c=4 alone and while another client posts valid 10,000-record batches back to back;
``/predict_batch`` with 1,000-record bodies; RSS; and the inference log's rows counted against
the records the bento scored (its own counter, read before it stops). Servers log to files and
are stopped by PID. Prints a table and writes JSON to ``--out``.

Targets: p99 at c=8 <= 1.5x the baseline's, max <= 50 ms
at c=8; single-row throughput >= 2x the baseline at c=8 and c=64 with zero non-2xx; batch >=
100,000 records/s; single-row p99 while batches run <= 3x its p99 without them; inference-log
rows = records scored; serving RSS <= 350 MB. Absolute figures depend on the machine and on
what else runs on it: compare the ratios, and look at the load average printed with them.

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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.serve.harness import (
    BATCH_RECORDS,
    LARGE_BATCH_RECORDS,
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
from benchmarks.serve.latency import BatchSender, Probe, Scraper, stall_figures
from benchmarks.serve.report import ARTICLE, STRICT, Report, print_report
from benchmarks.serve.wrk import LoadResult, run_wrk, wrk_missing
from flows.core.http import free_port


def measured(
    port: int, single: Path, c: int, seconds: int, target: str, scrape: bool
) -> LoadResult:
    """wrk at ``c`` connections on ``/predict`` while one paced client probes (and, with
    ``scrape``, ``/metrics`` is read every second); the wrk result with the probe's figures."""
    probe = Probe(port, single.read_bytes().splitlines())
    scraper = Scraper(port) if scrape else None
    probe.start()
    if scraper is not None:
        scraper.start()
    try:
        result = run_wrk(f"http://127.0.0.1:{port}/predict", single, c, seconds, target)
    finally:
        probe.stop()
        if scraper is not None:
            scraper.stop()
    result.probe = asdict(stall_figures(probe.samples)) | {"scored": probe.scored}
    if scraper is not None and scraper.latencies:
        result.probe["metrics_scrape_max_ms"] = round(max(scraper.latencies) * 1000, 1)
    return result


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
            report.loads.append(measured(port, single, c, args.duration, name, scrape=False))
        report.rss_mb[name] = tree_rss_mb(proc.pid)["total"]
    finally:
        stop(proc)


def scored_by_server(port: int, settle_s: float = 30) -> int:
    """Records the bento scored, from its own ``fraud_predictions_total`` counter, once it
    stops moving (a request wrk gave up on at the end of a run may still be scored)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def read() -> int:
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("fraud_predictions_total{") and 'outcome="invalid"' not in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    deadline = time.monotonic() + settle_s
    last = read()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = read()
        if now == last:
            break
        last = now
    return last


def log_rows(folder: Path) -> int:
    """Rows in the inference log's finished files under ``folder``."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("date=*/*.parquet"))


def batches_beside(report: Report, port: int, single: Path, large: Path, seconds: int) -> None:
    """Single-row wrk at c=4 alone, then while a client posts valid 10,000-record batches."""
    alone = run_wrk(f"http://127.0.0.1:{port}/predict", single, 4, seconds, "bento")
    sender = BatchSender(port, large.read_bytes(), LARGE_BATCH_RECORDS)
    sender.start()
    try:
        time.sleep(1)  # the first batch is in flight
        busy = run_wrk(f"http://127.0.0.1:{port}/predict", single, 4, seconds, "bento")
    finally:
        sender.stop()
    batch_ms = sorted(x * 1000 for x in sender.latencies)
    report.beside_batches = {
        "alone": asdict(alone),
        "with_batches": asdict(busy),
        "batches": len(batch_ms),
        "batch_failures": sender.failures,
        "batch_p50_ms": round(batch_ms[len(batch_ms) // 2], 1) if batch_ms else None,
        "p99_ratio": round(busy.p99_ms / alone.p99_ms, 2) if alone.p99_ms else None,
    }
    report.client_scored += sender.scored
    report.client_scored += alone.requests - alone.non2xx + busy.requests - busy.non2xx


def bench_bento(
    report: Report, bentoml_home: Path, tag: str, args, single: Path, batch: Path, work: Path
) -> None:
    port = free_port()
    proc, log = start_bento(bentoml_home, tag, work, port)
    try:
        report.ready_s["bento"] = wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
        warm = run_wrk(f"http://127.0.0.1:{port}/predict", single, 8, 2, "bento")
        report.client_scored += warm.requests - warm.non2xx
        for c in args.connections:
            report.loads.append(measured(port, single, c, args.duration, "bento", scrape=True))
        rss = tree_rss_mb(proc.pid)
        batches_beside(report, port, single, work / "batch_large.json", args.duration)
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
        for r in report.loads:
            if r.target == "bento":
                report.client_scored += (r.requests - r.non2xx) * r.records_per_request
                report.client_scored += (r.probe or {}).get("scored", 0)
        report.log["scored (bento's counter)"] = scored_by_server(port)
    finally:
        stop(proc)  # flushes the inference log
    report.log["scored (client's count of 2xx)"] = report.client_scored
    report.log["written (rows in the log's files)"] = log_rows(work / "home" / "inference_log")


def beside_only(bentoml_home: Path, tag: str, args, single: Path, work: Path) -> int:
    """The stall figure alone, ``args.beside_only`` rounds on one bento: single-row p99 at c=4
    alone and beside back-to-back 10,000-record batches, with the load average of each round."""
    port = free_port()
    proc, log = start_bento(bentoml_home, tag, work, port)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
        run_wrk(f"http://127.0.0.1:{port}/predict", single, 8, 2, "bento")
        for i in range(args.beside_only):
            report = Report(machine={"loadavg_before": os.getloadavg()})
            batches_beside(report, port, single, work / "batch_large.json", args.duration)
            b = report.beside_batches
            alone, busy = b["alone"], b["with_batches"]
            print(
                f"round {i + 1}: load {os.getloadavg()[0]:.2f} (before "
                f"{report.machine['loadavg_before'][0]:.2f}); single-row c=4 p50/p99/max alone "
                f"{alone['p50_ms']:.2f}/{alone['p99_ms']:.2f}/{alone['max_ms']:.1f} ms, "
                f"beside batches {busy['p50_ms']:.2f}/{busy['p99_ms']:.2f}/{busy['max_ms']:.1f} "
                f"ms: p99 {b['p99_ratio']}x; {b['batches']} batches, p50 {b['batch_p50_ms']} ms, "
                f"{b['batch_failures']} failed",
                flush=True,
            )
    finally:
        stop(proc)
    shutil.rmtree(work, ignore_errors=True)
    return 0


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


def main() -> int:
    parser = argparse.ArgumentParser(description="bento vs FastAPI baseline serving benchmark")
    parser.add_argument("--duration", type=int, default=20, help="seconds per load run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--model-tag", help="use this model from $FRAUD_HOME/bentoml instead")
    parser.add_argument("--profile", action="store_true", help="py-spy profile of the bento")
    parser.add_argument("--out", type=Path, default=ROOT / ".fraud" / "bench" / "serve.json")
    parser.add_argument(
        "--beside-only",
        type=int,
        metavar="ROUNDS",
        help="only single-row p99 alone and beside 10,000-record batches, ROUNDS times",
    )
    args = parser.parse_args()
    if wrk_missing():
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"work dir (server logs; removed after a successful run): {work}")
    bentoml_home, tag, threshold = prepare_model(work, args.model_tag)
    name, _, version = tag.partition(":")
    model_dir = bentoml_home / "models" / name / version
    single, batch = write_bodies(work)
    if args.beside_only:
        return beside_only(bentoml_home, tag, args, single, work)
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
                "beside_batches": report.beside_batches,
                "inference_log": report.log,
            },
            indent=2,
        )
    )
    print(f"\nwritten: {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
