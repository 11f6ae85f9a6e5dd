"""What the bento writes, the drift check reads: one schema, one layout, one writer, one reader."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bento.inference_log import InferenceLogWriter
from data_contracts.inference_log import (
    LogFiles,
    build_table,
    hash_transaction_id,
    log_schema,
    partition_date,
    read_log,
)
from flows.monitoring.analysis import prepare_frames
from flows.monitoring.window import Window, monitored_columns, read_inference_log, window_id


@pytest.fixture
def values(spec) -> dict:
    from bento.runtime import example_record

    return example_record(spec)


def test_what_the_bento_writes_the_drift_check_reads(tmp_path, spec, values, monkeypatch):
    root = tmp_path / "inference_log"
    writer = InferenceLogWriter(root, spec, "4")  # the bento's own writer, as the service builds it
    base = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    monkeypatch.setattr(time, "time", lambda: base - 30.0)  # the day before, 23:59:30
    writer.append_row({**values, "device_type": None}, 0.91, 1, "r1", "tx-1")
    monkeypatch.setattr(time, "time", lambda: base + 30.0)
    columns = {f.name: [values[f.name]] * 3 for f in spec.features}
    writer.append_batch(columns, [0.1, 0.2, 0.3], [0, 0, 0], "r2", ["tx-2", None, "tx-4"])
    monkeypatch.undo()
    assert writer.flush() == 4 and writer.lost == 0
    assert sorted(p.parent.name for p in writer.files) == ["date=2025-12-31", "date=2026-01-01"]

    now = datetime.fromtimestamp(base + 60, UTC)
    window = read_inference_log(
        root, Window(hours=1), now=now, model_version="v4", columns=monitored_columns(spec)
    )
    assert len(window) == 4 and window["timestamp"].is_monotonic_increasing
    assert list(window["score"]) == [0.91, 0.1, 0.2, 0.3]
    assert set(window.columns) == {*monitored_columns(spec), "timestamp", "model_version"}
    assert window["device_type"].iloc[0] is None
    for f in spec.features:  # every feature comes back as the bento served it
        if f.name != "device_type":
            assert window[f.name].iloc[1] == pytest.approx(values[f.name]), f.name
    # the analysis accepts the window as read: every monitored column, spec dtypes
    _, cur, untestable = prepare_frames(window, window, spec)
    assert list(cur.columns) == monitored_columns(spec) and untestable == {}
    assert window_id(window, "4").startswith("v4-20251231T2359-20260101T0000-")
    # rows of another version, or outside the window, are not read
    assert read_inference_log(root, Window(hours=1), now=now, model_version="5").empty
    assert len(read_inference_log(root, Window(rows=2), now=now)) == 2


def test_bento_files_carry_the_contract_schema_and_hashed_ids(tmp_path, spec, values):
    writer = InferenceLogWriter(tmp_path, spec, "4")
    writer.append_row(values, 0.5, 1, "r1", "tx-secret")
    writer.flush()
    [path] = writer.files
    assert pq.read_schema(path).equals(log_schema(spec), check_metadata=False)
    table = read_log(tmp_path, now=datetime.now(UTC) + timedelta(seconds=1), hours=1)
    assert table["transaction_id_hash"].to_pylist() == [hash_transaction_id("tx-secret")]
    assert "tx-secret" not in str(table.to_pydict())
    assert partition_date(path.parent) == datetime.now(UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )


def test_one_writer_for_a_backfill_too(tmp_path, spec, values):
    """A backfill writes with the same LogFiles as the bento: one file per UTC date, own names."""
    stamps = [datetime(2026, 1, 1, 23, 0, tzinfo=UTC), datetime(2026, 1, 2, 1, 0, tzinfo=UTC)]
    table = build_table(
        spec,
        {f.name: [values[f.name]] * 2 for f in spec.features},
        scores=[0.2, 0.7],
        decisions=[0, 1],
        timestamps=stamps,
        model_version="2",
        request_ids="backfill",
    )
    a, b = LogFiles(tmp_path), LogFiles(tmp_path)
    first, second = a.write(table), b.write(table)
    assert first.rows == second.rows == 2 and not first.failures
    names = {p.name for p in first.files + second.files}
    assert len(names) == 4  # two writers never pick the same file name
    assert all(a.writer_id in p.name for p in first.files)
    got = read_log(tmp_path, now=stamps[1], rows=10)
    assert got.num_rows == 4 and got["model_version"].to_pylist() == ["2"] * 4


def test_a_failed_file_loses_its_own_rows_only(tmp_path, spec, values):
    (tmp_path / "date=2026-01-02").write_text("a file where a folder should be")
    table = build_table(
        spec,
        {f.name: [values[f.name]] * 3 for f in spec.features},
        scores=[0.1, 0.2, 0.3],
        decisions=[0, 0, 0],
        timestamps=[
            datetime(2026, 1, 1, 12, tzinfo=UTC),
            datetime(2026, 1, 2, 12, tzinfo=UTC),
            datetime(2026, 1, 2, 13, tzinfo=UTC),
        ],
        model_version="1",
        request_ids=["a", "b", "c"],
    )
    written = LogFiles(tmp_path).write(table)
    assert written.rows == 1 and [n for n, _ in written.failures] == [2]


def test_reading_nothing_gives_an_empty_table(tmp_path):
    empty = read_log(tmp_path / "missing", now=datetime.now(UTC), hours=1, columns=["score"])
    assert isinstance(empty, pa.Table) and empty.num_rows == 0
    assert set(empty.column_names) == {"score", "timestamp", "model_version"}


def test_a_date_folder_takes_the_log_folder_mode_whatever_the_umask(tmp_path, spec, values):
    """Issue 31: a writer with umask 022 (or 077) made the day 0755 and the fleet's replicas,
    another user, lost every record of that day. A day now takes the top folder's bits."""
    table = build_table(
        spec,
        {f.name: [values[f.name]] for f in spec.features},
        scores=[0.1],
        decisions=[0],
        timestamps=[datetime.now(UTC)],
        model_version="1",
        request_ids="r",
    )
    shared, private = tmp_path / "shared", tmp_path / "private"
    for root, mode in ((shared, 0o1777), (private, 0o750)):
        root.mkdir()
        root.chmod(mode)
    umask = os.umask(0o077)
    try:
        for root in (shared, private):
            assert LogFiles(root).write(table).rows == 1
    finally:
        os.umask(umask)
    (shared_day,) = shared.glob("date=*")
    (private_day,) = private.glob("date=*")
    assert shared_day.stat().st_mode & 0o7777 == 0o1777
    assert private_day.stat().st_mode & 0o7777 == 0o750


