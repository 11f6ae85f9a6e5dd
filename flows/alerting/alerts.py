"""Failure alerts: a failed or crashed release or drift check mails the team.

Two paths, one message, the drift report's SMTP settings and outbox (``flows.alerting.notify``):

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

Nothing here raises into the flow: a broken alert is logged, never a second failure. The
message names the run, the failed step and the error; parameters are shown without secrets, and
the SMTP password and database URLs are scrubbed from every text.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter
from prefect.exceptions import CrashedRun, FailedRun
from prefect.settings import get_current_settings
from pydantic import BaseModel, ConfigDict

from flows.alerting import notify
from flows.core.settings import Settings

log = logging.getLogger(__name__)

ARTIFACT_KEY = "failure-alert"
RELEASE_FLOW = "train-and-release"
DRIFT_FLOW = "drift-check"
WATCHED_FLOWS = (RELEASE_FLOW, DRIFT_FLOW)
ERROR_LIMIT = 4000
PROJECT_ROOT = Path(__file__).resolve().parents[2]

_SECRET_KEY = re.compile(
    r"(password|passwd|secret|token|api[_-]?key|credential|private[_-]?key|dsn|"
    r"connection|(^|_)(uri|url)$)",
    re.IGNORECASE,
)
_DB_URL = re.compile(
    r"\b(?:postgres(?:ql)?|mysql|mariadb|sqlite|mssql|oracle|cockroachdb|redshift|snowflake)"
    r"(?:\+\w+)?://[^\s'\"<>)]*",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"\b([a-z][\w+.-]*://)[^/\s:@'\"]+:[^@\s/'\"]+@", re.IGNORECASE)
_RUN_SUFFIX = re.compile(r"-(?:[0-9a-f]{3}|\d+)$")


class Step(BaseModel):
    """A task run that failed, crashed or was still running when the run ended."""

    model_config = ConfigDict(frozen=True)

    name: str
    state: str
    message: str = ""


class FailureReport(BaseModel):
    """Everything the alert says about one failed or crashed flow run."""

    model_config = ConfigDict(frozen=True)

    flow_name: str
    run_name: str
    run_id: str
    deployment: str | None = None
    parameters: dict[str, Any] = {}
    state_type: str
    state_name: str
    state_message: str = ""
    error: str = ""
    raised_at: str | None = None
    steps: list[Step] = []
    step_summary: str
    champion: str
    ui_url: str | None = None
    occurred_at: datetime

    @property
    def verdict(self) -> str:
        return "CRASHED" if self.state_type == "CRASHED" else "FAILED"


# ------------------------------------------------------------------------------------------
# pure pieces (unit-tested)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove database URLs, credentials in URLs and the given secret values from ``text``."""
    out = _DB_URL.sub("<database URL removed>", text)
    out = _USERINFO.sub(r"\1***@", out)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return out


