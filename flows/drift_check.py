"""The ``drift-check`` Prefect flow: thin wiring over the monitoring and alerting steps.

outbox first -> champion's reference -> inference-log window -> sampled Evidently report ->
verdict -> reports (home folder + MLflow monitoring run) -> retraining decision (and trigger)
-> Prefect markdown artifact -> email (outbox when SMTP is down).

:func:`run_drift_check` is the whole check as a plain function of the settings and a config; the
flow builds both from its parameters and the environment and calls it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from data_contracts.spec import FeatureSpec, default_spec, load_spec
from flows.alerting import notify
from flows.alerting.alerts import alert_on_failure
from flows.core.settings import Settings
from flows.monitoring import drift, retraining
from flows.monitoring.results import DriftCheckResult, drift_email, mlflow_payload, result_markdown

log = logging.getLogger(__name__)

DEFAULT_DEPLOYMENT = "train-and-release/fraud-detector"


class DriftCheckConfig(BaseModel):
    """What one drift check looks at, its thresholds and what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = "fraud-detector"
    window: drift.Window = drift.Window(hours=24)
    policy: drift.DriftPolicy = drift.DriftPolicy()
    trigger_retraining: bool = True
    deployment: str = DEFAULT_DEPLOYMENT
    cooldown: timedelta = Field(timedelta(hours=6), description="Quiet time after a retraining.")
    labelled_max_rows: int = Field(
        500_000, ge=1, description="Rows of labelled batches to train on."
    )
    only_champion_rows: bool = Field(True, description="Keep window rows served by the champion.")


