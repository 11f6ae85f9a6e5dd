"""Failure alerts: a failed or crashed release or drift check mails the team.

Two paths, one message, the drift report's SMTP settings and outbox (``flows.alerting.outbox``):

* **Flow hooks** (``on_failure`` / ``on_crashed`` on ``train-and-release`` and ``drift-check``)
  send the alert for every run that ends Failed or Crashed while some Prefect process is
  alive: the flow process itself (an exception, a SIGTERM) or, when only the flow process died
  (OOM killer), the worker that launched it. The hook runs where the exception and the run are
  at hand, needs no extra service, and works the same on any server.
* **Heartbeats + automations** cover what no hook can: the worker *and* the flow process dying
  together (host lost, ``kill -9`` of the worker's process tree). Flow runs emit heartbeats
  (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``); one automation marks a run Crashed when they stop
  (``flows.cli.automations``), a second one starts the ``failure-alert`` deployment for runs
  crashed *by that rule*, on its own work pool and worker, so the alert does not depend on the
  worker that died. Runs that ended through a hook never reach the rule (their final state
  event satisfies it), and every alert leaves a ``failure-alert`` artifact on the failed run,
  which the deployment checks first: one run, one mail.

Nothing here raises into the flow: a broken alert is logged, never a second failure. This module
is the Prefect side (reading the run, the artifact, the hook); what the alert says is
``flows.alerting.failure``, with every text scrubbed by ``flows.alerting.redaction``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter
from prefect.settings import get_current_settings

from flows.alerting.failure import (
    DRIFT_FLOW,
    RELEASE_FLOW,
    FailureReport,
    alert_email,
    alert_markdown,
    build_report,
    image_note,
    ui_base_url,
)
from flows.alerting.outbox import Delivery, deliver, flush_outbox
from flows.alerting.smtp import SmtpSettings, compose_message, resolve_password
from flows.core.settings import EXPECTED_COMMIT_ENV, Settings

log = logging.getLogger(__name__)

ARTIFACT_KEY = "failure-alert"
WATCHED_FLOWS = (RELEASE_FLOW, DRIFT_FLOW)


def gather_report(
    client: Any,
    flow_run: Any,
    flow_name: str,
    state: Any,
    secrets: Iterable[str] = (),
    exc: BaseException | None = None,
) -> FailureReport:
    """Read the run's task runs and deployment from Prefect, then :func:`build_report`."""
    task_runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}), limit=200
    )
    deployment, read = None, None
    if flow_run.deployment_id:
        try:
            read = client.read_deployment(flow_run.deployment_id)
            deployment = f"{flow_name}/{read.name}"
        except Exception:
            deployment = str(flow_run.deployment_id)
    settings = get_current_settings()
    image, commit = pipeline_image_of(client, flow_run, read)
    return build_report(
        flow_run,
        flow_name,
        state,
        task_runs,
        deployment=deployment,
        secrets=secrets,
        exc=exc,
        ui_url=ui_base_url(settings.ui_url, settings.api.url),
        pipeline_image=image_note(state.message or "", image, commit),
    )


def pipeline_image_of(
    client: Any, flow_run: Any, deployment: Any | None
) -> tuple[str | None, str | None]:
    """The image a Docker-pool run's container starts from, and the commit its pool expects.

    The run's job variables win over its deployment's, which win over the pool's defaults (as
    the worker merges them). ``(None, None)`` for a run of another pool, or when unreadable.
    """
    if not getattr(flow_run, "work_pool_name", None):
        return None, None
    try:
        pool = client.read_work_pool(flow_run.work_pool_name)
    except Exception:
        return None, None
    if pool.type != "docker":
        return None, None
    props = (pool.base_job_template or {}).get("variables", {}).get("properties", {})
    defaults = {key: spec.get("default") for key, spec in props.items() if isinstance(spec, dict)}
    layers = [flow_run.job_variables or {}, getattr(deployment, "job_variables", None) or {}]
    layers.append(defaults)
    image = next((str(v["image"]) for v in layers if v.get("image")), None)
    envs = [v["env"] for v in layers if isinstance(v.get("env"), dict)]
    commit = next((str(e[EXPECTED_COMMIT_ENV]) for e in envs if e.get(EXPECTED_COMMIT_ENV)), None)
    return image, commit


def already_alerted(client: Any, flow_run_id: UUID) -> bool:
    """Whether a failure alert was already recorded on the run."""
    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(key={"any_": [ARTIFACT_KEY]}),
        flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
        limit=1,
    )
    return bool(found)


def send_alert(
    report: FailureReport,
    smtp: SmtpSettings,
    settings: Settings,
    password: str | None,
) -> Delivery:
    """Flush the outbox first, then deliver the alert (queued in the outbox if SMTP is down)."""
    if not smtp.enabled:
        return Delivery(status="skipped", subject="", detail="SMTP host or recipients unset")
    for handled in flush_outbox(smtp, settings.outbox_dir, password):
        log.info("queued mail %s: %s", handled.status, handled.subject)
    message = compose_message(alert_email(report), smtp)
    return deliver(message, smtp, settings.outbox_dir, password)


def record_alert(client: Any, report: FailureReport, delivery: Delivery) -> None:
    """Leave the ``failure-alert`` artifact on the failed run."""
    client.create_artifact(
        ArtifactCreate(
            key=ARTIFACT_KEY,
            type="markdown",
            data=alert_markdown(report, delivery),
            description=f"{report.verdict} at {report.step_summary}: mail {delivery.status}",
            flow_run_id=UUID(report.run_id),
        )
    )


def alert_for_run(
    flow_run: Any,
    flow_name: str,
    state: Any,
    exc: BaseException | None = None,
    skip_if_alerted: bool = False,
) -> Delivery:
    """Gather, mail and record the alert for one ended run (the step shared by both paths)."""
    smtp = SmtpSettings()
    settings = Settings()
    password = resolve_password(smtp) if smtp.enabled else None
    secrets = [password] if password else []
    with get_client(sync_client=True) as client:
        if skip_if_alerted and already_alerted(client, flow_run.id):
            return Delivery(
                status="skipped", subject="", detail="an alert was already sent for this run"
            )
        report = gather_report(client, flow_run, flow_name, state, secrets, exc)
        delivery = send_alert(report, smtp, settings, password)
        try:
            record_alert(client, report, delivery)
        except Exception as err:  # the mail went out; the mark is a convenience
            log.warning("could not record the failure-alert artifact: %s", type(err).__name__)
    log.warning("failure alert for %s run %s: %s", flow_name, flow_run.name, delivery.status)
    return delivery


# ------------------------------------------------------------------------------------------
# Prefect entry points


def alert_on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_failure`` / ``on_crashed`` hook of the pipeline's flows; never raises."""
    try:
        alert_for_run(flow_run, flow.name, state)
    except Exception:
        log.exception("the failure alert for flow run %s could not be sent", flow_run.id)


def flow_run_id_of(value: str) -> UUID:
    return UUID(value.removeprefix("prefect.flow-run."))


def wait_for_final_state(client: Any, run_id: UUID, timeout: float = 60.0) -> Any:
    """The flow run once its state is final (the rule's state change may still be in flight)."""
    deadline = time.monotonic() + timeout
    run = client.read_flow_run(run_id)
    while not (run.state and run.state.is_final()) and time.monotonic() < deadline:
        time.sleep(2)
        run = client.read_flow_run(run_id)
    return run
