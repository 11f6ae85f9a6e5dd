"""Drift check on a 1M-row window against a 1M-row reference: the product path vs naive Evidently.

Both runs see the same data: a reference from the generator, and a window with injected drift
(amounts x1.8, half of the legitimate merchant mix moved to gaming/money_transfer) written to an
inference log in the bento's format. The product path reads the window from that log and runs
``flows.monitoring.analysis.analyse``
(sampled Evidently drift + data summary, p-values, noise floor); the naive
run is Evidently's DataDriftPreset over every row. Printed: both timings, the ratio, and the
flagged columns of both, with each column's statistic on both sides.

    uv run python -m benchmarks.drift.bench [--rows 1000000] [--sample-rows 50000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from data_contracts.inference_log import SCORE_COLUMN, LogFiles, build_table
from data_contracts.spec import default_spec
from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.monitoring.analysis import (
    analyse,
    column_kinds,
    drift_results,
    max_noise,
    prepare_frames,
)
from flows.monitoring.verdict import DriftPolicy
from flows.monitoring.window import Window, monitored_columns, read_inference_log

DRIFT = DriftKnobs(amount_scale=1.8, merchant_shift=0.5)
NAIVE_CPU: list[float] = []


def stand_in_score(df: pd.DataFrame) -> np.ndarray:
    """A fixed logistic score of a few features (the benchmark measures drift, not a model)."""
    z = (
        0.9 * (np.log1p(df["amount"].to_numpy(float)) - 5)
        + 1.5 * df["is_new_device"].to_numpy(float)
        + 1.2 * df["country_mismatch"].to_numpy(float)
        + 0.3 * df["txn_count_1h"].to_numpy(float)
        - 2.0
    )
    return 1 / (1 + np.exp(-z))


def make_reference(rows: int) -> pd.DataFrame:
    """The generated reference with its stand-in score."""
    reference = generate(GeneratorConfig(rows=rows, seed=11))
    reference[SCORE_COLUMN] = stand_in_score(reference)
    return reference


def write_window(rows: int, root: Path, id_key: bytes | None = None) -> pd.DataFrame:
    """A drifted window of the last 23 h written to ``root`` in the bento's format.

    With ``id_key`` the transaction ids are logged as their keyed hashes, as the bento does.
    """
    window = generate(GeneratorConfig(rows=rows, seed=12, days=2, drift=DRIFT))
    window[SCORE_COLUMN] = stand_in_score(window)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    seconds = np.random.default_rng(13).integers(1, 23 * 3600, rows)
    window["timestamp"] = now - pd.to_timedelta(seconds, unit="s")
    table = build_table(
        default_spec(),
        window,
        scores=window[SCORE_COLUMN],
        decisions=window[SCORE_COLUMN] >= 0.5,
        timestamps=window["timestamp"],
        model_version="1",
        request_ids="bench",
        transaction_ids=list(window["transaction_id"]) if id_key else None,
        id_key=id_key,
    )
    LogFiles(root).write(table)
    return window


def make_data(rows: int, folder: Path) -> tuple[pd.DataFrame, Path]:
    root = folder / "inference_log"
    write_window(rows, root)
    return make_reference(rows), root


def naive(reference: pd.DataFrame, window: pd.DataFrame) -> tuple[float, dict[str, float], set]:
    """Evidently's DataDriftPreset over every row (the baseline)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    spec = default_spec()
    ref, cur, _ = prepare_frames(reference, window, spec)
    numerical, categorical = column_kinds(spec)
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    started, cpu = time.perf_counter(), time.process_time()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    results = drift_results(snapshot.dict(), spec, {})
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    print(f"naive run: {elapsed:.1f} s wall, {used:.1f} s CPU")
    NAIVE_CPU.append(used)
    return (
        elapsed,
        {r.column: r.statistic for r in results},
        {r.column for r in results if r.drifted},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drift.bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample-rows", type=int, default=DriftPolicy().sample_rows)
    parser.add_argument("--skip-naive", action="store_true", help="only the product path")
    args = parser.parse_args(argv)
    spec = default_spec()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"generating {args.rows:,} reference rows and {args.rows:,} drifted window rows ...")
        reference, root = make_data(args.rows, Path(tmp))
        ref_path = Path(tmp) / "reference.parquet"
        reference.to_parquet(ref_path, index=False)
        del reference

        policy = DriftPolicy(sample_rows=args.sample_rows)
        import evidently.presets  # noqa: F401 - import cost is the interpreter's, not the check's

        started, cpu = time.perf_counter(), time.process_time()
        reference = pq.read_table(ref_path, columns=monitored_columns(spec))
        window = read_inference_log(
            root, Window(hours=24), columns=monitored_columns(spec), as_table=True
        )
        loaded = time.perf_counter() - started
        analysis = analyse(reference, window, spec, policy)
        fast, fast_cpu = time.perf_counter() - started, time.process_time() - cpu
        fast_stats = {r.column: r.statistic for r in analysis.results}
        fast_flags = {r.column for r in analysis.results if r.drifted}
        print(
            f"\nwindow rows read from the log: {len(window):,}; reference rows: {len(reference):,}"
        )
        print(f"sampling: {analysis.sampling.describe()}")
        worst = max_noise(analysis.results)
        if worst:
            print(f"noise floor (no-drift statistic at this size): max {worst[1]:.4f} ({worst[0]})")
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in analysis.timings.items())
        print(
            f"product path: {fast:.1f} s wall, {fast_cpu:.1f} s CPU (load {loaded:.1f} s, {steps})"
        )

        if args.skip_naive:
            return 0
        print("naive run: DataDriftPreset over every row (this takes a while) ...")
        slow, slow_stats, slow_flags = naive(reference.to_pandas(), window.to_pandas())

    print("\n| column | naive statistic | sampled statistic | naive flag | sampled flag |")
    print("| --- | --- | --- | --- | --- |")
    for column in monitored_columns(spec):
        a, b = slow_stats.get(column), fast_stats.get(column)
        print(
            f"| {column} | {a:.4f} | {b:.4f} | {'DRIFT' if column in slow_flags else '-'} | "
            f"{'DRIFT' if column in fast_flags else '-'} |"
        )
    diffs = [
        abs(slow_stats[c] - fast_stats[c]) for c in slow_stats if fast_stats.get(c) is not None
    ]
    print(f"\nmax |naive - sampled| statistic: {max(diffs):.4f} (threshold 0.1)")
    print(f"naive DataDriftPreset, {args.rows:,} vs {args.rows:,}: {slow:6.1f} s")
    print(f"product drift check (read log + sample + report + stats): {fast:6.1f} s")
    print(f"speed-up: {slow / fast:.1f}x wall")
    print(
        f"CPU seconds (a shared machine inflates wall time): naive {NAIVE_CPU[0]:.1f} s, "
        f"product {fast_cpu:.1f} s, {NAIVE_CPU[0] / fast_cpu:.1f}x"
    )
    print(f"flagged (naive):   {sorted(slow_flags)}")
    print(f"flagged (product): {sorted(fast_flags)}")
    print(f"same features flagged: {'yes' if slow_flags == fast_flags else 'NO'}")
    return 0 if slow_flags == fast_flags else 1


if __name__ == "__main__":
    raise SystemExit(main())
