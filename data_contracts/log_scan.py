"""A large window of the inference log, read file by file: its size, a sample, a few columns.

:func:`~data_contracts.inference_log.read_log` holds every wanted column of every window row,
then sorts them: fine for a day of a small service, about 5 GB for the 10M rows a large card
issuer serves in a day. The drift check does not need that: Evidently sees a sample (30,000
rows), and the feedback join needs four narrow columns. :func:`scan_log` reads the same window
in two passes over the same list of files:

1. each file's ``timestamp`` and ``model_version`` only: which of its rows are in the window
   (the last ``hours``, or the last ``rows`` across all files), hence the window's row count and
   time bounds;
2. each file again with the wanted columns, one file at a time: a uniform sample without
   replacement of ``sample_rows`` window rows (positions drawn once, seeded, so the sample is
   exactly what sampling the whole window would give) and ``keep_columns`` of every window row.

Peak memory is one file's columns plus the sample and the kept columns; files that land between
the passes are not read (the list is taken once), so a check never sees half a flush.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_contracts.inference_log import (
    MODEL_VERSION_COLUMN,
    TIMESTAMP_COLUMN,
    in_window,
    log_files,
    partitions,
    read_file,
    version_set,
)


@dataclass(frozen=True)
class LogScan:
    """What :func:`scan_log` found: the window's size and bounds, its sample, its kept columns."""

    rows: int
    first: datetime | None
    last: datetime | None
    sample: pa.Table
    kept: pa.Table
    files: int


def _candidates(
    root: Path, now: datetime, hours: float | None, rows: int | None, versions: pa.Array | None
) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """Pass one: (file, mask of its rows in the window, their timestamps in microseconds)."""
    cutoff = now - timedelta(hours=hours) if hours is not None else None
    found: list[tuple[Path, np.ndarray, np.ndarray]] = []
    have = 0
    for day, folder in partitions(root):
        if cutoff is not None and day + timedelta(days=1) <= cutoff:
            break
        for path in log_files(folder):
            light = read_file(path, [TIMESTAMP_COLUMN, MODEL_VERSION_COLUMN])
            if light.num_rows == 0:
                continue
            mask = in_window(light, now, cutoff, versions).to_numpy(zero_copy_only=False)
            if not mask.any():
                continue
            micros = pc.cast(light[TIMESTAMP_COLUMN], pa.int64()).to_numpy()[mask]
            found.append((path, mask, micros))
            have += len(micros)
        if rows is not None and have >= rows:
            break
    if rows is not None and have > rows:
        found = _last_rows(found, rows)
    return found


def _last_rows(
    found: list[tuple[Path, np.ndarray, np.ndarray]], rows: int
) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """Keep only the ``rows`` newest rows across all files (ties broken by file order)."""
    stamps = np.concatenate([micros for _, _, micros in found])
    keep = np.zeros(len(stamps), dtype=bool)
    keep[np.argsort(stamps, kind="stable")[len(stamps) - rows :]] = True
    trimmed = []
    offset = 0
    for path, mask, micros in found:
        mine = keep[offset : offset + len(micros)]
        offset += len(micros)
        if not mine.any():
            continue
        narrowed = mask.copy()
        narrowed[np.flatnonzero(mask)[~mine]] = False
        trimmed.append((path, narrowed, micros[mine]))
    return trimmed


def _empty(columns: Sequence[str]) -> pa.Table:
    return pa.table({c: pa.nulls(0) for c in columns})


def _bound(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def scan_log(
    root: Path,
    *,
    now: datetime,
    hours: float | None = None,
    rows: int | None = None,
    model_version: str | None = None,
    sample_columns: Sequence[str],
    sample_rows: int,
    seed: int,
    keep_columns: Sequence[str] = (),
) -> LogScan:
    """The window of :func:`~data_contracts.inference_log.read_log`, scanned (module docstring).

    ``sample`` holds ``sample_columns`` of ``sample_rows`` window rows drawn uniformly without
    replacement (all rows when the window is smaller), oldest file first; ``kept`` holds
    ``keep_columns`` of every window row. Columns a file lacks come back as nulls.
    """
    found = _candidates(root, now, hours, rows, version_set(model_version))
    found.reverse()  # oldest first, as read_log returns rows
    total = sum(len(micros) for _, _, micros in found)
    if total == 0:
        return LogScan(0, None, None, _empty(sample_columns), _empty(keep_columns), 0)
    picks = None
    if total > sample_rows:
        draw = np.random.default_rng(seed).choice(total, size=sample_rows, replace=False)
        picks = np.sort(draw)
    wanted = list(dict.fromkeys([*sample_columns, *keep_columns]))
    samples: list[pa.Table] = []
    kept: list[pa.Table] = []
    offset = 0
    for path, mask, _ in found:
        table = read_file(path, wanted).filter(pa.array(mask))
        present = set(table.column_names)
        n = table.num_rows
        if picks is None:
            part = table
        else:
            lo, hi = np.searchsorted(picks, [offset, offset + n])
            part = table.take(pa.array(picks[lo:hi] - offset))
        samples.append(part.select([c for c in sample_columns if c in present]))
        if keep_columns:
            kept.append(table.select([c for c in keep_columns if c in present]))
        offset += n
    first = min(int(micros.min()) for _, _, micros in found)
    last = max(int(micros.max()) for _, _, micros in found)

    def joined(parts: list[pa.Table], columns: Sequence[str]) -> pa.Table:
        table = pa.concat_tables(parts, promote_options="default") if parts else _empty(columns)
        missing = [c for c in columns if c not in table.column_names]
        for column in missing:
            table = table.append_column(column, pa.nulls(table.num_rows))
        return table.select(list(columns))

    return LogScan(
        rows=total,
        first=_bound(first),
        last=_bound(last),
        sample=joined(samples, sample_columns),
        kept=joined(kept, keep_columns),
        files=len(found),
    )
