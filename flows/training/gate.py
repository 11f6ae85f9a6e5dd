"""The release gates as pure decisions: holdout size, F1 (floor and champion comparison, with
bootstrap intervals), calibration (:mod:`flows.training.probability_gate`; with the cost
objective the champion is compared on expected cost), segments, and ONNX parity.

The champion check is a non-inferiority test on the paired bootstrap interval of the difference
candidate minus champion (:mod:`flows.training.uncertainty`): a candidate is promoted when the
interval's lower bound is at or above ``-champion_tolerance``, i.e. when the holdout rules out that
it is worse than the champion by more than the tolerance. The check's detail names what the
holdout shows: a clear improvement (the interval lies above 0), a clear regression (below 0) or a
tie within the noise (it holds 0).

The comparison is paired on the holdout rows the champion never learned from: when its version
records a split (:func:`flows.training.splitting.rows_learned_from`) that put some of this
holdout in its train or validation part (a hash-split champion against a time holdout, a changed
fraction, replaced data), those rows would flatter it and are left out of the champion check and
the segments. When the rows left hold too few positives to judge, every row is compared and the
check says the champion is favoured.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from data_contracts.schemas import LABEL_INT
from data_contracts.spec import FeatureSpec
from flows.training.onnx_export import ParityReport
from flows.training.policy import RULES as RULES
from flows.training.policy import ChampionRule as ChampionRule
from flows.training.policy import GatePolicy as GatePolicy
from flows.training.probability_gate import (
    ProbabilityEvidence,
    calibration_check,
    cost_check,
    probability_evidence,
)
from flows.training.slices import SliceReport, resolve_slice_features, slice_check, slice_report
from flows.training.train import Metrics
from flows.training.uncertainty import F1Bootstrap, paired_f1_bootstrap


class ChampionScore(BaseModel):
    """The current champion, scored afresh from its ONNX artifact on the candidate's holdout.

    ``scores`` (one per holdout row) are kept in memory for the paired bootstrap and the
    segments; they are not serialised.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    version: str
    spec_hash: str
    f1: float | None = Field(None, description="None when it could not be scored on this holdout")
    threshold: float | None = None
    scores: np.ndarray | None = Field(None, exclude=True, repr=False)
    note: str = ""
    seen: np.ndarray | None = Field(
        None, exclude=True, repr=False,
        description="per holdout row: True where the champion may have learned from it; "
        "None when its version cannot tell",
    )  # fmt: skip
    overlap: str = Field("", description="How ``seen`` was told, or why it could not be")
    calibration: str = Field(
        "", description="How its scores were calibrated (its version tag); empty: not recorded"
    )

    @property
    def decisions(self) -> np.ndarray | None:
        """The champion's 0/1 decisions on the holdout at its own threshold."""
        if self.scores is None or self.threshold is None:
            return None
        return (self.scores >= self.threshold).astype(np.int64)


class Check(BaseModel):
    """One named check with its outcome and the numbers behind it."""

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    detail: str


class Evidence(BaseModel):
    """What the holdout says beyond point F1s: bootstrap intervals and per-segment F1.

    ``f1`` covers every holdout row (paired with the champion when it is compared on all of
    them); ``comparison`` is the paired bootstrap on the rows the champion never learned from,
    when it is compared on those only. ``compared`` says which rows the champion check used.
    """

    model_config = ConfigDict(frozen=True)

    f1: F1Bootstrap
    slices: SliceReport | None = None
    comparison: F1Bootstrap | None = None
    compared: str = ""
    champion_seen_rows: int | None = None
    probability: ProbabilityEvidence | None = None  # calibration and cost on the holdout
    candidate_calibration: str = ""  # how the candidate's scores were calibrated
    threshold_objective: str = "f1"
    f1_threshold: float | None = None  # the threshold F1 would have chosen (cost objective)

    @property
    def paired(self) -> F1Bootstrap:
        """The bootstrap the champion check judges: on the unseen rows, else on all rows."""
        return self.comparison if self.comparison is not None else self.f1

    def metrics(self) -> dict[str, float]:
        """MLflow metrics: the candidate's interval on every row, the champion's and the
        difference's on the compared rows, and how many rows the champion may have seen."""
        out = self.f1.metrics()
        if self.comparison is not None:
            pairs = self.comparison.metrics()
            out |= {k: v for k, v in pairs.items() if not k.startswith("holdout_")}
            out["champion_compared_rows"] = float(self.comparison.rows)
        if self.champion_seen_rows is not None:
            out["champion_seen_holdout_rows"] = float(self.champion_seen_rows)
        if self.probability is not None:
            out |= self.probability.metrics()
        return out