def redact_parameters(params: Mapping[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Parameters as shown in the alert: secret-looking keys masked, URLs and secrets scrubbed."""
    secrets = tuple(secrets)

    def clean(key: str, value: Any) -> Any:
        if _SECRET_KEY.search(key):
            return "***"
        if isinstance(value, Mapping):
            return {str(k): clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(key, v) for v in value]
        if isinstance(value, str):
            return scrub(value, secrets)
        return value

    return {str(k): clean(str(k), v) for k, v in params.items()}


def truncate(text: str, limit: int = ERROR_LIMIT) -> str:
    """Keep the head and the tail of a long text (the cause is often at either end)."""
    if len(text) <= limit:
        return text
    tail = limit // 5
    head = limit - tail
    cut = len(text) - head - tail
    return f"{text[:head]}\n… [{cut} characters cut] …\n{text[-tail:]}"


def step_name(task_run_name: str) -> str:
    """``promote-3f2`` -> ``promote``: the task's name without Prefect's run suffix."""
    return _RUN_SUFFIX.sub("", task_run_name)


def error_text(exc: BaseException | None, state_message: str) -> str:
    """The exception as ``Type: message``, or the state message when no exception is at hand."""
    if exc is None:
        return state_message
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def adds_to_error(state_message: str, error: str) -> bool:
    """Whether the state message says more than the error text already does."""
    if not state_message:
        return False
    detail = error.split(": ", 1)[-1].strip()
    return state_message not in error and detail not in state_message


def project_frames(
    exc: BaseException | None, root: Path = PROJECT_ROOT
) -> list[traceback.FrameSummary]:
    """The exception's traceback frames in project code (not in installed packages)."""
    if exc is None or exc.__traceback__ is None:
        return []
    return [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if Path(f.filename).resolve().is_relative_to(root) and "site-packages" not in f.filename
    ]


def frame_text(frame: traceback.FrameSummary, root: Path = PROJECT_ROOT) -> str:
    """``path:line in func `code``` for one frame."""
    path = Path(frame.filename).resolve()
    where = path.relative_to(root) if path.is_relative_to(root) else path
    code = f" `{frame.line.strip()}`" if frame.line else ""
    return f"{where}:{frame.lineno} in {frame.name}{code}"


def describe_steps(steps: list[Step], last_completed: str | None, body_line: str | None) -> str:
    """One line for the subject and the summary: which step failed.

    Failed task runs first; else the task runs that were still running (interrupted); else the
    flow's own code (``body_line``, the flow function's line that raised) after the last task.
    """
    failed = [s.name for s in steps if s.state in {"Failed", "Crashed", "TimedOut"}]
    if failed:
        return ", ".join(dict.fromkeys(failed))
    interrupted = [s.name for s in steps]
    if interrupted:
        return ", ".join(dict.fromkeys(interrupted)) + " (interrupted)"
    after = f" after {last_completed}" if last_completed else " before any task"
    if body_line:
        return f"`{body_line}`{after}"
    return "flow run" + after


def champion_note(flow_name: str, task_states: Mapping[str, str]) -> str:
    """What happened to the ``champion`` alias, from the state of the run's promote step."""
    if flow_name == DRIFT_FLOW:
        return (
            "untouched: a drift check never moves the alias (a retraining it starts is a "
            "separate train-and-release run with its own gates)"
        )
    if flow_name != RELEASE_FLOW:
        return "not concerned: this flow does not move the alias"
    promote = task_states.get("promote")
    if promote is None:
        return "untouched: the alias moves only in the promote step, which did not run"
    if promote == "Completed":
        return "MOVED by this run's promote step before the failure (see `make history`)"
    if promote in {"Failed", "Crashed", "TimedOut"}:
        return (
            "not moved by this run: the promote step failed (when the alias move fails the "
            "served pointers go back to the previous champion); check with `make history`"
        )
    return (
        f"UNKNOWN: the run stopped inside the promote step ({promote}); "
        "check the alias with `make history`"
    )


def run_url(ui_url: str | None, run_id: str) -> str | None:
    """Link to the flow run in the Prefect UI."""
    return f"{ui_url.rstrip('/')}/runs/flow-run/{run_id}" if ui_url else None


def ui_base_url(ui_url: str | None, api_url: str | None) -> str | None:
    """``PREFECT_UI_URL``, else the API URL without its ``/api`` suffix."""
    if ui_url:
        return ui_url.rstrip("/")
    if api_url:
        return re.sub(r"/api/?$", "", api_url.rstrip("/"))
    return None


def alert_email(report: FailureReport) -> notify.EmailContent:
    """Subject, plain text and escaped HTML of the failure alert."""
    esc = notify.esc
    subject = (
        f"[fraud alert] {report.flow_name} {report.verdict}: run '{report.run_name}' "
        f"at {report.step_summary}"
    )
    params = "\n".join(f"  {k} = {v}" for k, v in report.parameters.items()) or "  (defaults)"
    steps = "\n".join(
        f"  - {s.name}: {s.state}" + (f" ({s.message})" if s.message else "") for s in report.steps
    )
    link = run_url(report.ui_url, report.run_id)
    text = "\n".join(
        [
            f"{report.flow_name} run '{report.run_name}' ended {report.state_name} "
            f"at {report.occurred_at:%Y-%m-%d %H:%M:%S} UTC.",
            "",
            f"Failed step: {report.step_summary}",
            *([steps] if steps else []),
            *([f"Raised at: {report.raised_at}"] if report.raised_at else []),
            "",
            "Error:",
            report.error or report.state_message or "(no message)",
            "",
            *(
                ["State message:", report.state_message, ""]
                if adds_to_error(report.state_message, report.error)
                else []
            ),
            f"Champion: {report.champion}",
            "",
            f"Flow run: {report.run_name} ({report.run_id})",
            f"Deployment: {report.deployment or '(none: run outside a deployment)'}",
            "Parameters:",
            params,
            *([f"Prefect UI: {link}"] if link else []),
        ]
    )
    rows = "".join(
        f"<tr><td><code>{esc(k)}</code></td><td><code>{esc(v)}</code></td></tr>"
        for k, v in report.parameters.items()
    )
    step_items = "".join(
        f"<li><b>{esc(s.name)}</b>: {esc(s.state)}"
        + (f" ({esc(s.message)})" if s.message else "")
        + "</li>"
        for s in report.steps
    )
    html = (
        f"<h2>{esc(report.flow_name)} {esc(report.verdict)}: run "
        f"<code>{esc(report.run_name)}</code></h2>"
        f"<p>Ended <b>{esc(report.state_name)}</b> at "
        f"{esc(f'{report.occurred_at:%Y-%m-%d %H:%M:%S}')} UTC.</p>"
        f"<h3>Failed step: {esc(report.step_summary)}</h3>"
        + (f"<ul>{step_items}</ul>" if step_items else "")
        + (f"<p>Raised at: <code>{esc(report.raised_at)}</code></p>" if report.raised_at else "")
        + f"<h3>Error</h3><pre>{esc(report.error or report.state_message or '(no message)')}</pre>"
        + (
            f"<p>State message: {esc(report.state_message)}</p>"
            if adds_to_error(report.state_message, report.error)
            else ""
        )
        + f"<p><b>Champion:</b> {esc(report.champion)}</p>"
        + "<h3>Flow run</h3><table>"
        + f"<tr><td>name</td><td><code>{esc(report.run_name)}</code></td></tr>"
        + f"<tr><td>id</td><td><code>{esc(report.run_id)}</code></td></tr>"
        + f"<tr><td>deployment</td><td>{esc(report.deployment or '(none)')}</td></tr>"
        + "</table><h3>Parameters</h3>"
        + (f"<table>{rows}</table>" if rows else "<p>(defaults)</p>")
        + (f'<p><a href="{esc(link)}">Open the run in the Prefect UI</a></p>' if link else "")
    )
    return notify.EmailContent(subject=subject, html=html, text=text)


def alert_markdown(report: FailureReport, delivery: notify.Delivery) -> str:
    """The ``failure-alert`` artifact left on the failed run (also the one-mail-per-run mark)."""
    return (
        f"# Failure alert: {report.verdict}\n\n"
        f"- failed step: {report.step_summary}\n"
        f"- error: {truncate(report.error or report.state_message, 500).replace(chr(10), ' ')}\n"
        f"- champion: {report.champion}\n"
        f"- mail: {delivery.status} ({delivery.detail})\n"
    )


# ------------------------------------------------------------------------------------------
# reading the run from Prefect


def _exception_of(state: Any) -> BaseException | None:
    """The exception that ended the run, when the state still holds it (in-process hooks)."""
    try:
        value = state.result(raise_on_failure=False)
    except Exception:
        return None
    if isinstance(value, CrashedRun | FailedRun):  # rebuilt from the message: nothing new
        return None
    return value if isinstance(value, BaseException) else None


def summarize_task_runs(
    task_runs: Iterable[Any], secrets: Iterable[str] = ()
) -> tuple[list[Step], dict[str, str], str | None]:
    """The failed (else still running) steps, each step's latest state, the last completed step."""
    epoch = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(
        (t for t in task_runs if t.state is not None),
        key=lambda t: t.start_time or t.created or epoch,
    )
    latest: dict[str, str] = {}
    last_completed = None
    for tr in ordered:
        latest[step_name(tr.name)] = tr.state.name or ""
        if tr.state.is_completed():
            last_completed = step_name(tr.name)
    steps = [
        Step(
            name=step_name(tr.name),
            state=tr.state.name or "",
            message=scrub(truncate(tr.state.message or "", 500), tuple(secrets)),
        )
        for tr in ordered
        if tr.state.is_failed() or tr.state.is_crashed() or tr.state.is_running()
    ]
    if any(s.state != "Running" for s in steps):
        steps = [s for s in steps if s.state != "Running"]
    return steps, latest, last_completed


def build_report(
    flow_run: Any,
    flow_name: str,
    state: Any,
    task_runs: Iterable[Any],
    *,
    deployment: str | None = None,
    secrets: Iterable[str] = (),
    exc: BaseException | None = None,
    ui_url: str | None = None,
) -> FailureReport:
    """The report of ``flow_run`` ended in ``state``, every text scrubbed of ``secrets``."""
    secrets = tuple(secrets)
    steps, latest, last_completed = summarize_task_runs(task_runs, secrets)
    exc = exc or _exception_of(state)
    frames = project_frames(exc)
    where = frame_text(frames[-1]) if frames else None
    body_line = frames[0].line.strip() if frames and frames[0].line else None
    return FailureReport(
        flow_name=flow_name,
        run_name=flow_run.name,
        run_id=str(flow_run.id),
        deployment=deployment,
        parameters=redact_parameters(flow_run.parameters or {}, secrets),
        state_type=state.type.value,
        state_name=state.name or state.type.value.title(),
        state_message=truncate(scrub(state.message or "", secrets), 1000),
        error=truncate(scrub(error_text(exc, state.message or ""), secrets)),
        raised_at=scrub(where, secrets) if where else None,
        steps=steps,
        step_summary=scrub(describe_steps(steps, last_completed, body_line), secrets),
        champion=champion_note(flow_name, latest),
        ui_url=ui_url,
        occurred_at=(state.timestamp or datetime.now(UTC)).astimezone(UTC),
    )


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
    deployment = None
    if flow_run.deployment_id:
        try:
            deployment = f"{flow_name}/{client.read_deployment(flow_run.deployment_id).name}"
        except Exception:
            deployment = str(flow_run.deployment_id)
    settings = get_current_settings()
    return build_report(
        flow_run,
        flow_name,
        state,
        task_runs,
        deployment=deployment,
        secrets=secrets,
        exc=exc,
        ui_url=ui_base_url(settings.ui_url, settings.api.url),
    )


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
    smtp: notify.SmtpSettings,
    settings: Settings,
    password: str | None,
) -> notify.Delivery:
    """Flush the outbox first, then deliver the alert (queued in the outbox if SMTP is down)."""
    if not smtp.enabled:
        return notify.Delivery(status="skipped", subject="", detail="SMTP host or recipients unset")
    for handled in notify.flush_outbox(smtp, settings.outbox_dir, password):
        log.info("queued mail %s: %s", handled.status, handled.subject)
    message = notify.compose_message(alert_email(report), smtp)
    return notify.deliver(message, smtp, settings.outbox_dir, password)


def record_alert(client: Any, report: FailureReport, delivery: notify.Delivery) -> None:
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
) -> notify.Delivery:
    """Gather, mail and record the alert for one ended run (the step shared by both paths)."""
    smtp = notify.SmtpSettings()
    settings = Settings()
    password = notify.resolve_password(smtp) if smtp.enabled else None
    secrets = [password] if password else []
    with get_client(sync_client=True) as client:
        if skip_if_alerted and already_alerted(client, flow_run.id):
            return notify.Delivery(
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
