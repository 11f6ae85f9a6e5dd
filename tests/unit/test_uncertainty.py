"""The paired bootstrap of holdout F1: exact point estimates, seeded, and the same law as
resampling row indices."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from flows.training.uncertainty import cell_counts, f1_from_counts, paired_f1_bootstrap


def noisy_pair(rows: int = 3000, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.05).astype(np.int64)
    cand = np.where(rng.random(rows) < 0.8, y, 1 - y) & (rng.random(rows) < 0.9 + 0.1 * y)
    champ = np.where(rng.random(rows) < 0.85, y, 1 - y) & (rng.random(rows) < 0.9 + 0.1 * y)
    return y, cand.astype(np.int64), champ.astype(np.int64)


def test_estimates_are_the_observed_f1s():
    y, cand, champ = noisy_pair()
    boot = paired_f1_bootstrap(y, cand, champ, resamples=200)
    assert boot.candidate.estimate == pytest.approx(f1_score(y, cand))
    assert boot.champion.estimate == pytest.approx(f1_score(y, champ))
    assert boot.difference.estimate == pytest.approx(f1_score(y, cand) - f1_score(y, champ))
    for interval in (boot.candidate, boot.champion, boot.difference):
        assert interval.low <= interval.estimate <= interval.high
    assert (boot.rows, boot.positives) == (len(y), int(y.sum()))


def test_the_bootstrap_is_reproducible_with_a_seed():
    y, cand, champ = noisy_pair()
    first = paired_f1_bootstrap(y, cand, champ, resamples=500, seed=7)
    assert paired_f1_bootstrap(y, cand, champ, resamples=500, seed=7) == first
    other = paired_f1_bootstrap(y, cand, champ, resamples=500, seed=8)
    assert other.difference != first.difference


def test_cell_resampling_matches_resampling_row_indices():
    """Drawing cell counts from the multinomial law is the row bootstrap: their intervals agree."""
    y, cand, champ = noisy_pair(rows=2000)
    boot = paired_f1_bootstrap(y, cand, champ, resamples=4000, seed=3)
    idx = np.random.default_rng(4).integers(0, len(y), size=(4000, len(y)))
    yy, cc, hh = y[idx], cand[idx], champ[idx]

    def f1s(pred: np.ndarray) -> np.ndarray:
        tp = (yy & pred).sum(axis=1)
        return f1_from_counts(tp, ((1 - yy) & pred).sum(axis=1), (yy & (1 - pred)).sum(axis=1))

    diff = f1s(cc) - f1s(hh)
    low, high = np.quantile(diff, [0.025, 0.975])
    width = high - low
    assert boot.difference.low == pytest.approx(low, abs=0.05 * width)
    assert boot.difference.high == pytest.approx(high, abs=0.05 * width)
    c_low, c_high = np.quantile(f1s(cc), [0.025, 0.975])
    assert boot.candidate.low == pytest.approx(c_low, abs=0.05 * (c_high - c_low))


def test_a_higher_confidence_gives_a_wider_interval():
    y, cand, champ = noisy_pair()
    narrow = paired_f1_bootstrap(y, cand, champ, confidence=0.8, seed=1).difference
    wide = paired_f1_bootstrap(y, cand, champ, confidence=0.99, seed=1).difference
    assert wide.low < narrow.low and wide.high > narrow.high


def test_f1_of_nothing_predicted_and_nothing_present_is_zero():
    assert f1_from_counts(np.array([0, 2]), np.array([0, 1]), np.array([0, 1])).tolist() == [
        0.0,
        pytest.approx(2 / 3),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"candidate": np.ones(5)}, r"candidate: expected 4 decisions"),
        ({"champion": np.array([0, 1, 2, 1])}, "champion: decisions must be 0/1"),
        ({"confidence": 1.0}, "confidence: must be between 0 and 1"),
        ({"resamples": 0}, "resamples: must be at least 1"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    args = {"y_true": np.array([0, 1, 1, 0]), "candidate": np.array([0, 1, 0, 0])} | kwargs
    with pytest.raises(ValueError, match=message):
        paired_f1_bootstrap(**args)


def test_cell_counts_add_up_to_the_rows():
    y, cand, champ = noisy_pair(rows=500)
    counts = cell_counts(y, cand, champ)
    assert counts.sum() == 500 and counts[4:].sum() == y.sum()
