"""The scanned window is the window read_log returns: same rows, a uniform sample of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from data_contracts.inference_log import (
    TRANSACTION_ID_HASH_COLUMN,
    LogFiles,
    build_table,
    read_file,
    read_log,
)
from data_contracts.log_scan import scan_log

START = datetime(2026, 3, 1, 18, tzinfo=UTC)
NOW = START + timedelta(hours=12)
COLUMNS = ["amount", "score"]


@pytest.fixture
def log(tmp_path, spec):
    """Ten files over two UTC dates, versions 1 and 2, the oldest files without id hashes."""
    from bento.runtime import example_record

    values = example_record(spec)
    rng = np.random.default_rng(5)
    writer = LogFiles(tmp_path)
    serial = 0
    for n in range(10):
        rows = 200 + 10 * n
        stamps = [START + timedelta(seconds=int(s)) for s in rng.integers(0, 12 * 3600, rows)]
        columns = {f.name: [values[f.name]] * rows for f in spec.features}
        columns["amount"] = list(range(serial, serial + rows))  # a row's identity
        ids = [f"tx-{serial + i}" for i in range(rows)] if n >= 3 else None
        table = build_table(
            spec,
            columns,
            scores=rng.random(rows),
            decisions=[0] * rows,
            timestamps=stamps,
            model_version="2" if n % 2 else "1",
            request_ids="r",
            transaction_ids=ids,
        )
        if ids is None:  # a writer of an older release: no id column at all
            table = table.drop_columns([TRANSACTION_ID_HASH_COLUMN])
        writer.write(table)
        serial += rows
    return tmp_path


def amounts(table: pa.Table) -> list[float]:
    return sorted(table["amount"].to_pylist())


@pytest.mark.parametrize(
    "window",
    [{"hours": 5}, {"hours": 24}, {"rows": 700}, {"rows": 100_000}],
    ids=["5 hours", "24 hours", "last 700 rows", "more rows than the log"],
)
@pytest.mark.parametrize("version", [None, "v2"])
def test_the_scan_holds_the_rows_read_log_returns(log, window, version):
    full = read_log(log, now=NOW, model_version=version, columns=COLUMNS, **window)
    scan = scan_log(
        log,
        now=NOW,
        model_version=version,
        sample_columns=COLUMNS,
        sample_rows=1_000_000,
        seed=1,
        keep_columns=["timestamp", TRANSACTION_ID_HASH_COLUMN],
        **window,
    )
    assert scan.rows == full.num_rows > 0
    assert amounts(scan.sample) == amounts(full)  # a sample larger than the window is all of it
    assert scan.sample.column_names == COLUMNS
    assert scan.kept.num_rows == full.num_rows
    assert scan.first == full["timestamp"][0].as_py() and scan.last == full["timestamp"][-1].as_py()
    # files without the id column give nulls, not a failure
    ids = scan.kept[TRANSACTION_ID_HASH_COLUMN]
    assert 0 < ids.null_count < len(ids) or version == "v2"


def test_a_sample_is_uniform_exact_in_size_and_seeded(log):
    full = read_log(log, now=NOW, hours=24, columns=COLUMNS)
    kwargs = {"now": NOW, "hours": 24, "sample_columns": COLUMNS, "sample_rows": 300}
    a, b = scan_log(log, seed=7, **kwargs), scan_log(log, seed=7, **kwargs)
    other = scan_log(log, seed=8, **kwargs)
    assert a.rows == full.num_rows and a.sample.num_rows == 300
    assert amounts(a.sample) == amounts(b.sample) != amounts(other.sample)
    picked = amounts(a.sample)
    assert len(set(picked)) == 300 and set(picked) <= set(amounts(full))  # without replacement
    assert a.kept.num_rows == 0 and a.kept.column_names == []
    # the sample spreads over the whole window, not the first files only
    assert (
        min(picked)
        < np.quantile(amounts(full), 0.2)
        < np.quantile(amounts(full), 0.8)
        < max(picked)
    )


def test_an_empty_or_missing_log_scans_to_nothing(tmp_path, log):
    for root, now in ((tmp_path / "missing", NOW), (log, START - timedelta(days=3))):
        scan = scan_log(root, now=now, hours=1, sample_columns=COLUMNS, sample_rows=5, seed=1)
        assert scan.rows == 0 and scan.first is None and scan.sample.num_rows == 0
        assert scan.sample.column_names == COLUMNS


def test_read_file_decodes_only_the_columns_the_file_has(log):
    path = next(log.rglob("*.parquet"))
    table = read_file(path, ["score", "no_such_column", "timestamp"])
    assert table.column_names == ["score", "timestamp"]
    assert str(table.schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
