"""How well the scores are probabilities, and what the decisions cost, with bootstrap intervals.

Brier score (mean squared difference between score and label: lower is better, it rewards both
calibration and ranking), expected calibration error (ECE: over 10 equal-width score bins, the
row-weighted mean of |mean score - observed fraud rate|: pure calibration) and the reliability
table behind it, for the candidate and, paired on the same rows, the champion. With the cost
objective also the expected cost per 1,000 transactions at each model's threshold.

The intervals come from a seeded row bootstrap, paired like the F1 one
(:mod:`flows.training.uncertainty`): each resample draws the same holdout rows for both models.
Neither Brier, ECE nor cost reduce to a few cell counts, so rows are drawn as index blocks
(``CHUNK`` resamples at a time; 1,000 resamples of 40,000 rows take about a second).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from flows.training.uncertainty import Interval, percentile_interval

CHUNK = 50  # resamples drawn at once (CHUNK x rows indices in memory)


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between score and label."""
    return float(np.mean((np.asarray(p, dtype=np.float64) - y) ** 2)) if len(y) else float("nan")


def score_bins(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each score in [0, 1] (1.0 falls in the last bin)."""
    return np.minimum((np.clip(p, 0, 1) * bins).astype(np.int64), bins - 1)


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width bins (row-weighted)."""
    if not len(y):
        return float("nan")
    b = score_bins(p, bins)
    gap = np.bincount(b, weights=np.asarray(p, dtype=np.float64) - y, minlength=bins)
    return float(np.abs(gap).sum() / len(y))


class ReliabilityBin(BaseModel):
    """One score bin: its range, rows, mean score and observed fraud rate."""

    model_config = ConfigDict(frozen=True)

    low: float
    high: float
    rows: int
    mean_score: float
    observed: float


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[ReliabilityBin, ...]:
    """The reliability table: every non-empty equal-width bin."""
    b = score_bins(p, bins)
    rows = np.bincount(b, minlength=bins)
    sums = np.bincount(b, weights=p, minlength=bins)
    pos = np.bincount(b, weights=y, minlength=bins)
    return tuple(
        ReliabilityBin(low=k / bins, high=(k + 1) / bins, rows=int(rows[k]),
                       mean_score=float(sums[k] / rows[k]), observed=float(pos[k] / rows[k]))
        for k in range(bins) if rows[k]
    )  # fmt: skip


class Quality(BaseModel):
    """One model's scores on the rows: mean against the observed rate, Brier and ECE with their
    intervals, and its reliability table."""

    model_config = ConfigDict(frozen=True)

    mean_score: float
    observed_rate: float
    brier: Interval
    ece: Interval
    reliability: tuple[ReliabilityBin, ...] = ()


class CalibrationEvidence(BaseModel):
    """Calibration of the candidate and (paired, on the same rows) the champion."""

    model_config = ConfigDict(frozen=True)

    rows: int
    bins: int
    confidence: float
    resamples: int
    seed: int
    candidate: Quality
    champion: Quality | None = None
    brier_difference: Interval | None = None  # candidate minus champion
    ece_difference: Interval | None = None

    @property
    def level(self) -> str:
        return f"{self.confidence * 100:g}%"

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """MLflow metrics: ``holdout_brier``, ``holdout_ece``, ..., ``ece_difference_low``."""
        c = self.candidate
        out = {
            f"{prefix}holdout_brier": c.brier.estimate,
            f"{prefix}holdout_ece": c.ece.estimate,
            f"{prefix}holdout_mean_score": c.mean_score,
            f"{prefix}holdout_fraud_rate": c.observed_rate,
            f"{prefix}holdout_ece_low": c.ece.low,
            f"{prefix}holdout_ece_high": c.ece.high,
        }
        if self.champion is not None:
            h = self.champion
            out |= {
                "champion_holdout_brier": h.brier.estimate,
                "champion_holdout_ece": h.ece.estimate,
                "champion_holdout_mean_score": h.mean_score,
            }
        for name, value in (("brier", self.brier_difference), ("ece", self.ece_difference)):
            if value is not None:
                out |= {f"{name}_difference": value.estimate,
                        f"{name}_difference_low": value.low,
                        f"{name}_difference_high": value.high}  # fmt: skip
        return out


def _draws(
    n: int,
    means: dict[str, np.ndarray],
    binned: dict[str, tuple[np.ndarray, np.ndarray, int]],
    resamples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per resample: the mean of each array in ``means``, the ECE of each (bin, gap, bins)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {k: [] for k in [*means, *binned]}
    done = 0
    while done < resamples:
        c = min(CHUNK, resamples - done)
        idx = rng.integers(0, n, size=(c, n))
        for key, values in means.items():
            out[key].append(values[idx].mean(axis=1))
        for key, (b, gap, k) in binned.items():
            keys = (np.arange(c)[:, None] * k + b[idx]).ravel()
            sums = np.bincount(keys, weights=gap[idx].ravel(), minlength=c * k).reshape(c, k)
            out[key].append(np.abs(sums).sum(axis=1) / n)
        done += c
    return {k: np.concatenate(v) for k, v in out.items()}


def calibration_evidence(
    y: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray | None = None,
    *,
    bins: int = 10,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CalibrationEvidence:
    """Brier and ECE with bootstrap intervals, paired with the champion's scores when given."""
    y = np.asarray(y, dtype=np.float64)
    models = {"candidate": np.asarray(candidate, dtype=np.float64)}
    if champion is not None:
        models["champion"] = np.asarray(champion, dtype=np.float64)
    means = {f"{k}_brier": (p - y) ** 2 for k, p in models.items()}
    binned = {f"{k}_ece": (score_bins(p, bins), p - y, bins) for k, p in models.items()}
    draws = _draws(len(y), means, binned, resamples, seed)
    quality: dict[str, Quality] = {}
    for k, p in models.items():
        quality[k] = Quality(
            mean_score=float(p.mean()),
            observed_rate=float(y.mean()),
            brier=percentile_interval(brier(y, p), draws[f"{k}_brier"], confidence),
            ece=percentile_interval(ece(y, p, bins), draws[f"{k}_ece"], confidence),
            reliability=reliability(y, p, bins),
        )
    out = CalibrationEvidence(
        rows=len(y),
        bins=bins,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        candidate=quality["candidate"],
    )
    if champion is None:
        return out
    c, h = quality["candidate"], quality["champion"]
    return out.model_copy(
        update={
            "champion": h,
            "brier_difference": percentile_interval(
                c.brier.estimate - h.brier.estimate,
                draws["candidate_brier"] - draws["champion_brier"], confidence,
            ),
            "ece_difference": percentile_interval(
                c.ece.estimate - h.ece.estimate,
                draws["candidate_ece"] - draws["champion_ece"], confidence,
            ),
        }
    )  # fmt: skip


class CostEvidence(BaseModel):
    """Expected cost per 1,000 transactions at each model's threshold, with intervals."""

    model_config = ConfigDict(frozen=True)

    objective: str  # "a missed fraud costs its amount, a false alarm 5"
    rows: int
    confidence: float
    candidate: Interval
    candidate_at_f1_threshold: float | None = None
    champion: Interval | None = None
    difference: Interval | None = None  # candidate minus champion

    def metrics(self) -> dict[str, float]:
        """MLflow metrics ``expected_cost_per_1000`` ... ``cost_difference_high``."""
        out = {
            "expected_cost_per_1000": self.candidate.estimate,
            "expected_cost_per_1000_low": self.candidate.low,
            "expected_cost_per_1000_high": self.candidate.high,
        }
        if self.candidate_at_f1_threshold is not None:
            out["expected_cost_per_1000_at_f1_threshold"] = self.candidate_at_f1_threshold
        if self.champion is not None and self.difference is not None:
            out |= {
                "champion_expected_cost_per_1000": self.champion.estimate,
                "cost_difference": self.difference.estimate,
                "cost_difference_low": self.difference.low,
                "cost_difference_high": self.difference.high,
            }
        return out


def cost_evidence(
    objective: str,
    candidate_costs: np.ndarray,
    champion_costs: np.ndarray | None = None,
    *,
    at_f1_threshold: np.ndarray | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CostEvidence:
    """Per-1,000 expected cost intervals from each row's cost (paired with the champion's)."""
    per = {"candidate": np.asarray(candidate_costs, dtype=np.float64) * 1000}
    if champion_costs is not None:
        per["champion"] = np.asarray(champion_costs, dtype=np.float64) * 1000
    n = len(per["candidate"])
    draws = _draws(n, per, {}, resamples, seed)
    est = {k: float(v.mean()) for k, v in per.items()}
    out = CostEvidence(
        objective=objective,
        rows=n,
        confidence=confidence,
        candidate=percentile_interval(est["candidate"], draws["candidate"], confidence),
        candidate_at_f1_threshold=(
            float(np.mean(at_f1_threshold) * 1000) if at_f1_threshold is not None else None
        ),
    )
    if champion_costs is None:
        return out
    diff = percentile_interval(est["candidate"] - est["champion"],
                     draws["candidate"] - draws["champion"], confidence)  # fmt: skip
    return out.model_copy(
        update={"champion": percentile_interval(est["champion"], draws["champion"], confidence),
                "difference": diff}
    )  # fmt: skip
