"""Soak benchmark: the bento under sustained single-row load at its measured capacity.

    uv run python -m benchmarks.serve.soak [--seconds 60] [--connections 8]

Steps: train a model on generated data and import it into a temporary BentoML store (or use
``--model-tag`` from ``$FRAUD_HOME/bentoml``); ``bentoml serve`` it on a free 127.0.0.1 port
(one worker, inference log on, as in production); warm it up; measure the single-row capacity
with wrk (``--probe`` seconds, closed loop at ``--connections``); then drive ``POST /predict``
for ``--seconds`` at that capacity (the same closed loop: every connection sends its next
request as soon as the last one is answered) while the serving worker's RSS is sampled.
Prints non-2xx and socket errors, RSS at the start and end of the soak and its growth, p50/p99
latency, the achieved rate against the capacity, and the server log's error lines; writes
JSON to ``--out``. The server logs to a file and is stopped by PID.

Targets: zero non-2xx, RSS growth <= 10% over the soak. Absolute figures depend on the machine
and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.serve.harness import (
    ROOT,
    RssSampler,
    error_lines,
    prepare_model,
    start_bento,
    stop,
    tree_rss_mb,
    wait_ready,
    write_bodies,
)
from benchmarks.serve.wrk import LoadResult, run_wrk, wrk_missing
from flows.core.http import free_port

RSS_GROWTH_TARGET = 0.10


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Serve, probe the capacity, soak, and return the figures."""
    bentoml_home, tag, _ = prepare_model(work, args.model_tag)
    single, _ = write_bodies(work)
    port = free_port()
    url = f"http://127.0.0.1:{port}/predict"
    proc, log = start_bento(bentoml_home, tag, work, port)
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
        run_wrk(url, single, args.connections, 3, "warm-up")
        probe = run_wrk(url, single, args.connections, args.probe, "capacity")
        print(f"capacity: {probe.rps:,.0f} req/s at c={args.connections} (p99 {probe.p99_ms} ms)")
        rss_start = tree_rss_mb(proc.pid)
        sampler = RssSampler(proc.pid, 5.0)
        sampler.start()
        try:
            load: LoadResult = run_wrk(url, single, args.connections, args.seconds, "soak")
        finally:
            samples = sampler.stop()
        rss_end = tree_rss_mb(proc.pid)
        alive = proc.poll() is None
    finally:
        stop(proc)
    worker_start, worker_end = rss_start.get("worker", 0.0), rss_end.get("worker", 0.0)
    growth = (worker_end - worker_start) / worker_start if worker_start else float("nan")
    return {
        "model": tag,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "ready_s": round(ready_s, 2),
        "capacity_rps": round(probe.rps),
        "soak_seconds": load.seconds,
        "soak_connections": args.connections,
        "soak_requests": load.requests,
        "soak_rps": round(load.rps),
        "soak_rate_vs_capacity": round(load.rps / probe.rps, 3),
        "non2xx": load.non2xx,
        "socket_errors": load.socket_errors,
        "p50_ms": load.p50_ms,
        "p90_ms": load.p90_ms,
        "p99_ms": load.p99_ms,
        "max_ms": load.max_ms,
        "rss_worker_start_mb": round(worker_start, 1),
        "rss_worker_end_mb": round(worker_end, 1),
        "rss_growth": round(growth, 4),
        "rss_tree_start_mb": round(rss_start.get("total", 0.0), 1),
        "rss_tree_end_mb": round(rss_end.get("total", 0.0), 1),
        "rss_samples_mb": [(t, round(v, 1)) for t, v in samples],
        "server_alive_after_soak": alive,
        "server_error_lines": error_lines(log),
    }


def print_result(r: dict[str, Any]) -> dict[str, bool]:
    """Print the figures and the targets; return the target verdicts."""
    print(f"\nmodel {r['model']} on {r['cpus']} CPUs, load average {r['loadavg']}")
    print(f"ready after {r['ready_s']} s; capacity {r['capacity_rps']:,} req/s")
    print(
        f"soak: {r['soak_requests']:,} requests in {r['soak_seconds']} s at "
        f"c={r['soak_connections']}: {r['soak_rps']:,} req/s "
        f"({r['soak_rate_vs_capacity']:.0%} of capacity)"
    )
    errors = r["non2xx"] + r["socket_errors"]
    print(
        f"non-2xx: {'zero' if errors == 0 else 'NONZERO'} "
        f"({r['non2xx']} non-2xx, {r['socket_errors']} socket errors)"
    )
    print(f"latency: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms")
    print(
        f"worker RSS: {r['rss_worker_start_mb']} MB at the start, {r['rss_worker_end_mb']} MB at "
        f"the end ({r['rss_growth']:+.1%}); whole tree {r['rss_tree_start_mb']} -> "
        f"{r['rss_tree_end_mb']} MB"
    )
    print("RSS samples (s, MB):", r["rss_samples_mb"])
    print(f"server error lines: {len(r['server_error_lines'])}")
    for line in r["server_error_lines"][:5]:
        print("   ", line)
    checks = {
        "zero non-2xx and socket errors": errors == 0,
        f"worker RSS growth <= {RSS_GROWTH_TARGET:.0%}": r["rss_growth"] <= RSS_GROWTH_TARGET,
        "server alive, no error lines": r["server_alive_after_soak"]
        and not r["server_error_lines"],
    }
    for name, ok in checks.items():
        print(f"  [{'PASS' if ok else 'MISS'}] {name}")
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description="bento soak benchmark at measured capacity")
    parser.add_argument("--seconds", type=int, default=60, help="length of the soak (60)")
    parser.add_argument("--probe", type=int, default=10, help="capacity probe seconds (10)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--model-tag", help="use this model from $FRAUD_HOME/bentoml instead")
    parser.add_argument("--out", type=Path, default=ROOT / ".fraud" / "bench" / "soak.json")
    args = parser.parse_args()
    if wrk_missing():
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    print(f"work dir (server log; removed after a run that meets its targets): {work}")
    result = soak(args, work)
    checks = print_result(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result, "checks": checks}, indent=2))
    print(f"\nwritten: {args.out}")
    if all(checks.values()):
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
