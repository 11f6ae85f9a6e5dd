"""Drift of the served traffic against the champion's reference snapshot, with Evidently 0.7.

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
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import stats
from scipy.spatial import distance

from data_contracts.spec import FeatureKind, FeatureSpec

SCORE_COLUMN = "score"
TIMESTAMP_COLUMN = "timestamp"
MODEL_VERSION_COLUMN = "model_version"
REFERENCE_ARTIFACT = "reference/reference.parquet"
PARTITION_PREFIX = "date="
WASSERSTEIN = "Wasserstein distance (normed)"
JENSEN_SHANNON = "Jensen-Shannon distance"


class Outcome(StrEnum):
    """The verdict of one drift check."""

    NOT_ENOUGH_DATA = "not enough data"
    NO_DRIFT = "no drift"
    DRIFT = "drift"


class DriftPolicy(BaseModel):
    """Thresholds and sampling of a drift check."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drift_share: float = Field(
        0.3, gt=0, le=1, description="Share of spec features drifted that counts as data drift."
    )
    column_threshold: float | None = Field(
        None, gt=0, description="Per-feature statistic threshold; None: Evidently's (0.1)."
    )
    score_threshold: float | None = Field(
        None, gt=0, description="Threshold for the model score; None: same as the features."
    )
    min_window_rows: int = Field(1000, ge=1, description="Fewer rows: 'not enough data'.")
    sample_rows: int = Field(
        30_000, ge=1_001, description="Rows sampled from each side before Evidently runs."
    )
    seed: int = 0


class Window(BaseModel):
    """Which part of the inference log is the current window: the last hours or the last rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hours: float | None = Field(None, gt=0)
    rows: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> Window:
        if (self.hours is None) == (self.rows is None):
            raise ValueError("window: give exactly one of hours or rows")
        return self

    def describe(self) -> str:
        return f"last {self.hours:g} h" if self.hours is not None else f"last {self.rows:,} rows"


# ---------------------------------------------------------------------------------------------
# Column kinds from the spec


def column_kinds(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """(numerical, categorical) columns for Evidently, from the spec's kinds, plus the score."""
    numerical = [
        f.name for f in spec.features if f.kind in (FeatureKind.NUMERIC, FeatureKind.INTEGER)
    ]
    categorical = [
        f.name for f in spec.features if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.BOOLEAN)
    ]
    return [*numerical, SCORE_COLUMN], categorical


def monitored_columns(spec: FeatureSpec) -> list[str]:
    """Every spec feature in pinned order, then the score."""
    return [*spec.feature_names, SCORE_COLUMN]


# ---------------------------------------------------------------------------------------------
# Reference and window


@dataclass(frozen=True)
class Reference:
    """The champion's reference snapshot and where it came from."""

    model_name: str
    version: str
    run_id: str
    frame: pa.Table


