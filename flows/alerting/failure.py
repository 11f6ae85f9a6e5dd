"""The failure alert's content: the report of a failed or crashed run, its email and its artifact.

Pure: built from the flow run, its state and its task runs as Prefect returns them; every text
is scrubbed (``flows.alerting.redaction``). Reading those from Prefect and sending the mail is
``flows.alerting.alerts``.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.exceptions import CrashedRun, FailedRun
from pydantic import BaseModel, ConfigDict

from flows.alerting.emails import EmailContent, render
from flows.alerting.outbox import Delivery
from flows.alerting.redaction import redact_parameters, scrub, truncate
from flows.core.settings import PROJECT_ROOT

RELEASE_FLOW = "train-and-release"
DRIFT_FLOW = "drift-check"
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
    pipeline_image: str = ""  # a Docker-pool run: its image and the commit its pool expects

    @property
    def verdict(self) -> str:
        return "CRASHED" if self.state_type == "CRASHED" else "FAILED"


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


def image_note(state_message: str, image: str | None, expected_commit: str | None) -> str:
    """What the alert says of a Docker-pool run's pipeline image ("" for a run of another pool).

    A worker that cannot create the container because the image is not in the engine (the pool
    never pulls it) writes Docker's "No such image" into the Crashed state: say so in the
    pipeline's words, with the commit the pool expects and how to build its image.
    """
    if not image:
        return ""
    commit = f"commit {expected_commit}" if expected_commit else "an unrecorded commit"
    if "No such image" in state_message or "ImageNotFound" in state_message:
        return (
            f"the pipeline image {image} is missing from the Docker engine (the pool never "
            f"pulls it), so the flow container never started; the work pool expects the image "
            f"of {commit}: build it with make pipeline-image in a checkout of that commit, or "
            "set the pool up again (make up-prod)"
        )
    return f"{image}; the work pool expects the image of {commit}"


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


def alert_email(report: FailureReport) -> EmailContent:
    """Subject, plain text and escaped HTML of the failure alert."""
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
            *([f"Pipeline image: {report.pipeline_image}", ""] if report.pipeline_image else []),
            f"Champion: {report.champion}",
            "",
            f"Flow run: {report.run_name} ({report.run_id})",
            f"Deployment: {report.deployment or '(none: run outside a deployment)'}",
            "Parameters:",
            params,
            *([f"Prefect UI: {link}"] if link else []),
        ]
    )
    html = render(
        "failure_alert.html",
        r=report,
        occurred=f"{report.occurred_at:%Y-%m-%d %H:%M:%S}",
        error=report.error or report.state_message or "(no message)",
        state_message=report.state_message
        if adds_to_error(report.state_message, report.error)
        else "",
        link=link,
    )
    return EmailContent(subject=subject, html=html, text=text)


def alert_markdown(report: FailureReport, delivery: Delivery) -> str:
    """The ``failure-alert`` artifact left on the failed run (also the one-mail-per-run mark)."""
    return (
        f"# Failure alert: {report.verdict}\n\n"
        f"- failed step: {report.step_summary}\n"
        f"- error: {truncate(report.error or report.state_message, 500).replace(chr(10), ' ')}\n"
        f"- champion: {report.champion}\n"
        + (f"- pipeline image: {report.pipeline_image}\n" if report.pipeline_image else "")
        + f"- mail: {delivery.status} ({delivery.detail})\n"
    )


# ------------------------------------------------------------------------------------------


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
    pipeline_image: str = "",
) -> FailureReport:
    """The report of ``flow_run`` ended in ``state``, every text scrubbed of ``secrets``.

    ``pipeline_image``: :func:`image_note` of a Docker-pool run.
    """
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
        pipeline_image=scrub(pipeline_image, secrets),
    )
