"""Rollout benchmark: the serving fleet under wrk while the champion moves, and HAProxy's cost.

    uv run python -m benchmarks.serve.rollout [--seconds 50] [--replicas 2] [--out FILE]

Steps: in a temporary home, the release flow (in process, image step on) releases v1 and v2
(both pass their gates; v2 is the champion), then the champion is moved back to v1 so that a
fleet of ``--replicas`` replicas starts on v1. For c=8 and c=64: wrk drives ``POST /predict``
through the balancer for ``--seconds`` with no move (steady), then again while the champion is
moved to v2 (the promotion) and again while it is moved back to v1 (the rollback), each move
``--lead`` seconds after wrk starts. Both moves are :func:`flows.promotion.rollback.rollback`,
i.e. :func:`flows.promotion.champion.move_champion` as a release uses it (a full release would
add minutes of training to the window). Printed per run: requests, req/s, non-2xx, socket
errors, p50/p99 over the window containing the swap, the time from the alias move to the last
old replica stopped, and the share of answers per version for each second of the window.

Then the balancer's overhead: a fleet of one replica, wrk at c=8 and c=64 on the replica's own
port and through HAProxy, same run. Targets: 0 non-2xx and 0 socket errors across the moves,
every answer from the new version at the end, alias move to last old replica stopped <= 30 s,
HAProxy costing <= 15% of req/s. Containers and HAProxy are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess  # nosec B404 # fixed wrk argv
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.serve.harness import write_bodies

WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
local i = 0
local headers = {["Content-Type"] = "application/json"}
counts = {}
init = function(args) t0 = os.time() end
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/predict", headers, bodies[i])
end
response = function(status, hdrs, body)
  local v = string.match(body, '"model_version"%%s*:%%s*"?(%%w+)') or ("http" .. status)
  local key = (os.time() - t0) .. ":" .. v
  counts[key] = (counts[key] or 0) + 1
end
done = function(summary, latency, requests)
  local e = summary.errors
  local merged = {}
  for _, t in ipairs(threads) do
    for k, n in pairs(t:get("counts")) do merged[k] = (merged[k] or 0) + n end
  end
  local parts = {}
  for k, n in pairs(merged) do parts[#parts + 1] = string.format('"%%s": %%d', k, n) end
  io.write(string.format(
    "WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"non2xx\\": %%d, " ..
    "\\"socket_errors\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d, \\"max_us\\": %%d, " ..
    "\\"counts\\": {%%s}}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(parts, ", ")))
end
"""


