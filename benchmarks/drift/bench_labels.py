"""Drift check with realized performance: a 1M-row window with 100k labels joined, vs without.

Same data for both runs: a generated reference, a 1M-row window written in the bento's format
with transaction ids (keyed hashes), and a feedback file with labels for 100k of them. The
baseline is the check without labels (``steps.read_window`` scans the monitored columns into a
sample, then the analysis); the labelled run's scan also keeps the id, decision, score and
timestamp of every row, runs the same analysis, reads the feedback and computes realized
performance (join, metrics, bootstrap interval, Evidently's classification report), as the flow
does. Printed: both wall and CPU times, and their ratio (target: within 1.5x).

    uv run python -m benchmarks.drift.bench_labels [--rows 1000000] [--labels 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from benchmarks.drift.bench import make_reference, write_window
from data_contracts.id_key import hash_id
from data_contracts.spec import default_spec
from flows.core.settings import Settings
from flows.monitoring import steps
from flows.monitoring.analysis import analyse
from flows.monitoring.config import DriftCheckConfig
from flows.monitoring.verdict import DriftPolicy
from flows.monitoring.window import Window, monitored_columns

KEY = b"benchmark-id-hash-key-0123456789abcdef"


def make_data(rows: int, labels: int, folder: Path) -> tuple[Path, Path, Path]:
    ref_path = folder / "reference.parquet"
    make_reference(rows).to_parquet(ref_path, index=False)
    root = folder / "inference_log"
    window = write_window(rows, root, id_key=KEY)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    picked = window.sample(labels, random_state=14)
    feedback = folder / "feedback"
    feedback.mkdir()
    pd.DataFrame(
        {
            "transaction_id_hash": [hash_id(t, KEY) for t in picked["transaction_id"]],
            "label": picked["is_fraud"].astype("int8"),
            "labelled_at": now - pd.Timedelta(minutes=5),
        }
    ).to_parquet(feedback / "chargebacks.parquet", index=False)
    return ref_path, root, feedback


def timed(label: str, run: Callable[[], str]) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    detail = run()
    wall, used = time.perf_counter() - started, time.process_time() - cpu
    print(f"{label}: {wall:.1f} s wall, {used:.1f} s CPU; {detail}")
    return wall, used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drift.bench_labels")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each (best is kept)")
    args = parser.parse_args(argv)
    spec = default_spec()
    policy = DriftPolicy()
    import evidently.presets  # noqa: F401 - import cost is the interpreter's, not the check's

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"generating {args.rows:,} reference and window rows, {args.labels:,} labels ...")
        ref_path, _, feedback_dir = make_data(args.rows, args.labels, folder)

        config = DriftCheckConfig(window=Window(hours=24), policy=policy)
        unlabelled = Settings(home=folder, feedback_dir=folder / "no-feedback")
        labelled = Settings(home=folder, feedback_dir=feedback_dir)

        def without_labels() -> str:
            reference = pq.read_table(ref_path, columns=monitored_columns(spec))
            window = steps.read_window(unlabelled, config, spec, "1", datetime.now(UTC))
            drift = analyse(reference, window.sample, spec, policy, window.rows)
            return f"{drift.verdict.outcome.value}, {window.rows:,} window rows"

        def with_labels() -> str:
            reference = pq.read_table(ref_path, columns=monitored_columns(spec))
            now = datetime.now(UTC)
            window = steps.read_window(labelled, config, spec, "1", now)
            drift = analyse(reference, window.sample, spec, policy, window.rows)
            perf = steps.measure_performance(labelled, config, window, 0.8, now, folder / "report")
            return (
                f"{drift.verdict.outcome.value}; realized: {perf.labelled:,} labelled "
                f"({perf.coverage:.1%}), F1 {perf.f1:.3f} [{perf.f1_low:.3f}, {perf.f1_high:.3f}]"
            )

        base = min(timed("check without labels", without_labels) for _ in range(args.repeat))
        labelled = min(timed("check with labels", with_labels) for _ in range(args.repeat))
    print(
        f"\n{args.rows:,}-row window, {args.labels:,} labels joined: "
        f"{labelled[0]:.1f} s vs {base[0]:.1f} s without labels = {labelled[0] / base[0]:.2f}x "
        f"wall ({labelled[1] / base[1]:.2f}x CPU); target within 1.5x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
