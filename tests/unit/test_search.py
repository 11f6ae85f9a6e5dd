"""Model search: the right family wins on data made for it, the budget and the folds hold, the
fixed model is reproduced with ``off``, and every family offered converts to ONNX with parity."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from data_contracts.schemas import LABEL_INT, validate_frame
from data_contracts.spec import FeatureSpec, parse_spec
from flows.training.onnx_export import export_onnx, onnx_predict_proba, onnx_session, parity
from flows.training.release import train_candidate
from flows.training.reporting import release_markdown, search_markdown
from flows.training.search import (
    FAMILIES,
    SearchError,
    SearchSettings,
    fold_indices,
    refit,
    run_search,
    search_settings,
    splits_by_time,
)
from flows.training.thresholds import ThresholdObjective, choose_threshold
from flows.training.train import TrainParams, fit, predict_proba, split


def f1_threshold_on(labels: np.ndarray, scores: np.ndarray) -> float:
    """The release's F1 threshold on these rows (halfway below the best-F1 score)."""
    return choose_threshold(ThresholdObjective(), labels, scores, None).threshold


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """Small fits run far faster on one thread on a shared machine; results are the same."""
    with threadpool_limits(1, user_api="openmp"):
        yield


BASE = TrainParams(max_iter=60, learning_rate=0.2)  # few rounds: small data, fast tests
SMALL = SearchSettings(preset="quick", budget_seconds=120, max_rows=3_000, folds=3, trials=1)


def toy_spec(event_time: bool = False) -> FeatureSpec:
    features = [{"name": f"x{i}", "kind": "numeric"} for i in range(1, 5)]
    features.append({"name": "kind", "kind": "categorical", "categories": ["a", "b", "c"]})
    return parse_spec(
        {
            "name": "toy",
            "id_column": "row_id",
            "event_time_column": "ts" if event_time else None,
            "label": {"name": "y", "positive": 1, "negative": 0},
            "features": features,
        }
    )


