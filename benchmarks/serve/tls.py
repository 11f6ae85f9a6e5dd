"""What TLS and the API-key check cost on single-row scoring through HAProxy, in one run.

    uv run python -m benchmarks.serve.tls [--duration 10] [--rounds 2] [--connections 8]

Two ``bentoml serve`` processes of the same model (one without keys, one requiring a key) and
four HAProxy instances (the fleet's configuration from :mod:`flows.serving.balancer`): plain
HTTP and TLS in front of each. wrk (one thread, keep-alive connections) drives ``POST /predict``
through each of the four in turn, ``--rounds`` times interleaved, so that all four see the same
machine state; then plain vs TLS+key again with ``Connection: close`` (a TLS handshake per
request: the worst case, a client without keep-alive). Prints req/s and p99 per setup, the
median over the rounds, and the ratios against plain HTTP without a key. Servers log to files
and are stopped by PID. Compare the ratios, and look at the load average printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks.serve import wrk
from benchmarks.serve.harness import (
    ROOT,
    VENV_BIN,
    base_env,
    prepare_model,
    start,
    stop,
    wait_ready,
    write_bodies,
)
from data_contracts.api_keys import new_key, write_key_file
from flows.core.http import free_port
from flows.serving import balancer, tls

SETUPS = ("plain", "plain+key", "tls", "tls+key")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / ".fraud" / "bench" / "tls.json")
    args = parser.parse_args()
    if wrk.wrk_missing():
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    print(f"work dir (logs; removed after a successful run): {work}")
    bentoml_home, tag, _ = prepare_model(work, None)
    single, _ = write_bodies(work)
    key = new_key()
    write_key_file(work / "secrets" / "api" / "keys", [key])
    pem, _ = tls.make_certificate(work / "secrets" / "tls")
    procs, pids = [], []
    try:
        ports = {}
        for keyed in (False, True):
            port = free_port()
            sub = work / ("keyed" if keyed else "open")
            sub.mkdir()
            env = base_env() | {
                "BENTOML_HOME": str(bentoml_home),
                "FRAUD_MODEL_TAG": tag,
                "FRAUD_HOME": str(sub / "home"),
            }
            if keyed:
                env["FRAUD_API_KEYS_FILE"] = str(work / "secrets" / "api" / "keys")
            cmd = [str(VENV_BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)]
            log = sub / "bento.log"
            proc = start(cmd, env, log)
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
            for cert in (None, str(pem)):
                setup = ("tls" if cert else "plain") + ("+key" if keyed else "")
                spec = balancer.BalancerSpec(
                    port=free_port(), metrics_port=free_port(), tls_cert=cert
                )
                cfg = work / f"{setup}.cfg"
                balancer.install_config(
                    cfg, balancer.render_config(spec, [balancer.Server("b", port)])
                )
                pids.append(
                    balancer.start(
                        cfg, work / "logs" / f"{setup}.log", work / "run" / f"{setup}.pid"
                    )
                )
                balancer.wait_servers(spec, ["b"], 30)
                ports[setup] = spec.port
        results: dict[str, list[wrk.LoadResult]] = {}
        runs = [(s, False) for s in SETUPS] + [("plain", True), ("tls+key", True)]
        for round_ in range(args.rounds + 1):  # round 0 warms every path up
            for setup, close in runs:
                headers = {"X-API-Key": key} if setup.endswith("key") else {}
                headers |= {"Connection": "close"} if close else {}
                name = setup + (" (new connection each)" if close else "")
                scheme = "https" if setup.startswith("tls") else "http"
                url = f"{scheme}://127.0.0.1:{ports[setup]}/predict"
                seconds = 2 if round_ == 0 else args.duration
                result = wrk.run_wrk(url, single, args.connections, seconds, name, headers=headers)
                if round_:
                    results.setdefault(name, []).append(result)
        loadavg = os.getloadavg()
    finally:
        for pid in pids:
            balancer.stop(pid, grace_s=2)
        for proc in procs:
            stop(proc)
    base = statistics.median(r.rps for r in results["plain"])
    base_p99 = statistics.median(r.p99_ms for r in results["plain"])
    print(
        f"\nPOST /predict, c={args.connections}, {args.rounds} rounds x {args.duration} s, "
        f"median; load average {loadavg[0]:.2f} {loadavg[1]:.2f}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'setup':38} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'p99 x':>6} "
        f"{'errors':>6}"
    )
    summary = {}
    for name, runs_ in results.items():
        rps = statistics.median(r.rps for r in runs_)
        p50 = statistics.median(r.p50_ms for r in runs_)
        p99 = statistics.median(r.p99_ms for r in runs_)
        bad = sum(r.non2xx + r.socket_errors for r in runs_)
        print(
            f"{name:38} {rps:8.0f} {rps / base:6.2f} {p50:7.2f} {p99:7.2f} "
            f"{p99 / base_p99:6.2f} {bad:6d}"
        )
        summary[name] = {
            "rps": rps,
            "p50_ms": p50,
            "p99_ms": p99,
            "errors": bad,
            "rps_ratio": rps / base,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "loadavg": loadavg}, indent=2))
    print(f"\nwritten: {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
