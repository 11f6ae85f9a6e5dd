"""One drift check end to end: the one wiring of its steps.

queued mail first -> champion's reference -> inference-log window -> sampled Evidently analysis
-> retraining decision (and trigger) -> recent checks (MLflow) -> charts -> reports (home folder
+ MLflow monitoring run) -> published result -> email (outbox when SMTP is down).

:func:`run_drift_check` is the only place the steps are put in order. It takes the steps as a
:class:`DriftSteps` value: the plain functions by default (tests, no Prefect server needed), the
Prefect tasks of ``flows.drift_check`` in the flow, so the UI shows every step as a task run and
the I/O steps retry on their own, while tests and production run the same wiring. The steps
are in :mod:`flows.monitoring.steps` and :mod:`flows.monitoring.report_mail` (the two mail
steps), the configuration in :mod:`flows.monitoring.config`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from data_contracts.spec import FeatureSpec, default_spec
from flows.alerting import outbox as mail_outbox
from flows.alerting import smtp as mail
from flows.core.settings import Settings
from flows.monitoring import retraining
from flows.monitoring.analysis import DriftAnalysis, analyse
from flows.monitoring.calibration import reference_rate_ratio
from flows.monitoring.charts import Chart, HistoryPoint
from flows.monitoring.config import DriftCheckConfig
from flows.monitoring.performance import RealizedPerformance
from flows.monitoring.reference import Reference
from flows.monitoring.report_mail import Sleep, send_queued_mail, send_report
from flows.monitoring.reports import complete_decision, log_monitoring_run, mlflow_run_url
from flows.monitoring.results import DriftCheckResult
from flows.monitoring.steps import (
    CurrentWindow,
    RetrainPlan,
    describe_result,
    draw_charts,
    fetch_reference,
    measure_performance,
    plan_retraining,
    read_history,
    read_window,
    record_dashboard,
    start_retraining,
    write_reports,
)


@dataclass(frozen=True)
class DriftSteps:
    """The steps :func:`run_drift_check` calls: plain functions, or the flow's tasks."""

    send_queued_mail: Callable[..., list[str]] = send_queued_mail
    fetch_reference: Callable[..., Reference] = fetch_reference
    read_window: Callable[..., CurrentWindow] = read_window
    analyse: Callable[..., DriftAnalysis] = analyse
    measure_performance: Callable[..., RealizedPerformance] = measure_performance
    plan_retraining: Callable[..., RetrainPlan] = plan_retraining
    start_retraining: Callable[..., RetrainPlan] = start_retraining
    read_history: Callable[..., list[HistoryPoint]] = read_history
    draw_charts: Callable[..., list[Chart]] = draw_charts
    write_reports: Callable[..., dict[str, Path]] = write_reports
    log_monitoring_run: Callable[..., str] = log_monitoring_run
    record_dashboard: Callable[..., str | None] = record_dashboard
    send_report: Callable[..., mail_outbox.Delivery | None] = send_report


def run_drift_check(
    settings: Settings,
    config: DriftCheckConfig,
    smtp: mail.SmtpSettings,
    *,
    spec: FeatureSpec | None = None,
    now: datetime | None = None,
    flow_run_url: str | None = None,
    ui_url: str | None = None,
    publish: Callable[[DriftCheckResult], Any] | None = None,
    recent_runs: Callable[[str], list[retraining.RecentRun]] = retraining.recent_runs,
    trigger: Callable[[retraining.RetrainDecision, Path], retraining.RetrainDecision] = (
        retraining.trigger
    ),
    sleep: Sleep = time.sleep,
    steps: DriftSteps = DriftSteps(),
) -> tuple[DriftCheckResult, mail_outbox.Delivery | None]:
    """One drift check end to end; the email, MLflow, the history and the charts never stop it
    (their problems are reported).

    ``ui_url`` is the Prefect UI (for the link to a triggered release run). ``publish`` receives
    the result before the email goes out (the flow posts its artifacts there). Returns the result
    and what happened to the email (None when none was due).
    """
    spec = spec or default_spec()
    now = now or datetime.now(UTC)
    problems = steps.send_queued_mail(smtp, settings.outbox_dir, sleep)
    reference = steps.fetch_reference(settings, config.model_name)
    window = steps.read_window(settings, config, spec, reference.version, now)
    analysis = steps.analyse(reference.frame, window.sample, spec, config.policy, window.rows)
    folder = settings.drift_reports_dir / f"{now:%Y%m%dT%H%M%SZ}-{window.id}"
    performance: RealizedPerformance | None = None
    try:  # labels are a second opinion: a broken feed is reported, the drift verdict stands
        performance = steps.measure_performance(
            settings, config, window, reference.holdout_f1, now, folder,
            reference_ratio=reference_rate_ratio(reference.frame),
        )  # fmt: skip
    except Exception as err:
        problems = [*problems, f"realized performance: {type(err).__name__}: {err}"]
    plan = steps.plan_retraining(
        settings, config, analysis, window.id, now, recent_runs, performance
    )
    if plan.decision.should_trigger:
        plan = steps.start_retraining(plan, settings.labelled_root, trigger)
    result = describe_result(
        config, reference, window, analysis, plan, folder, now, flow_run_url, problems, performance
    )
    if ui_url and result.retrain.flow_run_id:
        release = f"{ui_url.rstrip('/')}/runs/flow-run/{result.retrain.flow_run_id}"
        result = result.model_copy(update={"release_run_url": release})
    late: list[str] = []
    earlier: list[HistoryPoint] = []
    try:
        earlier = steps.read_history(settings, config.model_name)
    except Exception as err:
        late.append(f"history of recent checks: {type(err).__name__}: {err}")
    charts: list[Chart] = []
    try:
        charts = steps.draw_charts(analysis, result, earlier)
    except Exception as err:
        late.append(f"charts: {type(err).__name__}: {err}")
    if late:
        result = result.model_copy(update={"problems": [*result.problems, *late]})
    paths = steps.write_reports(analysis, result, folder, charts)
    try:
        run_id = steps.log_monitoring_run(settings, result, paths)
        result = result.model_copy(
            update={"mlflow_run_id": run_id, "mlflow_run_url": mlflow_run_url(settings, run_id)}
        )
    except Exception as err:
        result = result.model_copy(
            update={"problems": [*result.problems, f"MLflow: {type(err).__name__}: {err}"]}
        )
    try:  # the dashboard is a view: an unwritable workspace or a UI that is down is reported
        dashboard = steps.record_dashboard(settings, result, spec)
        result = result.model_copy(update={"dashboard_url": dashboard})
    except Exception as err:
        problem = f"Evidently dashboard: {type(err).__name__}: {err}"
        result = result.model_copy(update={"problems": [*result.problems, problem]})
    try:  # the local decision file names where the check was recorded
        if "decision" in paths:
            final = result.model_dump(mode="json", exclude={"columns"})
            complete_decision(paths["decision"], final)
    except (OSError, ValueError) as err:
        problem = f"decision file: {type(err).__name__}: {err}"
        result = result.model_copy(update={"problems": [*result.problems, problem]})
    if publish is not None:
        publish(result)
    delivery = steps.send_report(result, paths, smtp, settings.outbox_dir, sleep, charts)
    return result, delivery