def log_monitoring_run(settings: Settings, result: DriftCheckResult, paths: dict[str, Path]) -> str:
    """Log reports, tags (champion version, outcome) and statistics to the monitoring experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.monitoring_experiment)
    if experiment is None:
        location = None
        if settings.uses_local_mlflow:
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = settings.artifact_root.resolve().as_uri()
        experiment_id = client.create_experiment(
            settings.monitoring_experiment, artifact_location=location
        )
    else:
        experiment_id = experiment.experiment_id
    payload = mlflow_payload(result)
    run = client.create_run(
        experiment_id,
        tags=payload["tags"],
        run_name=f"drift-{result.model_name}-v{result.champion_version}-{result.checked_at:%Y%m%dT%H%M}",
    )
    run_id = run.info.run_id
    for key, value in payload["metrics"].items():
        client.log_metric(run_id, key, value)
    for path in paths.values():
        client.log_artifact(run_id, str(path), "drift_report")
    client.set_terminated(run_id)
    return run_id


def run_drift_check(
    settings: Settings,
    config: DriftCheckConfig,
    smtp: notify.SmtpSettings,
    *,
    spec: FeatureSpec | None = None,
    now: datetime | None = None,
    flow_run_url: str | None = None,
    publish: Callable[[DriftCheckResult], None] | None = None,
    recent_runs: Callable[[str], list[retraining.RecentRun]] = retraining.recent_runs,
    trigger: Callable[[retraining.RetrainDecision, Path], retraining.RetrainDecision] = (
        retraining.trigger
    ),
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[DriftCheckResult, notify.Delivery | None]:
    """One drift check end to end; the email and MLflow never stop it (their problems are reported).

    ``publish`` receives the result before the email goes out (the flow posts its artifact there).
    Returns the result and what happened to the email (None when none was due).
    """
    spec = spec or default_spec()
    now = now or datetime.now(UTC)
    problems: list[str] = []
    password = None
    try:
        password = notify.resolve_password(smtp) if smtp.enabled else None
        for sent in notify.flush_outbox(smtp, settings.outbox_dir, password, sleep):
            if sent.status == "failed":  # refused for good: kept in outbox/failed, say so
                problems.append(f"outbox: {sent.subject!r} refused: {sent.detail}")
            else:
                log.info("queued mail %s: %s", sent.status, sent.subject)
    except Exception as err:  # the outbox must never block the check
        problems.append(f"outbox: {type(err).__name__}")

    reference = drift.load_reference(
        settings.tracking_uri,
        config.model_name,
        settings.champion_alias,
        settings.work_dir / "drift" / "reference",
    )
    window = drift.read_inference_log(
        settings.inference_log_root,
        config.window,
        now=now,
        model_version=reference.version if config.only_champion_rows else None,
        columns=drift.monitored_columns(spec),
        as_table=True,
    )
    wid = drift.window_id(window, reference.version)
    bounds = drift.time_range(window)
    analysis = drift.analyse(reference.frame, window, spec, config.policy)
    worst = drift.max_noise(analysis.results)

    decision = retraining.decide_retraining(
        outcome=analysis.verdict.outcome,
        retrain_wanted=analysis.verdict.retrain_wanted,
        enabled=config.trigger_retraining,
        recent=recent_runs(config.deployment)
        if analysis.verdict.retrain_wanted and config.trigger_retraining
        else [],
        now=now,
        cooldown=config.cooldown,
        window=wid,
        deployment=config.deployment,
        has_labelled_data=bool(retraining.labelled_batches(settings.labelled_root)),
    )
    data_path: Path | None = None
    if analysis.verdict.retrain_wanted and decision.action != retraining.RetrainAction.NOT_NEEDED:
        # built even when not triggered, so the manual command in the email works as printed
        try:
            data_path = retraining.assemble_training_data(
                settings.labelled_root,
                settings.work_dir / "retrain" / f"{config.model_name}-{wid}.parquet",
                config.labelled_max_rows,
            )
        except Exception as err:
            problems.append(f"labelled data: {type(err).__name__}: {err}")
    if decision.should_trigger:
        try:
            if data_path is None:
                raise FileNotFoundError(f"no usable labelled batch in {settings.labelled_root}")
            decision = trigger(decision, data_path)
        except Exception as err:
            decision = decision.model_copy(
                update={
                    "action": retraining.RetrainAction.FAILED,
                    "reason": f"{type(err).__name__}: {err}",
                    "data_path": str(data_path) if data_path else None,
                }
            )
            problems.append(f"retraining trigger: {type(err).__name__}: {err}")

    folder = settings.drift_reports_dir / f"{now:%Y%m%dT%H%M%SZ}-{wid}"
    result = DriftCheckResult(
        model_name=config.model_name,
        champion_version=reference.version,
        champion_run_id=reference.run_id,
        checked_at=now,
        window=config.window.describe(),
        window_id=wid,
        window_start=bounds[0] if bounds else None,
        window_end=bounds[1] if bounds else None,
        policy=config.policy,
        verdict=analysis.verdict,
        sampling=analysis.sampling,
        columns=analysis.results,
        noise_floor_max=worst[1] if worst else None,
        noise_floor_column=worst[0] if worst else None,
        retrain=decision,
        manual_command=retraining.manual_command(
            config.deployment, str(data_path) if data_path else None
        ),
        report_dir=str(folder),
        report_html=str(folder / "drift_report.html") if analysis.snapshot is not None else None,
        flow_run_url=flow_run_url,
        problems=problems,
        timings=analysis.timings,
    )
    paths = drift.save_reports(
        analysis, folder, {"result": result.model_dump(mode="json", exclude={"columns"})}
    )
    try:
        result = result.model_copy(
            update={"mlflow_run_id": log_monitoring_run(settings, result, paths)}
        )
    except Exception as err:
        result = result.model_copy(
            update={"problems": [*result.problems, f"MLflow: {type(err).__name__}: {err}"]}
        )
    if publish is not None:
        publish(result)

    delivery = None
    all_clear = result.verdict.outcome == drift.Outcome.NO_DRIFT
    if smtp.enabled and (not all_clear or smtp.mail_all_clear):
        message = notify.compose_message(
            drift_email(result), smtp, [p for k, p in paths.items() if k == "html"]
        )
        delivery = notify.deliver(message, smtp, settings.outbox_dir, password, sleep)
    return result, delivery


@flow(
    name="drift-check",
    log_prints=True,
    result_serializer="json",
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def drift_check(
    window_hours: float | None = 24.0,
    window_rows: int | None = None,
    drift_share: float = 0.3,
    column_threshold: float | None = None,
    score_threshold: float | None = None,
    min_window_rows: int = 1000,
    sample_rows: int = 30_000,
    trigger_retraining: bool = True,
    deployment_name: str = DEFAULT_DEPLOYMENT,
    cooldown_hours: float = 6.0,
    model_name: str | None = None,
    spec_path: str | None = None,
) -> DriftCheckResult:
    """Compare the served traffic with the champion's training snapshot; mail; maybe retrain.

    Args:
        window_hours: the window is the last N hours of the inference log (or use window_rows).
        window_rows: the window is the last N rows instead (set window_hours to null).
        drift_share: share of spec features drifted that counts as drift (and retrains).
        column_threshold: per-feature statistic threshold; default Evidently's 0.1.
        score_threshold: threshold for the model score's drift; default as the features.
        min_window_rows: fewer rows give "not enough data": no verdict, no retraining.
        sample_rows: rows sampled from each side for Evidently (documented in the report).
        trigger_retraining: start train-and-release when drift crosses the threshold.
        deployment_name: the train-and-release deployment to start.
        cooldown_hours: no new retraining within this many hours after the last one ended.
        model_name: registered model; default: the spec's name.
        spec_path: feature spec file; default: the card-fraud spec.
    """
    logger = get_run_logger()
    spec = load_spec(spec_path) if spec_path else default_spec()
    if window_rows is not None:
        window_hours = None
    config = DriftCheckConfig(
        model_name=model_name or spec.name,
        window=drift.Window(hours=window_hours, rows=window_rows),
        policy=drift.DriftPolicy(
            drift_share=drift_share,
            column_threshold=column_threshold,
            score_threshold=score_threshold,
            min_window_rows=min_window_rows,
            sample_rows=sample_rows,
        ),
        trigger_retraining=trigger_retraining,
        deployment=deployment_name,
        cooldown=timedelta(hours=cooldown_hours),
    )
    smtp = notify.SmtpSettings()
    logger.info("mail: %s", smtp.describe() if smtp.enabled else "off (FRAUD_SMTP_HOST unset)")

    def publish(result: DriftCheckResult) -> None:
        create_markdown_artifact(
            key="drift-check",
            markdown=result_markdown(result),
            description=f"{result.model_name} v{result.champion_version}: {result.headline()}",
        )

    result, delivery = run_drift_check(
        Settings(),
        config,
        smtp,
        spec=spec,
        flow_run_url=runtime.flow_run.ui_url,
        publish=publish,
    )
    logger.info("%s v%s: %s", result.model_name, result.champion_version, result.headline())
    logger.info("retraining: %s (%s)", result.retrain.action.value, result.retrain.reason)
    if delivery is not None:
        logger.info("mail %s: %s", delivery.status, delivery.detail)
    return result
