"""A test container that lost a port race on the host network is started again, once or
twice; any other early exit stays an error."""

from __future__ import annotations

import subprocess
import urllib.error
from pathlib import Path

import pytest

from flows.packaging import container
from flows.packaging.errors import SmokeTestError


class FakeEngine:
    """Answers the few docker calls ``wait_ready`` makes, from a script of container exits."""

    def __init__(self, exit_logs: list[str]) -> None:
        self.exit_logs = exit_logs  # the log of each exit, in order; then it stays up
        self.running = False
        self.starts = 0
        self.calls: list[tuple[str, ...]] = []

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        out = ""
        if args[0] == "inspect":
            out = "true" if self.running else "false"
        elif args[0] == "logs":
            out = self.exit_logs[min(self.starts, len(self.exit_logs) - 1)]
        elif args[0] == "start":
            self.starts += 1
            self.running = self.starts >= len(self.exit_logs)
        return subprocess.CompletedProcess(list(args), 0, out, "")

    def http_json(self, method: str, url: str, timeout: float = 2) -> tuple[int, dict]:
        if not self.running:
            raise urllib.error.URLError("connection refused")
        return 200, {}


def handle(engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> container.RunningContainer:
    monkeypatch.setattr(container, "docker", engine.docker)
    monkeypatch.setattr(container, "http_json", engine.http_json)
    monkeypatch.setattr(container.time, "sleep", lambda s: None)
    return container.RunningContainer("c", "img:v1", 3999, 0.0, Path("unused.log"))


RACE = "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:38935')"


def test_a_lost_port_race_starts_the_container_again(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine([RACE])
    running = handle(engine, monkeypatch)
    running.wait_ready(timeout=30)
    assert engine.starts == 1
    assert running.port_race_restarts == 1


def test_restarts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine([RACE, RACE, RACE, RACE])
    running = handle(engine, monkeypatch)
    with pytest.raises(SmokeTestError, match="exited before it was ready"):
        running.wait_ready(timeout=30, port_race_restarts=2)
    assert engine.starts == 2


def test_any_other_exit_is_an_error_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine(["ValueError: the model file does not match its sha256"])
    running = handle(engine, monkeypatch)
    with pytest.raises(SmokeTestError, match="exited before it was ready"):
        running.wait_ready(timeout=30)
    assert engine.starts == 0
    assert not any(call[0] == "start" for call in engine.calls)
