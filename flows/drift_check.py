"""The ``drift-check`` Prefect flow: thin wiring over the monitoring and alerting steps.

queued mail -> champion's reference -> inference-log window -> sampled Evidently analysis ->
realized performance on labelled feedback ->
retraining decision (and trigger) -> recent checks -> charts -> reports (home folder + MLflow
monitoring run) -> a point on the Evidently dashboard -> Prefect artifacts (markdown summary
with the deciding signal, per-column table, links to the report, the MLflow run, the dashboard
and a triggered release) -> email with inline charts (outbox when SMTP is down).

Each task is one call of a plain step in :mod:`flows.monitoring.steps` (the mail steps in
:mod:`flows.monitoring.report_mail`); the order of the steps is
:func:`~flows.monitoring.check.run_drift_check`, which the flow runs with these tasks as its
steps, posting its artifacts with :func:`flows.monitoring.run_artifacts.publish`. Retries only
where I/O can fail and a retry is safe: MLflow, the Prefect API, the log folder. The mail steps
retry and queue inside ``flows.alerting.outbox`` (a task retry would send twice); analysis and
reports are not retried.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import get_current_settings
from prefect.states import State

from data_contracts.spec import FeatureSpec, default_spec, load_spec
from flows.alerting.alerts import alert_on_failure
from flows.alerting.failure import ui_base_url
from flows.alerting.outbox import Delivery
from flows.alerting.smtp import SmtpSettings
from flows.core.settings import Settings, check_pipeline_commit
from flows.monitoring import analysis, reference, report_mail, reports, steps
from flows.monitoring.charts import Chart, HistoryPoint
from flows.monitoring.check import DriftSteps, run_drift_check
from flows.monitoring.config import DriftCheckConfig, RetrainPolicy
from flows.monitoring.performance import FeedbackPolicy, RealizedPerformance
from flows.monitoring.reference import Reference
from flows.monitoring.results import DriftCheckResult
from flows.monitoring.retraining import RecentRun, RetrainDecision
from flows.monitoring.run_artifacts import publish
from flows.monitoring.verdict import DriftPolicy
from flows.monitoring.window import Window

IO_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 15]}


@task(name="send-queued-mail", cache_policy=NO_CACHE)
def send_queued_mail(smtp: SmtpSettings, outbox: Path, sleep: report_mail.Sleep) -> list[str]:
    return report_mail.send_queued_mail(smtp, outbox, sleep)


def retry_unless_missing(task: Any, task_run: Any, state: State) -> bool:
    """Retry the registry's I/O errors, not its answer that there is no such model or alias."""
    err = state.data if isinstance(state.data, BaseException) else None
    return not (err is not None and reference.is_missing(err))


@task(
    name="load-reference",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless_missing,
    **IO_RETRIES,
)
def fetch_reference(settings: Settings, model_name: str) -> Reference:
    return steps.fetch_reference(settings, model_name)


@task(name="read-window", cache_policy=NO_CACHE, **IO_RETRIES)
def read_window(
    settings: Settings, config: DriftCheckConfig, spec: FeatureSpec, version: str, now: datetime
) -> steps.CurrentWindow:
    return steps.read_window(settings, config, spec, version, now)


@task(name="analyse", cache_policy=NO_CACHE)
def analyse(
    reference: pa.Table,
    window: pa.Table,
    spec: FeatureSpec,
    policy: DriftPolicy,
    window_rows: int | None = None,
) -> analysis.DriftAnalysis:
    return analysis.analyse(reference, window, spec, policy, window_rows)


@task(name="realized-performance", cache_policy=NO_CACHE, **IO_RETRIES)
def measure_performance(
    settings: Settings,
    config: DriftCheckConfig,
    window: steps.CurrentWindow,
    champion_f1: float | None,
    now: datetime,
    report_dir: Path | None = None,
    reference_ratio: float | None = None,
) -> RealizedPerformance:
    return steps.measure_performance(
        settings, config, window, champion_f1, now, report_dir, reference_ratio
    )


@task(name="decide-retraining", cache_policy=NO_CACHE, **IO_RETRIES)
def plan_retraining(
    settings: Settings,
    config: DriftCheckConfig,
    drift: analysis.DriftAnalysis,
    window: str,
    now: datetime,
    recent_runs: Callable[[str], list[RecentRun]],
    performance: RealizedPerformance | None = None,
) -> steps.RetrainPlan:
    return steps.plan_retraining(settings, config, drift, window, now, recent_runs, performance)


@task(name="trigger-retraining", cache_policy=NO_CACHE, **IO_RETRIES)
def start_retraining(
    plan: steps.RetrainPlan,
    labelled_root: Path,
    trigger: Callable[[RetrainDecision, Path], RetrainDecision],
) -> steps.RetrainPlan:
    return steps.start_retraining(plan, labelled_root, trigger)


