"""Champion following: when to follow, and the follower's swap / refuse / retry decisions."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bento.follow import (
    ChampionFollower,
    FollowConfigError,
    FollowStatus,
    follow_settings,
)
from bento.runtime import BAD_GRAPH, BAD_HASH, ModelLoadError
from bento.store import ModelNotFoundError
from data_contracts.artifacts import pointer_path, write_champion_pointer


@pytest.mark.parametrize(
    ("mode", "source", "expected"),
    [
        ("", "pointer", True),
        ("auto", "tag", False),
        ("auto", "bento", False),
        ("on", "tag", True),
        ("ON", "pointer", True),
        ("off", "pointer", False),
    ],
)
def test_when_to_follow(mode, source, expected):
    follow, interval, _ = follow_settings(source, {"FRAUD_FOLLOW_CHAMPION": mode})
    assert follow is expected and interval == 2.0


def test_bad_settings_name_the_variable():
    with pytest.raises(FollowConfigError, match="FRAUD_FOLLOW_CHAMPION='always'"):
        follow_settings("pointer", {"FRAUD_FOLLOW_CHAMPION": "always"})
    with pytest.raises(FollowConfigError, match="FRAUD_FOLLOW_INTERVAL_S='soon'"):
        follow_settings("pointer", {"FRAUD_FOLLOW_INTERVAL_S": "soon"})
    with pytest.raises(FollowConfigError, match="between"):
        follow_settings("pointer", {"FRAUD_FOLLOW_INTERVAL_S": "0"})
    with pytest.raises(FollowConfigError, match="built bento serves only the model it packs"):
        follow_settings("bento", {"FRAUD_FOLLOW_CHAMPION": "on"})


class _Fleet:
    """A follower over a temporary home, with a scripted loader."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.failures: dict[str, Exception] = {}
        self.loaded: list[str] = []
        self.installed: list[str] = []
        self.refusals: list[str] = []
        write_champion_pointer(home, "fraud-detector:v1")
        self.status = FollowStatus("auto", True, str(pointer_path(home, "fraud-detector")), 0.1)
        self.follower = ChampionFollower(
            bentoml_home=home,
            model_name="fraud-detector",
            served_tag="fraud-detector:v1",
            load=self.load,
            install=lambda runtime: self.installed.append(runtime.tag),
            status=self.status,
            on_refused=self.refusals.append,
        )

    def load(self, tag: str) -> SimpleNamespace:
        self.loaded.append(tag)
        if tag in self.failures:
            raise self.failures[tag]
        return SimpleNamespace(
            tag=tag, model_version=tag.rpartition(":v")[2], sha256="s", spec_hash="h"
        )

    def point(self, tag: str) -> None:
        path = write_champion_pointer(self.home, tag)
        stamp = path.stat().st_mtime_ns + len(self.loaded) + 1_000_000
        os.utime(path, ns=(stamp, stamp))  # a rewrite within one clock tick still differs


def test_nothing_happens_while_the_pointer_names_the_served_model(tmp_path):
    fleet = _Fleet(tmp_path)
    assert fleet.follower.check_once() is None
    assert fleet.loaded == [] and fleet.status.checked_at is not None


def test_a_new_champion_is_loaded_then_installed(tmp_path):
    fleet = _Fleet(tmp_path)
    fleet.point("fraud-detector:v2")
    assert fleet.follower.check_once() == "swapped"
    assert fleet.installed == ["fraud-detector:v2"]
    assert fleet.follower.served_tag == "fraud-detector:v2"
    swap = fleet.status.last_swap
    assert swap["from"] == "fraud-detector:v1" and swap["to"] == "fraud-detector:v2"
    assert fleet.status.swaps == 1
    assert fleet.follower.check_once() is None  # served now: not loaded again
    assert fleet.loaded == ["fraud-detector:v2"]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ModelLoadError("model.onnx is corrupt"), "verification"),
        (ModelNotFoundError("not in the store"), "missing"),
        (OSError("disk gone"), "error"),
    ],
)
def test_a_failing_champion_is_refused_once_per_pointer_write(tmp_path, error, reason):
    fleet = _Fleet(tmp_path)
    fleet.failures["fraud-detector:v2"] = error
    fleet.point("fraud-detector:v2")
    assert fleet.follower.check_once() == "refused"
    assert fleet.installed == [] and fleet.follower.served_tag == "fraud-detector:v1"
    assert fleet.refusals == [reason]
    refused = fleet.status.refused
    assert refused["tag"] == "fraud-detector:v2" and refused["reason"] == reason
    assert str(error) in refused["detail"] and refused["serving"] == "fraud-detector:v1"
    assert fleet.follower.check_once() is None  # the same pointer is not tried again
    assert fleet.loaded == ["fraud-detector:v2"]
    # the release writes the pointer again after repairing the store: tried, and swapped
    del fleet.failures["fraud-detector:v2"]
    fleet.point("fraud-detector:v2")
    assert fleet.follower.check_once() == "swapped"
    assert fleet.status.refused is None and fleet.status.swaps == 1


