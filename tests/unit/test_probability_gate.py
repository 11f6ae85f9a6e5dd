"""Calibration judged by the gate (Brier, ECE and their paired intervals; a clearly worse
calibrated candidate is blocked; an uncalibrated champion compared as served) and the cost
objective (a threshold of its own, the expected cost per 1,000 with intervals, in the
artifact beside the F1 threshold)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from data_contracts.schemas import LABEL_INT, validate_frame
from data_contracts.spec import parse_spec
from flows.training.calibration_evidence import brier, calibration_evidence, ece, reliability
from flows.training.gate import ChampionScore, GatePolicy, gate_release
from flows.training.onnx_export import ParityReport
from flows.training.release import train_candidate
from flows.training.reporting import release_markdown
from flows.training.thresholds import (
    ThresholdObjective,
    choose_threshold,
    cost_threshold,
    expected_cost,
)
from flows.training.train import TrainParams, evaluate, split

PARITY = ParityReport(rows=1, max_abs_diff=1e-7, decision_flips=0, tolerance=1e-4, threshold=0.5)
SPEC = parse_spec(
    {
        "name": "prob-test",
        "id_column": "id",
        "label": {"name": "y", "positive": 1, "negative": 0},
        "features": [
            {"name": "x", "kind": "numeric"},
            {"name": "amount", "kind": "numeric"},
        ],
    }
)


def inflate(p: np.ndarray, weight: float = 20.0) -> np.ndarray:
    """What balanced class weights do to a probability: the odds multiplied by ``weight``."""
    return p * weight / (p * weight + 1 - p)


def holdout(rows: int = 20_000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows whose true fraud probability is known (about 4%), and that probability."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    p = 1 / (1 + np.exp(-(2.5 * x - 5)))
    y = (rng.random(rows) < p).astype(np.int64)
    amount = rng.lognormal(4, 1, rows)
    frame = pd.DataFrame({"id": np.arange(rows), "x": x, "amount": amount, LABEL_INT: y})
    return frame, p


def champion(scores, threshold, calibration="", version="3") -> ChampionScore:
    y = HOLDOUT[LABEL_INT].to_numpy()
    return ChampionScore(version=version, spec_hash="abc", threshold=threshold, scores=scores,
                         f1=evaluate(y, scores, threshold).f1, calibration=calibration)  # fmt: skip


HOLDOUT, TRUE_P = holdout()
Y = HOLDOUT[LABEL_INT].to_numpy()


POLICY = GatePolicy(f1_floor=0.3)  # the known probabilities separate the classes only so well


def judge(scores, threshold, champ, policy=POLICY, calibration="isotonic, test"):
    return gate_release(evaluate(Y, scores, threshold), scores, PARITY, champ, HOLDOUT, SPEC,
                        policy, calibration=calibration)  # fmt: skip


def check(decision, name):
    return next(c for c in decision.checks if c.name == name)


def test_brier_ece_and_reliability_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.85, 0.95])
    assert brier(y, p) == pytest.approx(np.mean([0.05**2, 0.15**2, 0.15**2, 0.05**2]))
    # bins 0, 1, 8, 9 hold one row each: |0.05|, |0.15|, |0.15|, |0.05| over 4 rows
    assert ece(y, p) == pytest.approx(0.1)
    assert [b.rows for b in reliability(y, p)] == [1, 1, 1, 1]
    assert ece(np.array([1]), np.array([1.0])) == 0.0  # a score of 1 falls in the last bin


def test_paired_intervals_hold_the_estimates_and_identical_scores_differ_by_zero():
    ev = calibration_evidence(Y, TRUE_P, TRUE_P, resamples=200)
    assert ev.candidate.ece.low <= ev.candidate.ece.estimate <= ev.candidate.ece.high
    assert ev.candidate.brier.low <= ev.candidate.brier.estimate <= ev.candidate.brier.high
    assert (ev.ece_difference.low, ev.ece_difference.high) == (0.0, 0.0)
    again = calibration_evidence(Y, TRUE_P, TRUE_P, resamples=200)
    assert again == ev  # seeded: the same holdout gives the same intervals


def test_a_miscalibrated_candidate_is_blocked_with_the_reason():
    # the same ranking and the same decisions as the calibrated champion: F1 ties exactly, but
    # the candidate's "probabilities" are class-weighted, several times the fraud rate
    t = 0.3
    d = judge(inflate(TRUE_P), float(inflate(np.array([t]))[0]), champion(TRUE_P, t, "isotonic"))
    assert check(d, "champion").passed and "+0.0000" in check(d, "champion").detail
    assert not d.promote
    [reason] = d.reasons
    assert reason.startswith("calibration: ECE candidate minus champion v3: +")
    assert "clearly worse calibrated" in reason and "tolerance 0.0100" in reason
    prob = d.evidence.probability.calibration
    assert prob.candidate.mean_score > 2 * prob.candidate.observed_rate
    assert prob.ece_difference.low > 0.01


def test_an_uncalibrated_champion_is_compared_on_the_same_footing():
    t = 0.3
    old = champion(inflate(TRUE_P), float(inflate(np.array([t]))[0]))  # no calibration tag
    d = judge(TRUE_P, t, old)
    assert d.promote, d.reasons
    detail = check(d, "calibration").detail
    assert "a clear improvement" in detail
    assert "champion: not recorded (registered before releases calibrated)" in detail
    assert "both scored as served on the same rows" in detail


def test_two_calibrated_models_tie_within_the_noise():
    noisy = np.clip(TRUE_P * np.random.default_rng(3).uniform(0.9, 1.1, len(Y)), 0, 1)
    d = judge(noisy, 0.3, champion(TRUE_P, 0.3, "isotonic"))
    assert check(d, "calibration").passed
    assert "a tie within the noise" in check(d, "calibration").detail


def test_without_a_champion_calibration_is_reported_not_judged():
    d = judge(inflate(TRUE_P), 0.9, None)
    assert check(d, "calibration").passed
    assert "no champion scored on this holdout" in check(d, "calibration").detail
    metrics = d.evidence.metrics()
    assert {"holdout_brier", "holdout_ece", "holdout_mean_score", "holdout_fraud_rate"} <= set(
        metrics
    )


def test_cost_threshold_is_the_cheapest_cut():
    rng = np.random.default_rng(0)
    s = rng.random(300)
    y = (rng.random(300) < s**2).astype(int)
    miss = rng.lognormal(3, 1, 300)
    t = cost_threshold(y, s, miss, 7.0)
    best = min(expected_cost(y, s, c, miss, 7.0).sum() for c in np.r_[s, 1.01])
    assert expected_cost(y, s, t, miss, 7.0).sum() == pytest.approx(best)


def test_cost_objective_blocks_a_clearly_more_expensive_candidate():
    policy = GatePolicy(threshold_objective="cost", missed_fraud_cost="amount",
                        false_alarm_cost=5.0, f1_floor=0.0)  # fmt: skip
    # the candidate flags almost nothing: it misses most frauds and their amounts
    d = judge(TRUE_P, 0.95, champion(TRUE_P, 0.1, "isotonic"), policy)
    champ = check(d, "champion")
    assert not champ.passed and "a clear extra cost" in champ.detail
    assert "expected cost per 1,000 transactions" in champ.detail
    cost = d.evidence.probability.cost
    assert cost.difference.low > 0 and cost.champion is not None


def skewed_table(rows: int = 8_000, seed: int = 1) -> pd.DataFrame:
    """Frauds are rare and costly (amounts of hundreds), false alarms cheap: the cost-optimal
    threshold lies far below the F1-optimal one."""
    frame, _ = holdout(rows, seed)
    frame["amount"] = np.where(frame[LABEL_INT] == 1, frame["amount"] * 5, frame["amount"])
    return frame.rename(columns={LABEL_INT: "y"}).assign(id=lambda f: f["id"].astype(str))


def test_the_cost_objective_picks_another_threshold_and_the_artifact_shows_both():
    with threadpool_limits(1, user_api="openmp"):
        splits = split(validate_frame(skewed_table(), SPEC).valid, SPEC, 0.25, 0.2)
        policy = GatePolicy(threshold_objective="cost", missed_fraud_cost="amount",
                            false_alarm_cost=2.0, min_holdout_positives=10)  # fmt: skip
        params = TrainParams(classifier="logistic")
        cand = train_candidate(splits, SPEC, params, objective=policy.objective())
        f1_only = train_candidate(splits, SPEC, params)
    assert cand.objective == "cost" and cand.f1_threshold == pytest.approx(f1_only.threshold)
    assert cand.threshold < cand.f1_threshold / 2
    y = splits.holdout[LABEL_INT].to_numpy()
    decision = gate_release(cand.metrics, cand.holdout_scores, PARITY, None, splits.holdout, SPEC,
                            policy, f1_threshold=cand.f1_threshold)  # fmt: skip
    cost = decision.evidence.probability.cost
    assert cost.candidate.estimate < cost.candidate_at_f1_threshold  # cheaper on the holdout too
    assert cost.candidate.low <= cost.candidate.estimate <= cost.candidate.high
    md = release_markdown(model_name="m", decision=decision, metrics=cand.metrics, champion=None,
                          facts={})  # fmt: skip
    assert f"| threshold (cost) | {cand.threshold:.4f} |" in md
    assert f"| threshold F1 would choose | {cand.f1_threshold:.4f} |" in md
    assert "expected cost per 1,000 (95%)" in md and "at the F1 threshold" in md
    assert "a missed fraud costs its amount, a false alarm 2" in md
    assert decision.evidence.metrics()["expected_cost_per_1000"] == pytest.approx(
        cost.candidate.estimate
    )
    assert y.sum() > 10


def test_choose_threshold_refuses_costs_without_the_rows():
    objective = ThresholdObjective(kind="cost", missed_fraud_cost="amount", false_alarm_cost=1.0)
    with pytest.raises(ValueError, match="columns are needed"):
        choose_threshold(objective, np.array([0, 1]), np.array([0.1, 0.9]), None)
