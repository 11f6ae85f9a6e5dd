"""The steps of one drift check, as plain functions (the mail steps are in ``report_mail``).

champion's reference -> inference-log window -> realized performance -> retraining decision
(and trigger) -> the result -> recent checks (MLflow) -> charts -> reports -> dashboard.

Each step is a few lines that call the module that does the work (analysis, feedback,
performance, retraining, reports, dashboard). They are put in order, with their error handling,
only by :func:`flows.monitoring.check.run_drift_check`; the flow wraps each one in a Prefect
task. Apart from that wiring so the order of a check reads on one page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa

from data_contracts.inference_log import SCORE_COLUMN, TIMESTAMP_COLUMN
from data_contracts.spec import FeatureSpec
from flows.core.settings import Settings
from flows.monitoring import charts as drift_charts
from flows.monitoring import dashboard as drift_dashboard
from flows.monitoring import history as drift_history
from flows.monitoring import retraining
from flows.monitoring.analysis import DriftAnalysis, max_noise
from flows.monitoring.charts import Chart, HistoryPoint
from flows.monitoring.config import DriftCheckConfig
from flows.monitoring.feedback import feedback_files, read_feedback
from flows.monitoring.performance import (
    RealizedPerformance,
    feedback_columns,
    realized_performance,
)
from flows.monitoring.reference import Reference, load_reference
from flows.monitoring.reports import save_reports
from flows.monitoring.results import DriftCheckResult
from flows.monitoring.window import identity, monitored_columns, scan_window


def fetch_reference(settings: Settings, model_name: str) -> Reference:
    """The champion's reference snapshot, downloaded into the work folder."""
    return load_reference(
        settings.tracking_uri,
        model_name,
        settings.champion_alias,
        settings.work_dir / "drift" / "reference",
    )


@dataclass(frozen=True)
class CurrentWindow:
    """The window's size and identity, a uniform sample of its monitored columns (Arrow), and
    the id, score, decision and timestamp of every row when there is feedback to join."""

    sample: pa.Table
    rows: int
    id: str
    start: datetime | None
    end: datetime | None
    scored: pa.Table | None = None


def read_window(
    settings: Settings,
    config: DriftCheckConfig,
    spec: FeatureSpec,
    champion_version: str,
    now: datetime,
) -> CurrentWindow:
    """The window scanned file by file, served by the champion unless configured otherwise.

    Only the sample Evidently sees (``policy.sample_rows``) and, when labelled feedback exists,
    the four columns of the join are held, so a 10M-row day fits in a few GB (benchmarks/drift).
    """
    join = bool(feedback_files(settings.feedback_root))
    scan = scan_window(
        settings.inference_log_root,
        config.window,
        now=now,
        model_version=champion_version if config.only_champion_rows else None,
        sample_columns=monitored_columns(spec),
        sample_rows=config.policy.sample_rows,
        seed=config.policy.seed,
        keep_columns=[*feedback_columns(), SCORE_COLUMN, TIMESTAMP_COLUMN] if join else [],
    )
    return CurrentWindow(
        sample=scan.sample,
        rows=scan.rows,
        id=identity(champion_version, scan.first, scan.last, scan.rows),
        start=scan.first,
        end=scan.last,
        scored=scan.kept if join else None,
    )


def measure_performance(
    settings: Settings,
    config: DriftCheckConfig,
    window: CurrentWindow,
    champion_f1: float | None,
    now: datetime,
    report_dir: Path | None = None,
    reference_ratio: float | None = None,
) -> RealizedPerformance:
    """The served model's realized F1 and calibration on the labelled feedback for the
    window's transactions (and Evidently's classification report of them in ``report_dir``);
    ``reference_ratio`` is the champion reference's observed over predicted fraud rate."""
    key = settings.id_key()  # clear ids in feedback are hashed as the bento hashes them
    feedback, counts = read_feedback(settings.feedback_root, key, now)
    scored = window.scored if window.scored is not None else pa.table({})
    return realized_performance(
        scored, feedback, counts, config.feedback, champion_f1, report_dir, window.rows,
        reference_ratio=reference_ratio,
    )  # fmt: skip


@dataclass(frozen=True)
class RetrainPlan:
    """The retraining decision, the training file assembled for it and what went wrong."""

    decision: retraining.RetrainDecision
    data_path: Path | None = None
    problems: list[str] = field(default_factory=list)


