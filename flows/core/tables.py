"""Reading data tables (CSV or Parquet) and their identity: shared by training and monitoring."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

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
