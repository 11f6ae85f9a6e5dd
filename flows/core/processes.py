"""One process manager for every local server: start, health wait, status and stop, by PID.

A server is started in a session (and process group) of its own, with its output appended to
``<log_dir>/<name>.log`` (never the caller's stdout: a daemon holding a CI job's output open can
keep the job from ending) and its PID in ``<run_dir>/<name>.pid``. It is checked, waited on and
stopped by that PID, never by name: SIGTERM (or the server's own stop signal) to the group, a
grace period, then SIGKILL.

A start is healthy only when the process it started is the one answering: before a start, a port
held by another process is an error naming the holder; after the health probe answers, the
listening socket must belong to the started process (or its descendants). A PID file whose
process is gone, or whose PID now belongs to a process that started at another moment (start
times in clock ticks since boot, recorded beside the PID file), counts as stopped.

``psutil`` (already in the locked environment) finds who holds a port and reads process facts
portably; everything else is the standard library.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess  # nosec B404 # argv lists only, never a shell
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from flows.core.files import tail
from flows.core.ports import port_holder, port_holders, started_by

Probe = Callable[[], bool]


class ProcessError(RuntimeError):
    """A server could not be started, was not the one answering, or could not be stopped."""


class PortTaken(ProcessError):
    """The port a server needs is held by a process this manager did not start for it."""


class StartFailed(ProcessError):
    """The started process exited, or did not become healthy in time."""


@dataclass(frozen=True)
class Server:
    """How to run one local server and how to know it is up.

    ``health`` is a URL (healthy when a GET answers with a status below 400) or a callable probe;
    without one, the server counts as started once it is still running after ``settle_s``.
    ``port`` is checked free before the start and owned by the started session after it.
    ``port_setting`` names the variable that moves the port (said in the error when it is taken).
    """

    name: str
    argv: Sequence[str]
    port: int | None = None
    health: str | Probe | None = None
    env: Mapping[str, str] | None = None  # the whole environment; None inherits the caller's
    cwd: Path | None = None
    user: str | None = None  # run as this system user (PostgreSQL runs as ``postgres``)
    port_setting: str | None = None
    start_timeout_s: float = 60
    stop_grace_s: float = 20
    stop_signal: int = signal.SIGTERM
    settle_s: float = 0.5


def http_probe(url: str, timeout: float = 2) -> Probe:
    """A probe that is healthy when a GET of ``url`` answers below 400 (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def probe() -> bool:
        try:
            with opener.open(url, timeout=timeout) as response:  # nosec B310 # local http URL
                return int(response.status) < 400
        except urllib.error.HTTPError:
            return False
        except (OSError, ValueError):
            return False

    return probe


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def run_as(user: str, env: Mapping[str, str] | None) -> dict:
    """``Popen`` arguments that run as ``user`` with its own group and home (not root's groups),
    as ``runuser -u`` would."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ProcessError(f"the system user {user!r} is missing") from None
    base = dict(os.environ if env is None else env)
    base |= {"HOME": entry.pw_dir, "USER": user, "LOGNAME": user}
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env": base}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class ProcessManager:
    """Servers of one home: PID files in ``run_dir``, logs in ``log_dir``."""

    run_dir: Path
    log_dir: Path
    say: Callable[[str], None] = field(default=_say)

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start_file(self, name: str) -> Path:
        """The started process's identity (its start time in clock ticks since boot)."""
        return self.run_dir / f"{name}.started"

    def pid(self, name: str) -> int | None:
        """The recorded PID of ``name`` if that process still runs (and is not a reused PID)."""
        try:
            pid = int(self.pid_file(name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not process_alive(pid):
            return None
        try:
            recorded = int(self.start_file(name).read_text().strip())
        except (OSError, ValueError):
            return pid  # no identity on record (an older PID file): the PID alone decides
        # another process that got the PID back started at another tick; the wall clock
        # plays no part, so a stepped clock cannot make a live server look stopped
        return pid if start_ticks(pid) in (recorded, None) else None

    def alive(self, name: str) -> bool:
        return self.pid(name) is not None

    def start(self, server: Server) -> int:
        """Start ``server`` unless it runs already; returns its PID (no health wait)."""
        return self.start_new(server)[0]

    def start_new(self, server: Server) -> tuple[int, bool]:
        """Start ``server`` unless it runs already: its PID, and whether this call started it."""
        running = self.pid(server.name)
        if running is not None:
            self.say(f"{server.name} already running (pid {running})")
            return running, False
        if server.port is not None:
            holder = port_holder(server.port)
            if holder is not None:
                hint = (
                    f"; set {server.port_setting} to use another port"
                    if server.port_setting
                    else ""
                )
                raise PortTaken(
                    f"{server.name}: port {server.port} is held by {holder.describe()}, "
                    f"which this stack did not start{hint}"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_file(server.name)
        self.say(f"starting {server.name} (log: {log})")
        env = dict(server.env) if server.env is not None else None
        as_user = run_as(server.user, env) if server.user else {"env": env}
        with log.open("ab") as out:
            process = subprocess.Popen(  # nosec B603 # argv list from the stack's own settings
                list(server.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=server.cwd,
                start_new_session=True,
                close_fds=True,
                **as_user,
            )
        self.pid_file(server.name).write_text(f"{process.pid}\n")
        self.start_file(server.name).write_text(f"{start_ticks(process.pid) or ''}\n")
        return process.pid, True

    def wait_healthy(self, server: Server, timeout_s: float | None = None) -> None:
        """Wait until ``server`` answers its probe from its own session (raises with its log)."""
        pid = self.pid(server.name)
        if pid is None:
            raise StartFailed(self._exited(server))
        probe = http_probe(server.health) if isinstance(server.health, str) else server.health
        deadline = time.monotonic() + (timeout_s or server.start_timeout_s)
        if probe is None:
            time.sleep(server.settle_s)
            if not self.alive(server.name):
                raise StartFailed(self._exited(server))
            return
        while time.monotonic() < deadline:
            if not self.alive(server.name):
                raise StartFailed(self._exited(server))
            if probe():
                self._check_owner(server, pid)
                return
            time.sleep(0.25)
        raise StartFailed(
            f"{server.name} did not become healthy in {timeout_s or server.start_timeout_s:.0f} s; "
            f"see {self.log_file(server.name)}"
        )

    def ensure(self, server: Server, timeout_s: float | None = None) -> int:
        """Start ``server`` if needed and wait until it is healthy.

        A start that fails is stopped; a server that was already running is never stopped
        here, even when it does not answer (``status`` and ``down`` are for that).
        """
        pid, started = self.start_new(server)
        try:
            self.wait_healthy(server, timeout_s)
        except ProcessError:
            if started:
                self.stop_server(server)
            raise
        return pid

    def stop_server(self, server: Server) -> bool:
        """Stop ``server`` with its own stop signal and grace period."""
        return self.stop(server.name, grace_s=server.stop_grace_s, sig=server.stop_signal)

    def _check_owner(self, server: Server, pid: int) -> None:
        if server.port is None:
            return
        deadline = time.monotonic() + 5
        while True:
            holders = port_holders(server.port)
            if any(started_by(holder, pid) for holder in holders):
                return
            if holders or time.monotonic() > deadline:
                who = holders[0].describe() if holders else "nothing listening"
                raise PortTaken(
                    f"{server.name}: port {server.port} answers, but from {who}, not the server "
                    f"started as pid {pid}; see {self.log_file(server.name)}"
                )
            time.sleep(0.2)

    def _exited(self, server: Server) -> str:
        log = self.log_file(server.name)
        lines = tail(log, 30) if log.exists() else "(no log)"
        return f"{server.name} exited during its start; last lines of {log}:\n{lines}"

    def stop(self, name: str, grace_s: float = 20, sig: int = signal.SIGTERM) -> bool:
        """Stop ``name``'s process group: ``sig``, ``grace_s`` to exit, then SIGKILL.

        Returns whether a running process was stopped; the PID file is removed either way.
        """
        pid = self.pid(name)
        if pid is None:
            self.pid_file(name).unlink(missing_ok=True)
            self.start_file(name).unlink(missing_ok=True)
            return False
        self.say(f"stopping {name} (pid {pid})")
        _signal_group(pid, sig)
        if not _wait_gone(pid, grace_s):
            self.say(f"{name} did not stop in {grace_s:.0f} s; killing it")
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
        self.pid_file(name).unlink(missing_ok=True)
        self.start_file(name).unlink(missing_ok=True)
        return True

    def status(self, names: Sequence[str]) -> list[tuple[str, int | None]]:
        """Each name with its running PID, or None when stopped."""
        return [(name, self.pid(name)) for name in names]

    def status_lines(self, names: Sequence[str]) -> list[str]:
        return [
            f"{name}: running (pid {pid})" if pid else f"{name}: stopped"
            for name, pid in self.status(names)
        ]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie is reaped when it is our child, and counts as gone)."""
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.Error:
        return False
    _reap(pid)
    return False


def stop_pid(pid: int, ladder: Sequence[tuple[int, float]]) -> bool:
    """Send each signal of ``ladder`` in turn, waiting its seconds for ``pid`` to be gone.

    The first signal goes to the process (a master may want it alone, e.g. HAProxy's soft
    stop); SIGKILL goes to the whole process group. Returns whether the process is gone.
    """
    for sig, wait_s in ladder:
        if sig == signal.SIGKILL:
            _signal_group(pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if _wait_gone(pid, wait_s):
            return True
    return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                _reap(pid)
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False
