"""Realized performance: the served model's precision, recall and F1 on transactions it scored.

:func:`realized_performance` joins the labelled feedback (read by
:func:`flows.monitoring.feedback.read_feedback`) to the window's scored rows on the hash and
computes the served decisions' precision, recall, F1 and PR-AUC, with the label coverage and a
bootstrap interval of F1, judged against the champion's holdout F1. Faults of the join are
counted, never raised: ids that match no scored row of the window (unknown, or outside it),
duplicate labels (one kept), conflicting labels (the latest ``labelled_at`` kept). A
transaction scored more than once in the window counts once (its last score). Too few labels
give "not enough labels" instead of a number. Pure pandas and numpy (Evidently only for the
optional classification report); apart from the reader, which is the part that touches files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from data_contracts.inference_log import (
    DECISION_COLUMN,
    SCORE_COLUMN,
    TIMESTAMP_COLUMN,
    TRANSACTION_ID_HASH_COLUMN,
)
from flows.monitoring.calibration import RealizedCalibration, realized_calibration
from flows.monitoring.feedback import LABEL, LABELLED_AT, FeedbackCounts

Status = Literal["no feedback", "not enough labels", "not judged", "within limits", "dropped"]


class FeedbackPolicy(BaseModel):
    """When realized performance is judged and what counts as a drop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_labels: int = Field(500, ge=1, description="Labelled scored rows needed to judge.")
    min_positives: int = Field(20, ge=1, description="Labelled frauds needed to judge.")
    f1_tolerance: float = Field(
        0.05, ge=0, lt=1, description="A drop: the F1 interval's top below holdout F1 minus this."
    )
    resamples: int = Field(1000, ge=100, description="Bootstrap resamples of the F1 interval.")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0
    trigger: bool = Field(True, description="A drop triggers retraining without input drift.")
    rate_ratio_limit: float = Field(
        1.5,
        gt=1,
        description="A calibration collapse: observed over predicted fraud rate, relative to "
        "the champion's reference, clearly beyond this factor either way (also a drop).",
    )


class RealizedPerformance(BaseModel):
    """The served model's realized precision, recall and F1 on labelled feedback, judged."""

    model_config = ConfigDict(frozen=True)

    status: Status
    detail: str
    scored_rows: int = 0
    with_id: int = 0
    labelled: int = 0
    positives: int = 0
    coverage: float = 0.0
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    f1_low: float | None = None
    f1_high: float | None = None
    pr_auc: float | None = None
    champion_f1: float | None = None
    report_html: str | None = None  # Evidently's classification report of the labelled rows
    calibration: RealizedCalibration | None = None  # predicted vs observed fraud rate
    tolerance: float = 0.0
    confidence: float = 0.95
    counts: FeedbackCounts = FeedbackCounts()

    @property
    def dropped(self) -> bool:
        return self.status == "dropped"

    def metrics(self) -> dict[str, float]:
        """MLflow metrics of the monitoring run (``realized_f1``, ``label_coverage`` ...)."""
        out = {
            "label_coverage": self.coverage,
            "labelled_rows": float(self.labelled),
            "labelled_positives": float(self.positives),
            "realized_dropped": float(self.dropped),
        }
        for name in ("precision", "recall", "f1", "f1_low", "f1_high", "pr_auc"):
            value = getattr(self, name)
            if value is not None:
                out[f"realized_{name}"] = float(value)
        if self.calibration is not None:
            out |= self.calibration.metrics()
        return out


