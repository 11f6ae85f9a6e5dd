"""The verdict of a drift check: policy (thresholds, sampling), per-column results, decision.

Pure: no I/O, no Evidently. :func:`decide` turns per-column results into drift or no drift with
the reasons; :func:`not_enough_data` guards windows too small for any verdict.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from data_contracts.inference_log import SCORE_COLUMN


class Outcome(StrEnum):
    """The verdict of one drift check."""

    NOT_ENOUGH_DATA = "not enough data"
    NO_DRIFT = "no drift"
    DRIFT = "drift"


class DriftPolicy(BaseModel):
    """Thresholds and sampling of a drift check."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drift_share: float = Field(
        0.3, gt=0, le=1, description="Share of spec features drifted that counts as data drift."
    )
    column_threshold: float | None = Field(
        None, gt=0, description="Per-feature statistic threshold; None: Evidently's (0.1)."
    )
    score_threshold: float | None = Field(
        None, gt=0, description="Threshold for the model score; None: same as the features."
    )
    min_window_rows: int = Field(1000, ge=1, description="Fewer rows: 'not enough data'.")
    sample_rows: int = Field(
        30_000, ge=1_001, description="Rows sampled from each side before Evidently runs."
    )
    seed: int = 0


class ColumnDrift(BaseModel):
    """Drift of one column: the test, its statistic (the effect size) and the verdict."""

    model_config = ConfigDict(frozen=True)

    column: str
    kind: str
    method: str
    statistic: float | None
    threshold: float | None
    drifted: bool
    p_value: float | None = None
    p_value_test: str | None = None
    noise_floor: float | None = None
    shift: str = ""
    note: str = ""


class DriftVerdict(BaseModel):
    """The decision of one check, with its numbers and reasons."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    features_tested: int = 0
    features_drifted: list[str] = Field(default_factory=list)
    drift_share: float = 0.0
    score_drifted: bool = False
    retrain_wanted: bool = False
    reasons: list[str] = Field(default_factory=list)


def not_enough_data(window_rows: int, policy: DriftPolicy) -> DriftVerdict | None:
    """The 'not enough data' verdict when the window is below the minimum, else None."""
    if window_rows >= policy.min_window_rows:
        return None
    return DriftVerdict(
        outcome=Outcome.NOT_ENOUGH_DATA,
        reasons=[
            f"window has {window_rows:,} rows, below the minimum of {policy.min_window_rows:,}: "
            "no drift verdict and no retraining"
        ],
    )


def decide(results: list[ColumnDrift], policy: DriftPolicy) -> DriftVerdict:
    """Drift when the share of drifted spec features, or the score drift, crosses its line."""
    features = [r for r in results if r.column != SCORE_COLUMN and r.method != "not tested"]
    drifted = [r.column for r in features if r.drifted]
    share = len(drifted) / len(features) if features else 0.0
    score = next((r for r in results if r.column == SCORE_COLUMN), None)
    score_drifted = bool(score and score.drifted)
    reasons = []
    if share >= policy.drift_share:
        reasons.append(
            f"{len(drifted)} of {len(features)} features drifted ({share:.0%} ≥ "
            f"{policy.drift_share:.0%})"
        )
    if score_drifted and score is not None:
        reasons.append(
            f"model score drifted ({score.method} {score.statistic:.3f} ≥ {score.threshold})"
        )
    wanted = bool(reasons)
    if not wanted:
        reasons.append(
            f"{len(drifted)} of {len(features)} features drifted ({share:.0%} < "
            f"{policy.drift_share:.0%}) and the score did not drift"
        )
    return DriftVerdict(
        outcome=Outcome.DRIFT if wanted else Outcome.NO_DRIFT,
        features_tested=len(features),
        features_drifted=drifted,
        drift_share=share,
        score_drifted=score_drifted,
        retrain_wanted=wanted,
        reasons=reasons,
    )