@task(name="read-history", cache_policy=NO_CACHE, **IO_RETRIES)
def read_history(settings: Settings, model_name: str) -> list[HistoryPoint]:
    return steps.read_history(settings, model_name)


@task(name="draw-charts", cache_policy=NO_CACHE)
def draw_charts(
    drift: analysis.DriftAnalysis, result: DriftCheckResult, earlier: list[HistoryPoint]
) -> list[Chart]:
    return steps.draw_charts(drift, result, earlier)


@task(name="write-reports", cache_policy=NO_CACHE)
def write_reports(
    drift: analysis.DriftAnalysis, result: DriftCheckResult, folder: Path, charts: list[Chart]
) -> dict[str, Path]:
    return steps.write_reports(drift, result, folder, charts)


@task(name="log-monitoring-run", cache_policy=NO_CACHE, **IO_RETRIES)
def log_monitoring_run(settings: Settings, result: DriftCheckResult, paths: dict[str, Path]) -> str:
    return reports.log_monitoring_run(settings, result, paths)


@task(name="record-dashboard", cache_policy=NO_CACHE)
def record_dashboard(settings: Settings, result: DriftCheckResult, spec: FeatureSpec) -> str | None:
    return steps.record_dashboard(settings, result, spec)


@task(name="send-report", cache_policy=NO_CACHE)
def send_report(
    result: DriftCheckResult,
    paths: dict[str, Path],
    smtp: SmtpSettings,
    outbox: Path,
    sleep: report_mail.Sleep,
    charts: list[Chart],
) -> Delivery | None:
    return report_mail.send_report(result, paths, smtp, outbox, sleep, charts)


TASKS = DriftSteps(
    send_queued_mail=send_queued_mail,
    fetch_reference=fetch_reference,
    read_window=read_window,
    analyse=analyse,
    measure_performance=measure_performance,
    plan_retraining=plan_retraining,
    start_retraining=start_retraining,
    read_history=read_history,
    draw_charts=draw_charts,
    write_reports=write_reports,
    log_monitoring_run=log_monitoring_run,
    record_dashboard=record_dashboard,
    send_report=send_report,
)


@flow(
    name="drift-check",
    log_prints=True,
    result_serializer="json",
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def drift_check(
    window: Window = Window(hours=24),  # noqa: B008 - pydantic models are immutable
    policy: DriftPolicy = DriftPolicy(),  # noqa: B008
    retraining: RetrainPolicy = RetrainPolicy(),  # noqa: B008
    feedback: FeedbackPolicy = FeedbackPolicy(),  # noqa: B008
    model_name: str | None = None,
    spec_path: str | None = None,
) -> DriftCheckResult:
    """Compare the served traffic with the champion's training snapshot; mail; maybe retrain.

    Args:
        window: the last ``hours`` of the inference log (default 24), or the last ``rows``.
        policy: drift thresholds (``drift_share`` 0.3 of spec features, ``column_threshold``
            default Evidently's 0.1, ``score_threshold`` default as the features), the minimum
            window (``min_window_rows`` 1,000: fewer rows give "not enough data", no verdict,
            no retraining) and sampling (``sample_rows`` 30,000 per side, ``seed``).
        retraining: ``trigger`` train-and-release when drift crosses the threshold,
            ``deployment`` to start, ``cooldown_hours`` (6) of quiet after a retraining.
        feedback: realized performance on labelled feedback (``FRAUD_FEEDBACK_DIR``, default
            ``<home>/feedback``): judged with ``min_labels`` (500) and ``min_positives`` (20);
            a drop is the F1 interval's top below the champion's holdout F1 minus
            ``f1_tolerance`` (0.05), and it triggers retraining unless ``trigger`` is false.
        model_name: registered model; default: the spec's name.
        spec_path: feature spec file; default: the card-fraud spec.
    """
    logger = get_run_logger()
    if commit := check_pipeline_commit():  # a flow container: its code must be the pool's
        logger.info("pipeline image of commit %s", commit[:12])
    spec = load_spec(spec_path) if spec_path else default_spec()
    config = DriftCheckConfig(
        model_name=model_name or spec.name,
        window=window,
        policy=policy,
        retraining=retraining,
        feedback=feedback,
    )
    smtp = SmtpSettings()
    logger.info("mail: %s", smtp.describe() if smtp.enabled else "off (FRAUD_SMTP_HOST unset)")

    prefect = get_current_settings()
    result, delivery = run_drift_check(
        Settings(),
        config,
        smtp,
        spec=spec,
        flow_run_url=runtime.flow_run.ui_url,
        ui_url=ui_base_url(prefect.ui_url, prefect.api.url),
        publish=publish,
        steps=TASKS,
    )
    logger.info("%s v%s: %s", result.model_name, result.champion_version, result.headline())
    logger.info("retraining: %s (%s)", result.retrain.action.value, result.retrain.reason)
    if delivery is not None:
        logger.info("mail %s: %s", delivery.status, delivery.detail)
    return result
