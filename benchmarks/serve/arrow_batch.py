"""Batch scoring with Arrow IPC stream bodies against the same batches as JSON, one run.

    uv run python -m benchmarks.serve.arrow_batch [--duration 15] [--model-tag TAG]

One bento worker (the model of ``make bench-serve``, trained on generated data, or
``--model-tag``); the same valid records sent to ``/predict_batch`` as JSON and as an Arrow IPC
stream. Printed: records/s with 1,000- and 10,000-record requests on one and two connections
(pre-built bodies posted back to back, so the client costs next to nothing), the answers of the
two formats compared, single-row ``/predict`` p50/p99/max (wrk, c=4) alone, beside JSON
10,000-record batches and beside Arrow ones, and the inference log's rows against the records
the bento scored. Figures depend on the machine: compare the ratios, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmarks.serve.bench import log_rows, scored_by_server
from benchmarks.serve.harness import prepare_model, start_bento, stop, wait_ready, write_bodies
from benchmarks.serve.latency import BatchSender
from benchmarks.serve.wrk import LoadResult, run_wrk, wrk_missing
from flows.core.http import free_port

ARROW = "application/vnd.apache.arrow.stream"
JSON = "application/json"


def arrow_body(records: list[dict[str, Any]]) -> bytes:
    """``records`` as an Arrow IPC stream, one column per field, as a client would send it."""
    table = pa.Table.from_pylist(records)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def throughput(port: int, body: bytes, records: int, kind: str, conns: int, secs: int) -> dict:
    """Records/s of ``conns`` clients posting ``body`` back to back for ``secs`` seconds."""
    senders = [BatchSender(port, body, records, kind) for _ in range(conns)]
    start = time.perf_counter()
    for s in senders:
        s.start()
    time.sleep(secs)
    for s in senders:
        s.stop()
    took = time.perf_counter() - start
    latencies = sorted(x for s in senders for x in s.latencies)
    return {
        "records_per_s": round(sum(s.scored for s in senders) / took),
        "requests": len(latencies),
        "failures": sum(s.failures for s in senders),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "scored": sum(s.scored for s in senders),
    }


def beside(port: int, single: Path, secs: int, body: bytes | None, kind: str) -> dict:
    """Single-row wrk at c=4, with ``body`` (a 10,000-record batch) posted meanwhile."""
    sender = BatchSender(port, body, 10_000, kind) if body else None
    if sender:
        sender.start()
        time.sleep(1)
    try:
        load: LoadResult = run_wrk(f"http://127.0.0.1:{port}/predict", single, 4, secs, "bento")
    finally:
        if sender:
            sender.stop()
    return {
        "p50_ms": round(load.p50_ms, 2),
        "p99_ms": round(load.p99_ms, 2),
        "max_ms": round(load.max_ms, 1),
        "rps": round(load.rps),
        "non2xx": load.non2xx,
        "batches": len(sender.latencies) if sender else 0,
        "scored": load.requests - load.non2xx + (sender.scored if sender else 0),
    }


def same_answers(port: int, json_body: bytes, arrow: bytes) -> bool:
    """Whether both formats of one batch get the same predictions."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    out = []
    for body, kind in ((json_body, JSON), (arrow, ARROW)):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict_batch", body, {"Content-Type": kind}
        )
        with opener.open(request, timeout=60) as resp:
            out.append(json.loads(resp.read())["predictions"])
    return out[0] == out[1]


def main() -> int:
    parser = argparse.ArgumentParser(description="Arrow vs JSON batch bodies, one bento worker")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--model-tag", help="use this model from $FRAUD_HOME/bentoml instead")
    args = parser.parse_args()
    if wrk_missing():
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-arrow-"))
    print(f"work dir (server log; removed after a successful run): {work}")
    bentoml_home, tag, _ = prepare_model(work, args.model_tag)
    single, _ = write_bodies(work)
    records = json.loads((work / "batch_large.json").read_text())["records"]
    bodies = {
        (kind, n): (json.dumps({"records": records[:n]}).encode() if kind == JSON
                    else arrow_body(records[:n]))
        for kind in (JSON, ARROW) for n in (1000, 10_000)
    }  # fmt: skip
    for (kind, n), body in bodies.items():
        print(f"body {kind.split('/')[1]:<24} {n:>6,} records: {len(body):>10,} bytes")
    load_before = os.getloadavg()
    port = free_port()
    proc, log = start_bento(bentoml_home, tag, work, port)
    scored = 0
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
        same = same_answers(port, bodies[JSON, 1000], bodies[ARROW, 1000])
        scored += 2000
        print(f"Arrow and JSON answers of one 1,000-record batch equal: {same}")
        print("\nrecords/s (posted back to back)")
        rates: dict[tuple[str, int, int], dict] = {}
        for n in (1000, 10_000):
            for conns in (1, 2):
                for kind in (JSON, ARROW):
                    r = throughput(port, bodies[kind, n], n, kind, conns, args.duration)
                    rates[kind, n, conns] = r
                    scored += r["scored"]
                ratio = rates[ARROW, n, conns]["records_per_s"] / max(
                    1, rates[JSON, n, conns]["records_per_s"]
                )
                for kind in (JSON, ARROW):
                    r = rates[kind, n, conns]
                    print(f"  {n:>6,} records c={conns} {kind.split('/')[1]:<24} "
                          f"{r['records_per_s']:>9,} rec/s  request p50 {r['p50_ms']} ms  "
                          f"failures {r['failures']}")  # fmt: skip
                print(f"  {n:>6,} records c={conns} Arrow/JSON: {ratio:.2f}x")
        print("\nsingle-row /predict (wrk c=4): alone, beside 10,000-record batches")
        rows = {
            "alone": beside(port, single, args.duration, None, JSON),
            "beside JSON batches": beside(port, single, args.duration, bodies[JSON, 10_000], JSON),
            "beside Arrow batches": beside(
                port, single, args.duration, bodies[ARROW, 10_000], ARROW
            ),
        }
        for name, r in rows.items():
            scored += r["scored"]
            print(f"  {name:<21} p50 {r['p50_ms']:>6} ms  p99 {r['p99_ms']:>7} ms  "
                  f"max {r['max_ms']:>6} ms  {r['rps']:>6} req/s  non-2xx {r['non2xx']}  "
                  f"batches {r['batches']}")  # fmt: skip
        alone = rows["alone"]["p99_ms"] or 1
        for name in ("beside JSON batches", "beside Arrow batches"):
            print(f"  p99 {name} / alone: {rows[name]['p99_ms'] / alone:.1f}x")
        counted = scored_by_server(port)
    finally:
        stop(proc)  # flushes the inference log
    written = log_rows(work / "home" / "inference_log")
    print(f"\ninference log: {written:,} rows written; the bento counted {counted:,} scored;")
    print(f"the clients counted {scored:,} answered 2xx")
    print(f"load average before {load_before}, after {os.getloadavg()}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
