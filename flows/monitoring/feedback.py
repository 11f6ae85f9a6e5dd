"""Labelled feedback: reading the files of resolved transactions a drift check joins to its window.

Fraud labels arrive late (chargebacks, weeks after the payment). Labelled feedback lands as
Parquet or CSV files in ``Settings().feedback_root``, one row per resolved transaction:

``transaction_id_hash`` (keyed HMAC hex, as the inference log stores it) *or* ``transaction_id``
(clear; hashed here with the same key and never written anywhere), ``label`` (0/1, or the
spec's positive/negative labels, booleans), ``labelled_at`` (when the label was known; rows
known after the check's time are not used yet; no column: known).

:func:`read_feedback` reads the folder and counts its faults (:class:`FeedbackCounts`) instead
of raising: unreadable files, labels of another value set, labels not known yet. Judging the
served model on these labels is :mod:`flows.monitoring.performance`; reading is apart because
it is the only part that touches files and clear ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from data_contracts.id_key import hash_id
from data_contracts.inference_log import TRANSACTION_ID_HASH_COLUMN

CLEAR_ID = "transaction_id"
LABEL = "label"
LABELLED_AT = "labelled_at"
SUFFIXES = (".parquet", ".pq", ".csv")
_TRUE = {"1", "true", "fraud", "yes"}
_FALSE = {"0", "false", "legit", "legitimate", "no"}


class FeedbackCounts(BaseModel):
    """What the feedback folder held and what of it could not be used (never double-counted)."""

    model_config = ConfigDict(frozen=True)

    files: int = 0
    rows: int = 0
    unreadable: list[str] = Field(default_factory=list)
    invalid_labels: int = 0
    not_yet_known: int = 0
    duplicates: int = 0
    conflicting: int = 0
    outside_window: int = 0
    rescored: int = 0

    def faults(self) -> list[str]:
        """The counts worth telling a reader, as phrases."""
        out = [f"unreadable feedback file {u}" for u in self.unreadable]
        for n, what in (
            (self.invalid_labels, "labels outside 0/1 ignored"),
            (self.not_yet_known, "labels known only after this check, not used yet"),
            (self.duplicates, "duplicate labels counted once"),
            (self.conflicting, "conflicting labels: the latest kept"),
            (self.outside_window, "labels for transactions not scored in this window"),
            (self.rescored, "transactions scored more than once: the last score counted"),
        ):
            if n:
                out.append(f"{n:,} {what}")
        return out


def feedback_files(root: Path) -> list[Path]:
    """Feedback files in ``root`` (recursively), oldest name first; hidden files skipped."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    )


def _labels(values: pd.Series) -> pd.Series:
    """0/1 as Int8, <NA> for anything that is not a label of a binary outcome."""
    text = values.astype("string").str.strip().str.lower().replace({"1.0": "1", "0.0": "0"})
    out = pd.Series(pd.NA, index=values.index, dtype="Int8")
    out[text.isin(_TRUE).fillna(False)] = 1
    out[text.isin(_FALSE).fillna(False)] = 0
    return out


def read_feedback(
    root: Path, key: bytes, now: datetime | None = None
) -> tuple[pd.DataFrame, FeedbackCounts]:
    """Every usable feedback row as (``transaction_id_hash``, ``label``, ``labelled_at``).

    Clear ids are hashed with ``key`` at once and dropped. Never raises on a bad file: it is
    named in the counts and skipped.
    """
    now = now or datetime.now(UTC)
    frames, unreadable = [], []
    rows = invalid = not_yet = 0
    files = feedback_files(root)
    for path in files:
        try:
            raw = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
        except Exception as err:
            unreadable.append(f"{path.name}: {type(err).__name__}")
            continue
        if TRANSACTION_ID_HASH_COLUMN in raw.columns:
            ids = raw[TRANSACTION_ID_HASH_COLUMN].astype("string")
        elif CLEAR_ID in raw.columns:
            ids = raw[CLEAR_ID].map(lambda v: None if pd.isna(v) else hash_id(str(v), key))
            ids = ids.astype("string")
        else:
            unreadable.append(f"{path.name}: no {TRANSACTION_ID_HASH_COLUMN} or {CLEAR_ID} column")
            continue
        if LABEL not in raw.columns:
            unreadable.append(f"{path.name}: no {LABEL} column")
            continue
        rows += len(raw)
        labels = _labels(raw[LABEL])
        when = (
            pd.to_datetime(raw[LABELLED_AT], utc=True, errors="coerce")
            if LABELLED_AT in raw.columns
            else pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
        )
        bad = labels.isna() | ids.isna()
        invalid += int(bad.sum())
        later = ~bad & when.notna() & (when > pd.Timestamp(now))
        not_yet += int(later.sum())
        keep = ~bad & ~later
        frames.append(
            pd.DataFrame(
                {
                    TRANSACTION_ID_HASH_COLUMN: ids[keep].to_numpy(dtype=object),
                    LABEL: labels[keep].astype("int8").to_numpy(),
                    LABELLED_AT: when[keep].to_numpy(),
                }
            )
        )
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(
            {
                TRANSACTION_ID_HASH_COLUMN: pd.Series(dtype=object),
                LABEL: pd.Series(dtype="int8"),
                LABELLED_AT: pd.Series(dtype="datetime64[ns, UTC]"),
            }
        )
    )
    counts = FeedbackCounts(
        files=len(files),
        rows=rows,
        unreadable=unreadable,
        invalid_labels=invalid,
        not_yet_known=not_yet,
    )
    return frame, counts
