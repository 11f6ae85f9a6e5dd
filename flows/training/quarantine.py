"""Writing quarantine files of the rows the data contract refused."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from data_contracts.schemas import ValidationResult


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
