"""The current window: which rows of the inference log a drift check looks at, and their identity.

The rows are read by the contract's reader (:func:`data_contracts.inference_log.read_log`,
the same module the bento writes with, or :func:`data_contracts.log_scan.scan_log` for a
window too large to hold); this module adds the flow's view of it: a :class:`Window` parameter
(last hours or last rows), pandas or Arrow, and the window's id.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_contracts.inference_log import SCORE_COLUMN, TIMESTAMP_COLUMN, read_log
from data_contracts.log_scan import LogScan, scan_log
from data_contracts.spec import FeatureSpec


class Window(BaseModel):
    """Which part of the inference log is the current window: the last hours or the last rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hours: float | None = Field(None, gt=0)
    rows: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> Window:
        if (self.hours is None) == (self.rows is None):
            raise ValueError("window: give exactly one of hours or rows")
        return self

    def describe(self) -> str:
        return f"last {self.hours:g} h" if self.hours is not None else f"last {self.rows:,} rows"


def monitored_columns(spec: FeatureSpec) -> list[str]:
    """Every spec feature in pinned order, then the score."""
    return [*spec.feature_names, SCORE_COLUMN]


def read_inference_log(
    root: Path,
    window: Window,
    *,
    now: datetime | None = None,
    model_version: str | None = None,
    columns: list[str] | None = None,
    as_table: bool = False,
) -> pd.DataFrame | pa.Table:
    """Rows of the inference log in ``window``, oldest first; an empty frame if there are none.

    ``as_table`` returns the Arrow table, so that a caller that samples converts only the sample.
    Rows are filtered in Arrow (see :func:`~data_contracts.inference_log.read_log`) before pandas
    sees them. With ``model_version`` only rows served by that version are kept, so the window
    is comparable with that version's reference.
    """
    table = read_log(
        root,
        now=now or datetime.now(UTC),
        hours=window.hours,
        rows=window.rows,
        model_version=model_version,
        columns=columns,
    )
    return table if as_table else table.to_pandas()


def time_range(frame: pd.DataFrame | pa.Table) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """First and last timestamp of a window (pandas or Arrow); None when it is empty."""
    if len(frame) == 0:
        return None
    if isinstance(frame, pa.Table):
        bounds = pc.min_max(frame[TIMESTAMP_COLUMN]).as_py()
        return pd.Timestamp(bounds["min"]), pd.Timestamp(bounds["max"])
    ts = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    return ts.min(), ts.max()


def window_id(frame: pd.DataFrame | pa.Table, champion_version: str) -> str:
    """A content identity of the window: champion, first/last timestamp and row count.

    Two checks over the same rows get the same id, which makes a retraining trigger idempotent.
    """
    bounds = time_range(frame)
    first, last = bounds if bounds is not None else (None, None)
    return identity(champion_version, first, last, len(frame))


def identity(
    champion_version: str, first: datetime | None, last: datetime | None, rows: int
) -> str:
    """:func:`window_id` from the window's bounds and row count (what a scan knows)."""
    if first is None or last is None or rows == 0:
        return f"v{champion_version}-empty"
    first, last = pd.Timestamp(first), pd.Timestamp(last)
    raw = f"{champion_version}|{first.isoformat()}|{last.isoformat()}|{rows}"
    digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
    return f"v{champion_version}-{first:%Y%m%dT%H%M}-{last:%Y%m%dT%H%M}-{digest}"


def scan_window(
    root: Path,
    window: Window,
    *,
    now: datetime,
    model_version: str | None,
    sample_columns: list[str],
    sample_rows: int,
    seed: int,
    keep_columns: list[str],
) -> LogScan:
    """The window scanned file by file (see :mod:`data_contracts.log_scan`): its row count,
    bounds, a uniform sample of ``sample_columns`` and ``keep_columns`` of every row."""
    return scan_log(
        root,
        now=now,
        hours=window.hours,
        rows=window.rows,
        model_version=model_version,
        sample_columns=sample_columns,
        sample_rows=sample_rows,
        seed=seed,
        keep_columns=keep_columns,
    )
