"""Helpers of the Docker work pool's tests: the stack's Prefect API, run logs, mail, waits,
and a client of the profile's TLS fleet."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

ROOT = Path(__file__).resolve().parents[2]


def head() -> str:
    """The checkout's commit (the pipeline image of the module is built from it)."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


@contextmanager
def api(stack: Any) -> Iterator[None]:
    """Talk to the stack's Prefect server from the test process, with the profile's basic auth."""
    updates = {PREFECT_API_URL: stack.env["PREFECT_API_URL"]}
    if stack.prefect_auth:
        updates[PREFECT_API_AUTH_STRING] = stack.prefect_auth
    with temporary_settings(updates=updates):
        yield


def run_logs(stack: Any, run: FlowRun) -> str:
    """The run's log lines as the Prefect server stores them."""
    with api(stack), get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200)
    return "\n".join(entry.message for entry in logs)


def mails(stack: Any) -> list[EmailMessage]:
    """Every mail the profile's mail catcher received (its maildir under the home)."""
    box = stack.home / "mail"
    files = sorted([*box.glob("new/*"), *box.glob("cur/*")])
    return [BytesParser(policy=policy.default).parsebytes(f.read_bytes()) for f in files]


def wait_for_mail(
    stack: Any, match: Callable[[str], bool], timeout: float, context: str = ""
) -> EmailMessage:
    """The first mail whose subject ``match``es, waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in mails(stack) if match(str(m["Subject"]).strip())]
        if found:
            return found[0]
        time.sleep(2)
    subjects = [m["Subject"] for m in mails(stack)]
    raise AssertionError(f"no such mail in {timeout:.0f} s: {subjects}\n{context[-3000:]}")


def wait_for_run(stack: Any, run_id: UUID, timeout: float) -> FlowRun:
    """The flow run once its state is final, or as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with api(stack), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state.is_final() or time.monotonic() > deadline:
                return run
            time.sleep(3)


def mail_text(mail: EmailMessage) -> str:
    """Subject and plain-text body of a mail."""
    body = mail.get_body(preferencelist=("plain",))
    return f"{mail['Subject']}\n{body.get_content() if body else ''}"


def wait_for_task(stack: Any, run_id: UUID, name: str, timeout: float) -> FlowRun:
    """The flow run once a task run called ``name`` started in it (or the run ended)."""
    deadline = time.monotonic() + timeout
    with api(stack), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
            run = client.read_flow_run(run_id)
            if run.state.is_final() or any(t.name.startswith(f"{name}-") for t in tasks):
                return run
            time.sleep(1)
    raise AssertionError(f"no task {name} in flow run {run_id} within {timeout:.0f} s")


def fleet_tls(stack: Any) -> ssl.SSLContext:
    """What a client of the profile's fleet trusts: the profile's own CA."""
    return ssl.create_default_context(cafile=str(stack.home / "secrets" / "tls" / "ca.pem"))


def status_without_key(port: int, context: ssl.SSLContext, record: dict[str, Any]) -> int:
    """The HTTP status of a ``/predict`` over TLS that sends no API key."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request("POST", "/predict", json.dumps(record), {"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()
