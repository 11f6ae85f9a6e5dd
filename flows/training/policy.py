"""The release gates' policy: every threshold a flow run may change (``policy=...``).

F1 floor and champion comparison, bootstrap settings, segments, parity, the contract's
quarantine limit, leakage, calibration (how much worse than the champion's a candidate's
calibration may be) and the threshold objective with its costs
(:mod:`flows.training.thresholds`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.training.thresholds import Objective, ThresholdObjective

ChampionRule = Literal["non_inferior", "superior", "not_clearly_worse"]
RULES: dict[str, str] = {
    "non_inferior": "promote when the difference's lower bound is at or above -tolerance, "
    "so ties within the tolerance pass",
    "superior": "promote only a clear improvement, the lower bound above 0, so ties are blocked",
    "not_clearly_worse": "block only a clear drop beyond the tolerance, the upper bound below "
    "-tolerance, so every tie passes",
}


class GatePolicy(BaseModel):
    """Thresholds of the release gates; flow parameters, so a deployment run can change them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    f1_floor: float = Field(0.6, ge=0, le=1, description="Minimum holdout F1 of a candidate.")
    floor_on: Literal["estimate", "lower_bound"] = Field(
        "estimate",
        description="Judge the floor on the F1 estimate (its interval is shown) or on the "
        "interval's lower bound (stricter: the floor must hold with the policy's confidence).",
    )
    champion_tolerance: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Non-inferiority margin: how much worse than the champion (in holdout F1) "
        "the candidate may be; the difference interval's lower bound must be at or above "
        "minus this.",
    )
    champion_rule: ChampionRule = Field(
        "non_inferior", description="How the difference interval decides: " + "; ".join(
            f"{k}: {v}" for k, v in RULES.items()
        )
    )  # fmt: skip
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Coverage of the intervals.")
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap: same holdout, same answer.")
    min_holdout_positives: int = Field(
        50, ge=0, description="Fewer holdout positives than this: too few to judge, blocked."
    )
    allow_small_holdout: bool = Field(
        False, description="Judge a holdout below min_holdout_positives anyway (not blocked)."
    )
    slice_features: tuple[str, ...] | None = Field(
        None, description="Features whose segments are evaluated; default: every categorical."
    )
    max_slice_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Block when a segment's F1 is more than this below the champion's "
        "(None: segments are reported, not checked).",
    )
    min_slice_positives: int = Field(
        30, ge=1, description="Segments with fewer holdout positives are too small to judge."
    )
    parity_tolerance: float = Field(1e-4, gt=0, description="Max |p_sklearn - p_onnx|.")
    max_quarantine_share: float = Field(
        0.05, ge=0, le=1, description="Stop the run when more rows than this fail the contract."
    )
    block_on_leakage: bool = Field(
        False,
        description="Stop before training when a feature alone separates the classes almost "
        "perfectly (likely leakage); otherwise the release only warns.",
    )
    calibration_tolerance: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Block a candidate whose calibration is clearly worse than the champion's: "
        "the interval of its expected calibration error minus the champion's lies above this.",
    )
    calibration_bins: int = Field(
        10, ge=2, le=100, description="Equal-width score bins of the calibration error."
    )
    threshold_objective: Objective = Field(
        "f1",
        description="f1: the threshold with the best F1 on the tuning rows; cost: the one with "
        "the least expected cost (missed_fraud_cost, false_alarm_cost). The F1 floor applies "
        "either way; with cost the champion is compared on expected cost instead of F1.",
    )
    missed_fraud_cost: float | str | None = Field(
        None,
        description="What a missed fraud costs: a constant, or the name of a numeric column "
        "(e.g. amount: each fraud costs its own amount).",
    )
    false_alarm_cost: float | None = Field(
        None, ge=0, description="What a false alarm costs (a review), a constant."
    )
    cost_tolerance: float = Field(
        0.05,
        ge=0,
        description="cost objective: how much more than the champion's expected cost, as a "
        "share of it, the candidate may cost (the difference interval is judged by "
        "champion_rule, as F1 is).",
    )

    @model_validator(mode="after")
    def _costs_given(self) -> GatePolicy:
        miss = self.missed_fraud_cost
        if isinstance(miss, float | int) and miss < 0:
            raise ValueError("missed_fraud_cost: must be >= 0 (or a column name)")
        if self.threshold_objective == "cost" and (miss is None or self.false_alarm_cost is None):
            raise ValueError(
                "threshold_objective 'cost' needs missed_fraud_cost (a number or a column such "
                "as 'amount') and false_alarm_cost"
            )
        return self

    def objective(self) -> ThresholdObjective:
        """The threshold objective with its costs."""
        return ThresholdObjective(
            kind=self.threshold_objective,
            missed_fraud_cost=self.missed_fraud_cost,
            false_alarm_cost=self.false_alarm_cost,
        )
