"""Benchmarks of issue "train-and-release": wall time on 100k and 1M rows, and scoring time of
scikit-learn vs ONNX Runtime for 1 and 1,000 rows. Prints figures and ratios; asserts nothing.

    uv run python benchmarks/release/bench.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def time_release(rows: int, home: Path) -> tuple[float, dict]:
    from data_contracts.synthetic import GeneratorConfig, generate
    from flows.train_and_release import train_and_release

    data = home / f"tx-{rows}.parquet"
    generate(GeneratorConfig(rows=rows, seed=3)).to_parquet(data, index=False)
    os.environ["FRAUD_HOME"] = str(home / f"home-{rows}")
    start = time.perf_counter()
    state = train_and_release(data_path=str(data), return_state=True)
    elapsed = time.perf_counter() - start
    if not state.is_completed():
        raise SystemExit(f"release on {rows} rows failed: {state.message}")
    return elapsed, state.result()


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def scoring(rows_for_model: int = 100_000) -> None:
    from data_contracts.schemas import model_frame, onnx_feed, validate_frame
    from data_contracts.spec import default_spec
    from data_contracts.synthetic import GeneratorConfig, generate
    from flows.training.onnx_export import (
        PROBABILITIES,
        export_onnx,
        onnx_predict_proba,
        onnx_session,
    )
    from flows.training.release import train_candidate
    from flows.training.train import TrainParams, predict_proba, split

    spec = default_spec()
    valid = validate_frame(generate(GeneratorConfig(rows=rows_for_model, seed=5)), spec).valid
    splits = split(valid, spec, 0.2, 0.2)
    cand = train_candidate(splits, spec, TrainParams())
    session = onnx_session(export_onnx(cand.pipeline, spec))
    print(f"\nscoring (model trained on {rows_for_model:,} rows, best of many runs)")
    print("end to end takes a DataFrame (contract typing + model inputs + model);")
    print("model only takes prepared inputs, as the bento does (a float32 matrix / named arrays)")
    print(f"{'rows':>6} {'what':<11} {'scikit-learn':>14} {'onnxruntime':>14} {'ratio':>8}")
    for n in (1, 1000):
        batch = splits.holdout.head(n)
        repeat = 300 if n == 1 else 30
        t_sk = best_of(lambda b=batch: predict_proba(cand.pipeline, b, spec), repeat)
        t_ox = best_of(lambda b=batch: onnx_predict_proba(session, b, spec), repeat)
        frame = model_frame(batch, spec)
        feed = onnx_feed(frame, spec)
        m_sk = best_of(lambda f=frame: cand.pipeline.predict_proba(f), repeat)
        m_ox = best_of(lambda f=feed: session.run([PROBABILITIES], f), repeat)
        for what, a, b in (("end to end", t_sk, t_ox), ("model only", m_sk, m_ox)):
            print(f"{n:>6} {what:<11} {a * 1e3:>11.3f} ms {b * 1e3:>11.3f} ms {a / b:>7.1f}x")
    same = np.abs(
        predict_proba(cand.pipeline, splits.holdout, spec)
        - onnx_predict_proba(session, splits.holdout, spec)
    ).max()
    print(f"max |p_sklearn - p_onnx| on the holdout: {same:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[100_000, 1_000_000],
        help="data sizes of the timed releases (none: scoring only)",
    )
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for rows in args.sizes:
            elapsed, out = time_release(rows, Path(tmp))
            results[rows] = elapsed
            print(f"train-and-release {rows:>9,} rows: {elapsed:7.1f} s wall "
                  f"(holdout F1 {out['holdout_f1']:.4f}, {out['outcome']})")  # fmt: skip
        if len(results) >= 2:
            small, large = min(results), max(results)
            print(f"data ratio {large / small:.0f}x -> time ratio "
                  f"{results[large] / results[small]:.1f}x")  # fmt: skip
    scoring()


if __name__ == "__main__":
    main()
