"""fraud traffic --feedback: the chargeback feed of what was sent, hashed with the bento's key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from data_contracts.id_key import hash_id, load_id_key
from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.cli.traffic import write_feedback
from flows.monitoring.feedback import read_feedback


def test_the_feed_holds_hashed_ids_labels_and_when_they_are_known(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path))
    frame = generate(GeneratorConfig(rows=200, seed=5))
    path = write_feedback(frame, delay_hours=48)
    assert path.parent == tmp_path / "feedback"
    written = pd.read_parquet(path)
    key = load_id_key({"FRAUD_HOME": str(tmp_path)})
    assert list(written["transaction_id_hash"]) == [
        hash_id(t, key) for t in frame["transaction_id"]
    ]
    assert not set(frame["transaction_id"]) & set(written["transaction_id_hash"])
    assert list(written["label"]) == list(frame["is_fraud"])
    # the labels become known two days later: a check now does not use them yet
    _, now = read_feedback(path.parent, key, datetime.now(UTC))
    assert now.not_yet_known == 200
    later, _ = read_feedback(path.parent, key, datetime.now(UTC) + timedelta(days=3))
    assert len(later) == 200


def test_the_new_fraud_pattern_moves_frauds_not_the_inputs():
    before = generate(GeneratorConfig(rows=50_000, seed=9))
    after = generate(GeneratorConfig(rows=50_000, seed=9, drift=DriftKnobs(new_fraud_pattern=0.9)))
    assert after["is_fraud"].mean() == pytest.approx(before["is_fraud"].mean(), rel=0.1)
    frauds = after[after["is_fraud"] == 1]
    assert (frauds["customer_age"] < 22).mean() > 0.8
    assert before["amount"].median() == pytest.approx(after["amount"].median(), rel=0.02)
