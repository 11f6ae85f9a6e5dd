"""Realized calibration in the drift check: predicted vs observed fraud rate on the labelled
window, judged against the champion's reference; a collapse is a retraining signal beside F1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from data_contracts.id_key import hash_id
from data_contracts.schemas import LABEL_INT
from flows.monitoring.calibration import realized_calibration, reference_rate_ratio
from flows.monitoring.feedback import read_feedback
from flows.monitoring.performance import FeedbackPolicy, realized_performance
from flows.monitoring.results import dropped_text, performance_facts

KEY = b"unit-test-id-hash-key-0123456789"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def served(n: int, rate: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated scores and labels drawn from them (about ``rate`` fraud)."""
    rng = np.random.default_rng(seed)
    scores = np.clip(rng.beta(0.5, 0.5 / rate - 0.5, n), 0, 1)
    return scores, (rng.random(n) < scores).astype(int)


def inflate(p: np.ndarray, weight: float = 20.0) -> np.ndarray:
    return p * weight / (p * weight + 1 - p)


def test_calibrated_scores_are_within_limits():
    scores, y = served(5000, 0.03)
    cal = realized_calibration(y, scores, 1.0, limit=1.5, judge=True)
    assert cal.status == "within limits"
    assert cal.ratio_low <= cal.ratio <= cal.ratio_high
    assert cal.predicted_rate == pytest.approx(scores.mean())
    assert "predicted fraud rate" in cal.detail and "observed" in cal.detail


def test_fraud_the_model_scores_low_is_a_collapse():
    scores, y = served(5000, 0.03)
    new_fraud = np.random.default_rng(1).random(5000) < 0.05  # a pattern it never saw
    cal = realized_calibration(np.maximum(y, new_fraud), scores, 1.0, limit=1.5, judge=True)
    assert cal.collapsed and cal.ratio_low > 1.5
    assert "CALIBRATION COLLAPSED" in cal.detail
    assert cal.metrics()["realized_calibration_collapsed"] == 1.0


def test_an_uncalibrated_champion_is_judged_against_its_own_reference():
    scores, y = served(20_000, 0.03)
    reference = pa.table({"score": inflate(scores[:10_000]), LABEL_INT: y[:10_000]})
    ratio = reference_rate_ratio(reference)
    assert ratio < 0.5  # class-weighted scores predict far more fraud than there is
    cal = realized_calibration(y[10_000:], inflate(scores[10_000:]), ratio, limit=1.5, judge=True)
    assert cal.status == "within limits"  # as inflated as always: no retraining every day
    against_one = realized_calibration(y[10_000:], inflate(scores[10_000:]), 1.0, limit=1.5,
                                       judge=True)  # fmt: skip
    assert against_one.collapsed  # judged as if calibrated, it would collapse


def test_few_labels_report_the_rates_without_judging():
    scores, y = served(300, 0.03)
    cal = realized_calibration(y, scores, 1.0, limit=1.5, judge=False)
    assert cal.status == "not judged" and cal.ratio is None
    assert reference_rate_ratio(pa.table({"score": [0.1, 0.2]})) is None  # no labels


def test_a_collapse_is_a_drop_of_realized_performance(tmp_path):
    n = 4000
    scores, y = served(n, 0.03, seed=2)
    decisions = (scores >= 0.3).astype(np.int8)
    y = np.maximum(y, (np.arange(n) % 25 == 0) & (decisions == 0))  # unseen fraud, scored low
    hashes = [hash_id(f"tx-{i}", KEY) for i in range(n)]
    window = pd.DataFrame({"transaction_id_hash": hashes, "score": scores, "decision": decisions,
                           "timestamp": pd.date_range(NOW - timedelta(hours=n), periods=n,
                                                      freq="h", tz=UTC)})  # fmt: skip
    (tmp_path / "fb").mkdir()
    labels = pd.DataFrame({"transaction_id_hash": hashes, "label": y,
                           "labelled_at": NOW - timedelta(minutes=1)})  # fmt: skip
    labels.to_parquet(tmp_path / "fb" / "a.parquet")
    feedback, counts = read_feedback(tmp_path / "fb", KEY, NOW)
    perf = realized_performance(window, feedback, counts, FeedbackPolicy(), None,
                                reference_ratio=1.0)  # fmt: skip
    assert perf.dropped and perf.calibration.collapsed
    assert "CALIBRATION COLLAPSED" in perf.detail
    assert dropped_text(perf).startswith("observed fraud rate")
    assert dict(performance_facts(perf))["Calibration"] == perf.calibration.detail
    metrics = perf.metrics()
    assert metrics["realized_observed_rate"] > metrics["realized_predicted_rate"]
