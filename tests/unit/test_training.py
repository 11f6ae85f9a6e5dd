import numpy as np
import pandas as pd
import pytest

from data_contracts.schemas import LABEL_INT, validate_frame
from flows.training.train import (
    SingleClassError,
    TrainParams,
    check_label_classes,
    evaluate,
    split,
    stratified_hash_split,
    tune_threshold,
)


def test_holdout_is_stratified_and_disjoint(splits):
    ids = [set(getattr(splits, k)["transaction_id"]) for k in ("train", "validation", "holdout")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    rates = [getattr(splits, k)[LABEL_INT].mean() for k in ("train", "validation", "holdout")]
    assert max(rates) - min(rates) < 0.002


def test_holdout_is_frozen_by_id_not_by_position(spec, small_data):
    valid = validate_frame(small_data, spec).valid
    a = split(valid, spec, 0.2, 0.2).holdout
    shuffled = valid.sample(frac=1.0, random_state=1).reset_index(drop=True)
    b = split(shuffled, spec, 0.2, 0.2).holdout
    assert set(a["transaction_id"]) == set(b["transaction_id"])


def test_growing_the_data_keeps_old_holdout_rows_mostly_in_place(spec, small_data):
    valid = validate_frame(small_data, spec).valid
    first = set(stratified_hash_split(valid.head(20_000), "transaction_id", 0.2, "h")[1]
                ["transaction_id"])  # fmt: skip
    later = set(stratified_hash_split(valid, "transaction_id", 0.2, "h")[1]["transaction_id"])
    assert len(first & later) / len(first) > 0.85


def test_single_class_stops_before_training(spec, splits):
    only_legit = splits.train[splits.train[LABEL_INT] == 0]
    with pytest.raises(SingleClassError, match="single class"):
        check_label_classes(only_legit, spec)
    few = pd.concat([only_legit, splits.train[splits.train[LABEL_INT] == 1].head(3)])
    with pytest.raises(SingleClassError, match="3 positive"):
        check_label_classes(few, spec)


def test_threshold_maximises_f1():
    y = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.8, 0.85, 0.9])
    t = tune_threshold(y, s)
    best = max((evaluate(y, s, c).f1, c) for c in s)
    assert evaluate(y, s, t).f1 == pytest.approx(best[0])
    assert t == pytest.approx(0.4)


def test_evaluate_counts(spec):
    m = evaluate(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    assert (m.tp, m.fp, m.fn, m.tn) == (1, 1, 1, 1)
    assert m.f1 == pytest.approx(0.5)


def test_trained_model_beats_the_floor_and_stores_a_threshold(trained):
    assert trained.metrics.f1 > 0.7
    assert trained.metrics.pr_auc > 0.7
    assert 0 < trained.threshold < 1


def test_crippled_model_is_bad(spec, splits):
    from flows.training.release import train_candidate

    bad = train_candidate(splits, spec, TrainParams(max_iter=30, cripple=True))
    assert bad.metrics.f1 < 0.3


def _openmp_threads_now() -> int:
    from threadpoolctl import threadpool_info

    pools = [p for p in threadpool_info() if p["user_api"] == "openmp"]
    assert pools, "scikit-learn's OpenMP runtime is not loaded"
    return pools[0]["num_threads"]


def test_small_tables_fit_on_one_openmp_thread_and_large_ones_on_the_default(monkeypatch):
    from flows.training.train import ONE_THREAD_BELOW_ROWS, THREADS_ENV, fit_threads, openmp_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert openmp_threads(ONE_THREAD_BELOW_ROWS - 1) == 1
    assert openmp_threads(ONE_THREAD_BELOW_ROWS) is None
    import sklearn.ensemble  # noqa: F401 - loads the OpenMP runtime threadpoolctl inspects

    default = _openmp_threads_now()
    with fit_threads(1_000):
        assert _openmp_threads_now() == 1
    assert _openmp_threads_now() == default  # restored after the fit
    monkeypatch.setenv(THREADS_ENV, "3")
    assert openmp_threads(1_000) == 3 and openmp_threads(10_000_000) == 3


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_count_names_the_variable(monkeypatch, raw):
    from flows.training.train import THREADS_ENV, openmp_threads

    monkeypatch.setenv(THREADS_ENV, raw)
    with pytest.raises(ValueError, match=f"{THREADS_ENV}={raw!r}: expected a whole number"):
        openmp_threads(1_000)