class Decision(BaseModel):
    """Whether the candidate may become champion, with every check, reason and interval."""

    model_config = ConfigDict(frozen=True)

    outcome: Literal["promote", "blocked"]
    checks: tuple[Check, ...]
    evidence: Evidence | None = None

    @property
    def promote(self) -> bool:
        return self.outcome == "promote"

    @property
    def reasons(self) -> list[str]:
        """The failed checks' details: why the candidate was blocked."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]


def gather_evidence(
    y_holdout: np.ndarray,
    candidate_scores: np.ndarray,
    candidate_threshold: float,
    champion: ChampionScore | None,
    holdout: pd.DataFrame,
    spec: FeatureSpec,
    policy: GatePolicy,
    *,
    f1_threshold: float | None = None,
    calibration: str = "",
) -> Evidence:
    """Bootstrap the holdout F1s (paired with the champion when it was scored) and slice them;
    measure calibration and cost (:func:`flows.training.probability_gate.probability_evidence`).

    ``f1_threshold`` is the threshold F1 would have chosen (cost objective), ``calibration``
    says how the candidate's scores were calibrated.

    Raises:
        ValueError: ``policy.slice_features`` names a feature the spec lacks or a numeric one.
    """
    cand = (np.asarray(candidate_scores) >= candidate_threshold).astype(np.int64)
    champ = champion.decisions if champion is not None else None
    keep, compared = _compared_rows(y_holdout, champion, policy)
    boot = {
        "resamples": policy.bootstrap_resamples,
        "confidence": policy.confidence,
        "seed": policy.bootstrap_seed,
    }
    f1 = paired_f1_bootstrap(y_holdout, cand, champ if keep is None else None, **boot)
    comparison = None
    if keep is not None and champ is not None:
        comparison = paired_f1_bootstrap(y_holdout[keep], cand[keep], champ[keep], **boot)
    features = resolve_slice_features(spec, policy.slice_features)
    slices = None
    if features:
        rows = keep if keep is not None else np.ones(len(y_holdout), dtype=bool)
        slices = slice_report(
            holdout[rows].reset_index(drop=True), features, y_holdout[rows], cand[rows],
            champ[rows] if champ is not None else None, policy.min_slice_positives,
        )  # fmt: skip
    seen = champion.seen if champion is not None else None
    scored = champion is not None and champion.scores is not None and champion.threshold is not None
    probability = probability_evidence(
        y_holdout, (np.asarray(candidate_scores, dtype=np.float64), candidate_threshold,
                    f1_threshold),
        (champion.scores, champion.threshold) if scored else None,  # type: ignore[union-attr]
        holdout, keep, policy,
    )  # fmt: skip
    return Evidence(
        f1=f1,
        slices=slices,
        comparison=comparison,
        compared=compared,
        champion_seen_rows=int(seen.sum()) if seen is not None else None,
        probability=probability,
        candidate_calibration=calibration,
        threshold_objective=policy.threshold_objective,
        f1_threshold=f1_threshold,
    )


def _compared_rows(
    y: np.ndarray, champion: ChampionScore | None, policy: GatePolicy
) -> tuple[np.ndarray | None, str]:
    """The rows the champion is compared on (None: all of them), and a sentence saying why."""
    if champion is None or champion.decisions is None:
        return None, ""
    name = f"champion v{champion.version}"
    if champion.seen is None:
        why = f" ({champion.overlap})" if champion.overlap else ""
        return (
            None,
            f"all {len(y):,} holdout rows: which of them {name} learned from is unknown{why}",
        )
    seen = np.asarray(champion.seen, dtype=bool)
    if not seen.any():
        return None, f"all {len(y):,} holdout rows, none of which {name} learned from"
    keep = ~seen
    positives = int(y[keep].sum())
    need = policy.min_holdout_positives
    learned = f"it may have learned from {int(seen.sum()):,} of them ({champion.overlap})"
    if positives > 0 and (positives >= need or policy.allow_small_holdout):
        return keep, (
            f"the {int(keep.sum()):,} of {len(y):,} holdout rows {name} never learned from: "
            f"{learned}"
        )
    return None, (
        f"all {len(y):,} holdout rows, so the champion is favoured: {learned}, and the "
        f"{int(keep.sum()):,} rows left hold {positives} positives, fewer than the {need} needed "
        "to judge"
    )


def _holdout_check(boot: F1Bootstrap, policy: GatePolicy) -> Check:
    need = policy.min_holdout_positives
    if boot.positives >= need:
        return Check(name="holdout_size", passed=True,
                     detail=f"{boot.positives} positives in {boot.rows:,} holdout rows "
                     f"(at least {need} to judge)")  # fmt: skip
    text = (
        f"only {boot.positives} positives in {boot.rows:,} holdout rows, fewer than the {need} "
        f"needed to judge F1 (its {boot.level} interval {boot.candidate.low:.4f} to "
        f"{boot.candidate.high:.4f})"
    )
    if policy.allow_small_holdout:
        allowed = f"{text}; judged anyway: the policy allows a small holdout"
        return Check(name="holdout_size", passed=True, detail=allowed)
    return Check(name="holdout_size", passed=False,
                 detail=f"{text}; add labelled data, raise holdout_fraction or set "
                 "allow_small_holdout")  # fmt: skip


def _floor_check(candidate: Metrics, boot: F1Bootstrap, policy: GatePolicy) -> Check:
    judged = candidate.f1 if policy.floor_on == "estimate" else boot.candidate.low
    on = "the estimate" if policy.floor_on == "estimate" else "the interval's lower bound"
    return Check(
        name="f1_floor",
        passed=judged >= policy.f1_floor,
        detail=f"holdout F1 {candidate.f1:.4f} ({boot.level} interval {boot.candidate.low:.4f} "
        f"to {boot.candidate.high:.4f}) vs floor {policy.f1_floor:.4f}, judged on {on}",
    )


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return "a clear improvement"
    if high < 0:
        return "a clear regression"
    return "a tie within the noise"


def _champion_check(champion: ChampionScore, evidence: Evidence, policy: GatePolicy) -> Check:
    boot = evidence.paired
    diff, champ = boot.difference, boot.champion
    if diff is None or champ is None:
        raise ValueError(
            f"champion v{champion.version} was scored but has no holdout scores to bootstrap"
        )
    tol, rule = policy.champion_tolerance, policy.champion_rule
    if rule == "non_inferior":
        passed = diff.low >= -tol
        test = f"lower bound {diff.low:+.4f} {'>=' if passed else '<'} -{tol:.4f}"
    elif rule == "superior":
        passed = diff.low > 0
        test = f"lower bound {diff.low:+.4f} {'>' if passed else '<='} 0"
    else:
        passed = diff.high >= -tol
        test = f"upper bound {diff.high:+.4f} {'>=' if passed else '<'} -{tol:.4f}"
    return Check(
        name="champion",
        passed=passed,
        detail=f"F1 candidate minus champion v{champion.version}: {diff.estimate:+.4f} "
        f"({boot.level} interval {diff.low:+.4f} to {diff.high:+.4f}; champion F1 "
        f"{champ.estimate:.4f}, tolerance {tol:.4f}): {_verdict(diff.low, diff.high)}; "
        f"rule {rule}, {RULES[rule]}: {test}"
        + (f"; compared on {evidence.compared}" if evidence.compared else ""),
    )


def decide_promotion(
    candidate: Metrics,
    parity: ParityReport,
    champion: ChampionScore | None,
    policy: GatePolicy,
    evidence: Evidence,
) -> Decision:
    """Decide from the candidate's holdout metrics, its parity, the champion's fresh score and
    the holdout's evidence (intervals from :func:`gather_evidence`)."""
    boot = evidence.f1
    checks = [_holdout_check(boot, policy), _floor_check(candidate, boot, policy)]
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
    elif policy.threshold_objective == "cost" and evidence.probability is not None:
        cost = evidence.probability.paired_cost
        name = f"champion v{champion.version}"
        passed, detail = cost_check(cost, policy, name) if cost else (False, "no costs")
        if evidence.compared:
            detail += f"; compared on {evidence.compared}"
        checks.append(Check(name="champion", passed=passed, detail=detail))
    else:
        checks.append(_champion_check(champion, evidence, policy))
    if evidence.probability is not None:
        scored = champion is not None and champion.f1 is not None
        passed, detail = calibration_check(
            evidence.probability.paired_calibration, policy,
            f"v{champion.version}" if scored and champion else None,
            evidence.candidate_calibration or "not stated",
            champion.calibration if champion else "",
        )  # fmt: skip
        checks.append(Check(name="calibration", passed=passed, detail=detail))
    if policy.max_slice_drop is not None and evidence.slices is not None:
        passed, detail = slice_check(evidence.slices, policy.max_slice_drop)
        checks.append(Check(name="slices", passed=passed, detail=detail))
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
    return Decision(outcome=outcome, checks=tuple(checks), evidence=evidence)


def gate_release(
    candidate: Metrics,
    candidate_scores: np.ndarray,
    parity: ParityReport,
    champion: ChampionScore | None,
    holdout: pd.DataFrame,
    spec: FeatureSpec,
    policy: GatePolicy,
    *,
    f1_threshold: float | None = None,
    calibration: str = "",
) -> Decision:
    """The release gate: the holdout's evidence (:func:`gather_evidence`), then the decision."""
    y = holdout[LABEL_INT].to_numpy(dtype=np.int64)
    evidence = gather_evidence(
        y, candidate_scores, candidate.threshold, champion, holdout, spec, policy,
        f1_threshold=f1_threshold, calibration=calibration,
    )  # fmt: skip
    return decide_promotion(candidate, parity, champion, policy, evidence)
