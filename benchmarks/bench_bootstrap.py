"""Cost of the gate's paired F1 bootstrap on a 40k-row holdout (the target: under 2 s).

Two implementations, same data, same process: the gate's (``paired_f1_bootstrap``: resamples
drawn as multinomial counts of the 8 label x decision cells) and the textbook row bootstrap
(an index matrix of ``resamples x rows``, drawn and counted in chunks of 50 resamples). Printed:
the median wall time of each, resamples per second, the ratio, and both difference intervals,
which must agree (same law, different random draws); then the whole gate evidence (bootstrap and
segments) on a generated holdout of the same size.

    uv run python benchmarks/bench_bootstrap.py [--rows 40000] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from data_contracts.schemas import LABEL_INT, validate_frame
from data_contracts.spec import default_spec
from data_contracts.synthetic import GeneratorConfig, generate
from flows.training.gate import ChampionScore, GatePolicy, gather_evidence
from flows.training.uncertainty import f1_from_counts, paired_f1_bootstrap


def holdout(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (about 2.2% positive, like the generated data) and two correlated models' flags."""
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.022).astype(np.int64)
    shared = rng.random(rows)
    cand = np.where(y == 1, shared < 0.85, shared < 0.003).astype(np.int64)
    champ = np.where(y == 1, (shared + 0.05 * rng.random(rows)) < 0.84, shared < 0.0035)
    return y, cand, champ.astype(np.int64)


def index_bootstrap(y, cand, champ, resamples: int, seed: int, chunk: int = 50) -> np.ndarray:
    """F1 differences of the row bootstrap: resample row indices, count per resample."""
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(y), size=(min(chunk, resamples - start), len(y)))
        yy = y[idx]
        out[start : start + len(idx)] = _f1(yy, cand[idx]) - _f1(yy, champ[idx])
    return out


def _f1(yy: np.ndarray, p: np.ndarray) -> np.ndarray:
    tp = (yy & p).sum(axis=1)
    return f1_from_counts(tp, ((1 - yy) & p).sum(axis=1), (yy & (1 - p)).sum(axis=1))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    y, cand, champ = holdout(args.rows)
    n = args.resamples
    print(f"holdout: {args.rows:,} rows, {int(y.sum())} positives; {n} paired resamples")

    gate = timed(lambda: paired_f1_bootstrap(y, cand, champ, resamples=n), args.repeats)
    naive = timed(lambda: index_bootstrap(y, cand, champ, n, seed=1), max(1, args.repeats // 2))
    print(f"gate (multinomial cells): {gate * 1000:9.2f} ms  {n / gate:14,.0f} resamples/s")
    print(f"row-index bootstrap:      {naive * 1000:9.2f} ms  {n / naive:14,.0f} resamples/s")
    print(f"ratio row-index / gate:   {naive / gate:9.1f}x")

    boot = paired_f1_bootstrap(y, cand, champ, resamples=n)
    low, high = np.quantile(index_bootstrap(y, cand, champ, n, seed=1), [0.025, 0.975])
    print(f"difference interval, gate:      {boot.difference.text(signed=True)}")
    print(f"difference interval, row-index: [{low:+.4f}, {high:+.4f}]")
    spec = default_spec()
    frame = validate_frame(generate(GeneratorConfig(rows=args.rows, seed=3)), spec).valid
    y_gen = frame[LABEL_INT].to_numpy(dtype=np.int64)
    scores = np.clip(y_gen * 0.6 + np.random.default_rng(5).random(len(frame)) * 0.5, 0, 1)
    champion = ChampionScore(version="1", spec_hash="x", f1=0.5, threshold=0.55, scores=scores)
    cand_scores = np.roll(scores, 1)

    def evidence() -> None:
        gather_evidence(y_gen, cand_scores, 0.5, champion, frame, spec, GatePolicy())

    t_all = timed(evidence, args.repeats)
    features = len(spec.categorical_features)
    print(f"whole gate evidence (bootstrap + segments of {features} categorical features, "
          f"{len(frame):,} generated rows): {t_all * 1000:.2f} ms")  # fmt: skip
    big = 100_000
    t_big = timed(lambda: paired_f1_bootstrap(y, cand, champ, resamples=big), 3)
    print(f"gate with {big:,} resamples:   {t_big * 1000:9.2f} ms")


if __name__ == "__main__":
    main()
