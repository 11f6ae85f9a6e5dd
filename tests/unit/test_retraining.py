"""The retraining decision (pure), the training file from labelled batches, the manual command."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from flows.monitoring.retraining import (
    TRIGGER_TAG,
    RecentRun,
    RetrainAction,
    assemble_training_data,
    decide_retraining,
    idempotency_key,
    labelled_batches,
    manual_command,
)
from flows.monitoring.verdict import Outcome

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DEP = "train-and-release/fraud-detector"


def decide(**overrides):
    args = dict(
        outcome=Outcome.DRIFT,
        retrain_wanted=True,
        enabled=True,
        recent=[],
        now=NOW,
        cooldown=timedelta(hours=6),
        window="v3-w1",
        deployment=DEP,
        has_labelled_data=True,
    )
    return decide_retraining(**(args | overrides))


def test_drift_with_nothing_running_triggers_with_the_window_key():
    d = decide()
    assert d.action == RetrainAction.TRIGGERED and d.should_trigger
    assert d.idempotency_key == idempotency_key(DEP, "v3-w1") == f"drift-retrain:{DEP}:v3-w1"
    assert decide(window="v3-w2").idempotency_key != d.idempotency_key


@pytest.mark.parametrize("state", ["SCHEDULED", "PENDING", "RUNNING"])
def test_a_run_in_flight_means_already_retraining(state):
    d = decide(recent=[RecentRun(id="r1", name="brave-fox", state=state)])
    assert d.action == RetrainAction.ALREADY_RETRAINING and not d.should_trigger
    assert "brave-fox" in d.reason and state.lower() in d.reason and d.idempotency_key is None


def test_a_recent_triggered_run_means_cooldown_and_an_old_one_does_not():
    recent = RecentRun(
        id="r1",
        name="calm-owl",
        state="COMPLETED",
        end_time=NOW - timedelta(hours=2),
        tags=("release", TRIGGER_TAG),
    )
    d = decide(recent=[recent])
    assert d.action == RetrainAction.COOLDOWN
    assert "cooldown until 2026-03-10 16:00 UTC" in d.reason
    failed = recent.model_copy(update={"state": "FAILED", "end_time": NOW - timedelta(hours=5)})
    assert decide(recent=[failed]).action == RetrainAction.COOLDOWN
    old = recent.model_copy(update={"end_time": NOW - timedelta(hours=7)})
    assert decide(recent=[old]).action == RetrainAction.TRIGGERED
    by_hand = recent.model_copy(update={"tags": ("release",)})
    assert decide(recent=[by_hand]).action == RetrainAction.TRIGGERED  # no cooldown after it


def test_no_trigger_without_verdict_need_permission_or_labels():
    assert decide(outcome=Outcome.NOT_ENOUGH_DATA, retrain_wanted=False).action == (
        RetrainAction.NOT_ENOUGH_DATA
    )
    assert decide(outcome=Outcome.NO_DRIFT, retrain_wanted=False).action == RetrainAction.NOT_NEEDED
    assert decide(enabled=False).action == RetrainAction.DISABLED
    assert decide(has_labelled_data=False).action == RetrainAction.NO_LABELLED_DATA
    running = [RecentRun(id="r1", name="x", state="RUNNING")]
    assert decide(enabled=False, recent=running).action == RetrainAction.DISABLED


def test_training_file_takes_newest_batches_up_to_max_rows(tmp_path):
    folder = tmp_path / "labelled"
    folder.mkdir()
    for k, rows in enumerate([300, 200, 100]):
        path = folder / f"batch-{k}.parquet"
        pd.DataFrame({"batch": [k] * rows}).to_parquet(path)
        os.utime(path, (1_000_000 + k, 1_000_000 + k))
    (folder / "notes.txt").write_text("not a batch")
    assert [p.name for p in labelled_batches(folder)] == [
        "batch-2.parquet", "batch-1.parquet", "batch-0.parquet"
    ]  # fmt: skip
    out = assemble_training_data(folder, tmp_path / "work" / "train.parquet", max_rows=250)
    data = pd.read_parquet(out)
    assert len(data) == 250 and data["batch"].tolist() == [2] * 100 + [1] * 150
    assert assemble_training_data(tmp_path / "none", tmp_path / "x.parquet", 10) is None


def test_manual_command():
    assert manual_command(DEP, "/d/train.parquet") == (
        f"uv run prefect deployment run '{DEP}' --param data_path=/d/train.parquet --watch"
    )
    assert "--param" not in manual_command(DEP, None)
