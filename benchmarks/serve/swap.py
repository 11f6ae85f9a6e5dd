"""Hot-swap benchmark: a checkout ``bentoml serve`` under wrk while the champion pointer moves.

    uv run python -m benchmarks.serve.swap [--seconds 12] [--connections 8] [--swaps 2]

In a temporary store, two small models (v1, v2) are trained and imported; ``bentoml serve`` from
the checkout starts on v1 and follows the champion pointer (``FRAUD_FOLLOW_INTERVAL_S``, default
2 s). wrk drives ``POST /predict`` for ``--seconds`` with no move (steady), then for the same time
while the pointer is rewritten (v1 -> v2, then v2 -> v1 for the second swap) ``--lead`` seconds
after wrk starts. Printed per run: requests, req/s, non-2xx, socket errors, p50/p99, the swap
latency (pointer written -> ``GET /model`` reports the new version), and per second the answers
by version; then the throughput of each swap window as a ratio of the steady run in the same
session. Targets: 0 non-2xx and 0 socket errors, every answer from the new version once it
answers, swap latency within the follow interval plus the load and verification of the model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.serve.harness import write_bodies
from benchmarks.serve.rollout import run_wrk
from data_contracts.artifacts import write_champion_pointer
from data_contracts.spec import default_spec
from tests.support.serving import call, running_bento, serve_env, train_tiny_model


def watch_swap(base: str, pointer_written: threading.Event, want: str, out: dict) -> None:
    """After the pointer is written, poll ``/model`` until it reports ``want``; record when."""
    pointer_written.wait()
    started = out["written_at"]
    deadline = started + 120
    while time.monotonic() < deadline:
        status, card = call(f"{base}/model")
        if status == 200 and str(card.get("version")) == want:
            out["latency_s"] = time.monotonic() - started
            return
        time.sleep(0.02)


def swap_run(
    base: str, single: Path, bentoml_home: Path, tag: str, want: str, args: argparse.Namespace
) -> dict[str, Any]:
    """wrk for ``args.seconds`` with the pointer moved to ``tag`` after ``args.lead`` seconds."""
    written = threading.Event()
    swap: dict[str, Any] = {}

    def move() -> None:
        time.sleep(args.lead)
        swap["written_at"] = time.monotonic()
        write_champion_pointer(bentoml_home, tag)
        written.set()

    mover = threading.Thread(target=move)
    watcher = threading.Thread(target=watch_swap, args=(base, written, want, swap))
    mover.start()
    watcher.start()
    result = run_wrk(f"{base}/predict", single, args.connections, args.seconds)
    mover.join()
    watcher.join()
    result["swap_latency_s"] = swap.get("latency_s")
    return result


def show(label: str, r: dict[str, Any]) -> None:
    latency = r.get("swap_latency_s")
    swap = (
        ""
        if latency is None and "swap_latency_s" not in r
        else (f", swap latency {latency:.2f} s" if latency is not None else ", NO SWAP")
    )
    print(
        f"{label}: {r['requests']:,} requests, {r['rps']:,.0f} req/s, non-2xx {r['non2xx']}, "
        f"socket errors {r['socket_errors']}, p50 {r['p50_us'] / 1000:.1f} ms, "
        f"p99 {r['p99_us'] / 1000:.1f} ms, max {r['max_us'] / 1000:.1f} ms{swap}"
    )
    print("   answers per second by version: " + "; ".join(
        f"{sec}s " + " ".join(f"v{v}={n}" for v, n in sorted(by.items()))
        for sec, by in r["per_second"].items()
    ))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve.swap")
    parser.add_argument("--seconds", type=int, default=12, help="length of each wrk run")
    parser.add_argument("--lead", type=float, default=3.0, help="seconds before the move")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--interval", type=float, default=2.0, help="FRAUD_FOLLOW_INTERVAL_S")
    args = parser.parse_args(argv)
    spec = default_spec()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home, bentoml_home = work / "home", work / "home" / "bentoml"
        print("training and importing v1 and v2 ...", flush=True)
        v1 = train_tiny_model(spec, bentoml_home, version=1)
        v2 = train_tiny_model(spec, bentoml_home, version=2, rows=3000)
        write_champion_pointer(bentoml_home, v1.tag)
        single, _ = write_bodies(work)
        env = serve_env(
            home,
            bentoml_home,
            FRAUD_FOLLOW_INTERVAL_S=str(args.interval),
            FRAUD_INFERENCE_LOG="off",
        )
        with running_bento(env, work / "serve.log") as server:
            base = server.base
            run_wrk(f"{base}/predict", single, args.connections, 3)  # warm-up
            steady = run_wrk(f"{base}/predict", single, args.connections, args.seconds)
            show(f"steady (c={args.connections}, {args.seconds} s, v1)", steady)
            forward = swap_run(base, single, bentoml_home, v2.tag, "2", args)
            show(f"swap v1 -> v2 at {args.lead:g} s", forward)
            back = swap_run(base, single, bentoml_home, v1.tag, "1", args)
            show(f"swap v2 -> v1 at {args.lead:g} s", back)
            status, card = call(f"{base}/model")
            swaps = card["follow"]["swaps"] if status == 200 else "?"
    print(f"\nswaps counted by the server: {swaps}")
    failures = sum(r["non2xx"] + r["socket_errors"] for r in (forward, back))
    for name, r in (("v1 -> v2", forward), ("v2 -> v1", back)):
        print(f"{name}: {r['rps'] / steady['rps']:.2f}x the steady req/s in the swap window")
    print(f"failed requests across both swaps: {failures}")
    ok = failures == 0 and forward["swap_latency_s"] is not None and back["swap_latency_s"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    raise SystemExit(main())
