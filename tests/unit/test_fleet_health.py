"""``fraud fleet status``: a replica that cannot write the inference log is a problem."""

from __future__ import annotations

import os
import stat

from flows.core.settings import Settings
from flows.serving.fleet import SHARED_MODE, shared_log_dir
from flows.serving.health import FleetStatus, ReplicaHealth
from flows.serving.state import FleetState, Replica


def _health(log: dict | None) -> ReplicaHealth:
    replica = Replica("fd-v1-fleet-3001", 3001, "c0ffee", "1", "fd:v1")
    return ReplicaHealth(replica, "running", True, "UP 1/2", log)


def test_a_replica_that_cannot_write_the_log_is_shown_and_fails_the_status():
    ok = _health({"writable": True, "written": 12, "lost": 0, "last_error": None})
    bad = _health(
        {"writable": False, "written": 0, "lost": 133, "last_error": "PermissionError: denied"}
    )
    unknown = _health(None)  # an older image without the field: not counted against it
    assert ok.healthy and unknown.healthy and bad.serving and not bad.healthy
    state = FleetState("fraud-detector", "fd", "1", [ok.replica], balancer_pid=1)
    status = FleetStatus(state, True, "200", [ok, bad, unknown])
    text = "\n".join(status.lines())
    assert not status.healthy
    assert "log ok (written 12, lost 0) [ok]" in text
    assert "log NOT WRITABLE (written 0, lost 133: PermissionError: denied) [PROBLEM]" in text
    assert "cannot write the inference log" in text and "not serving" not in text


def test_the_shared_log_folder_shares_the_days_another_writer_made(tmp_path):
    settings = Settings(home=tmp_path / "home")
    root = settings.inference_log_root
    day = root / "date=2026-01-02"
    umask = os.umask(0o022)
    try:
        day.mkdir(parents=True)  # a root `make serve` made the day before the fleet came up
    finally:
        os.umask(umask)
    (root / "date=notes.txt").write_text("not a folder: left alone")
    assert shared_log_dir(settings) == root
    assert stat.S_IMODE(root.stat().st_mode) == SHARED_MODE
    assert stat.S_IMODE(day.stat().st_mode) == SHARED_MODE
