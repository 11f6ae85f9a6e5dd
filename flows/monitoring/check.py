"""One drift check, step by step, as plain functions, and the one wiring of those steps.

queued mail first -> champion's reference -> inference-log window -> sampled Evidently analysis
-> retraining decision (and trigger) -> recent checks (MLflow) -> charts -> reports (home folder
+ MLflow monitoring run) -> published result -> email (outbox when SMTP is down).

:func:`run_drift_check` is the only place the steps are put in order. It takes the steps as a
:class:`DriftSteps` value: the plain functions by default (tests, no Prefect server needed), the
Prefect tasks of ``flows.drift_check`` in the flow, so the UI shows every step as a task run and
the I/O steps retry on their own, while tests and production run the same wiring.

Over 400 lines on purpose: each step here is a few lines that call the module that does the
work (analysis, feedback, retraining, reports, dashboard); keeping the steps beside their one
wiring lets a reader check the order and the error handling of a check in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from data_contracts.inference_log import SCORE_COLUMN, TIMESTAMP_COLUMN
from data_contracts.spec import FeatureSpec, default_spec
from flows.alerting import outbox as mail_outbox
from flows.alerting import smtp as mail
from flows.core.settings import Settings
from flows.monitoring import charts as drift_charts
from flows.monitoring import dashboard as drift_dashboard
from flows.monitoring import history as drift_history
from flows.monitoring import retraining
from flows.monitoring.analysis import DriftAnalysis, analyse, max_noise
from flows.monitoring.charts import Chart, HistoryPoint
from flows.monitoring.feedback import (
    FeedbackPolicy,
    RealizedPerformance,
    feedback_columns,
    feedback_files,
    read_feedback,
    realized_performance,
)
from flows.monitoring.reference import Reference, load_reference
from flows.monitoring.report_mail import report_message
from flows.monitoring.reports import (
    complete_decision,
    log_monitoring_run,
    mlflow_run_url,
    save_reports,
)
from flows.monitoring.results import DriftCheckResult
from flows.monitoring.verdict import DriftPolicy, Outcome
from flows.monitoring.window import Window, identity, monitored_columns, scan_window

log = logging.getLogger(__name__)

DEFAULT_DEPLOYMENT = "train-and-release/fraud-detector"
Sleep = Callable[[float], None]


class RetrainPolicy(BaseModel):
    """Whether and what a drift check may start when drift crosses the threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trigger: bool = Field(True, description="Start train-and-release when drift crosses the line.")
    deployment: str = Field(DEFAULT_DEPLOYMENT, description="The train-and-release deployment.")
    cooldown_hours: float = Field(
        6.0, ge=0, description="No new retraining within this many hours after the last one."
    )


class DriftCheckConfig(BaseModel):
    """What one drift check looks at, its thresholds and what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = "fraud-detector"
    window: Window = Window(hours=24)
    policy: DriftPolicy = DriftPolicy()
    retraining: RetrainPolicy = RetrainPolicy()
    feedback: FeedbackPolicy = FeedbackPolicy()
    labelled_max_rows: int = Field(
        500_000, ge=1, description="Rows of labelled batches to train on."
    )
    only_champion_rows: bool = Field(True, description="Keep window rows served by the champion.")


# ---------------------------------------------------------------------------------------------
# The steps


def send_queued_mail(smtp: mail.SmtpSettings, outbox: Path, sleep: Sleep = time.sleep) -> list[str]:
    """Send what earlier runs left in the outbox; return the problems to report (never raises).

    A queued mail the server refuses for good is a problem of this check's report; the outbox
    must never block the check.
    """
    if not smtp.enabled:
        return []
    problems = []
    try:
        password = mail.resolve_password(smtp)
        for sent in mail_outbox.flush_outbox(smtp, outbox, password, sleep):
            if sent.status == "failed":  # refused for good: kept in outbox/failed, say so
                problems.append(f"outbox: {sent.subject!r} refused: {sent.detail}")
            else:
                log.info("queued mail %s: %s", sent.status, sent.subject)
    except Exception as err:
        problems.append(f"outbox: {type(err).__name__}")
    return problems


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
) -> RealizedPerformance:
    """The served model's realized F1 on the labelled feedback for the window's transactions
    (and Evidently's classification report of them in ``report_dir``)."""
    key = settings.id_key()  # clear ids in feedback are hashed as the bento hashes them
    feedback, counts = read_feedback(settings.feedback_root, key, now)
    scored = window.scored if window.scored is not None else pa.table({})
    return realized_performance(
        scored, feedback, counts, config.feedback, champion_f1, report_dir, window.rows
    )


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


def send_report(
    result: DriftCheckResult,
    paths: dict[str, Path],
    smtp: mail.SmtpSettings,
    outbox: Path,
    sleep: Sleep = time.sleep,
    charts: Sequence[Chart] = (),
) -> mail_outbox.Delivery | None:
    """Mail the decision with its charts inline and links to the report; None when no mail is due.

    A gzip copy of the report is attached only within ``smtp.max_message_bytes``
    (:func:`~flows.monitoring.report_mail.report_message`). No mail for an all-clear unless
    ``mail_all_clear``. Delivery retries and queues the whole message in the outbox itself (see
    ``flows.alerting.outbox``), so this step never raises on SMTP errors.
    """
    dropped = result.performance is not None and result.performance.dropped
    all_clear = result.verdict.outcome == Outcome.NO_DRIFT and not dropped
    if not smtp.enabled or (all_clear and not smtp.mail_all_clear):
        return None
    try:
        password = mail.resolve_password(smtp)
    except Exception as err:  # the message still goes to the outbox when login fails
        log.warning("SMTP password could not be resolved: %s", type(err).__name__)
        password = None
    secrets = [password] if password else []
    message = report_message(result, charts, paths.get("html"), smtp, secrets)
    return mail_outbox.deliver(message, smtp, outbox, password, sleep)


# ---------------------------------------------------------------------------------------------
# The wiring


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
            settings, config, window, reference.holdout_f1, now, folder
        )
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
