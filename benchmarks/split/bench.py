"""Benchmarks of the data side of a release: what deriving row ids costs a table without an id
column (validation time with and without ``id_column``, same rows, same process), what the data
checks cost, and holdout scores of the same model under the id-hash and the time split.
Prints figures and ratios; asserts nothing.

    uv run python benchmarks/split/bench.py [--rows 200000] [--drift-days 0]

``--drift-days N`` generates a second, later period of N days whose fraud mix has moved (more
money transfers), appended after the first 30 days: the setting in which the split matters.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd


def best_of(fn, repeat: int = 2) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from data_contracts.schemas import validate_frame
    from data_contracts.spec import default_spec, parse_spec
    from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
    from flows.training.data_checks import check_training_data
    from flows.training.release import train_candidate
    from flows.training.splitting import SplitPolicy, apply_split
    from flows.training.train import TrainParams

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--drift-days", type=int, default=0)
    args = parser.parse_args()

    spec = default_spec()
    id_less = parse_spec(
        {k: v for k, v in spec.model_dump(mode="json").items() if k != "id_column"}
    )
    data = generate(GeneratorConfig(rows=args.rows, seed=3))
    if args.drift_days:
        later = generate(
            GeneratorConfig(
                rows=args.rows // 3,
                seed=4,
                days=args.drift_days,
                drift=DriftKnobs(start_day=30, merchant_shift=0.3, amount_scale=1.3),
            )
        )
        data = pd.concat([data, later], ignore_index=True)
    print(f"{len(data):,} rows ({'with' if args.drift_days else 'without'} a later drifted period)")

    with_id = best_of(lambda: validate_frame(data, spec))
    no_id_data = data.drop(columns="transaction_id")
    without = best_of(lambda: validate_frame(no_id_data, id_less))
    print(f"validation with id_column   {with_id:7.2f} s")
    print(f"validation, derived row ids {without:7.2f} s  ({without / with_id:.2f}x)")

    valid = validate_frame(data, spec).valid
    params = TrainParams(max_iter=100)
    for kind in ("hash", "time"):
        splits = apply_split(valid, spec, SplitPolicy(kind=kind))
        checks = best_of(lambda s=splits: check_training_data(s, spec), 1)
        start = time.perf_counter()
        m = train_candidate(splits, spec, params).metrics
        fit = time.perf_counter() - start
        print(
            f"{kind:>4} split: holdout {m.rows:,} rows / {m.positives:,} positives, F1 {m.f1:.4f},"
            f" PR-AUC {m.pr_auc:.4f}; data checks {checks:.2f} s, train {fit:.1f} s"
        )


if __name__ == "__main__":
    main()