def load_reference(tracking_uri: str, model_name: str, alias: str, dest: Path) -> Reference:
    """Download the reference snapshot logged in the run of the version holding ``alias``."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    version = client.get_model_version_by_alias(model_name, alias)
    dest.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        run_id=version.run_id,
        artifact_path=REFERENCE_ARTIFACT,
        dst_path=str(dest),
        tracking_uri=tracking_uri,
    )
    frame = pq.read_table(local)
    if SCORE_COLUMN not in frame.column_names:
        raise ValueError(f"reference of {model_name} v{version.version} has no {SCORE_COLUMN!r}")
    return Reference(model_name, str(version.version), str(version.run_id), frame)


def _partition_date(path: Path) -> datetime | None:
    if not path.is_dir() or not path.name.startswith(PARTITION_PREFIX):
        return None
    try:
        return datetime.strptime(path.name[len(PARTITION_PREFIX) :], "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def _read_partition(folder: Path, columns: list[str] | None) -> pa.Table | None:
    tables = []
    for path in sorted(p for p in folder.glob("*.parquet") if p.is_file()):
        table = pq.read_table(path)
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        tables.append(table)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def read_inference_log(
    root: Path,
    window: Window,
    *,
    now: datetime | None = None,
    model_version: str | None = None,
    columns: list[str] | None = None,
    as_table: bool = False,
) -> pd.DataFrame | pa.Table:
    """Rows of the inference log in ``window``, oldest first; an empty frame if there are none.

    ``as_table`` returns the Arrow table, so that a caller that samples converts only the sample.

    Only date partitions that can hold window rows are read, and rows are filtered in Arrow
    before pandas sees them. With ``model_version`` only rows served by that version are kept
    (a ``v`` prefix is ignored), so the window is comparable with that version's reference.
    """
    now = now or datetime.now(UTC)
    wanted = None if columns is None else [*columns, TIMESTAMP_COLUMN, MODEL_VERSION_COLUMN]
    parts = sorted(
        ((d, p) for p in (root.iterdir() if root.is_dir() else []) if (d := _partition_date(p))),
        key=lambda item: item[0],
        reverse=True,
    )
    cutoff = now - timedelta(hours=window.hours) if window.hours is not None else None
    versions = None
    if model_version is not None:
        bare = str(model_version).removeprefix("v")
        versions = pa.array([bare, f"v{bare}"])
    tables: list[pa.Table] = []
    have = 0
    for day, folder in parts:
        if cutoff is not None and day + timedelta(days=1) <= cutoff:
            break
        table = _read_partition(folder, wanted)
        if table is None or table.num_rows == 0:
            continue
        ts = pc.cast(table[TIMESTAMP_COLUMN], pa.timestamp("us", tz="UTC"))
        table = table.set_column(
            table.schema.get_field_index(TIMESTAMP_COLUMN), TIMESTAMP_COLUMN, ts
        )
        keep = pc.less_equal(ts, pa.scalar(now, pa.timestamp("us", tz="UTC")))
        if cutoff is not None:
            keep = pc.and_(keep, pc.greater(ts, pa.scalar(cutoff, pa.timestamp("us", tz="UTC"))))
        if versions is not None:
            served = pc.cast(table[MODEL_VERSION_COLUMN], pa.string())
            keep = pc.and_(keep, pc.is_in(served, value_set=versions))
        table = table.filter(keep)
        tables.append(table)
        have += table.num_rows
        if window.rows is not None and have >= window.rows:
            break
    if not tables:
        empty = pd.DataFrame(columns=wanted or [TIMESTAMP_COLUMN])
        return pa.Table.from_pandas(empty, preserve_index=False) if as_table else empty
    table = pa.concat_tables(tables, promote_options="default").sort_by(TIMESTAMP_COLUMN)
    if window.rows is not None and table.num_rows > window.rows:
        table = table.slice(table.num_rows - window.rows)
    return table if as_table else table.to_pandas()


def time_range(frame: pd.DataFrame | pa.Table) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """First and last timestamp of a window (pandas or Arrow); None when it is empty."""
    if len(frame) == 0:
        return None
    if isinstance(frame, pa.Table):
        bounds = pc.min_max(frame[TIMESTAMP_COLUMN]).as_py()
        return pd.Timestamp(bounds["min"]), pd.Timestamp(bounds["max"])
    ts = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    return ts.min(), ts.max()


def window_id(frame: pd.DataFrame | pa.Table, champion_version: str) -> str:
    """A content identity of the window: champion, first/last timestamp and row count.

    Two checks over the same rows get the same id, which makes a retraining trigger idempotent.
    """
    bounds = time_range(frame)
    if bounds is None:
        return f"v{champion_version}-empty"
    first, last = bounds
    raw = f"{champion_version}|{first.isoformat()}|{last.isoformat()}|{len(frame)}"
    digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
    return f"v{champion_version}-{first:%Y%m%dT%H%M}-{last:%Y%m%dT%H%M}-{digest}"


# ---------------------------------------------------------------------------------------------
# Sampling


class Sampling(BaseModel):
    """How many rows each side had and how many entered the Evidently report."""

    model_config = ConfigDict(frozen=True)

    reference_rows: int
    window_rows: int
    reference_sampled: int
    window_sampled: int
    seed: int

    @property
    def sampled(self) -> bool:
        return (
            self.reference_sampled < self.reference_rows or self.window_sampled < self.window_rows
        )

    def describe(self) -> str:
        if not self.sampled:
            return (
                f"no sampling: all {self.window_rows:,} window rows against all "
                f"{self.reference_rows:,} reference rows"
            )
        return (
            f"uniform random sample without replacement (seed {self.seed}): "
            f"{self.window_sampled:,} of {self.window_rows:,} window rows against "
            f"{self.reference_sampled:,} of {self.reference_rows:,} reference rows"
        )


Frame = pd.DataFrame | pa.Table


def sample_pair(
    reference: Frame, current: Frame, sample_rows: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, Sampling]:
    """Sample each side down to ``sample_rows`` (uniformly, seeded); smaller sides stay whole.

    Arrow tables are sampled before conversion, so pandas only ever holds the sample.
    """
    rng = np.random.default_rng(seed)

    def take(frame: Frame) -> pd.DataFrame:
        idx = None
        if len(frame) > sample_rows:
            idx = np.sort(rng.choice(len(frame), size=sample_rows, replace=False))
        if isinstance(frame, pa.Table):
            return (frame if idx is None else frame.take(pa.array(idx))).to_pandas()
        return (frame if idx is None else frame.iloc[idx]).reset_index(drop=True)

    ref, cur = take(reference), take(current)
    info = Sampling(
        reference_rows=len(reference),
        window_rows=len(current),
        reference_sampled=len(ref),
        window_sampled=len(cur),
        seed=seed,
    )
    return ref, cur, info


# ---------------------------------------------------------------------------------------------
# Evidently report and reading it by metric name


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


class ColumnDrift(BaseModel):
    """Drift of one column: the test, its statistic (the effect size) and the verdict."""

    model_config = ConfigDict(frozen=True)

    column: str
    kind: str
    method: str
    statistic: float | None
    threshold: float | None
    drifted: bool
    p_value: float | None = None
    p_value_test: str | None = None
    noise_floor: float | None = None
    shift: str = ""
    note: str = ""


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
# Statistics of our own: p-values, readable shifts, the noise floor


def _wasserstein_normed(ref: np.ndarray, cur: np.ndarray) -> float:
    norm = max(float(np.std(ref)), 0.001)
    return float(stats.wasserstein_distance(ref, cur) / norm)


def _shares(ref: pd.Series, cur: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(ref.unique()) | set(cur.unique()), key=str)
    r = ref.value_counts().reindex(keys, fill_value=0).to_numpy(dtype=float) / len(ref)
    c = cur.value_counts().reindex(keys, fill_value=0).to_numpy(dtype=float) / len(cur)
    return r, c


def statistic(method: str, ref: pd.Series, cur: pd.Series) -> float | None:
    """Evidently's statistic for ``method`` on non-null values (Wasserstein normed, JS)."""
    ref, cur = ref.dropna(), cur.dropna()
    if ref.empty or cur.empty:
        return None
    if method == WASSERSTEIN:
        return _wasserstein_normed(ref.to_numpy(float), cur.to_numpy(float))
    if method == JENSEN_SHANNON:
        if ref.nunique() > 20 and pd.api.types.is_numeric_dtype(ref):
            both = np.concatenate([ref.to_numpy(float), cur.to_numpy(float)])
            bins = np.histogram_bin_edges(both, bins="sturges")
            r = np.histogram(ref, bins)[0] / len(ref)
            c = np.histogram(cur, bins)[0] / len(cur)
        else:
            r, c = _shares(ref, cur)
        return float(distance.jensenshannon(r, c))
    return None


