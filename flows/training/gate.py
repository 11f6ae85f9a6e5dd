"""The release gates as pure decisions: F1 (floor and champion comparison) and ONNX parity."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from flows.training.onnx_export import ParityReport
from flows.training.train import Metrics


class GatePolicy(BaseModel):
    """Thresholds of the release gates; flow parameters, so a deployment run can change them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    f1_floor: float = Field(0.6, ge=0, le=1, description="Minimum holdout F1 of a candidate.")
    champion_tolerance: float = Field(
        0.01, ge=0, le=1, description="How far below the champion's holdout F1 a candidate may be."
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


class ChampionScore(BaseModel):
    """The current champion, scored afresh from its ONNX artifact on the candidate's holdout."""

    model_config = ConfigDict(frozen=True)

    version: str
    spec_hash: str
    f1: float | None = Field(None, description="None when it could not be scored on this holdout")
    note: str = ""


class Check(BaseModel):
    """One named check with its outcome and the numbers behind it."""

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    detail: str


class Decision(BaseModel):
    """Whether the candidate may become champion, with every check and reason."""

    model_config = ConfigDict(frozen=True)

    outcome: Literal["promote", "blocked"]
    checks: tuple[Check, ...]

    @property
    def promote(self) -> bool:
        return self.outcome == "promote"

    @property
    def reasons(self) -> list[str]:
        """The failed checks' details: why the candidate was blocked."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]


def decide_promotion(
    candidate: Metrics,
    parity: ParityReport,
    champion: ChampionScore | None,
    policy: GatePolicy,
) -> Decision:
    """Decide from the candidate's holdout metrics, its parity and the champion's fresh score."""
    checks = [
        Check(
            name="f1_floor",
            passed=candidate.f1 >= policy.f1_floor,
            detail=f"holdout F1 {candidate.f1:.4f} vs floor {policy.f1_floor:.4f}",
        )
    ]
    if champion is None:
        checks.append(Check(name="champion", passed=True, detail="no champion yet"))
    elif champion.f1 is None or math.isnan(champion.f1):
        checks.append(
            Check(
                name="champion",
                passed=False,
                detail=f"champion v{champion.version} could not be scored on this holdout "
                f"({champion.note}); promote by hand if the change is intended",
            )
        )
    else:
        bar = champion.f1 - policy.champion_tolerance
        checks.append(
            Check(
                name="champion",
                passed=candidate.f1 >= bar,
                detail=f"holdout F1 {candidate.f1:.4f} vs champion v{champion.version} "
                f"{champion.f1:.4f} - tolerance {policy.champion_tolerance:.4f} = {bar:.4f}",
            )
        )
    checks.append(
        Check(
            name="onnx_parity",
            passed=parity.max_abs_diff <= policy.parity_tolerance and parity.decision_flips == 0,
            detail=f"max |p_sklearn - p_onnx| {parity.max_abs_diff:.2e} "
            f"vs {policy.parity_tolerance:.0e}, "
            f"{parity.decision_flips} decision flips on {parity.rows} rows",
        )
    )
    outcome = "promote" if all(c.passed for c in checks) else "blocked"
    return Decision(outcome=outcome, checks=tuple(checks))
