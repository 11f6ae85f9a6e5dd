"""Where a release puts its decision threshold: best F1 (the default) or least expected cost.

``policy.threshold_objective``:

* ``f1``: the threshold that maximises F1 on the tuning rows (what releases always did).
* ``cost``: the threshold that minimises what the decisions cost on the tuning rows: a missed
  fraud costs ``missed_fraud_cost`` (a constant, or the name of a numeric column such as
  ``amount``: each fraud costs its own value), a false alarm ``false_alarm_cost`` (a review).
  With calibrated scores and constant costs this lands near the textbook
  ``false_alarm / (false_alarm + missed_fraud)``; with amounts it follows the table.

Either way the threshold is placed halfway between the score it selects and the next lower
score of the tuning rows: the same decisions on those rows, and no row sits right at it (the
served graph computes in float32; a row at the threshold could flip).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from flows.training.train import tune_threshold

Objective = Literal["f1", "cost"]


class ThresholdObjective(BaseModel):
    """What the threshold optimises, and the costs when it is the expected cost."""

    model_config = ConfigDict(frozen=True)

    kind: Objective = "f1"
    missed_fraud_cost: float | str | None = None
    false_alarm_cost: float | None = None

    @property
    def has_costs(self) -> bool:
        return self.missed_fraud_cost is not None and self.false_alarm_cost is not None

    def describe(self) -> str:
        """``a missed fraud costs its amount, a false alarm 5``."""
        miss = self.missed_fraud_cost
        what = f"its {miss}" if isinstance(miss, str) else f"{miss:g}"
        return f"a missed fraud costs {what}, a false alarm {self.false_alarm_cost:g}"


class CostError(ValueError):
    """The cost settings cannot be applied to the data (a missing or non-numeric column)."""


def miss_costs(frame: pd.DataFrame, objective: ThresholdObjective) -> np.ndarray:
    """The cost of missing each row's fraud (missing values cost nothing; negatives refused)."""
    miss = objective.missed_fraud_cost
    if miss is None:
        raise CostError("cost objective: missed_fraud_cost is not set")
    if not isinstance(miss, str):
        return np.full(len(frame), float(miss))
    if miss not in frame.columns:
        raise CostError(f"cost objective: column {miss!r} is not in the data")
    values = pd.to_numeric(frame[miss], errors="coerce")
    if values.notna().sum() == 0 and len(values):
        raise CostError(f"cost objective: column {miss!r} holds no numbers")
    out = values.fillna(0.0).to_numpy(dtype=np.float64)
    if (out < 0).any():
        raise CostError(f"cost objective: column {miss!r} has negative values")
    return out


def check_costs(frame: pd.DataFrame, objective: ThresholdObjective) -> None:
    """Raise :class:`CostError` now when the costs cannot be read from ``frame``."""
    if objective.kind == "cost" or objective.has_costs:
        miss_costs(frame.head(100), objective)


def lower_midpoint(scores: np.ndarray, threshold: float) -> float:
    """Halfway between ``threshold`` and the highest score below it (itself when none is)."""
    s = np.asarray(scores, dtype=np.float64)
    below = s[s < threshold]
    return float(threshold) if below.size == 0 else float((threshold + below.max()) / 2)


def cost_threshold(
    y: np.ndarray, scores: np.ndarray, miss: np.ndarray, false_alarm: float
) -> float:
    """The score threshold (flag at or above it) with the least total cost on these rows."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, yy, mm = s[order], np.asarray(y)[order], np.asarray(miss, dtype=np.float64)[order]
    caught = np.cumsum(np.where(yy == 1, mm, 0.0))  # miss cost avoided by flagging rows 0..i
    alarms = np.cumsum(yy == 0) * float(false_alarm)
    total_miss = float(np.sum(np.where(yy == 1, mm, 0.0)))
    last = np.r_[s[1:] != s[:-1], True]  # cut only after the last row of a score
    cost = total_miss - caught[last] + alarms[last]
    cuts = s[last]
    if len(cuts) == 0 or total_miss <= cost.min():
        return 1.0 if len(cuts) == 0 else float(min(1.0, np.nextafter(s[0], np.inf)))
    return float(cuts[int(np.argmin(cost))])


def expected_cost(
    y: np.ndarray, scores: np.ndarray, threshold: float, miss: np.ndarray, false_alarm: float
) -> np.ndarray:
    """Each row's cost at ``threshold``: its miss cost if a fraud is not flagged, the false
    alarm cost if a legitimate row is."""
    flagged = np.asarray(scores) >= threshold
    y = np.asarray(y)
    return np.where((y == 1) & ~flagged, miss, 0.0) + np.where(
        (y == 0) & flagged, float(false_alarm), 0.0
    )


class ThresholdChoice(BaseModel):
    """The chosen threshold and the one F1 would have chosen on the same rows."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    f1_threshold: float
    objective: Objective = "f1"


def choose_threshold(
    objective: ThresholdObjective, y: np.ndarray, scores: np.ndarray, frame: pd.DataFrame | None
) -> ThresholdChoice:
    """The release's threshold on the tuning rows (``frame``: their columns, for the costs)."""
    f1 = lower_midpoint(scores, tune_threshold(y, scores))
    if objective.kind == "f1":
        return ThresholdChoice(threshold=f1, f1_threshold=f1)
    if frame is None:
        raise CostError("cost objective: the tuning rows' columns are needed for the costs")
    miss = miss_costs(frame, objective)
    chosen = cost_threshold(y, scores, miss, float(objective.false_alarm_cost or 0.0))
    if len(scores) and chosen <= float(np.max(scores)):
        chosen = lower_midpoint(scores, chosen)
    return ThresholdChoice(threshold=chosen, f1_threshold=f1, objective="cost")
