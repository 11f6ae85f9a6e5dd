"""Realized performance: labelled feedback joined to the scored window, faults counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from data_contracts.id_key import hash_id
from flows.monitoring.feedback import read_feedback
from flows.monitoring.performance import FeedbackPolicy, f1_interval, realized_performance

KEY = b"unit-test-id-hash-key-0123456789"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def window(n: int, decisions: np.ndarray, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "transaction_id_hash": [hash_id(f"tx-{i}", KEY) for i in range(n)],
            "score": np.where(decisions == 1, 0.6 + 0.4 * rng.random(n), 0.5 * rng.random(n)),
            "decision": decisions.astype(np.int8),
            "timestamp": pd.date_range(NOW - timedelta(hours=n), periods=n, freq="h", tz=UTC),
        }
    )


def write(path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)


def test_the_served_decisions_are_scored_against_the_labels(tmp_path):
    n = 2000
    labels = (np.arange(n) % 10 == 0).astype(int)  # 200 frauds
    decisions = labels.copy()
    decisions[:100] = 0  # the first 100 rows: 10 frauds missed
    write(
        tmp_path / "feedback" / "day1.parquet",
        pd.DataFrame(
            {
                "transaction_id_hash": [hash_id(f"tx-{i}", KEY) for i in range(n)],
                "label": labels,
                "labelled_at": NOW - timedelta(minutes=1),
            }
        ),
    )
    feedback, counts = read_feedback(tmp_path / "feedback", KEY, NOW)
    perf = realized_performance(window(n, decisions), feedback, counts, FeedbackPolicy(), 0.9)
    assert perf.labelled == n and perf.coverage == 1.0 and perf.positives == 200
    assert perf.precision == 1.0
    assert perf.recall == pytest.approx(190 / 200)
    assert perf.f1 == pytest.approx(2 * 190 / (2 * 190 + 10))
    assert perf.f1_low <= perf.f1 <= perf.f1_high
    assert perf.status == "within limits"
    assert perf.pr_auc == pytest.approx(
        __import__("sklearn.metrics").metrics.average_precision_score(
            labels, window(n, decisions)["score"]
        )
    )


def test_a_collapsed_recall_is_a_drop_judged_with_its_interval(tmp_path):
    n = 3000
    labels = (np.arange(n) % 10 == 0).astype(int)
    decisions = np.where(np.arange(n) % 40 == 0, labels, 0)  # catches a quarter of the frauds
    write(
        tmp_path / "fb.csv",
        pd.DataFrame({"transaction_id": [f"tx-{i}" for i in range(n)], "label": labels}),
    )
    feedback, counts = read_feedback(tmp_path, KEY, NOW)  # clear ids are hashed with the key
    perf = realized_performance(window(n, decisions), feedback, counts, FeedbackPolicy(), 0.8)
    assert perf.recall == pytest.approx(0.25)
    assert perf.dropped
    assert "< holdout F1 0.800" in perf.detail
    assert perf.metrics()["realized_dropped"] == 1.0


def test_too_few_labels_give_no_number_but_a_reason(tmp_path):
    n = 2000
    labels = (np.arange(n) % 10 == 0).astype(int)
    write(
        tmp_path / "fb.parquet",
        pd.DataFrame(
            {
                "transaction_id_hash": [hash_id(f"tx-{i}", KEY) for i in range(300)],
                "label": labels[:300],
            }
        ),
    )
    feedback, counts = read_feedback(tmp_path, KEY, NOW)
    perf = realized_performance(window(n, labels), feedback, counts, FeedbackPolicy(), 0.8)
    assert perf.status == "not enough labels"
    assert perf.f1 is None and not perf.dropped
    assert "not enough labels to judge: 300 labelled" in perf.detail
    assert perf.coverage == pytest.approx(300 / n)


def test_no_feedback_folder_is_not_an_error(tmp_path):
    feedback, counts = read_feedback(tmp_path / "missing", KEY, NOW)
    perf = realized_performance(window(10, np.zeros(10)), feedback, counts, FeedbackPolicy(), 0.8)
    assert perf.status == "no feedback" and perf.labelled == 0


def test_faults_are_counted_never_raised_never_double_counted(tmp_path):
    n = 1000
    labels = (np.arange(n) % 10 == 0).astype(int)
    h = [hash_id(f"tx-{i}", KEY) for i in range(n)]
    write(tmp_path / "a.parquet", pd.DataFrame({"transaction_id_hash": h, "label": labels}))
    extra = pd.DataFrame(
        {
            "transaction_id_hash": [h[0], h[1], h[5], "unknown-hash", h[2], h[3]],
            "label": [1, 1, 1, 0, "maybe", 0],  # h0 duplicate, h1 conflict, h5 conflict
            "labelled_at": [NOW - timedelta(hours=1)] * 4 + [NOW, NOW + timedelta(days=3)],
        }
    )
    write(tmp_path / "b.csv", extra)
    (tmp_path / "c.parquet").write_bytes(b"not parquet")
    write(tmp_path / "d.csv", pd.DataFrame({"something": [1]}))
    feedback, counts = read_feedback(tmp_path, KEY, NOW)
    assert counts.files == 4 and len(counts.unreadable) == 2
    assert counts.invalid_labels == 1  # "maybe"
    assert counts.not_yet_known == 1  # h3 known in three days
    scored = window(n, labels)
    scored = pd.concat([scored, scored.iloc[[7]].assign(timestamp=NOW)], ignore_index=True)
    perf = realized_performance(scored, feedback, counts, FeedbackPolicy(min_labels=100), 0.8)
    c = perf.counts
    assert (c.duplicates, c.conflicting, c.outside_window, c.rescored) == (1, 2, 1, 1)
    assert perf.labelled == n  # each transaction once
    # the later label wins a conflict: h1 (legit in a.parquet, fraud later) counts as fraud
    assert perf.positives == 100 + 1 + 1
    assert len(c.faults()) == 8


def test_the_interval_is_reproducible_and_narrows_with_more_labels():
    rng = np.random.default_rng(3)
    y = (rng.random(20_000) < 0.1).astype(int)
    d = np.where(rng.random(20_000) < 0.8, y, 1 - y)
    a = f1_interval(y, d, 1000, 0.95, 0)
    assert a == f1_interval(y, d, 1000, 0.95, 0)
    small = f1_interval(y[:1000], d[:1000], 1000, 0.95, 0)
    assert (a[1] - a[0]) < (small[1] - small[0])


def test_evidently_writes_the_classification_report_of_the_labelled_rows(tmp_path):
    n = 2000
    labels = (np.arange(n) % 10 == 0).astype(int)
    decisions = np.where(np.arange(n) % 20 == 0, labels, 0)
    write(
        tmp_path / "fb" / "a.parquet",
        pd.DataFrame({"transaction_id_hash": [hash_id(f"tx-{i}", KEY) for i in range(n)],
                      "label": labels}),
    )  # fmt: skip
    feedback, counts = read_feedback(tmp_path / "fb", KEY, NOW)
    perf = realized_performance(
        window(n, decisions), feedback, counts, FeedbackPolicy(), 0.8, tmp_path / "report"
    )
    html = (tmp_path / "report" / "performance_report.html").read_text()
    assert perf.report_html == str(tmp_path / "report" / "performance_report.html")
    assert "Recall" in html and "Precision" in html
