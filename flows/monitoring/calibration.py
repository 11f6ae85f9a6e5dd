"""Realized calibration: does the served ``fraud_probability`` still mean what it says?

On the labelled rows of the window, the mean served score is the fraud rate the model
predicted and the labels give the rate observed. Their ratio (observed over predicted) is 1 for
calibrated scores; a class-weighted champion registered before releases calibrated has its own
ratio, well below 1. So the ratio is judged against the champion's reference: the same ratio on
its reference snapshot (unseen validation and holdout rows with their labels and scores, logged
with the model). A **calibration collapse** is the window's ratio, divided by the reference's,
clearly beyond ``rate_ratio_limit`` (1.5) either way: its bootstrap interval lies entirely above
the limit or entirely below its inverse. New fraud the model scores low shows up as a ratio far
above 1 even when the decisions' F1 has not moved yet; a collapse is a retraining signal beside
a drop in F1.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from data_contracts.inference_log import SCORE_COLUMN
from data_contracts.schemas import LABEL_INT

CHUNK = 50  # bootstrap resamples drawn at once


class RealizedCalibration(BaseModel):
    """Predicted against observed fraud rate on the labelled rows, judged."""

    model_config = ConfigDict(frozen=True)

    status: Literal["not judged", "within limits", "collapsed"]
    detail: str
    rows: int
    predicted_rate: float
    observed_rate: float
    ratio: float | None = None  # observed / predicted
    ratio_low: float | None = None
    ratio_high: float | None = None
    reference_ratio: float | None = None
    limit: float = 1.5

    @property
    def collapsed(self) -> bool:
        return self.status == "collapsed"

    def metrics(self) -> dict[str, float]:
        """MLflow metrics ``realized_predicted_rate`` ... ``realized_calibration_collapsed``."""
        out = {
            "realized_predicted_rate": self.predicted_rate,
            "realized_observed_rate": self.observed_rate,
            "realized_calibration_collapsed": float(self.collapsed),
        }
        for name in ("ratio", "ratio_low", "ratio_high", "reference_ratio"):
            value = getattr(self, name)
            if value is not None:
                out[f"realized_rate_{name}"] = float(value)
        return out


def reference_rate_ratio(frame: pa.Table | pd.DataFrame) -> float | None:
    """Observed over predicted fraud rate on the champion's reference; None without labels."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame)
    if LABEL_INT not in table.column_names or SCORE_COLUMN not in table.column_names:
        return None
    y = np.asarray(table[LABEL_INT].to_numpy(), dtype=np.float64)
    s = np.asarray(table[SCORE_COLUMN].to_numpy(), dtype=np.float64)
    keep = np.isfinite(y) & np.isfinite(s)
    if not keep.any() or s[keep].sum() <= 0 or y[keep].sum() <= 0:
        return None
    return float(y[keep].mean() / s[keep].mean())


def ratio_interval(
    labels: np.ndarray, scores: np.ndarray, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Bootstrap percentile interval of sum(labels) / sum(scores) (rows resampled)."""
    rng = np.random.default_rng(seed)
    n, draws, done = len(labels), [], 0
    while done < resamples:
        c = min(CHUNK, resamples - done)
        idx = rng.integers(0, n, size=(c, n))
        predicted = scores[idx].sum(axis=1)
        draws.append(np.divide(labels[idx].sum(axis=1), predicted,
                               out=np.full(c, np.inf), where=predicted > 0))  # fmt: skip
        done += c
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(draws), [tail, 1 - tail])
    return float(low), float(high)


def realized_calibration(
    labels: np.ndarray,
    scores: np.ndarray,
    reference_ratio: float | None,
    *,
    limit: float,
    judge: bool,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> RealizedCalibration:
    """Predicted vs observed fraud rate on the labelled rows; judged (``judge``: enough labels)
    against the reference's ratio."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    predicted, observed = float(s.mean()), float(y.mean())
    rates = (
        f"predicted fraud rate {predicted:.2%} (mean served score) vs observed {observed:.2%} "
        f"on {len(y):,} labelled rows"
    )
    base = {"rows": len(y), "predicted_rate": predicted, "observed_rate": observed,
            "reference_ratio": reference_ratio, "limit": limit}  # fmt: skip
    if not judge or predicted <= 0:
        return RealizedCalibration(status="not judged", detail=rates, **base)
    ratio = observed / predicted
    low, high = ratio_interval(y, s, resamples, confidence, seed)
    base |= {"ratio": ratio, "ratio_low": low, "ratio_high": high}
    measured = (
        f"{rates}: observed/predicted {ratio:.2f} ({confidence * 100:g}% {low:.2f} to {high:.2f})"
    )
    if reference_ratio is None:
        return RealizedCalibration(
            status="not judged",
            detail=f"{measured}; the reference has no labelled rows to compare with",
            **base,
        )
    rel_low, rel_high = low / reference_ratio, high / reference_ratio
    collapsed = rel_low > limit or rel_high < 1 / limit
    where = f"{rel_low:.2f} to {rel_high:.2f} times the reference's {reference_ratio:.2f}"
    verdict = (
        f"CALIBRATION COLLAPSED: {where}, beyond the limit x{limit:g}"
        if collapsed
        else f"{where}, within x{limit:g}"
    )
    return RealizedCalibration(
        status="collapsed" if collapsed else "within limits", detail=f"{measured}; {verdict}",
        **base,
    )  # fmt: skip
