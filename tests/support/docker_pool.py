"""Helpers of the Docker work pool's tests: the stack's Prefect API, run logs, mail, waits."""

from __future__ import annotations

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
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
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