def p_value(kind: str, ref: pd.Series, cur: pd.Series) -> tuple[str, float | None]:
    """A classical test's p-value beside the effect size: KS for numbers, chi-squared otherwise.

    With tens of thousands of rows even negligible shifts are 'significant'; the decision is
    made on the effect size, the p-value says the shift is not chance.
    """
    if kind in ("categorical", "boolean"):
        r = ref.fillna("__missing__").astype(str)
        c = cur.fillna("__missing__").astype(str)
        keys = sorted(set(r.unique()) | set(c.unique()))
        table = np.vstack(
            [
                r.value_counts().reindex(keys, fill_value=0),
                c.value_counts().reindex(keys, fill_value=0),
            ]
        )
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2:
            return "chi-squared", None
        return "chi-squared", float(stats.chi2_contingency(table)[1])
    a, b = ref.dropna().to_numpy(float), cur.dropna().to_numpy(float)
    if len(a) == 0 or len(b) == 0:
        return "KS", None
    return "KS", float(stats.ks_2samp(a, b, method="asymp").pvalue)


def describe_shift(kind: str, ref: pd.Series, cur: pd.Series) -> str:
    """One readable line: median and missing share for numbers, the largest share change else."""
    ref_na, cur_na = float(ref.isna().mean()), float(cur.isna().mean())
    na = f"; missing {ref_na:.1%} → {cur_na:.1%}" if abs(cur_na - ref_na) >= 0.01 else ""
    if kind in ("categorical", "boolean"):
        r, c = ref.dropna().astype(str), cur.dropna().astype(str)
        if r.empty or c.empty:
            return f"no values on one side{na}"
        rs, cs = r.value_counts(normalize=True), c.value_counts(normalize=True)
        keys = rs.index.union(cs.index)
        delta = cs.reindex(keys, fill_value=0) - rs.reindex(keys, fill_value=0)
        top = str(delta.abs().idxmax())
        return f"{top}: {rs.get(top, 0):.1%} → {cs.get(top, 0):.1%}{na}"
    r, c = ref.dropna(), cur.dropna()
    if r.empty or c.empty:
        return f"no values on one side{na}"
    return f"median {r.median():,.4g} → {c.median():,.4g}{na}"


