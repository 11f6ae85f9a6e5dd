"""The process manager: start in a session of its own, log file, PID file, health wait, stop.

The processes here are small Python one-liners (an HTTP server on a free port, a sleeper), not
the stack's servers, so the tests take seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from flows.core.http import free_port
from flows.core.processes import (
    PortTaken,
    ProcessManager,
    Server,
    StartFailed,
    port_holder,
    start_ticks,
)

HTTP_SERVER = (
    "import http.server as h; h.test(h.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')"
)


def manager(tmp_path: Path) -> tuple[ProcessManager, list[str]]:
    said: list[str] = []
    return ProcessManager(tmp_path / "run", tmp_path / "logs", say=said.append), said


def http_server(name: str, port: int, **kwargs) -> Server:
    return Server(
        name=name,
        argv=[sys.executable, "-c", HTTP_SERVER.format(port=port)],
        port=port,
        health=f"http://127.0.0.1:{port}/",
        port_setting="TEST_PORT",
        start_timeout_s=20,
        **kwargs,
    )


def test_start_waits_until_healthy_and_stops_by_pid(tmp_path):
    pm, said = manager(tmp_path)
    port = free_port()
    server = http_server("web", port)
    pid = pm.ensure(server)
    try:
        assert pm.pid("web") == pid
        assert os.getsid(pid) == pid  # a session (and process group) of its own
        assert port_holder(port).pid == pid
        assert pm.status_lines(["web", "other"]) == [f"web: running (pid {pid})", "other: stopped"]
        assert pm.ensure(server) == pid  # a running server is reused, not started twice
        assert "web already running" in said[-1]
    finally:
        assert pm.stop("web")
    assert pm.pid("web") is None
    assert not pm.pid_file("web").exists()
    assert port_holder(port) is None
    assert pm.stop("web") is False  # stopping a stopped server is fine


def test_output_goes_to_the_log_file_only(tmp_path, capfd):
    pm, _ = manager(tmp_path)
    server = Server(
        "talker",
        [sys.executable, "-c", "print('to-the-log', flush=True); import time; time.sleep(60)"],
    )
    pm.ensure(server)
    deadline = time.monotonic() + 10
    while "to-the-log" not in pm.log_file("talker").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    pm.stop("talker")
    assert pm.log_file("talker").read_text() == "to-the-log\n"
    out, err = capfd.readouterr()
    assert "to-the-log" not in out + err


def test_a_port_held_by_a_stranger_is_an_error_naming_it(tmp_path):
    pm, _ = manager(tmp_path)
    port = free_port()
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", port))
        stranger.listen()
        with pytest.raises(PortTaken) as err:
            pm.ensure(http_server("web", port))
    message = str(err.value)
    assert f"port {port} is held by pid {os.getpid()}" in message
    assert "set TEST_PORT" in message
    assert not pm.pid_file("web").exists()  # nothing was started


def test_a_stranger_answering_the_health_check_is_not_our_start(tmp_path):
    """The started process died on 'address in use' while another answered: not healthy."""
    pm, _ = manager(tmp_path)
    port, other = free_port(), free_port()
    stranger = http_server("stranger", port)
    pm.ensure(stranger)
    try:
        # checks its own (free) port before the start, but its health URL is the stranger's
        liar = Server(
            "liar",
            [sys.executable, "-c", "import time; time.sleep(60)"],
            port=other,
            health=f"http://127.0.0.1:{port}/",
            start_timeout_s=10,
        )
        with pytest.raises(PortTaken, match=f"port {other} answers, but from nothing listening"):
            pm.ensure(liar)
        assert not pm.alive("liar")  # a failed start is stopped
    finally:
        pm.stop("stranger")


def test_a_server_that_exits_while_waited_on_fails_with_its_log(tmp_path):
    pm, _ = manager(tmp_path)
    broken = Server(
        "broken",
        [sys.executable, "-c", "print('cannot bind the port'); raise SystemExit(3)"],
        health="http://127.0.0.1:9/",
    )
    with pytest.raises(StartFailed) as err:
        pm.ensure(broken)
    assert "broken exited during its start" in str(err.value)
    assert "cannot bind the port" in str(err.value)
    assert not pm.pid_file("broken").exists()


def test_a_server_that_ignores_term_is_killed_after_its_grace(tmp_path):
    pm, said = manager(tmp_path)
    stubborn = Server(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        ],
        settle_s=1,
    )
    pid = pm.ensure(stubborn)
    started = time.monotonic()
    pm.stop("stubborn", grace_s=1)
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert any("did not stop in 1 s; killing it" in line for line in said)


def test_a_stale_or_garbage_pid_file_counts_as_stopped(tmp_path):
    pm, _ = manager(tmp_path)
    pm.run_dir.mkdir(parents=True)
    pm.pid_file("gone").write_text("999999999\n")
    pm.pid_file("junk").write_text("not a pid\n")
    assert pm.status(["gone", "junk"]) == [("gone", None), ("junk", None)]
    # a live PID whose start time is not the recorded one is a reused PID, not the server
    pm.pid_file("reused").write_text(f"{os.getpid()}\n")
    pm.start_file("reused").write_text(f"{start_ticks(os.getpid()) - 1}\n")
    assert pm.pid("reused") is None
    pm.start_file("reused").write_text(f"{start_ticks(os.getpid())}\n")
    assert pm.pid("reused") == os.getpid()  # the wall clock plays no part


def test_stop_signal_reaches_the_whole_group(tmp_path):
    """A server's children (workers) stop with it: the signal goes to the process group."""
    pm, _ = manager(tmp_path)
    child_pid_file = tmp_path / "child.pid"
    parent = Server(
        "parent",
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(child_pid_file)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)",
        ],
        settle_s=1,
    )
    pm.ensure(parent)
    deadline = time.monotonic() + 10
    while not child_pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(child_pid_file.read_text())
    pm.stop("parent", sig=signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_a_worker_in_a_session_of_its_own_still_counts_as_the_started_server(tmp_path):
    """``bentoml serve`` hands its socket to workers started with a new session: those
    workers answer for the server that was started, and the start is healthy."""
    pm, _ = manager(tmp_path)
    port = free_port()
    worker = HTTP_SERVER.format(port=port)
    parent = Server(
        "parent-of-worker",
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {worker!r}], start_new_session=True)\n"
            "time.sleep(60)",
        ],
        port=port,
        health=f"http://127.0.0.1:{port}/",
        start_timeout_s=20,
    )
    pid = pm.ensure(parent)
    try:
        holder = port_holder(port)
        assert holder.pid != pid and os.getsid(holder.pid) != pid  # not in the started session
    finally:
        pm.stop("parent-of-worker")
        if holder is not None:  # its own session: the group signal does not reach it
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder.pid, signal.SIGKILL)


def test_ensure_never_stops_a_server_it_did_not_start(tmp_path):
    """A running server that fails this call's health check is reported, not killed."""
    pm, _ = manager(tmp_path)
    sleeper = Server("svc", [sys.executable, "-c", "import time; time.sleep(60)"], settle_s=0.2)
    pid = pm.ensure(sleeper)
    probing = Server(sleeper.name, sleeper.argv, health=lambda: False, start_timeout_s=1)
    try:
        with pytest.raises(StartFailed, match="did not become healthy"):
            pm.ensure(probing)
        assert pm.pid("svc") == pid  # still running, still recorded
    finally:
        pm.stop("svc")
