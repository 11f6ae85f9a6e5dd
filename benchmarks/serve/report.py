"""The serving benchmark's findings: what it measured, the table, the ratios and the targets.

Kept apart from :mod:`benchmarks.serve.bench`, which drives the servers, so that what is
compared with what (the bento against each baseline at the same concurrency, in the same run)
reads in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from benchmarks.serve.wrk import LoadResult

# the baseline as the article runs it (uvicorn's default access log on) and a stricter variant
ARTICLE = "baseline (article)"
STRICT = "baseline (no-access-log)"
BASELINES = {ARTICLE: "article", STRICT: "no_access_log"}


@dataclass
class Report:
    machine: dict[str, Any]
    loads: list[LoadResult] = field(default_factory=list)
    rss_mb: dict[str, float] = field(default_factory=dict)
    ready_s: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    beside_batches: dict[str, Any] = field(default_factory=dict)
    log: dict[str, int] = field(default_factory=dict)
    client_scored: int = 0


def print_table(report: Report) -> None:
    """One line per load run: wrk's figures, then the paced probe's (p99, max, worst second)."""
    print(
        f"{'target':<26}{'path':<14}{'conn':>5}{'req/s':>8}{'rec/s':>9}{'p50':>7}{'p99':>8}"
        f"{'p99.9':>8}{'max':>7}{'non2xx':>7} | {'probe p99':>9}{'max':>7}{'worst 1s':>9}"
    )
    for r in report.loads:
        probe = r.probe or {}
        print(
            f"{r.target:<26}{r.path:<14}{r.connections:>5}{r.rps:>8.0f}{r.records_per_s:>9.0f}"
            f"{r.p50_ms:>7.2f}{r.p99_ms:>8.2f}{r.p999_ms:>8.1f}{r.max_ms:>7.1f}"
            f"{r.non2xx + r.socket_errors:>7} | {probe.get('p99_ms', float('nan')):>9.2f}"
            f"{probe.get('max_ms', float('nan')):>7.1f}"
            f"{probe.get('worst_1s_p99_ms', float('nan')):>9.1f}"
        )
    print(
        "  (probe: one client, one single-row request every 5 ms during the run; worst 1s: the "
        "highest p99 of any second; the bento's /metrics is read every second meanwhile)"
    )


def summarize(report: Report) -> dict[str, Any]:
    """Ratios of the bento to each baseline per concurrency, and the figures the targets use."""
    summary: dict[str, Any] = {}
    bento = {r.connections: r for r in report.loads if r.target == "bento" and r.path == "predict"}
    for c, b in bento.items():
        for name, key in BASELINES.items():
            base = next((r for r in report.loads if r.target == name and r.connections == c), None)
            if base is not None:
                summary[f"rps_ratio_c{c}_vs_{key}"] = round(b.rps / base.rps, 2)
                summary[f"p99_ratio_c{c}_vs_{key}"] = round(b.p99_ms / base.p99_ms, 2)
                summary[f"max_ms_c{c}_{key}"] = round(base.max_ms, 1)
        summary[f"non2xx_c{c}"] = b.non2xx + b.socket_errors
        summary[f"p99_ms_c{c}"] = round(b.p99_ms, 2)
        summary[f"max_ms_c{c}"] = round(b.max_ms, 1)
    batches = [r for r in report.loads if r.path == "predict_batch"]
    if batches:
        summary["batch_records_per_s"] = round(max(r.records_per_s for r in batches))
    beside = report.beside_batches
    if beside:
        summary["single_row_c4_p99_ms_alone"] = round(beside["alone"]["p99_ms"], 2)
        summary["single_row_c4_p99_ms_with_10k_batches"] = round(
            beside["with_batches"]["p99_ms"], 2
        )
        summary["single_row_c4_max_ms_with_10k_batches"] = round(
            beside["with_batches"]["max_ms"], 1
        )
        summary["single_row_p99_ratio_with_batches"] = beside["p99_ratio"]
        summary["large_batches_scored"] = beside["batches"]
        summary["large_batch_p50_ms"] = beside["batch_p50_ms"]
    summary["inference_log"] = report.log
    summary["rss_mb"] = {k: round(v, 1) for k, v in report.rss_mb.items()}
    summary["ready_s"] = {k: round(v, 2) for k, v in report.ready_s.items()}
    return summary


def checks(report: Report, summary: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets, each against the figures of this run."""
    cs = [c for c in (8, 64) if f"non2xx_c{c}" in summary]
    log = report.log
    scored = log.get("scored (bento's counter)", -1)
    return {
        "p99 at c=8 <= 1.5x the article's baseline": summary.get("p99_ratio_c8_vs_article", 9)
        <= 1.5,
        "p99 at c=8 <= 1.5x the baseline without access log": summary.get(
            "p99_ratio_c8_vs_no_access_log", 9
        )
        <= 1.5,
        "max at c=8 <= 50 ms": summary.get("max_ms_c8", 1e9) <= 50,
        "throughput >= 2x the article's baseline (c=8, c=64)": bool(cs)
        and all(summary.get(f"rps_ratio_c{c}_vs_article", 0) >= 2 for c in cs),
        "throughput >= 2x the baseline without access log (c=8, c=64)": bool(cs)
        and all(summary.get(f"rps_ratio_c{c}_vs_no_access_log", 0) >= 2 for c in cs),
        "zero non-2xx (c=8, c=64)": all(summary.get(f"non2xx_c{c}", 1) == 0 for c in cs),
        "batch >= 100,000 records/s": summary.get("batch_records_per_s", 0) >= 100_000,
        "single-row p99 while batches run <= 3x without": (
            summary.get("single_row_p99_ratio_with_batches") or 9
        )
        <= 3,
        "inference log rows written = records scored": scored >= 0
        and log.get("written (rows in the log's files)") == scored,
        "serving RSS <= 350 MB": report.rss_mb.get("bento (after batches)", 1e9) <= 350,
    }


def print_report(report: Report) -> dict[str, Any]:
    """Print the table, the summary, the targets and the profile; return summary and checks."""
    print(f"\nmachine: {report.machine}")
    print_table(report)
    summary = summarize(report)
    found = checks(report, summary)
    print("\nsummary:", json.dumps(summary, indent=2))
    for name, ok in found.items():
        print(f"  [{'PASS' if ok else 'MISS'}] {name}")
    if report.profile:
        print("\nprofile of the bento worker under c=8 (share of samples by layer):")
        for k, v in report.profile.items():
            print(f"  {v:>7}  {k}")
    return {"summary": summary, "checks": found}
