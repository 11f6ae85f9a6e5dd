"""wrk as the benchmarks' load driver: a rotating set of request bodies, one run's figures.

One load thread POSTs the bodies of a file (one JSON body a line) in turn; a Lua ``done`` hook
prints the run's figures as JSON, read back as a :class:`LoadResult`. Kept apart from the
benchmarks that drive load with it (``bench``, ``soak``) and from the server plumbing in
:mod:`benchmarks.serve.harness`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess  # nosec B404 # fixed wrk argv, never a shell
import sys
from dataclasses import dataclass
from pathlib import Path

WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local i = 0
local headers = {%(headers)s}
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"non2xx\\": %%d, " ..
    "\\"socket_errors\\": %%d, \\"p50_us\\": %%d, \\"p90_us\\": %%d, \\"p99_us\\": %%d, " ..
    "\\"p999_us\\": %%d, \\"max_us\\": %%d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
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
    p999_ms: float = 0.0
    probe: dict | None = None  # what one paced client saw meanwhile (benchmarks.serve.latency)

    @property
    def records_per_s(self) -> float:
        return self.rps * self.records_per_request


def run_wrk(
    url: str,
    bodies: Path,
    connections: int,
    seconds: int,
    target: str,
    per_request: int = 1,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """One wrk run; ``headers`` are sent besides Content-Type (the script file is 0600: it may
    hold an API key)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    script = bodies.with_suffix(".lua")
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        pairs = ", ".join(f'["{k}"] = "{v}"' for k, v in sent.items())
        out.write(WRK_SCRIPT % {"bodies": bodies, "headers": pairs})
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
        p999_ms=data["p999_us"] / 1000,
    )


def wrk_missing() -> bool:
    """True, after saying how to install it, when wrk is not on PATH."""
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install -y wrk)", file=sys.stderr)
        return True
    return False