def test_a_pointer_naming_another_model_is_refused(tmp_path):
    fleet = _Fleet(tmp_path)
    pointer_path(tmp_path, "fraud-detector").write_text("credit-risk:v2\n")
    assert fleet.follower.check_once() == "refused"
    assert fleet.status.refused["reason"] == "wrong_model" and fleet.loaded == []
    assert fleet.follower.served_tag == "fraud-detector:v1"


def test_a_removed_pointer_keeps_the_served_model(tmp_path, caplog):
    fleet = _Fleet(tmp_path)
    pointer_path(tmp_path, "fraud-detector").unlink()
    assert fleet.follower.check_once() == "refused"
    assert fleet.follower.check_once() is None
    assert fleet.follower.served_tag == "fraud-detector:v1"
    assert fleet.status.refused["reason"] == "missing" and fleet.refusals == ["missing"]
    gone = [r for r in caplog.records if "fraud-detector is gone" in r.getMessage()]
    assert len(gone) == 1  # said once, not on every poll


def _write(path: Path, content: bytes | None) -> None:
    """Put ``content`` at the pointer's path (None: a directory in its place)."""
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)


@pytest.mark.parametrize(
    ("content", "reason", "detail"),
    [
        (b"fraud-detector:v\xff1\n", "undecodable", "is not UTF-8 text"),
        (b"", "undecodable", "is empty"),
        (b"fraud-detec", "undecodable", "must look like"),
        (b"fraud-detector:v1" * 100, "oversized", "over 1024 for a tag"),
        (None, "unreadable", "is not a regular file"),
        (b"credit-risk:v2\n", "wrong_model", "not a fraud-detector model"),
    ],
    ids=["not-utf8", "empty", "truncated", "oversized", "directory", "wrong-model"],
)
def test_every_bad_pointer_is_refused_counted_and_logged_once(
    tmp_path, caplog, content, reason, detail
):
    """Issue 31: these were a traceback every 2 s, a lone WARNING, or nothing at all."""
    fleet = _Fleet(tmp_path)
    path = pointer_path(tmp_path, "fraud-detector")
    _write(path, content)
    with caplog.at_level("INFO", logger="fraud.serving.follow"):
        assert fleet.follower.check_once() == "refused"
        first = fleet.status.checked_at
        time.sleep(0.01)
        for _ in range(3):  # the next polls: nothing new to say or count
            assert fleet.follower.check_once() is None
    assert fleet.status.checked_at > first  # fresh on every poll
    assert fleet.refusals == [reason] and fleet.loaded == []
    refused = fleet.status.refused
    assert refused["reason"] == reason and detail in refused["detail"], refused
    assert refused["serving"] == "fraud-detector:v1"
    assert len([r for r in caplog.records if "REFUSED" in r.getMessage()]) == 1
    # the pointer restored: the refusal is cleared, once
    _write(path, b"fraud-detector:v1\n")
    with caplog.at_level("INFO", logger="fraud.serving.follow"):
        assert fleet.follower.check_once() is None
        assert fleet.follower.check_once() is None
    assert fleet.status.refused is None and fleet.status.history[-1]["event"] == "cleared"
    assert len([r for r in caplog.records if "refusal is cleared" in r.getMessage()]) == 1


def test_an_oversized_pointer_is_not_read(tmp_path, monkeypatch):
    fleet = _Fleet(tmp_path)
    pointer_path(tmp_path, "fraud-detector").write_bytes(b"x" * 5_000_000)
    opened: list[Path] = []
    real_open = Path.open
    monkeypatch.setattr(
        Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k)
    )
    assert fleet.follower.check_once() == "refused"
    assert fleet.status.refused["reason"] == "oversized" and opened == []


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ModelLoadError("sha256 differs", BAD_HASH), "bad_hash"),
        (ModelLoadError("warm-up prediction failed", BAD_GRAPH), "bad_graph"),
    ],
)
def test_a_model_that_fails_verification_is_refused_with_what_failed(tmp_path, error, reason):
    fleet = _Fleet(tmp_path)
    fleet.failures["fraud-detector:v2"] = error
    fleet.point("fraud-detector:v2")
    assert fleet.follower.check_once() == "refused"
    assert fleet.refusals == [reason] and fleet.status.refused["tag"] == "fraud-detector:v2"


def test_a_failing_poll_is_a_refusal_said_once_not_a_traceback_every_poll(tmp_path, caplog):
    fleet = _Fleet(tmp_path)
    fleet.status.interval_s = 0.01

    def broken(*args, **kwargs):
        raise RuntimeError("the store went away")

    fleet.follower.check_once = broken  # type: ignore[method-assign]
    with caplog.at_level("INFO", logger="fraud.serving.follow"):
        fleet.follower.start()
        time.sleep(0.2)
        fleet.follower.stop()
    assert fleet.refusals == ["error"]
    assert "RuntimeError: the store went away" in fleet.status.refused["detail"]
    assert len(caplog.records) == 1 and not caplog.records[0].exc_info


def test_the_thread_polls_until_stopped(tmp_path):
    fleet = _Fleet(tmp_path)
    fleet.follower.start()
    try:
        fleet.point("fraud-detector:v2")
        for _ in range(100):
            if fleet.installed:
                break
            time.sleep(0.05)
    finally:
        fleet.follower.stop()
    assert fleet.installed == ["fraud-detector:v2"]
    assert fleet.follower._thread is None
