"""Reading training tables and writing quarantine files."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from data_contracts.schemas import ValidationResult

READERS = {".parquet": pd.read_parquet, ".pq": pd.read_parquet, ".csv": pd.read_csv}


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; the error names the path and what is accepted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"data file {path}: expected .csv or .parquet, got {path.suffix!r}")
    return reader(path)


def file_digest(path: str | Path) -> str:
    """sha256 of the file's bytes (first 16 hex digits): the data set's identity."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def write_quarantine(result: ValidationResult, folder: Path, data_digest: str) -> Path | None:
    """Write the quarantined rows (with reasons) to a timestamped Parquet file; None if none."""
    if result.quarantined_rows == 0:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"quarantine-{data_digest}-{stamp}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    result.quarantine.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path
