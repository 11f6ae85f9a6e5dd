"""Scoring the champion on the candidate's holdout: a pure step (delivery fetches it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_contracts.schemas import LABEL_INT
from flows.training.onnx_export import export_onnx
from flows.training.release import score_champion
from flows.training.splitting import split_tags
from flows.training.train import evaluate


def test_the_champion_is_scored_with_its_own_threshold(trained, splits, spec):
    model_bytes = export_onnx(trained.pipeline, spec)
    spec_dict = spec.model_dump(mode="json")
    y = splits.holdout[LABEL_INT].to_numpy(dtype=np.int64)
    for threshold in (trained.threshold, 0.99):
        score = score_champion(
            "3", model_bytes, threshold, spec_dict, spec.spec_hash(), splits.holdout, spec
        )
        expected = evaluate(y, trained.holdout_scores, threshold).f1
        assert score.version == "3"
        assert score.spec_hash == spec.spec_hash()
        assert score.f1 == pytest.approx(expected, abs=1e-3)


def test_a_champion_needing_missing_columns_gets_no_f1_and_says_why(trained, splits, spec):
    model_bytes = export_onnx(trained.pipeline, spec)
    holdout = splits.holdout.drop(columns=[spec.feature_names[0]])
    score = score_champion(
        "2", model_bytes, 0.5, spec.model_dump(mode="json"), "abc", holdout, spec
    )
    assert score.f1 is None
    assert spec.feature_names[0] in score.note
    assert "abc" in score.note


def test_the_champion_score_carries_the_rows_its_split_learned_from(trained, splits, spec):
    model_bytes = export_onnx(trained.pipeline, spec)
    tags = split_tags(splits)
    args = ("3", model_bytes, 0.5, spec.model_dump(mode="json"), spec.spec_hash())
    own = score_champion(*args, splits.holdout, spec, tags)
    assert own.seen is not None and not own.seen.any()
    mixed = pd.concat([splits.holdout, splits.train.head(500)], ignore_index=True)
    score = score_champion(*args, mixed, spec, tags)
    assert score.seen.sum() == 500 and score.seen[-500:].all()
    assert "outside it" in score.overlap
    untagged = score_champion(*args, mixed, spec)
    assert untagged.seen is None and "no split kind" in untagged.overlap
