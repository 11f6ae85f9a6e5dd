"""Drift of the window against the champion's reference, with Evidently 0.7: one analysis.

The reference is the snapshot logged with the champion (``reference/reference.parquet`` in the
champion version's MLflow run: unseen rows with the model's ``score``), so it follows the champion
when it changes. The current window is read from the bento's date-partitioned inference log.

Column kinds come from the feature spec, never from dtype guessing: numeric and integer features
(and the model ``score``) are numerical, categorical and boolean features are categorical.

Speed: Evidently's DataDriftPreset costs about 51 CPU-seconds on 1M vs 1M rows here, almost all
of it in per-column plots and repeated per-column passes. Both sides are sampled uniformly at
random (``sample_rows`` each, default 30,000, seeded) before Evidently runs. With more than 1,000
reference rows Evidently decides by effect size (normed Wasserstein distance for numerical
columns, Jensen-Shannon distance for categorical and low-cardinality ones, threshold 0.1). From
30,000 rows the estimate differed from the full-data value by at most 0.047 on the benchmark
(heavy-tailed ratios; 0.01 or less for most columns), so a column whose true statistic lies
within about 0.05 of the threshold can be judged differently than on all rows (see
benchmarks/drift). Each report states its sample sizes and a *noise floor*: the same statistic
between two disjoint reference samples of the current window's size, i.e. what "no drift" looks
like at this window size.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from data_contracts.inference_log import SCORE_COLUMN
from data_contracts.spec import FeatureKind, FeatureSpec
from flows.monitoring.charts import Distribution, distributions
from flows.monitoring.sampling import Frame, Sampling, sample_pair
from flows.monitoring.statistics import describe_shift, noise_floor, p_value
from flows.monitoring.verdict import (
    ColumnDrift,
    DriftPolicy,
    DriftVerdict,
    decide,
    not_enough_data,
)
from flows.monitoring.window import monitored_columns


def column_kinds(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """(numerical, categorical) columns for Evidently, from the spec's kinds, plus the score."""
    numerical = [
        f.name for f in spec.features if f.kind in (FeatureKind.NUMERIC, FeatureKind.INTEGER)
    ]
    categorical = [
        f.name for f in spec.features if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.BOOLEAN)
    ]
    return [*numerical, SCORE_COLUMN], categorical


def prepare_frames(
    reference: pd.DataFrame, current: pd.DataFrame, spec: FeatureSpec
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Monitored columns with spec dtypes; columns Evidently cannot test are set aside with why.

    Evidently raises on a column that is empty on either side (e.g. a broken feed sending only
    nulls), so such a column is left out of the report and judged here instead.
    """
    columns = monitored_columns(spec)
    missing = [c for c in columns if c not in current.columns or c not in reference.columns]
    if missing:
        raise ValueError(f"columns missing from the window or the reference: {missing}")
    ref, cur = reference[columns].copy(), current[columns].copy()
    for f in spec.features:
        if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.BOOLEAN):
            for frame in (ref, cur):
                values = frame[f.name]
                if f.kind == FeatureKind.BOOLEAN:
                    values = values.map(lambda v: None if pd.isna(v) else str(bool(v)).lower())
                frame[f.name] = values.astype(object).where(values.notna(), None)
        else:
            for frame in (ref, cur):
                frame[f.name] = pd.to_numeric(frame[f.name], errors="coerce").astype("float64")
    for frame in (ref, cur):
        frame[SCORE_COLUMN] = pd.to_numeric(frame[SCORE_COLUMN], errors="coerce").astype("float64")
    untestable: dict[str, str] = {}
    for column in columns:
        if ref[column].notna().sum() == 0:
            untestable[column] = "reference has no values"
        elif cur[column].notna().sum() == 0:
            untestable[column] = "window has no values"
    return ref, cur, untestable


def run_evidently(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: FeatureSpec,
    policy: DriftPolicy,
    exclude: Iterable[str] = (),
) -> Any:
    """Run DataDriftPreset (with per-column tests) and DataSummaryPreset; return the snapshot."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    skip = set(exclude)
    numerical, categorical = column_kinds(spec)
    numerical = [c for c in numerical if c not in skip]
    categorical = [c for c in categorical if c not in skip]
    columns = [c for c in monitored_columns(spec) if c not in skip]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    per_column = {SCORE_COLUMN: policy.score_threshold} if policy.score_threshold else None
    if per_column and SCORE_COLUMN in skip:
        per_column = None
    report = Report(
        [
            DataDriftPreset(
                drift_share=policy.drift_share,
                threshold=policy.column_threshold,
                per_column_threshold=per_column,
            ),
            DataSummaryPreset(),
        ],
        include_tests=True,
    )
    return report.run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )


def _metric_type(entry: dict[str, Any]) -> str:
    return str(entry.get("config", {}).get("type", "")).rsplit(":", 1)[-1]


def find_metric(report: dict[str, Any], name: str, **params: Any) -> dict[str, Any]:
    """The one metric called ``name`` whose config has ``params`` (e.g. ``column="amount"``).

    This is the only place that reads Evidently's result layout: metrics are found by their
    name and parameters, never by position. Raises KeyError when none or several match.
    """
    hits = [
        m
        for m in report.get("metrics", [])
        if _metric_type(m) == name
        and all(m.get("config", {}).get(k) == v for k, v in params.items())
    ]
    if len(hits) != 1:
        raise KeyError(
            f"expected one {name} metric with {params or 'no parameters'}, found {len(hits)}"
        )
    hit = hits[0]
    tests = [
        t
        for t in report.get("tests", [])
        if t.get("metric_config", {}).get("metric_id") == hit["id"]
    ]
    return {
        "name": name,
        "config": hit.get("config", {}),
        "value": hit.get("value"),
        "tests": [{"name": t.get("name"), "status": t.get("status")} for t in tests],
    }


