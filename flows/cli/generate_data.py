"""``fraud generate-data``: the synthetic card-transaction generator (data_contracts.synthetic).

``fraud generate-data data/tx.parquet --rows 200000 [--amount-scale 1.8 ...]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli.options import add_drift_arguments

DESCRIPTION = (
    "Generate labelled synthetic card transactions that follow the fraud spec "
    "(data_contracts/fraud_spec.yaml). The same seed always gives the same rows."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``fraud generate-data`` on ``parser``."""
    parser.description = DESCRIPTION
    parser.add_argument("output", type=Path, help="output file (.parquet or .csv)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to write (default 200000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--fraud-rate", type=float, default=0.02, help="share of fraud (0.02)")
    parser.add_argument(
        "--invalid-rows", type=int, default=0, help="rows that break the contract on purpose"
    )
    parser.add_argument("--days", type=int, default=30, help="days the event times span (30)")
    drift = add_drift_arguments(parser)
    drift.add_argument(
        "--drift-fraud-rate",
        type=float,
        default=None,
        help="fraud rate of the drifted data (overrides --fraud-rate)",
    )
    drift.add_argument("--start-day", type=int, default=0, help="days after 2026-01-01 to start")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Write the data set the parsed ``args`` describe; returns the exit code."""
    # imported here so that `fraud --help` and argument errors stay fast
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from data_contracts.synthetic import (
        CHUNK,
        DriftKnobs,
        GeneratorConfig,
        break_rows,
        iter_chunks,
    )

    if args.output.suffix.lower() not in {".parquet", ".csv"}:
        print(f"error: output must end in .parquet or .csv, got {args.output}", file=sys.stderr)
        return 2
    try:
        cfg = GeneratorConfig(
            rows=args.rows,
            seed=args.seed,
            fraud_rate=args.fraud_rate,
            invalid_rows=args.invalid_rows,
            days=args.days,
            drift=DriftKnobs(
                amount_scale=args.amount_scale,
                merchant_shift=args.merchant_shift,
                fraud_rate=args.drift_fraud_rate,
                broken_feed=args.broken_feed,
                start_day=args.start_day,
                new_fraud_pattern=args.new_fraud_pattern,
            ),
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".partial")
    chunks = iter_chunks(cfg)
    if cfg.invalid_rows:  # contract breaks are spread over the whole set: build it in memory
        import pandas as pd

        chunks = iter(
            [break_rows(pd.concat(list(chunks), ignore_index=True), cfg.invalid_rows, cfg.seed)]
        )
    writer = None
    with tqdm(total=cfg.rows, unit="rows", unit_scale=True, disable=args.quiet) as bar:
        for chunk in chunks:
            if args.output.suffix.lower() == ".csv":
                chunk.to_csv(tmp, mode="a" if writer else "w", header=writer is None, index=False)
                writer = True
            else:
                table = pa.Table.from_pandas(chunk, preserve_index=False)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            bar.update(len(chunk))
    if isinstance(writer, pq.ParquetWriter):
        writer.close()
    tmp.replace(args.output)
    print(f"wrote {cfg.rows:,} rows to {args.output} (chunks of {CHUNK:,})")
    return 0