def _dedupe_labels(feedback: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """One label per transaction: duplicates dropped, conflicts resolved by the latest."""
    if feedback.empty:
        return feedback, 0, 0
    ordered = feedback.sort_values(LABELLED_AT, kind="stable", na_position="first")
    groups = ordered.groupby(TRANSACTION_ID_HASH_COLUMN, sort=False)[LABEL]
    distinct = groups.nunique()
    sizes = groups.size()
    conflicting = int((distinct > 1).sum())
    duplicates = int((sizes - 1)[distinct == 1].sum())
    latest = ordered.drop_duplicates(TRANSACTION_ID_HASH_COLUMN, keep="last")
    return latest, duplicates, conflicting


def _window_rows(
    window: pa.Table | pd.DataFrame, labelled: pd.Series
) -> tuple[pd.DataFrame, int, int]:
    """Scored rows with a label: (hash, score, decision), the last scoring of each; counts.

    Returns the labelled rows, how many window rows carry an id and how many distinct ids they
    are. Counting and the label filter run in Arrow, so pandas only sees the labelled rows, not
    the millions of hashes of a large window.
    """
    wanted = [TRANSACTION_ID_HASH_COLUMN, SCORE_COLUMN, DECISION_COLUMN, TIMESTAMP_COLUMN]
    if isinstance(window, pd.DataFrame):
        present = [c for c in wanted if c in window.columns]
        window = pa.Table.from_pandas(window[present], preserve_index=False)
    table = window.select([c for c in wanted if c in window.column_names])
    if TRANSACTION_ID_HASH_COLUMN not in table.column_names or (
        DECISION_COLUMN not in table.column_names
    ):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in wanted}), 0, 0
    ids = pc.cast(table[TRANSACTION_ID_HASH_COLUMN], pa.string())
    with_id = len(ids) - ids.null_count
    distinct = pc.count_distinct(ids, mode="only_valid").as_py()
    values = pa.array(labelled.dropna().astype(str).unique(), pa.string())
    frame = table.filter(pc.fill_null(pc.is_in(ids, value_set=values), False)).to_pandas()
    frame[TRANSACTION_ID_HASH_COLUMN] = frame[TRANSACTION_ID_HASH_COLUMN].astype(object)
    last = frame.sort_values(TIMESTAMP_COLUMN, kind="stable").drop_duplicates(
        TRANSACTION_ID_HASH_COLUMN, keep="last"
    )
    return last, with_id, distinct


def f1_interval(
    labels: np.ndarray, decisions: np.ndarray, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Bootstrap percentile interval of F1: resamples of the 4 (label, decision) cell counts.

    Drawing n rows with replacement gives multinomial cell counts, so no index matrix is built.
    """
    cells = np.bincount(2 * labels.astype(np.int64) + decisions.astype(np.int64), minlength=4)
    n = int(cells.sum())
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=resamples)
    tp, fn, fp = draws[:, 3], draws[:, 2], draws[:, 1]
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(resamples), where=denom > 0)
    tail = (1 - confidence) / 2
    low, high = np.quantile(f1, [tail, 1 - tail])
    return float(low), float(high)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """PR-AUC as average precision (scikit-learn's definition); None without a positive."""
    if labels.sum() == 0:
        return None
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores))