def plan_retraining(
    settings: Settings,
    config: DriftCheckConfig,
    analysis: DriftAnalysis,
    window: str,
    now: datetime,
    recent_runs: Callable[[str], list[retraining.RecentRun]] = retraining.recent_runs,
    performance: RealizedPerformance | None = None,
) -> RetrainPlan:
    """Decide about retraining; assemble the labelled training file when retraining is wanted.

    Input or score drift, or realized performance that dropped (when its policy lets it
    trigger), each want retraining. The file is built even when no run is started, so the
    manual command in the email works as printed. ``recent_runs`` asks the Prefect API only
    when a trigger is possible.
    """
    policy = config.retraining
    realized = bool(performance and performance.dropped and config.feedback.trigger)
    wanted = analysis.verdict.retrain_wanted or realized
    why = [
        *(["drift crossed the threshold"] if analysis.verdict.retrain_wanted else []),
        *(["realized performance dropped"] if realized else []),
    ]
    decision = retraining.decide_retraining(
        outcome=analysis.verdict.outcome,
        retrain_wanted=wanted,
        enabled=policy.trigger,
        recent=recent_runs(policy.deployment) if wanted and policy.trigger else [],
        now=now,
        cooldown=timedelta(hours=policy.cooldown_hours),
        window=window,
        deployment=policy.deployment,
        has_labelled_data=bool(retraining.labelled_batches(settings.labelled_root)),
        why=" and ".join(why) or "drift crossed the threshold",
    )
    if not wanted or decision.action == retraining.RetrainAction.NOT_NEEDED:
        return RetrainPlan(decision)
    try:
        data_path = retraining.assemble_training_data(
            settings.labelled_root,
            settings.work_dir / "retrain" / f"{config.model_name}-{window}.parquet",
            config.labelled_max_rows,
        )
    except Exception as err:
        return RetrainPlan(decision, problems=[f"labelled data: {type(err).__name__}: {err}"])
    return RetrainPlan(decision, data_path)


def start_retraining(
    plan: RetrainPlan,
    labelled_root: Path,
    trigger: Callable[
        [retraining.RetrainDecision, Path], retraining.RetrainDecision
    ] = retraining.trigger,
) -> RetrainPlan:
    """Start the planned run (idempotent per window); a failure is recorded, never raised."""
    decision = plan.decision
    try:
        if plan.data_path is None:
            raise FileNotFoundError(f"no usable labelled batch in {labelled_root}")
        decision = trigger(decision, plan.data_path)
    except Exception as err:
        failed = decision.model_copy(
            update={
                "action": retraining.RetrainAction.FAILED,
                "reason": f"{type(err).__name__}: {err}",
                "data_path": str(plan.data_path) if plan.data_path else None,
            }
        )
        problem = f"retraining trigger: {type(err).__name__}: {err}"
        return RetrainPlan(failed, plan.data_path, [*plan.problems, problem])
    return RetrainPlan(decision, plan.data_path, plan.problems)


def describe_result(
    config: DriftCheckConfig,
    reference: Reference,
    window: CurrentWindow,
    analysis: DriftAnalysis,
    plan: RetrainPlan,
    report_dir: Path,
    now: datetime,
    flow_run_url: str | None,
    problems: list[str],
    performance: RealizedPerformance | None = None,
) -> DriftCheckResult:
    """Everything the check found and did, as the flow returns it."""
    worst = max_noise(analysis.results)
    data_path = str(plan.data_path) if plan.data_path else None
    return DriftCheckResult(
        model_name=config.model_name,
        champion_version=reference.version,
        champion_run_id=reference.run_id,
        checked_at=now,
        window=config.window.describe(),
        window_id=window.id,
        window_start=window.start,
        window_end=window.end,
        policy=config.policy,
        verdict=analysis.verdict,
        sampling=analysis.sampling,
        columns=analysis.results,
        noise_floor_max=worst[1] if worst else None,
        noise_floor_column=worst[0] if worst else None,
        retrain=plan.decision,
        manual_command=retraining.manual_command(config.retraining.deployment, data_path),
        report_dir=str(report_dir),
        report_html=str(report_dir / "drift_report.html")
        if analysis.snapshot is not None
        else None,
        flow_run_url=flow_run_url,
        problems=[*problems, *plan.problems],
        timings=analysis.timings,
        performance=performance,
    )


def read_history(settings: Settings, model_name: str) -> list[HistoryPoint]:
    """The model's recent checks with a verdict, from the MLflow monitoring runs."""
    return drift_history.recent_checks(settings, model_name)


def draw_charts(
    analysis: DriftAnalysis, result: DriftCheckResult, earlier: list[HistoryPoint]
) -> list[Chart]:
    """History of recent checks (this one last) and reference-vs-window of the top columns."""
    if analysis.snapshot is None:  # not enough data: nothing was compared
        return []
    return drift_charts.draw_charts(
        analysis.distributions,
        result.columns,
        drift_history.with_current(earlier, result),
        result.policy,
    )


def write_reports(
    analysis: DriftAnalysis, result: DriftCheckResult, folder: Path, charts: Sequence[Chart] = ()
) -> dict[str, Path]:
    """The Evidently HTML and JSON, our decision JSON (with the result) and the chart PNGs."""
    paths = save_reports(
        analysis, folder, {"result": result.model_dump(mode="json", exclude={"columns"})}
    )
    perf = result.performance
    if perf is not None and perf.report_html and Path(perf.report_html).exists():
        paths["performance_html"] = Path(perf.report_html)
    for chart in charts:
        path = folder / f"{chart.name}.png"
        path.write_bytes(chart.png)
        paths[f"chart:{chart.name}"] = path
    return paths


def record_dashboard(settings: Settings, result: DriftCheckResult, spec: FeatureSpec) -> str | None:
    """Add the check to the Evidently dashboard; the project's page (None: nothing to add)."""
    url = settings.evidently_url
    project = drift_dashboard.record_check(
        result, spec.feature_names, None if url else settings.evidently_root, url
    )
    if project is None:
        return None
    return drift_dashboard.project_url(url or settings.evidently_ui_url, project)