def run_wrk(url: str, bodies: Path, connections: int, seconds: int) -> dict[str, Any]:
    """One wrk run against ``url``; its figures and the per-second answers by version."""
    script = bodies.with_suffix(".rollout.lua")
    script.write_text(WRK_SCRIPT % {"bodies": bodies})
    out = subprocess.run(  # nosec B603 B607 # fixed wrk argv, wrk from PATH
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s",
         str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    data = json.loads(line[len("WRKJSON ") :])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    per_second: dict[int, dict[str, int]] = {}
    for key, n in data.pop("counts").items():
        sec, version = key.split(":", 1)
        per_second.setdefault(int(sec), {}).setdefault(version, 0)
        per_second[int(sec)][version] += n
    data["per_second"] = dict(sorted(per_second.items()))
    return data


def release_two_versions(home: Path) -> None:
    """v1 and v2 through the release flow with their images (v2 ends as the champion)."""
    from data_contracts.synthetic import GeneratorConfig, generate
    from flows.train_and_release import train_and_release
    from flows.training.gate import GatePolicy
    from flows.training.train import TrainParams

    data = home.parent / "transactions.parquet"
    generate(GeneratorConfig(rows=30_000, seed=11)).to_parquet(data, index=False)
    for max_iter in (60, 70):
        state = train_and_release(
            data_path=str(data), params=TrainParams(max_iter=max_iter), search="off",
            policy=GatePolicy(champion_tolerance=1.0), build_image=True, return_state=True,
        )  # fmt: skip
        if not state.is_completed():
            raise SystemExit(f"release failed: {state.message}")


def moved_during(
    settings: Any, url: str, bodies: Path, c: int, seconds: int, lead: float, version: str
) -> dict[str, Any]:
    """wrk for ``seconds``; ``lead`` seconds in, move the champion to ``version``."""
    from flows.promotion import rollback

    note: dict[str, Any] = {}

    def move() -> None:
        time.sleep(lead)
        started = time.monotonic()
        result = rollback.rollback(settings, "fraud-detector", version, "benchmark", "bench")
        note["move_s"] = time.monotonic() - started
        note["fleet"] = next(n for n in result.notes if n.startswith("fleet:"))

    mover = threading.Thread(target=move)
    mover.start()
    data = run_wrk(url, bodies, c, seconds)
    mover.join()
    found = re.search(r"([\d.]+) s after the alias move", note.get("fleet", ""))
    data["alias_move_to_last_old_stopped_s"] = float(found.group(1)) if found else None
    data.update(note)
    return data


def shares(per_second: dict[int, dict[str, int]]) -> str:
    """``sec: v1 x% v2 y%`` per second of the window."""
    rows = []
    for sec, counts in per_second.items():
        total = sum(counts.values())
        parts = " ".join(f"v{v} {100 * n / total:3.0f}%" for v, n in sorted(counts.items()))
        rows.append(f"      t={sec:>2}s  {parts}  ({total} answers)")
    return "\n".join(rows)


def line(name: str, d: dict[str, Any]) -> str:
    extra, stopped = "", d.get("alias_move_to_last_old_stopped_s")
    if stopped is not None:
        extra = f"  alias move -> last old replica stopped {stopped:.1f} s"
    return (
        f"  {name:<22} requests {d['requests']:>7}  {d['rps']:7.0f} req/s  non-2xx {d['non2xx']}"
        f"  socket errors {d['socket_errors']}  p50 {d['p50_us'] / 1000:6.1f} ms"
        f"  p99 {d['p99_us'] / 1000:6.1f} ms{extra}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=int, default=50,
        help="each wrk window with a move (s): long enough for the whole move (starting and "
        "verifying the new replicas took 22-27 s on a loaded 2-core machine)",
    )  # fmt: skip
    parser.add_argument("--lead", type=float, default=3.0, help="seconds before each move")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fraud-bench-rollout-"))
    home = work / "home"
    os.environ.update(
        FRAUD_HOME=str(home), FRAUD_IMAGE_PREFIX="fraud-bench-rollout-",
        BENTOML_DO_NOT_TRACK="true", PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )  # fmt: skip
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from prefect.testing.utilities import prefect_test_harness

    from flows.core.http import free_port
    from flows.core.settings import Settings
    from flows.packaging import container
    from flows.promotion import rollback
    from flows.serving import fleet

    report: dict[str, Any] = {"replicas": args.replicas, "runs": {}}
    single, _ = write_bodies(work)
    with prefect_test_harness(server_startup_timeout=60):  # the flow's and the lock's server
        print(f"[bench] releasing v1 and v2 with images in {home} ...", flush=True)
        t0 = time.perf_counter()
        release_two_versions(home)
        settings = Settings()
        print(f"[bench] released in {time.perf_counter() - t0:.0f} s", flush=True)
        rollback.rollback(settings, "fraud-detector", "1", "benchmark start", "bench")
        port = free_port()
        try:
            fleet.up(settings, "fraud-detector", replicas=args.replicas, port=port,
                     metrics_port=free_port())  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            for c in (8, 64):
                steady = run_wrk(url, single, c, min(args.seconds, 10))
                up = moved_during(settings, url, single, c, args.seconds, args.lead, "2")
                down = moved_during(settings, url, single, c, args.seconds, args.lead, "1")
                report["runs"][f"c={c}"] = {"steady": steady, "promotion": up, "rollback": down}
                print(f"\nc={c} through the balancer ({args.replicas} replicas)")
                print(line("steady (no move)", steady))
                for name, d in (("promotion v1 -> v2", up), ("rollback v2 -> v1", down)):
                    print(line(name, d))
                    took = f"the move took {d['move_s']:.1f} s from t={args.lead:.0f}s"
                    print(f"      {took}: {d['fleet']}")
                    print(shares(d["per_second"]))
        finally:
            fleet.down(settings)
        overhead: dict[str, Any] = {}
        try:
            state = fleet.up(settings, "fraud-detector", replicas=1, port=port,
                             metrics_port=free_port())  # fmt: skip
            direct_url = state.replicas[0].base_url
            print("\nbalancer overhead (1 replica)")
            for c in (8, 64):
                direct = run_wrk(direct_url, single, c, 10)
                through = run_wrk(f"http://127.0.0.1:{port}", single, c, 10)
                ratio = through["rps"] / direct["rps"]
                overhead[f"c={c}"] = {"direct": direct, "haproxy": through, "ratio": ratio}
                print(line(f"c={c} direct", direct))
                print(line(f"c={c} through HAProxy", through))
                print(f"  c={c}: HAProxy keeps {100 * ratio:.1f}% of direct req/s "
                      f"({100 * (1 - ratio):+.1f}% fewer)")  # fmt: skip
        finally:
            fleet.down(settings)
    report["overhead"] = overhead
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    listed = container.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    ours = [ref for ref in listed if ref.startswith("fraud-bench-rollout-")]
    if ours:
        container.docker("rmi", "-f", *ours)
    return 0


if __name__ == "__main__":
    sys.exit(main())
