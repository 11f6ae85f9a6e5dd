"""The inference-log writer: buffering, flushing, date partitions, hashing and failures."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bento.inference_log import InferenceLogWriter, hash_transaction_id, log_schema
from data_contracts.inference_log import day_folder


@pytest.fixture
def values(spec) -> dict:
    from bento.runtime import example_record

    return example_record(spec)


def read_all(root: Path) -> pd.DataFrame:
    files = sorted(root.glob("date=*/part-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def test_nothing_is_written_before_a_flush(tmp_path, spec, values):
    writer = InferenceLogWriter(tmp_path / "log", spec, "3")
    writer.append_row(values, 0.2, 0, "r1", None)
    assert writer.pending == 1
    assert not (tmp_path / "log").exists()
    assert writer.flush() == 1
    assert writer.pending == 0
    assert writer.flush() == 0


def test_schema_and_values(tmp_path, spec, values):
    written: list[int] = []
    writer = InferenceLogWriter(tmp_path, spec, "3", on_written=written.append)
    writer.append_row({**values, "device_type": None}, 0.91, 1, "r1", "tx-1")
    columns = {f.name: [values[f.name]] * 2 for f in spec.features}
    writer.append_batch(columns, [0.1, 0.2], [0, 0], "r2", ["tx-2", None])
    writer.flush()
    assert written == [3]
    [path] = writer.files
    assert pq.read_schema(path).equals(log_schema(spec), check_metadata=False)
    frame = read_all(tmp_path)
    assert list(frame["score"]) == [0.91, 0.1, 0.2]
    assert list(frame["decision"]) == [1, 0, 0]
    assert list(frame["request_id"]) == ["r1", "r2", "r2"]
    assert set(frame["model_version"]) == {"3"}
    assert frame["device_type"].iloc[0] is None
    assert frame["transaction_id_hash"].iloc[0] == hash_transaction_id("tx-1")
    assert frame["transaction_id_hash"].iloc[2] is None
    assert "tx-1" not in frame.to_string()
    assert frame["hour_of_day"].dtype == "int64"
    assert str(frame["timestamp"].dt.tz) == "UTC"


def test_partitioned_by_utc_date(tmp_path, spec, values, monkeypatch):
    writer = InferenceLogWriter(tmp_path, spec, "1")
    day = 86_400.0
    base = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    for offset in (-1.0, 1.0, day + 1):
        monkeypatch.setattr(time, "time", lambda o=offset: base + o)
        writer.append_row(values, 0.5, 1, f"r{offset}", None)
    monkeypatch.undo()
    writer.flush()
    dates = sorted(p.parent.name for p in writer.files)
    assert dates == ["date=2025-12-31", "date=2026-01-01", "date=2026-01-02"]
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in writer.files)


def test_each_flush_is_a_new_file(tmp_path, spec, values):
    writer = InferenceLogWriter(tmp_path, spec, "1")
    for i in range(3):
        writer.append_row(values, 0.5, 1, f"r{i}", None)
        writer.flush()
    assert len({p.name for p in writer.files}) == 3
    assert not list(tmp_path.rglob("*.tmp"))
    assert len(read_all(tmp_path)) == 3


def test_background_thread_flushes_and_close_flushes_the_rest(tmp_path, spec, values):
    writer = InferenceLogWriter(tmp_path, spec, "1", flush_interval_s=0.05)
    writer.start()
    writer.append_row(values, 0.5, 1, "early", None)
    deadline = time.monotonic() + 5
    while not writer.files and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.written == 1
    writer.flush_interval_s = 3600  # no more periodic flushes: only close() can write "late"
    time.sleep(0.1)
    writer.append_row(values, 0.5, 1, "late", None)
    writer.close()
    assert set(read_all(tmp_path)["request_id"]) == {"early", "late"}


def test_flush_when_enough_records_wait(tmp_path, spec, values):
    writer = InferenceLogWriter(tmp_path, spec, "1", flush_interval_s=3600, flush_records=10)
    writer.start()
    columns = {f.name: [values[f.name]] * 10 for f in spec.features}
    writer.append_batch(columns, [0.1] * 10, [0] * 10, "b", [None] * 10)
    deadline = time.monotonic() + 5
    while writer.written < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.close()
    assert writer.written == 10


def test_write_failure_is_counted_and_logged_not_raised(tmp_path, spec, values, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log folder should be")
    lost: list[tuple[int, str]] = []
    writer = InferenceLogWriter(blocker, spec, "1", on_lost=lambda n, r: lost.append((n, r)))
    writer.append_row(values, 0.5, 1, "r1", None)
    writer.append_row(values, 0.5, 1, "r2", None)
    with caplog.at_level("ERROR", logger="fraud.serving.inference_log"):
        assert writer.flush() == 0
    assert writer.lost == 2
    assert lost and lost[0][0] == 2
    assert "2 records lost" in caplog.text
    # serving goes on: the next records are accepted and, once the path is fixed, written
    blocker.unlink()
    writer.append_row(values, 0.5, 1, "r3", None)
    assert writer.flush() == 1


def test_full_buffer_drops_and_counts(tmp_path, spec, values):
    lost: list[int] = []
    writer = InferenceLogWriter(
        tmp_path, spec, "1", max_buffered_records=2, on_lost=lambda n, r: lost.append(n)
    )
    for i in range(3):
        writer.append_row(values, 0.5, 1, f"r{i}", None)
    assert writer.pending == 2
    assert lost == [1]
    assert writer.lost == 1


def test_hash_is_a_keyed_hmac_not_a_bare_sha256():
    key = b"k" * 32
    assert hash_transaction_id(None, key) is None
    expected = hmac.new(key, b"abc", hashlib.sha256).hexdigest()
    assert hash_transaction_id("abc", key) == expected
    assert hash_transaction_id("abc", key) != hashlib.sha256(b"abc").hexdigest()
    assert hash_transaction_id("abc", b"other-key-of-16+") != expected


def test_a_failed_date_partition_loses_only_its_own_records(tmp_path, spec, values, monkeypatch):
    (tmp_path / "date=2025-12-31").write_text("a file where a partition should be")
    lost: list[int] = []
    writer = InferenceLogWriter(tmp_path, spec, "1", on_lost=lambda n, r: lost.append(n))
    base = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    for offset in (-2.0, -1.0, 1.0):
        monkeypatch.setattr(time, "time", lambda o=offset: base + o)
        writer.append_row(values, 0.5, 1, f"r{offset}", None)
    monkeypatch.undo()
    assert writer.flush() == 1
    assert (writer.written, writer.lost, lost) == (1, 2, [2])
    assert [p.parent.name for p in writer.files] == ["date=2026-01-01"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_losses_are_logged_once_per_interval_and_the_resumption_once(
    tmp_path, spec, values, caplog
):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log folder should be")
    writer = InferenceLogWriter(blocker / "log", spec, "1", loss_log_interval_s=3600)
    with caplog.at_level("WARNING", logger="fraud.serving.inference_log"):
        for i in range(3):
            writer.append_row(values, 0.5, 1, f"r{i}", None)
            assert writer.flush() == 0
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "1 records lost (NotADirectoryError" in errors[0]
        assert writer.lost == 3 and writer.last_error.startswith("NotADirectoryError")
        blocker.unlink()  # the folder can be written again
        writer.append_row(values, 0.5, 1, "r3", None)
        assert writer.flush() == 1
        (resumed,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert "writing to" in resumed and "again; 3 records were lost before" in resumed
        writer.append_row(values, 0.5, 1, "r4", None)
        assert writer.flush() == 1  # no second resumption line
        assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1


def test_start_says_at_once_when_the_folder_cannot_be_written(tmp_path, spec, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log folder should be")
    writer = InferenceLogWriter(blocker / "log", spec, "1", flush_interval_s=3600)
    with caplog.at_level("ERROR", logger="fraud.serving.inference_log"):
        writer.start()
    writer.close()
    assert f"folder {blocker / 'log'} cannot be written (NotADirectoryError" in caplog.text
    ok = InferenceLogWriter(tmp_path / "log", spec, "1")
    assert ok.check_writable() is None and list((tmp_path / "log").iterdir()) == []


def _until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return bool(predicate())


def test_whether_the_log_can_be_written_is_reported_once_per_change(tmp_path, spec, values):
    """Issue 31: a failed write, and an idle probe of today's folder, say the log cannot be
    written (the gauge behind FraudInferenceLogUnwritable, ``/model``); each change once."""
    root = tmp_path / "log"
    states: list[bool] = []
    writer = InferenceLogWriter(root, spec, "1", flush_interval_s=3600, on_state=states.append)
    writer.start()
    today = day_folder(root, datetime.now(UTC))
    today.write_text("a file where today's folder should be")
    writer.append_row(values, 0.5, 1, "r1", None)
    assert writer.flush() == 0
    assert writer.flush() == 0  # nothing pending, no change: not reported again
    assert states == [True, False]
    status = writer.status()
    assert status["writable"] is False and status["lost"] == 1
    assert status["last_error"].startswith("FileExistsError") and status["folder"] == str(root)
    today.unlink()
    writer.append_row(values, 0.5, 1, "r2", None)
    assert writer.flush() == 1 and states == [True, False, True]
    writer.close()

    # idle: the flush thread probes the folder and today's folder each interval
    probing = InferenceLogWriter(root, spec, "1", flush_interval_s=0.02, on_state=states.append)
    probing.start()
    blocked = today / f".probe-{os.getpid()}"
    blocked.mkdir()  # today's folder takes no probe file (as root, permissions would not stop it)
    try:
        assert _until(lambda: probing.writable is False), probing.status()
        assert probing.status()["last_error"].startswith("IsADirectoryError")
    finally:
        blocked.rmdir()
    assert _until(lambda: probing.writable is True)
    probing.close()
    assert states[-3:] == [True, False, True]


def test_ids_are_hashed_when_appended_not_in_the_flush(tmp_path, spec, values, monkeypatch):
    """The flush thread builds a file from hashes made at append time: it never runs the
    HMAC over a whole file's ids while holding the interpreter lock."""
    import data_contracts.inference_log as contract

    writer = InferenceLogWriter(tmp_path, spec, "3", id_key=b"k" * 32)
    writer.append_row(values, 0.5, 0, "r1", "tx-1")
    columns = {f.name: [values[f.name]] * 2 for f in spec.features}
    writer.append_batch(columns, [0.1, 0.2], [0, 0], "r2", ["tx-2", None])

    def no_hashing(*_args):
        raise AssertionError("the flush hashed an id")

    monkeypatch.setattr(contract, "hash_id", no_hashing)
    assert writer.flush() == 3
    frame = read_all(tmp_path)
    expected = [
        hmac.new(b"k" * 32, t.encode(), hashlib.sha256).hexdigest() for t in ("tx-1", "tx-2")
    ]
    assert list(frame["transaction_id_hash"]) == [*expected, None]


def test_an_unusable_id_key_loses_the_record_at_append_and_counts_it(
    tmp_path, spec, values, monkeypatch
):
    monkeypatch.setenv("FRAUD_ID_HASH_KEY", "short")
    lost: list[int] = []
    writer = InferenceLogWriter(tmp_path, spec, "3", on_lost=lambda n, _r: lost.append(n))
    writer.append_row(values, 0.5, 0, "r1", "tx-1")
    writer.append_row(values, 0.5, 0, "r2", None)  # no id: nothing to hash, kept
    assert lost == [1] and writer.lost == 1 and "FRAUD_ID_HASH_KEY" in (writer.last_error or "")
    assert writer.flush() == 1
