"""Hostile-load benchmark: the reproductions of issue 14 against one bento worker.

    uv run python -m benchmarks.serve.hostile [--seconds 60] [--settle 60] [--skip-repro]

Steps: train a model on generated data and import it into a temporary BentoML store (or use
``--model-tag`` from ``$FRAUD_HOME/bentoml``); ``bentoml serve`` it on a free 127.0.0.1 port
(one worker, inference log on, as in production). Then:

1. **Reproductions**, one at a time, each timed while ``/readyz`` is polled every 50 ms: key
   floods (150 and 600 records of 1,000 unknown keys), 10,000 empty records, deep JSON (body,
   field, batch record), 500 random 404 paths and one 60 KB path (``/metrics`` size and scrape
   time before and after), a 10 MB category in a batch, a 60 KB category on ``/predict``, a 100
   MB header, and eight connections holding unfinished 30 MB headers. Prints status, seconds,
   answer size, slowest ``/readyz`` meanwhile and the worker's RSS after each.
2. **Mix** for ``--seconds``: one closed-loop client scoring valid records on ``/predict``
   (keep-alive), ``/readyz`` polled every 100 ms (a new connection each time, like a probe), and
   one client cycling through the reproductions (smaller header attacks) and random paths.
   Prints normal-request p50/p99, ``/readyz`` p99 and max, the worker's RSS when idle, at its
   peak, at the end of the mix and ``--settle`` seconds later, ``/metrics`` size before and
   after, and the 5xx count (target 0).

Targets (issue 14): no 5xx; any one request <= about 1 s and its answer <= about 1 MB; worker RSS
back within 20% of idle ``--settle`` seconds after the burst; ``/metrics`` not growing with the
paths clients send. Absolute figures depend on the machine; the server logs to a file and is
stopped by PID. Run it from another checkout (``git worktree``) to measure older code.

The HTTP exchanges and probes are in :mod:`benchmarks.serve.probes`, the model, the bodies and
the server's process in :mod:`benchmarks.serve.harness`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from benchmarks.serve.probes import (
    HOST,
    ReadyzProbe,
    Reply,
    held_headers,
    metrics_size,
    random_path,
    raw_header_attack,
    request,
)
from flows.core.http import free_port
from tests.support.hostile import (
    deep_array,
    deep_field_record,
    deep_record_batch,
    empty_records_at_cap,
    empty_records_batch,
    key_flood_batch,
    nested_lists_in_a_field,
)

RSS_SETTLE_TARGET = 0.20
ANSWER_TARGET_BYTES = 1_000_000
REQUEST_TARGET_S = 1.0


def cases(record: dict[str, Any], header_mb: int) -> list[tuple[str, Callable[[int], Reply]]]:
    """The body and header reproductions as (name, call(port))."""
    long_cat_batch = json.dumps(
        {"records": [record, {**record, "merchant_category": "m" * 10_000_000}]}
    ).encode()
    long_cat_one = json.dumps({**record, "merchant_category": "m" * 60_000}).encode()
    bodies = {
        "key flood: 150 records x 1,000 keys": ("/predict_batch", key_flood_batch(150)),
        "key flood: 600 records x 1,000 keys": ("/predict_batch", key_flood_batch(600)),
        "10,000 empty records": ("/predict_batch", empty_records_batch(10_000)),
        "empty records filling the 16 MiB cap": ("/predict_batch", empty_records_at_cap()),
        "lists filling a field to the cap": ("/predict_batch", nested_lists_in_a_field(record)),
        "deep body [x1000 on /predict": ("/predict", deep_array(1000)),
        "deep field (5,000) on /predict": ("/predict", deep_field_record(record, "amount", 5000)),
        "deep batch record (5,000)": ("/predict_batch", deep_record_batch(record, 5000)),
        "10 MB category in a batch": ("/predict_batch", long_cat_batch),
        "60 KB category on /predict": ("/predict", long_cat_one),
    }
    out: list[tuple[str, Callable[[int], Reply]]] = []
    for name, (path, body) in bodies.items():
        out.append((name, lambda port, p=path, b=body: request(port, "POST", p, b)))
    out.append(
        (f"{header_mb} MB header value", lambda port: raw_header_attack(port, header_mb << 20))
    )
    return out


@dataclass
class Mix:
    """What the mix phase measured."""

    normal: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    hostile_statuses: dict[int, int] = field(default_factory=dict)
    hostile_requests: int = 0


def run_repro(port: int, pid: int, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each reproduction once, with /readyz polled meanwhile."""
    rows: list[dict[str, Any]] = []
    probe = ReadyzProbe(port, 0.05)
    probe.start()
    try:
        for name, run in [*cases(record, 100)]:
            probe.take()
            r = run(port)
            time.sleep(0.1)
            ready = probe.take()
            rows.append(
                {
                    "case": name,
                    "status": r.status,
                    "seconds": round(r.seconds, 3),
                    "answer_bytes": r.size,
                    "readyz_max_ms": round(max(ready, default=0) * 1000, 1),
                    "rss_worker_mb": round(tree_rss_mb(pid).get("worker", 0.0), 1),
                    "note": r.note,
                }
            )
            print(f"  {rows[-1]}", flush=True)
        # metrics inflation: 500 random 404 paths, then one 60 KB path
        rng = random.Random(14)
        size0, scrape0 = metrics_size(port)
        t0 = time.perf_counter()
        paths = [request(port, "GET", random_path(rng)).status for _ in range(500)]
        secs = time.perf_counter() - t0
        size1, scrape1 = metrics_size(port)
        long_path = request(port, "GET", "/" + "p" * 60_000)
        size2, scrape2 = metrics_size(port)
        rows.append(
            {
                "case": "500 random 404 paths, then one 60 KB path",
                "status": sorted(set(paths)),
                "seconds": round(secs, 3),
                "long_path_status": long_path.status,
                "metrics_bytes": [size0, size1, size2],
                "metrics_scrape_ms": [round(s * 1000, 1) for s in (scrape0, scrape1, scrape2)],
                "readyz_max_ms": round(max(probe.take(), default=0) * 1000, 1),
            }
        )
        print(f"  {rows[-1]}", flush=True)
        held = held_headers(port, 8, 30 << 20, pid)
        rows.append(
            {
                "case": "8 connections holding unfinished 30 MB headers",
                "seconds": round(held.seconds, 3),
                "note": held.note,
                "readyz_max_ms": round(max(probe.take(), default=0) * 1000, 1),
            }
        )
        print(f"  {rows[-1]}", flush=True)
    finally:
        probe.stop()
    return rows