def test_id_hasher_and_pre_hashed_ids_match_the_contract_hash(spec, values):
    """IdHasher is hash_id with the HMAC set up once; build_table takes its hashes as they are."""
    from data_contracts.id_key import hash_id
    from data_contracts.inference_log import IdHasher

    key = b"a-key-of-sixteen-or-more"
    hasher = IdHasher(key)
    ids = ["tx-1", None, "tx-\u00e9", ""]
    assert hasher.many(ids) == [None if t is None else hash_id(t, key) for t in ids]
    table = build_table(
        spec,
        {f.name: [values[f.name]] * 4 for f in spec.features},
        scores=[0.1] * 4,
        decisions=[0] * 4,
        timestamps=[datetime(2026, 1, 1, tzinfo=UTC)] * 4,
        model_version="1",
        request_ids="r",
        transaction_id_hashes=hasher.many(ids),
    )
    assert (
        table["transaction_id_hash"].to_pylist()
        == build_table(
            spec,
            {f.name: [values[f.name]] * 4 for f in spec.features},
            scores=[0.1] * 4,
            decisions=[0] * 4,
            timestamps=[datetime(2026, 1, 1, tzinfo=UTC)] * 4,
            model_version="1",
            request_ids="r",
            transaction_ids=ids,
            id_key=key,
        )["transaction_id_hash"].to_pylist()
    )
