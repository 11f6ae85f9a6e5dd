"""The fleet's load balancer: HAProxy (Debian's ``haproxy`` 2.6) in master-worker mode.

:func:`render_config` turns the replicas into a configuration: one frontend on the serving
port (3000) whose ``/readyz`` answers from HAProxy's own view of the replicas, a backend
health-checking each replica's ``/readyz`` every second, L7 retries (``retry-on`` +
``option redispatch``) so that a scoring request whose replica died is sent again to the next
one (scoring is idempotent: the same record gets the same answer), and a metrics frontend
with HAProxy's Prometheus exporter (``/metrics``) and stats page (``/stats``).

:func:`install_config` writes a configuration atomically and only after ``haproxy -c``
accepted it: a bad configuration never replaces a good one. :func:`reload` asks the master
for a graceful reload (SIGUSR2): a new worker takes the listeners, the old one finishes its
requests in flight (and the next request of each idle keep-alive connection, answered with
``Connection: close``) and exits. :func:`processes` reads the master CLI (``show proc``) so a
caller can see that the reload happened and when the old worker has drained.

One module on purpose: configuration, process control and the stats view are the three sides of
one HAProxy instance and share its spec and paths; split apart they would pass these around.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess  # nosec B404 # argv lists only (haproxy), never a shell
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from flows.core.files import write_atomic
from flows.core.processes import ProcessManager, process_alive, stop_pid
from flows.core.processes import Server as Process
from flows.serving import tls

BACKEND = "bento"
FRONTEND = "fraud"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BalancerError(RuntimeError):
    """HAProxy refused a configuration, did not start, or did not reload."""


@dataclass(frozen=True)
class Server:
    """One replica as the balancer sees it: a name and a port on 127.0.0.1."""

    name: str
    port: int
    weight: int = 100


@dataclass(frozen=True)
class BalancerSpec:
    """Where the balancer listens and what it needs besides its servers."""

    port: int = 3000
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8404
    master_socket: Path | None = None  # the master CLI (``show proc``); None: none
    check_interval_ms: int = 1000
    retries: int = 3
    drain_timeout_s: int = 30  # an old worker is stopped after this even with requests left
    tls_cert: str | None = None  # PEM (certificate chain + key): the serving port speaks TLS

    @property
    def metrics_address(self) -> str:
        return f"{self.metrics_host}:{self.metrics_port}"


def haproxy_binary() -> str:
    """The ``haproxy`` executable, or :class:`BalancerError` saying how to install it."""
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
    )
    if found is None:
        raise BalancerError(
            "haproxy is not installed: run `fraud stack install haproxy` as root (it runs "
            "apt-get install haproxy), or `make fleet-up`, which installs it when missing"
        )
    return found


def render_config(spec: BalancerSpec, servers: Sequence[Server]) -> str:
    """The HAProxy configuration for ``servers`` (see the module docstring)."""
    if not servers:
        raise ValueError("the balancer needs at least one server")
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ValueError(f"server names must be unique: {names}")
    lines = [
        "# written by flows/serving/balancer.py; replaced atomically after `haproxy -c`",
        "global",
        "    log stdout format raw local0 notice",
        f"    hard-stop-after {spec.drain_timeout_s}s",
        # no close-spread-time: its window closes idle keep-alive connections of the old worker
        # under a sending client even with idle-close-on-response ("infinite" keeps busy ones
        # until hard-stop-after); unset, each ends after its next response (Connection: close)
        *tls.global_lines(spec.tls_cert),
    ]
    lines += [
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlog-normal",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout check 2s",
        # on a reload the old worker answers the next request of an idle keep-alive connection
        # with "Connection: close" instead of closing it under a client that is sending: a
        # closed idle connection races the client's next request (a broken pipe, not retried)
        "    option idle-close-on-response",
        f"    retries {spec.retries}",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response junk-response response-timeout 502 503 504",
        "",
        f"frontend {FRONTEND}",
        *tls.bind_lines(f"127.0.0.1:{spec.port}", spec.tls_cert),
        f"    acl replicas_up nbsrv({BACKEND}) gt 0",
        "    http-request return status 200 content-type application/json lf-string "
        f'"{{\\"status\\":\\"ready\\",\\"replicas_up\\":%[nbsrv({BACKEND})],'
        f'\\"replicas\\":{len(servers)}}}" if {{ path /readyz }} replicas_up',
        "    http-request return status 503 content-type application/json lf-string "
        f'"{{\\"status\\":\\"no replica ready\\",\\"replicas_up\\":0,'
        f'\\"replicas\\":{len(servers)}}}" if {{ path /readyz }}',
        "    http-response set-header X-Fraud-Replica %[srv_name]",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
        "    option httpchk",
        "    http-check send meth GET uri /readyz",
        "    http-check expect status 200",
        # no on-marked-down shutdown-sessions: it would cut the requests being retried
        f"    default-server check inter {spec.check_interval_ms}ms fall 2 rise 2",
    ]
    lines += [f"    server {s.name} 127.0.0.1:{s.port} weight {s.weight}" for s in servers]
    lines += [
        "",
        "frontend metrics",
        f"    bind {spec.metrics_address}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
        "",
    ]
    return "\n".join(lines)


def check_config(path: Path) -> None:
    """``haproxy -c -f path``; :class:`BalancerError` with HAProxy's own words when it refuses."""
    proc = subprocess.run(  # nosec B603 # haproxy binary, argv list, no shell
        [haproxy_binary(), "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stdout + proc.stderr).strip()
        raise BalancerError(f"haproxy -c refused {path}: {detail or f'exit {proc.returncode}'}")


def install_config(path: Path, text: str) -> None:
    """Validate ``text`` as a file beside ``path``, then put it in place atomically.

    When HAProxy refuses it, ``path`` is left exactly as it was and the refused text is kept
    as ``<path>.rejected`` for inspection.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path.with_name(f".{path.name}.candidate")
    write_atomic(candidate, text)
    try:
        check_config(candidate)
    except BalancerError:
        os.replace(candidate, path.with_name(f"{path.name}.rejected"))
        raise
    os.replace(candidate, path)


def _manager(log_path: Path, pid_path: Path) -> tuple[ProcessManager, str]:
    """The process manager of the balancer's PID file (``run/balancer.pid``, ``logs/...``)."""
    if log_path.stem != pid_path.stem:
        raise ValueError(f"{log_path} and {pid_path} must name the same server")
    return ProcessManager(pid_path.parent, log_path.parent), pid_path.stem


def start(config: Path, log_path: Path, pid_path: Path, master_socket: Path | None = None) -> int:
    """Start HAProxy in master-worker mode through the process manager (own session, output to
    ``log_path``, PID in ``pid_path``); the balancer is stopped and reloaded by that PID only."""
    check_config(config)
    cmd = [haproxy_binary(), "-W", "-db", "-f", str(config)]
    if master_socket is not None:
        master_socket.unlink(missing_ok=True)
        cmd += ["-S", f"{master_socket},mode,600"]
    manager, name = _manager(log_path, pid_path)
    return manager.start(Process(name, cmd))


def alive(pid: int | None) -> bool:
    """Whether ``pid`` is a running process (not a zombie)."""
    return bool(pid) and process_alive(int(pid))


def stop(pid: int | None, grace_s: float = 10) -> None:
    """Soft-stop the master (SIGUSR1: finish requests in flight), SIGTERM after ``grace_s``,
    SIGKILL of its process group if it is still there 5 s later."""
    if pid is None:
        return
    stop_pid(pid, ((signal.SIGUSR1, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)))


@dataclass(frozen=True)
class Processes:
    """What the master CLI's ``show proc`` says: the master's reload counts and the workers."""

    reloads: int
    failed_reloads: int
    workers: list[int]
    old_workers: list[int]


def parse_show_proc(text: str) -> Processes:
    """Parse ``show proc`` output (HAProxy 2.6 layout)."""
    reloads = failed = 0
    workers: list[int] = []
    old: list[int] = []
    section = "master"
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# workers"):
            section = "workers"
            continue
        if stripped.startswith("# old workers"):
            section = "old"
            continue
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        if parts[1] == "master":
            reloads = int(parts[2]) if parts[2].isdigit() else 0
            if "[failed:" in stripped:
                failed = int(stripped.split("[failed:")[1].split("]")[0].strip() or 0)
        elif parts[1] == "worker":
            (workers if section == "workers" else old).append(int(parts[0]))
    return Processes(reloads, failed, workers, old)


def master_command(master_socket: Path, command: str, timeout: float = 5) -> str:
    """Send one command to the master CLI and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(master_socket))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)  # the CLI answers and closes once the request ended
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def processes(master_socket: Path) -> Processes:
    """The master's view of its workers (:func:`parse_show_proc` of ``show proc``)."""
    return parse_show_proc(master_command(master_socket, "show proc"))


def reload(pid: int | None, master_socket: Path, timeout_s: float = 15) -> Processes:
    """Graceful reload of the master ``pid`` (SIGUSR2); waits for the new worker.

    Raises :class:`BalancerError` when the master is gone, the reload failed (HAProxy then
    keeps the old worker serving) or no new worker appeared within ``timeout_s``.
    """
    if pid is None or not alive(pid):
        raise BalancerError(f"the balancer (pid {pid}) is not running")
    before = processes(master_socket)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            now = processes(master_socket)
        except OSError:  # the master re-executes itself: its CLI is briefly away
            continue
        if now.failed_reloads > before.failed_reloads:
            raise BalancerError("haproxy failed to reload; the previous worker keeps serving")
        if now.reloads > before.reloads and now.workers and set(now.workers) != set(before.workers):
            return now
    raise BalancerError(f"haproxy did not finish reloading within {timeout_s:.0f}s")


def wait_drained(master_socket: Path, timeout_s: float) -> bool:
    """Wait until no old worker is left (its requests in flight finished); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not processes(master_socket).old_workers:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


@dataclass(frozen=True)
class ServerState:
    """HAProxy's view of one backend server (from the stats CSV)."""

    name: str
    status: str  # UP, DOWN, MAINT, "UP 1/2", ...
    check: str  # the last health check's status and detail
    requests: int = 0  # sessions sent to the server (stot) since this worker started
    errors: int = 0  # 5xx answers and failed responses (hrsp_5xx + eresp)
    response_ms: float = 0.0  # average response time of the last 1024 requests (rtime)

    @property
    def up(self) -> bool:
        return self.status.startswith("UP")


def parse_stats_csv(text: str, backend: str = BACKEND) -> list[ServerState]:
    """The servers of ``backend`` in HAProxy's stats CSV."""
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    states = []
    for row in rows:
        if row.get("pxname") != backend or row.get("svname") in {"FRONTEND", "BACKEND"}:
            continue
        check = " ".join(filter(None, [row.get("check_status"), row.get("check_desc")]))
        errors = _int(row.get("hrsp_5xx")) + _int(row.get("eresp"))
        rtime = float(_int(row.get("rtime")))
        state = ServerState(row["svname"], row.get("status", ""), check, _int(row.get("stot")))
        states.append(replace(state, errors=errors, response_ms=rtime))
    return states


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def server_states(spec: BalancerSpec, timeout: float = 2) -> list[ServerState]:
    """The balancer's current view of its servers (``/stats;csv`` on the metrics port)."""
    url = f"http://{spec.metrics_address}/stats;csv"
    with _NO_PROXY.open(url, timeout=timeout) as response:
        return parse_stats_csv(response.read().decode())


def wait_servers(
    spec: BalancerSpec, names: Sequence[str], timeout_s: float = 15
) -> list[ServerState]:
    """Wait until the balancer lists exactly ``names`` and every one is UP."""
    deadline = time.monotonic() + timeout_s
    seen: list[ServerState] = []
    while time.monotonic() < deadline:
        try:
            seen = server_states(spec)
        except (OSError, urllib.error.URLError):
            seen = []
        if sorted(s.name for s in seen) == sorted(names) and all(s.up for s in seen):
            return seen
        time.sleep(0.2)
    shown = ", ".join(f"{s.name} {s.status}" for s in seen) or "no answer"
    raise BalancerError(f"balancer servers not all UP within {timeout_s:.0f}s: {shown}")