def drift_results(
    report: dict[str, Any], spec: FeatureSpec, untestable: dict[str, str]
) -> list[ColumnDrift]:
    """Per-column drift read from a report dict, in spec order, score last.

    A column Evidently could not test is judged here: empty in the window while the reference
    has values means drift (a feed stopped); empty in the reference is 'not tested'.
    """
    kinds = {f.name: f.kind.value for f in spec.features} | {SCORE_COLUMN: "score"}
    out = []
    for column in monitored_columns(spec):
        if column in untestable:
            why = untestable[column]
            drifted = why == "window has no values"
            out.append(
                ColumnDrift(
                    column=column,
                    kind=kinds[column],
                    method="all values missing" if drifted else "not tested",
                    statistic=1.0 if drifted else None,
                    threshold=None,
                    drifted=drifted,
                    note=why,
                )
            )
            continue
        metric = find_metric(report, "ValueDrift", column=column)
        statuses = {t["status"] for t in metric["tests"]}
        if not statuses:
            raise KeyError(f"ValueDrift for {column!r} has no test result (include_tests off?)")
        value = metric["value"]
        out.append(
            ColumnDrift(
                column=column,
                kind=kinds[column],
                method=str(metric["config"].get("method")),
                statistic=None if value is None else float(value),
                threshold=metric["config"].get("threshold"),
                drifted="FAIL" in statuses,
            )
        )
    return out


def summary_facts(report: dict[str, Any], spec: FeatureSpec) -> dict[str, Any]:
    """A few data-summary numbers of the (sampled) window, read by metric name."""
    facts: dict[str, Any] = {"rows": find_metric(report, "RowCount")["value"]}
    missing = {}
    for column in monitored_columns(spec):
        try:
            value = find_metric(report, "MissingValueCount", column=column)["value"]
        except KeyError:
            continue
        missing[column] = float(value["share"])
    facts["missing_share"] = missing
    with contextlib.suppress(KeyError):
        facts["evidently_drifted_share"] = float(
            find_metric(report, "DriftedColumnsCount")["value"]["share"]
        )
    return facts


# ---------------------------------------------------------------------------------------------
# One analysis: sample, Evidently, our statistics, the verdict


@dataclass
class DriftAnalysis:
    """Everything one check computed; ``snapshot`` is None when there was not enough data.

    ``distributions`` are the per-column shares of the two samples Evidently saw (for charts).
    """

    verdict: DriftVerdict
    sampling: Sampling
    results: list[ColumnDrift] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    snapshot: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    distributions: dict[str, Distribution] = field(default_factory=dict)

    def report_dict(self) -> dict[str, Any] | None:
        return None if self.snapshot is None else self.snapshot.dict()


def analyse(
    reference: Frame,
    current: Frame,
    spec: FeatureSpec,
    policy: DriftPolicy,
    window_rows: int | None = None,
) -> DriftAnalysis:
    """Compare the window with the reference; guard small windows; return the verdict.

    ``current`` is the whole window, or a uniform sample of it drawn while reading (a scan)
    with ``window_rows`` the window's size: the guard and the sampling statement use that size.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    rows = len(current) if window_rows is None else window_rows
    short = not_enough_data(rows, policy)
    if short is not None:
        info = Sampling(
            reference_rows=len(reference),
            window_rows=rows,
            reference_sampled=0,
            window_sampled=0,
            seed=policy.seed,
        )
        return DriftAnalysis(verdict=short, sampling=info)
    ref_s, cur_s, info = sample_pair(reference, current, policy.sample_rows, policy.seed, rows)
    ref_p, cur_p, untestable = prepare_frames(ref_s, cur_s, spec)
    timings["sample"] = time.perf_counter() - started
    snapshot = run_evidently(ref_p, cur_p, spec, policy, exclude=untestable)
    timings["evidently"] = time.perf_counter() - started - timings["sample"]
    report = snapshot.dict()
    results = drift_results(report, spec, untestable)
    kinds = {r.column: r.kind for r in results}
    floor = noise_floor(ref_p, len(cur_p), results, policy.seed)
    enriched = []
    for r in results:
        test, p = p_value(kinds[r.column], ref_p[r.column], cur_p[r.column])
        enriched.append(
            r.model_copy(
                update={
                    "p_value": p,
                    "p_value_test": test,
                    "noise_floor": floor.get(r.column),
                    "shift": describe_shift(kinds[r.column], ref_p[r.column], cur_p[r.column]),
                }
            )
        )
    summary = summary_facts(report, spec)
    dists = distributions(ref_p, cur_p, kinds)
    timings["statistics"] = time.perf_counter() - started - sum(timings.values())
    return DriftAnalysis(
        verdict=decide(enriched, policy),
        sampling=info,
        results=enriched,
        summary=summary,
        snapshot=snapshot,
        timings=timings,
        distributions=dists,
    )


def max_noise(results: list[ColumnDrift]) -> tuple[str, float] | None:
    """The column with the largest no-drift statistic, for the report's sampling statement."""
    floors = [(r.column, r.noise_floor) for r in results if r.noise_floor is not None]
    return max(floors, key=lambda item: item[1]) if floors else None