def run_mix(port: int, record_bodies: list[bytes], record: dict[str, Any], seconds: int) -> Mix:
    """Normal scoring, /readyz probes and the hostile cycle at once for ``seconds``."""
    mix = Mix()
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def count(table: dict[int, int], status: int) -> None:
        with lock:
            table[status] = table.get(status, 0) + 1

    def normal() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        i = 0
        while time.monotonic() < stop_at:
            body = record_bodies[i % len(record_bodies)]
            i += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            mix.normal.append(time.perf_counter() - t0)
            count(mix.statuses, status)
        conn.close()

    def hostile() -> None:
        rng = random.Random(7)
        todo = cases(record, 16)
        i = 0
        while time.monotonic() < stop_at:
            _, run = todo[i % len(todo)]
            i += 1
            r = run(port)
            count(mix.hostile_statuses, r.status)
            mix.hostile_requests += 1
            for _ in range(50):
                count(mix.hostile_statuses, request(port, "GET", random_path(rng)).status)
                mix.hostile_requests += 1
            time.sleep(0.2)

    threads = [threading.Thread(target=normal), threading.Thread(target=hostile)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return mix


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description="hostile-load benchmark of the bento")
    parser.add_argument("--seconds", type=int, default=60, help="length of the mix (60)")
    parser.add_argument("--settle", type=int, default=60, help="idle seconds after it (60)")
    parser.add_argument("--skip-repro", action="store_true", help="only the mix")
    parser.add_argument("--model-tag", help="use this model from $FRAUD_HOME/bentoml instead")
    parser.add_argument("--out", type=Path, default=ROOT / ".fraud" / "bench" / "hostile.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    print(f"work dir (server log; removed after a run that meets its targets): {work}")
    bentoml_home, tag, _ = prepare_model(work, args.model_tag)
    single, _ = write_bodies(work)
    record_bodies = [ln.encode() for ln in single.read_text().splitlines()]
    record = json.loads(record_bodies[0])
    port = free_port()
    proc, log = start_bento(bentoml_home, tag, work, port)
    result: dict[str, Any] = {"model": tag, "cpus": os.cpu_count(), "code": str(ROOT)}
    try:
        result["ready_s"] = round(wait_ready(f"http://{HOST}:{port}/readyz", proc, log), 2)
        for body in record_bodies[:200]:  # warm-up
            request(port, "POST", "/predict", body)
        time.sleep(2)
        result["rss_idle_mb"] = round(tree_rss_mb(proc.pid).get("worker", 0.0), 1)
        print(f"idle worker RSS {result['rss_idle_mb']} MB", flush=True)
        if not args.skip_repro:
            print("reproductions:")
            result["repro"] = run_repro(port, proc.pid, record)
        result["metrics_bytes_before"] = metrics_size(port)[0]
        print(f"mix for {args.seconds} s ...", flush=True)
        sampler = RssSampler(proc.pid, 0.5)
        sampler.start()
        probe = ReadyzProbe(port, 0.1)
        probe.start()
        mix = run_mix(port, record_bodies, record, args.seconds)
        probe.stop()
        samples = sampler.stop()
        result["rss_end_of_mix_mb"] = round(tree_rss_mb(proc.pid).get("worker", 0.0), 1)
        result["metrics_bytes_after"] = metrics_size(port)[0]
        time.sleep(args.settle)
        result["rss_settled_mb"] = round(tree_rss_mb(proc.pid).get("worker", 0.0), 1)
        result["rss_peak_mb"] = round(max((mb for _, mb in samples), default=0.0), 1)
        result["normal_requests"] = len(mix.normal)
        result["normal_p50_ms"] = round(percentile(mix.normal, 0.50) * 1000, 2)
        result["normal_p99_ms"] = round(percentile(mix.normal, 0.99) * 1000, 2)
        result["normal_max_ms"] = round(max(mix.normal, default=0) * 1000, 1)
        result["normal_statuses"] = mix.statuses
        result["readyz_probes"] = len(probe.latencies)
        result["readyz_p99_ms"] = round(percentile(probe.latencies, 0.99) * 1000, 2)
        result["readyz_max_ms"] = round(max(probe.latencies, default=0) * 1000, 1)
        result["readyz_failures"] = probe.failures
        result["hostile_requests"] = mix.hostile_requests
        result["hostile_statuses"] = mix.hostile_statuses
        result["alive"] = proc.poll() is None
    finally:
        stop(proc)
    result["server_error_lines"] = error_lines(log)
    statuses = {**mix.statuses}
    for k, v in mix.hostile_statuses.items():
        statuses[k] = statuses.get(k, 0) + v
    result["count_5xx"] = sum(v for k, v in statuses.items() if k >= 500)
    checks = print_result(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result, "checks": checks}, indent=2, default=str))
    print(f"\nwritten: {args.out}")
    if all(checks.values()):
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_result(r: dict[str, Any]) -> dict[str, bool]:
    """Print the summary and the target verdicts."""
    print(f"\ncode {r['code']}, model {r['model']} on {r['cpus']} CPUs")
    print(
        f"normal /predict under the mix: {r['normal_requests']:,} requests, "
        f"p50 {r['normal_p50_ms']} ms, p99 {r['normal_p99_ms']} ms, max {r['normal_max_ms']} ms, "
        f"statuses {r['normal_statuses']}"
    )
    print(
        f"/readyz: {r['readyz_probes']} probes, p99 {r['readyz_p99_ms']} ms, "
        f"max {r['readyz_max_ms']} ms, {r['readyz_failures']} not 200"
    )
    print(f"hostile requests: {r['hostile_requests']:,}, statuses {r['hostile_statuses']}")
    print(
        f"worker RSS: idle {r['rss_idle_mb']} MB, peak {r['rss_peak_mb']} MB, end of mix "
        f"{r['rss_end_of_mix_mb']} MB, settled {r['rss_settled_mb']} MB"
    )
    print(f"/metrics: {r['metrics_bytes_before']:,} B before, {r['metrics_bytes_after']:,} B after")
    print(f"5xx: {r['count_5xx']}; server error lines: {len(r['server_error_lines'])}")
    for line in r["server_error_lines"][:5]:
        print("   ", line)
    repro = [c for c in r.get("repro", []) if "answer_bytes" in c]
    checks = {
        "zero 5xx": r["count_5xx"] == 0,
        f"RSS settled within {RSS_SETTLE_TARGET:.0%} of idle": r["rss_settled_mb"]
        <= r["rss_idle_mb"] * (1 + RSS_SETTLE_TARGET),
        "/metrics did not grow by more than 10%": r["metrics_bytes_after"]
        <= r["metrics_bytes_before"] * 1.1,
        f"every reproduction answered within {REQUEST_TARGET_S} s": all(
            c["seconds"] <= REQUEST_TARGET_S for c in repro
        ),
        f"every answer <= {ANSWER_TARGET_BYTES:,} B": all(
            c["answer_bytes"] <= ANSWER_TARGET_BYTES for c in repro
        ),
        "server alive": r["alive"],
    }
    for name, ok in checks.items():
        print(f"  [{'PASS' if ok else 'MISS'}] {name}")
    return checks


if __name__ == "__main__":
    raise SystemExit(main())
