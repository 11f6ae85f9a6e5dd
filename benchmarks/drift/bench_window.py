"""The drift check on a day of a large card issuer's traffic: a 10M-row window, a 1M-row reference.

Setup (not measured): a 1M-row generated reference with its stand-in score, and a window of
``--rows`` drifted rows over the last 23 hours written by the inference log's own writer
(:class:`~data_contracts.inference_log.LogFiles`) in the bento's layout, one file per 10,000
rows (the bento's ``flush_records``, what it writes under load), date-partitioned.

Each measurement runs in a fresh interpreter, so its peak RSS (``VmHWM`` of /proc/self/status;
``ru_maxrss`` would include the parent's size at fork time) is the check's alone, imports
included:

- product: what the drift flow runs, ``steps.read_window`` (the log scanned file by file, a
  uniform sample of ``sample_rows`` drawn while reading) then ``analysis.analyse``;
- whole window (the baseline, the check before the scan): every monitored column of every
  window row read into memory with ``read_log``, then the same analysis.

Printed: wall time, CPU time and peak RSS of both paths for each window size, and their ratios.
Targets for 10M rows: within 30 s wall and 4 GB peak RSS.

    uv run python -m benchmarks.drift.bench_window [--rows 1000000 10000000] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import subprocess  # nosec B404 # this interpreter, argv list only
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

FILE_ROWS = 10_000  # the bento's flush_records: one file per flush under load
CHUNK_ROWS = 1_000_000  # generated at a time, so setup memory stays bounded too
KEY = b"benchmark-id-hash-key-0123456789abcdef"


def write_day(rows: int, root: Path) -> int:
    """``rows`` drifted window rows of the last 23 h in the bento's layout; returns files."""
    from benchmarks.drift.bench import DRIFT, stand_in_score
    from data_contracts.inference_log import LogFiles, build_table
    from data_contracts.spec import default_spec
    from data_contracts.synthetic import GeneratorConfig, generate

    spec = default_spec()
    now = pd.Timestamp.now(tz="UTC").floor("s")
    files = 0
    for chunk, start in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - start)
        window = generate(GeneratorConfig(rows=n, seed=100 + chunk, days=2, drift=DRIFT))
        score = stand_in_score(window)
        seconds = np.sort(np.random.default_rng(200 + chunk).integers(1, 23 * 3600, n))[::-1]
        table = build_table(
            spec,
            window,
            scores=score,
            decisions=score >= 0.5,
            timestamps=now - pd.to_timedelta(seconds, unit="s"),
            model_version="1",
            request_ids="bench",
            transaction_ids=list(window["transaction_id"]),
            id_key=KEY,
        )
        writer = LogFiles(root, writer_id=f"bench{chunk:02d}")
        for offset in range(0, n, FILE_ROWS):
            written = writer.write(table.slice(offset, FILE_ROWS))
            assert not written.failures, written.failures  # nosec B101 # setup, not the product
            files += len(written.files)
        print(f"  {start + n:,} of {rows:,} rows written ({files:,} files)", flush=True)
    return files


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(path: str, home: Path, reference: Path) -> dict[str, float | int | str]:
    """One check's read + analysis in this interpreter; the figures as a dict."""
    import evidently.presets  # noqa: F401 - the check's imports, counted in RSS, not in time
    import pyarrow.parquet as pq

    from data_contracts.spec import default_spec
    from flows.core.settings import Settings
    from flows.monitoring import steps
    from flows.monitoring.analysis import analyse
    from flows.monitoring.config import DriftCheckConfig
    from flows.monitoring.window import Window, monitored_columns, read_inference_log

    spec = default_spec()
    settings = Settings(home=home)
    config = DriftCheckConfig(window=Window(hours=24))
    base_rss = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    frame = pq.read_table(reference, columns=monitored_columns(spec))
    now = datetime.now(UTC)
    if path == "product":
        window = steps.read_window(settings, config, spec, "1", now)
        result = analyse(frame, window.sample, spec, config.policy, window.rows)
        rows = window.rows
    else:
        table = read_inference_log(
            settings.inference_log_root,
            config.window,
            now=now,
            model_version="1",
            columns=monitored_columns(spec),
            as_table=True,
        )
        result = analyse(frame, table, spec, config.policy)
        rows = table.num_rows
    return {
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        "rss_mb": peak_rss_mb(),
        "import_rss_mb": base_rss,
        "rows": rows,
        "sampled": result.sampling.window_sampled,
        "outcome": result.verdict.outcome.value,
        "drifted": sorted(r.column for r in result.results if r.drifted),
    }


def run_child(path: str, home: Path, reference: Path) -> dict:
    argv = [sys.executable, "-m", "benchmarks.drift.bench_window", "--measure", path]
    argv += ["--home", str(home), "--reference", str(reference)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # nosec B603
    if done.returncode != 0:
        raise SystemExit(f"{path} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.drift.bench_window",
        description="Drift check wall time and peak RSS on large windows (module docstring).",
    )
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[1_000_000, 10_000_000], help="window sizes"
    )
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--no-baseline", action="store_true", help="only the product path")
    parser.add_argument("--measure", choices=["product", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.home, args.reference)))
        return 0

    from benchmarks.drift.bench import make_reference

    figures: list[tuple[int, str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="bench-window-") as tmp:
        folder = Path(tmp)
        reference = folder / "reference.parquet"
        print(f"generating the {args.reference_rows:,}-row reference ...", flush=True)
        make_reference(args.reference_rows).to_parquet(reference, index=False)
        for rows in args.rows:
            home = folder / f"home-{rows}"
            print(f"writing a {rows:,}-row window in the bento's layout ...", flush=True)
            files = write_day(rows, home / "inference_log")
            paths = ["product"] if args.no_baseline else ["product", "whole"]
            for path in paths:
                got = run_child(path, home, reference)
                figures.append((rows, path, got))
                print(
                    f"  {path:8s} {rows:>11,} rows in {files:,} files: {got['wall']:6.1f} s wall, "
                    f"{got['cpu']:6.1f} s CPU, peak RSS {got['rss_mb']:7,.0f} MB "
                    f"(imports {got['import_rss_mb']:,.0f} MB); {got['outcome']}, "
                    f"{got['sampled']:,} rows analysed, drifted: {', '.join(got['drifted'])}",
                    flush=True,
                )
    print("\n| window rows | path | wall s | CPU s | peak RSS MB | outcome |")
    print("| ---: | --- | ---: | ---: | ---: | --- |")
    for rows, path, got in figures:
        print(
            f"| {rows:,} | {path} | {got['wall']:.1f} | {got['cpu']:.1f} | "
            f"{got['rss_mb']:,.0f} | {got['outcome']} |"
        )
    by = {(rows, path): got for rows, path, got in figures}
    for rows in args.rows:
        product, whole = by.get((rows, "product")), by.get((rows, "whole"))
        if product and whole:
            print(
                f"{rows:,} rows: product {product['wall'] / whole['wall']:.2f}x the whole-window "
                f"wall time, {product['rss_mb'] / whole['rss_mb']:.2f}x its peak RSS"
            )
    largest = by.get((max(args.rows), "product"))
    ok = largest is not None and largest["wall"] <= 30 and largest["rss_mb"] <= 4096
    print(
        f"{max(args.rows):,}-row window: {largest['wall']:.1f} s wall (target <= 30 s), peak RSS "
        f"{largest['rss_mb']:,.0f} MB (target <= 4,096 MB): {'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