def toy_frame(kind: str, rows: int = 2_400, seed: int = 0) -> pd.DataFrame:
    """Linear: the log-odds are a weighted sum of the features (logistic regression is the true
    model). Interaction: the class depends on the sign of x1 * x2, which no linear score sees."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    if kind == "linear":
        logit = 2.0 * x[:, 0] - 1.5 * x[:, 1] + 1.0 * x[:, 2] - 1.5
        y = rng.random(rows) < 1 / (1 + np.exp(-logit))
    else:
        y = (x[:, 0] * x[:, 1] > 0.3) ^ (rng.random(rows) < 0.05)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(1, 5)])
    frame["kind"] = rng.choice(["a", "b", "c"], size=rows)
    frame.insert(0, "row_id", [f"r{i}" for i in range(rows)])
    frame["ts"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(rows), unit="min")
    frame["y"] = y.astype(int)
    return frame


def toy_rows(kind: str, spec: FeatureSpec, **kw) -> pd.DataFrame:
    return validate_frame(toy_frame(kind, **kw), spec, labelled=True).valid


@pytest.mark.parametrize(("kind", "family"), [("linear", "logistic"), ("interaction", "hgb")])
def test_search_picks_the_family_the_data_was_made_for(kind, family):
    spec = toy_spec()
    result = run_search(toy_rows(kind, spec), spec, BASE, SMALL)
    assert result.winner.family == family
    assert result.params.classifier == family
    scored = [c for c in result.ranking if c.ok]
    assert {c.family for c in scored} == set(FAMILIES)
    assert [c.cv_ap_mean for c in scored] == sorted((c.cv_ap_mean for c in scored), reverse=True)


def test_searched_candidate_is_refitted_and_thresholded_out_of_fold():
    spec = toy_spec()
    splits = split(toy_rows("interaction", spec), spec, 0.2, 0.2)
    cand = train_candidate(splits, spec, BASE, search=SMALL)
    assert cand.search is not None and cand.params.classifier == "hgb"
    # tuned on the out-of-fold scores mapped to the calibrated scale
    oof = cand.search
    assert cand.threshold == f1_threshold_on(oof.oof_labels, cand.calibrator.apply(oof.oof_scores))
    assert cand.search.oof_rows == len(splits.train)  # every training row scored out of fold
    assert cand.threshold_from == f"{len(splits.train):,} out-of-fold scores"
    # the refit gets every round of the winning configuration (no early stopping there)
    assert cand.params.max_iter == cand.pipeline.named_steps["model"].n_iter_
    assert cand.metrics.pr_auc > 0.8


def test_a_search_on_a_sample_tunes_the_refit_threshold_on_enough_validation_rows():
    spec = toy_spec()
    splits = split(toy_rows("interaction", spec, rows=6_000), spec, 0.2, 0.2)
    y_val = splits.validation[LABEL_INT].to_numpy()
    # the folds saw 600 of 3,840 training rows: their scores are not the refit's, and the
    # 960 validation rows outnumber the 600 out-of-fold scores
    sampled = SMALL.model_copy(update={"max_rows": 600})
    cand = train_candidate(splits, spec, BASE, search=sampled)
    assert cand.search.search_rows == 600 < cand.search.train_rows
    assert cand.threshold == f1_threshold_on(
        y_val, predict_proba(cand.pipeline, splits.validation, spec)
    )
    assert cand.threshold_from == "960 validation rows"
    ranking = "\n".join(search_markdown(cand.search, cand.threshold_from))
    assert "threshold tuned on 960 validation rows (the folds' models saw a sample" in ranking
    # a sample larger than the validation part keeps its out-of-fold threshold
    larger = SMALL.model_copy(update={"max_rows": 2_000})
    kept = train_candidate(splits, spec, BASE, search=larger)
    assert kept.search.search_rows < kept.search.train_rows
    assert kept.threshold == f1_threshold_on(
        kept.search.oof_labels, kept.calibrator.apply(kept.search.oof_scores)
    )
    assert kept.threshold_from.endswith("out-of-fold scores")


def test_off_reproduces_the_fixed_model():
    spec = toy_spec()
    splits = split(toy_rows("linear", spec), spec, 0.2, 0.2)
    params = TrainParams(max_iter=40, calibration="none")
    cand = train_candidate(splits, spec, params, search="off")
    fixed = fit(splits.train, spec, params)
    y_val = splits.validation[LABEL_INT].to_numpy()
    assert cand.search is None and cand.params == params
    assert cand.threshold == f1_threshold_on(y_val, predict_proba(fixed, splits.validation, spec))
    np.testing.assert_array_equal(cand.holdout_scores, predict_proba(fixed, splits.holdout, spec))
    default = train_candidate(splits, spec, params)  # off is the function's default
    np.testing.assert_array_equal(default.holdout_scores, cand.holdout_scores)


def test_candidates_not_started_within_the_budget_are_listed_as_skipped():
    spec = toy_spec()
    ticks = itertools.count(step=50.0)  # every reading of the clock is 50 s later
    settings = SMALL.model_copy(update={"budget_seconds": 120, "trials": 3})
    result = run_search(toy_rows("linear", spec), spec, BASE, settings, clock=lambda: next(ticks))
    statuses = [c.status for c in result.ranking]
    assert statuses.count("ok") == 1 and result.winner.name == "logistic-1"
    assert statuses.count("skipped: budget") == 5
    assert all(c.cv_ap_mean is None for c in result.ranking if not c.ok)


def test_time_ordered_folds_score_only_later_rows():
    spec = toy_spec(event_time=True)
    rows = toy_rows("linear", spec)
    for fit_idx, score_idx in fold_indices(rows, 3, 0, time_ordered=True):
        assert fit_idx.max() < score_idx.min()
    shuffled = rows.sample(frac=1.0, random_state=3)
    result = run_search(shuffled, spec, BASE, SMALL, time_ordered=True)
    assert result.folds_kind == "time-ordered"
    assert result.oof_rows == 3 * (len(rows) // 4)  # the first of four periods is never scored


def test_time_ordered_search_needs_the_event_time_column():
    spec = toy_spec()
    with pytest.raises(ValueError, match="event-time column None"):
        run_search(toy_rows("linear", spec), spec, BASE, SMALL, time_ordered=True)


def test_splits_by_time_reads_the_split_kind():
    assert splits_by_time(SimpleNamespace(kind="time"))
    assert not splits_by_time(SimpleNamespace(kind="hash"))
    assert not splits_by_time(SimpleNamespace())  # splits made before the kind existed: by hash


def test_presets_and_their_errors():
    assert not search_settings("off").enabled
    assert search_settings("quick", budget_seconds=5).budget_seconds == 5
    assert search_settings("thorough").max_rows > search_settings("quick").max_rows
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        search_settings("fast")
    with pytest.raises(ValueError, match="budget_seconds: must be positive"):
        search_settings("quick", budget_seconds=0)


def test_too_few_positives_for_the_folds_is_a_search_error():
    spec = toy_spec()
    rows = toy_rows("linear", spec, rows=400)
    rows = pd.concat([rows[rows[LABEL_INT] == 0], rows[rows[LABEL_INT] == 1].head(1)])
    with pytest.raises(SearchError, match="1 positive rows cannot fill 3 folds"):
        run_search(rows, spec, BASE, SMALL)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_offered_converts_to_onnx_with_parity(family, spec, splits):
    train = splits.train.head(6_000)
    pipeline, _ = refit(train, spec, TrainParams(classifier=family, max_iter=60))
    holdout = splits.holdout.head(2_000)
    p_sk = predict_proba(pipeline, holdout, spec)
    p_onnx = onnx_predict_proba(onnx_session(export_onnx(pipeline, spec)), holdout, spec)
    report = parity(p_sk, p_onnx, float(np.median(p_sk)), 1e-4)
    assert report.passed, report


def test_release_markdown_shows_the_ranking():
    spec = toy_spec()
    ticks = itertools.count(step=50.0)
    settings = SMALL.model_copy(update={"budget_seconds": 120, "trials": 2})
    result = run_search(toy_rows("linear", spec), spec, BASE, settings, clock=lambda: next(ticks))
    text = release_markdown(model_name="toy", decision=None, metrics=None, champion=None,
                            facts={"version": "1"}, search=result)  # fmt: skip
    assert "### Model search" in text
    assert f"winner **{result.winner.name}**" in text
    for c in result.ranking:
        assert f"| {c.name} |" in text or f"| **{c.name}** |" in text
    assert text.count("skipped: budget") == 3
    assert f"{result.winner.cv_ap_mean:.4f} ± {result.winner.cv_ap_std:.4f}" in text
    assert "Model search" not in release_markdown(
        model_name="toy", decision=None, metrics=None, champion=None, facts={}
    )
