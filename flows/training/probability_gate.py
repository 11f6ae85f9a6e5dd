"""The gate's view of the scores as probabilities and of what the decisions cost.

:func:`probability_evidence` measures, on the holdout, the candidate's calibration (Brier, ECE,
reliability) and, with costs set, its expected cost per 1,000 transactions, each paired with the
champion on the rows the champion check compares (see :mod:`flows.training.gate`).
:func:`calibration_check` blocks a candidate whose calibration is clearly worse than the
champion's; :func:`cost_check` is the champion comparison of the cost objective.

An uncalibrated champion (registered before releases calibrated, or with ``calibration:
none``) is compared on the same footing: both models are scored from their ONNX graphs (the
candidate's scikit-learn scores equal its graph's within the parity tolerance) on the same
holdout rows; decisions each at its own threshold, Brier and ECE on the scores as served.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from flows.training.calibration_evidence import (
    CalibrationEvidence,
    CostEvidence,
    calibration_evidence,
    cost_evidence,
)
from flows.training.policy import GatePolicy
from flows.training.thresholds import expected_cost, miss_costs

UNRECORDED = "not recorded (registered before releases calibrated): class-weighted scores"


class ProbabilityEvidence(BaseModel):
    """Calibration and cost on every holdout row, and paired on the compared rows when the
    champion is compared on a subset (``*_comparison``)."""

    model_config = ConfigDict(frozen=True)

    calibration: CalibrationEvidence
    calibration_comparison: CalibrationEvidence | None = None
    cost: CostEvidence | None = None
    cost_comparison: CostEvidence | None = None

    @property
    def paired_calibration(self) -> CalibrationEvidence:
        return self.calibration_comparison or self.calibration

    @property
    def paired_cost(self) -> CostEvidence | None:
        return self.cost_comparison or self.cost

    def metrics(self) -> dict[str, float]:
        """MLflow metrics of calibration and cost (the comparisons on the compared rows)."""
        out = self.calibration.metrics()
        if self.calibration_comparison is not None:
            pairs = self.calibration_comparison.metrics()
            out |= {k: v for k, v in pairs.items() if not k.startswith("holdout_")}
        if self.cost is not None:
            out |= self.cost.metrics()
        if self.cost_comparison is not None:
            pairs = self.cost_comparison.metrics()
            out |= {k: v for k, v in pairs.items() if k.startswith(("champion_", "cost_"))}
        return out


def probability_evidence(
    y: np.ndarray,
    candidate: tuple[np.ndarray, float, float | None],
    champion: tuple[np.ndarray, float] | None,
    holdout: pd.DataFrame,
    keep: np.ndarray | None,
    policy: GatePolicy,
) -> ProbabilityEvidence:
    """Measure calibration and cost on the holdout.

    Args:
        y: holdout labels.
        candidate: its scores, threshold and F1 threshold (None: the threshold is F1's).
        champion: its scores and threshold on the same rows, None without one scored.
        holdout: the holdout rows (for a cost column).
        keep: the rows the champion is compared on (None: every row).
        policy: bins, bootstrap settings and costs.
    """
    boot = {"resamples": policy.bootstrap_resamples, "confidence": policy.confidence,
            "seed": policy.bootstrap_seed}  # fmt: skip
    cand_scores, threshold, f1_threshold = candidate
    champ_scores = champion[0] if champion is not None else None
    bins = policy.calibration_bins
    all_rows_paired = champ_scores if keep is None else None
    out: dict[str, object] = {
        "calibration": calibration_evidence(y, cand_scores, all_rows_paired, bins=bins, **boot)
    }
    if keep is not None and champ_scores is not None:
        out["calibration_comparison"] = calibration_evidence(
            y[keep], cand_scores[keep], champ_scores[keep], bins=bins, **boot
        )
    objective = policy.objective()
    if objective.has_costs:
        miss = miss_costs(holdout, objective)
        fa = float(objective.false_alarm_cost or 0.0)
        cand = expected_cost(y, cand_scores, threshold, miss, fa)
        champ = expected_cost(y, champion[0], champion[1], miss, fa) if champion else None
        at_f1 = (
            expected_cost(y, cand_scores, f1_threshold, miss, fa)
            if f1_threshold is not None and f1_threshold != threshold
            else None
        )
        text = objective.describe()
        out["cost"] = cost_evidence(text, cand, champ if keep is None else None,
                                    at_f1_threshold=at_f1, **boot)  # fmt: skip
        if keep is not None and champ is not None:
            out["cost_comparison"] = cost_evidence(text, cand[keep], champ[keep], **boot)
    return ProbabilityEvidence.model_validate(out)


def _verdict(low: float, high: float, better: str, worse: str) -> str:
    if low > 0:
        return worse
    if high < 0:
        return better
    return "a tie within the noise"


def calibration_check(
    evidence: CalibrationEvidence,
    policy: GatePolicy,
    champion: str | None,
    candidate_calibration: str,
    champion_calibration: str = "",
) -> tuple[bool, str]:
    """Pass unless the candidate's ECE is clearly above the champion's (its difference
    interval above ``calibration_tolerance``); the detail gives both models' figures."""
    c = evidence.candidate
    own = (
        f"ECE {c.ece.text()}, Brier {c.brier.estimate:.5f}, mean score {c.mean_score:.4f} vs "
        f"fraud rate {c.observed_rate:.4f} on {evidence.rows:,} rows; calibration: "
        f"{candidate_calibration}"
    )
    diff, h = evidence.ece_difference, evidence.champion
    if champion is None or diff is None or h is None or evidence.brier_difference is None:
        return True, f"{own}; no champion scored on this holdout to compare with"
    tol = policy.calibration_tolerance
    passed = diff.low <= tol
    verdict = _verdict(diff.low, diff.high, "a clear improvement", "clearly worse calibrated")
    return passed, (
        f"ECE candidate minus champion {champion}: {diff.estimate:+.4f} ({evidence.level} "
        f"interval {diff.low:+.4f} to {diff.high:+.4f}; champion ECE {h.ece.estimate:.4f}, "
        f"tolerance {tol:.4f}): {verdict}; lower bound {diff.low:+.4f} "
        f"{'<=' if passed else '>'} {tol:.4f}. Brier {c.brier.estimate:.5f} vs "
        f"{h.brier.estimate:.5f} (difference {evidence.brier_difference.text(signed=True)}); "
        f"mean score {c.mean_score:.4f} vs {h.mean_score:.4f}, fraud rate "
        f"{c.observed_rate:.4f}. Candidate: {candidate_calibration}; champion: "
        f"{champion_calibration or UNRECORDED}; both scored as served on the same rows"
    )


def cost_check(evidence: CostEvidence, policy: GatePolicy, champion: str) -> tuple[bool, str]:
    """The champion comparison of the cost objective, on the expected cost per 1,000
    transactions (lower is better), by ``champion_rule`` with a tolerance of
    ``cost_tolerance`` times the champion's cost."""
    diff, champ = evidence.difference, evidence.champion
    if diff is None or champ is None:
        raise ValueError(f"{champion} was scored but has no holdout costs to compare")
    tol = policy.cost_tolerance * max(champ.estimate, 0.0)
    rule = policy.champion_rule
    if rule == "non_inferior":
        passed = diff.high <= tol
        test = f"upper bound {diff.high:+.2f} {'<=' if passed else '>'} +{tol:.2f}"
    elif rule == "superior":
        passed = diff.high < 0
        test = f"upper bound {diff.high:+.2f} {'<' if passed else '>='} 0"
    else:
        passed = diff.low <= tol
        test = f"lower bound {diff.low:+.2f} {'<=' if passed else '>'} +{tol:.2f}"
    verdict = _verdict(diff.low, diff.high, "a clear saving", "a clear extra cost")
    return passed, (
        f"expected cost per 1,000 transactions, candidate minus {champion}: "
        f"{diff.estimate:+.2f} ({evidence.confidence * 100:g}% interval {diff.low:+.2f} to "
        f"{diff.high:+.2f}; candidate {evidence.candidate.estimate:.2f}, champion "
        f"{champ.estimate:.2f}; {evidence.objective}; tolerance {policy.cost_tolerance:.0%} of "
        f"the champion's): {verdict}; rule {rule}: {test}"
    )