def noise_floor(
    reference: pd.DataFrame, window_size: int, results: list[ColumnDrift], seed: int
) -> dict[str, float]:
    """Each column's statistic between two disjoint reference samples, one of window size.

    That is the value the statistic takes with no drift at all at this window size: when it is
    near the threshold the window is too small for a trustworthy verdict.
    """
    n = len(reference)
    if n < 4:
        return {}
    size = min(window_size, n // 2)
    order = np.random.default_rng(seed + 1).permutation(n)
    a, b = reference.iloc[order[:size]], reference.iloc[order[size:]]
    out = {}
    for r in results:
        if r.column in reference.columns:
            value = statistic(r.method, a[r.column], b[r.column])
            if value is not None:
                out[r.column] = value
    return out


# ---------------------------------------------------------------------------------------------
# The decision


class DriftVerdict(BaseModel):
    """The decision of one check, with its numbers and reasons."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    features_tested: int = 0
    features_drifted: list[str] = Field(default_factory=list)
    drift_share: float = 0.0
    score_drifted: bool = False
    retrain_wanted: bool = False
    reasons: list[str] = Field(default_factory=list)


def not_enough_data(window_rows: int, policy: DriftPolicy) -> DriftVerdict | None:
    """The 'not enough data' verdict when the window is below the minimum, else None."""
    if window_rows >= policy.min_window_rows:
        return None
    return DriftVerdict(
        outcome=Outcome.NOT_ENOUGH_DATA,
        reasons=[
            f"window has {window_rows:,} rows, below the minimum of {policy.min_window_rows:,}: "
            "no drift verdict and no retraining"
        ],
    )


def decide(results: list[ColumnDrift], policy: DriftPolicy) -> DriftVerdict:
    """Drift when the share of drifted spec features, or the score drift, crosses its line."""
    features = [r for r in results if r.column != SCORE_COLUMN and r.method != "not tested"]
    drifted = [r.column for r in features if r.drifted]
    share = len(drifted) / len(features) if features else 0.0
    score = next((r for r in results if r.column == SCORE_COLUMN), None)
    score_drifted = bool(score and score.drifted)
    reasons = []
    if share >= policy.drift_share:
        reasons.append(
            f"{len(drifted)} of {len(features)} features drifted ({share:.0%} ≥ "
            f"{policy.drift_share:.0%})"
        )
    if score_drifted and score is not None:
        reasons.append(
            f"model score drifted ({score.method} {score.statistic:.3f} ≥ {score.threshold})"
        )
    wanted = bool(reasons)
    if not wanted:
        reasons.append(
            f"{len(drifted)} of {len(features)} features drifted ({share:.0%} < "
            f"{policy.drift_share:.0%}) and the score did not drift"
        )
    return DriftVerdict(
        outcome=Outcome.DRIFT if wanted else Outcome.NO_DRIFT,
        features_tested=len(features),
        features_drifted=drifted,
        drift_share=share,
        score_drifted=score_drifted,
        retrain_wanted=wanted,
        reasons=reasons,
    )


# ---------------------------------------------------------------------------------------------
# One analysis: sample, Evidently, our statistics, the verdict


@dataclass
class DriftAnalysis:
    """Everything one check computed; ``snapshot`` is None when there was not enough data."""

    verdict: DriftVerdict
    sampling: Sampling
    results: list[ColumnDrift] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    snapshot: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    def report_dict(self) -> dict[str, Any] | None:
        return None if self.snapshot is None else self.snapshot.dict()


def analyse(
    reference: Frame, current: Frame, spec: FeatureSpec, policy: DriftPolicy
) -> DriftAnalysis:
    """Compare the window with the reference; guard small windows; return the verdict."""
    import time

    timings: dict[str, float] = {}
    started = time.perf_counter()
    short = not_enough_data(len(current), policy)
    if short is not None:
        info = Sampling(
            reference_rows=len(reference),
            window_rows=len(current),
            reference_sampled=0,
            window_sampled=0,
            seed=policy.seed,
        )
        return DriftAnalysis(verdict=short, sampling=info)
    ref_s, cur_s, info = sample_pair(reference, current, policy.sample_rows, policy.seed)
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
    timings["statistics"] = time.perf_counter() - started - sum(timings.values())
    return DriftAnalysis(
        verdict=decide(enriched, policy),
        sampling=info,
        results=enriched,
        summary=summary,
        snapshot=snapshot,
        timings=timings,
    )


def max_noise(results: list[ColumnDrift]) -> tuple[str, float] | None:
    """The column with the largest no-drift statistic, for the report's sampling statement."""
    floors = [(r.column, r.noise_floor) for r in results if r.noise_floor is not None]
    return max(floors, key=lambda item: item[1]) if floors else None


def save_reports(analysis: DriftAnalysis, folder: Path, facts: dict[str, Any]) -> dict[str, Path]:
    """Write the Evidently HTML and JSON plus our decision JSON into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if analysis.snapshot is not None:
        paths["html"] = folder / "drift_report.html"
        paths["json"] = folder / "drift_report.json"
        analysis.snapshot.save_html(str(paths["html"]))
        paths["json"].write_text(json.dumps(analysis.snapshot.dict(), indent=1, default=str))
    paths["decision"] = folder / "decision.json"
    decision = {
        **facts,
        "verdict": analysis.verdict.model_dump(mode="json"),
        "sampling": {**analysis.sampling.model_dump(), "statement": analysis.sampling.describe()},
        "columns": [r.model_dump(mode="json") for r in analysis.results],
        "summary": analysis.summary,
    }
    paths["decision"].write_text(json.dumps(decision, indent=1, default=str))
    return paths


def write_inference_log(
    frame: pd.DataFrame, root: Path, spec: FeatureSpec, model_version: str, threshold: float = 0.5
) -> list[Path]:
    """Append rows (features, ``score`` and ``timestamp``) to ``root`` in the bento's log format.

    One Parquet file per date partition. Used to backfill a log, and by benchmarks and tests.
    """
    out = frame[spec.feature_names].copy()
    out[SCORE_COLUMN] = frame[SCORE_COLUMN].astype("float64")
    out["decision"] = (out[SCORE_COLUMN] >= threshold).astype("int8")
    out[MODEL_VERSION_COLUMN] = str(model_version)
    out[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True).astype(
        "datetime64[us, UTC]"
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    out["request_id"] = [f"{stamp}-{i}" for i in range(len(out))]
    out["transaction_id_hash"] = None
    paths = []
    for n, (day, part) in enumerate(out.groupby(out[TIMESTAMP_COLUMN].dt.strftime("%Y-%m-%d"))):
        folder = root / f"{PARTITION_PREFIX}{day}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{stamp}-{os.getpid()}-{n}.parquet"
        part.to_parquet(path, index=False)
        paths.append(path)
    return paths