def realized_performance(
    window: pa.Table | pd.DataFrame,
    feedback: pd.DataFrame,
    counts: FeedbackCounts,
    policy: FeedbackPolicy,
    champion_f1: float | None,
    report_dir: Path | None = None,
    scored_rows: int | None = None,
    reference_ratio: float | None = None,
) -> RealizedPerformance:
    """Join labels to the window's scored rows; the served decisions' metrics, judged.

    Beside F1, the predicted and observed fraud rates of the labelled rows
    (:func:`flows.monitoring.calibration.realized_calibration`, judged against
    ``reference_ratio``, the champion reference's observed over predicted rate): a calibration
    collapse is a drop too.

    ``window`` holds the id, score, decision and timestamp of every window row;
    ``scored_rows`` is the window's row count when ``window`` holds no rows because there is no
    feedback to join (a scan then skips the id column). With ``report_dir``, Evidently's
    classification report of the labelled rows (served decisions and scores against the
    labels) is written there as ``performance_report.html``.
    """
    labels, duplicates, conflicting = _dedupe_labels(feedback)
    scored, with_id, distinct = _window_rows(window, labels[TRANSACTION_ID_HASH_COLUMN])
    rescored = with_id - distinct
    joined = scored.merge(labels, on=TRANSACTION_ID_HASH_COLUMN, how="inner")
    counts = counts.model_copy(
        update={
            "duplicates": duplicates,
            "conflicting": conflicting,
            "outside_window": len(labels) - len(joined),
            "rescored": rescored,
        }
    )
    base = {
        "scored_rows": len(window) if scored_rows is None else scored_rows,
        "with_id": with_id,
        "labelled": len(joined),
        "coverage": len(joined) / distinct if distinct else 0.0,
        "champion_f1": champion_f1,
        "tolerance": policy.f1_tolerance,
        "confidence": policy.confidence,
        "counts": counts,
    }
    if counts.files == 0:
        return RealizedPerformance(status="no feedback", detail="no labelled feedback yet", **base)
    y = joined[LABEL].to_numpy(dtype=np.int64)
    d = joined[DECISION_COLUMN].to_numpy(dtype=np.int64)
    positives = int(y.sum())
    base["positives"] = positives
    if report_dir is not None and len(joined) and 0 < positives < len(joined):
        base["report_html"] = str(classification_report(joined, report_dir))
    enough = len(joined) >= policy.min_labels and positives >= policy.min_positives
    if len(joined) and SCORE_COLUMN in joined.columns:
        base["calibration"] = realized_calibration(
            y, joined[SCORE_COLUMN].to_numpy(dtype=np.float64), reference_ratio,
            limit=policy.rate_ratio_limit, judge=enough, resamples=policy.resamples,
            confidence=policy.confidence, seed=policy.seed,
        )  # fmt: skip
    if not enough:
        return RealizedPerformance(
            status="not enough labels",
            detail=(
                f"not enough labels to judge: {len(joined):,} labelled scored rows "
                f"({positives:,} frauds); needs {policy.min_labels:,} and "
                f"{policy.min_positives:,} frauds"
            ),
            **base,
        )
    tp = int(((y == 1) & (d == 1)).sum())
    fp = int(((y == 0) & (d == 1)).sum())
    fn = int(((y == 1) & (d == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    low, high = f1_interval(y, d, policy.resamples, policy.confidence, policy.seed)
    level = f"{policy.confidence * 100:g}%"
    measured = (
        f"F1 {f1:.3f} ({level} {low:.3f} to {high:.3f}), precision {precision:.3f}, "
        f"recall {recall:.3f} on {len(joined):,} labelled rows ({positives:,} frauds)"
    )
    if champion_f1 is None:
        status: Status = "not judged"
        detail = f"{measured}; the champion has no holdout F1 to compare with"
    else:
        line = champion_f1 - policy.f1_tolerance
        dropped = high < line
        status = "dropped" if dropped else "within limits"
        sign = "<" if dropped else "≥"
        detail = (
            f"{measured}; top of the interval {high:.3f} {sign} holdout F1 {champion_f1:.3f} "
            f"- {policy.f1_tolerance:g}"
        )
    calibration = base.get("calibration")
    if isinstance(calibration, RealizedCalibration):
        detail += f"; {calibration.detail}"
        if calibration.collapsed:
            status = "dropped"
    return RealizedPerformance(
        status=status,
        detail=detail,
        precision=precision,
        recall=recall,
        f1=f1,
        f1_low=low,
        f1_high=high,
        pr_auc=average_precision(y, joined[SCORE_COLUMN].to_numpy(dtype=np.float64)),
        **base,
    )


def classification_report(joined: pd.DataFrame, folder: Path) -> Path:
    """Evidently's classification preset on the labelled rows, at the served threshold."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    frame = pd.DataFrame(
        {
            "target": joined[LABEL].astype(int).to_numpy(),
            "prediction": joined[DECISION_COLUMN].astype(int).to_numpy(),
        }
    )
    definition = DataDefinition(
        classification=[
            BinaryClassification(target="target", prediction_labels="prediction", pos_label=1)
        ]
    )
    snapshot = Report([ClassificationPreset()]).run(
        Dataset.from_pandas(frame, data_definition=definition), None
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "performance_report.html"
    snapshot.save_html(str(path))
    return path


def feedback_columns() -> Sequence[str]:
    """The window's columns the join needs beside the monitored ones."""
    return (TRANSACTION_ID_HASH_COLUMN, DECISION_COLUMN)
