"""Failure alerts and the crashed-run rule on a real stack: server, workers, automations, SMTP.

A failed release and a failed drift check mail through their flow hooks; a release whose worker
is killed with SIGKILL is marked Crashed by the heartbeat rule, mailed by the failure-alert
deployment on its own worker, leaves the champion alone, and a rerun after ``fraud stack up``
completes. Persisted Prefect results are JSON. Heartbeats come every 30 s (Prefect's floor);
a run silent for 90 s counts as crashed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from flows.cli.automations import ALERT_RULE, CRASH_RULE
from flows.core.settings import Settings
from flows.registry import registry

# Failure mails, crash detection by heartbeat automations and result persistence are the Prefect
# server's events and automations and the flows' hooks: the same code on SQLite and PostgreSQL,
# so this module runs on the embedded stack only (make test-prod leaves it out).
pytestmark = [pytest.mark.integration, pytest.mark.embedded_only]
RELEASE = "train-and-release/fraud-detector"
DRIFT = "drift-check/fraud-detector"
SILENCE = 90  # three missed 30 s heartbeats: a loaded CI machine must not crash healthy runs


@pytest.fixture(scope="module")
def stack_extra_env() -> dict[str, str]:
    return {"FRAUD_HEARTBEAT_SILENCE_SECONDS": str(SILENCE), "PREFECT_WORKER_QUERY_SECONDS": "3"}


@contextmanager
def api(stack) -> Iterator[None]:
    """Talk to the stack's Prefect server from the test process."""
    updates = {PREFECT_API_URL: stack.env["PREFECT_API_URL"]}
    if stack.prefect_auth:  # the production profile's server requires its basic auth
        updates[PREFECT_API_AUTH_STRING] = stack.prefect_auth
    with temporary_settings(updates=updates):
        yield


def settings_of(stack) -> Settings:
    return Settings(home=stack.home, mlflow_tracking_uri=getattr(stack, "tracking_uri", None))


def generate(stack, path: Path, rows: int, seed: int) -> Path:
    subprocess.run(
        [sys.executable, "-m", "flows.cli", "generate-data", str(path), "--rows", str(rows),
         "--seed", str(seed), "--invalid-rows", "10", "--quiet"],
        check=True, env=stack.env,
    )  # fmt: skip
    return path


def mails(stack) -> list[EmailMessage]:
    """Every message the stack's mail catcher stored (Maildir)."""
    box = stack.home / "mail"
    files = sorted([*box.glob("new/*"), *box.glob("cur/*")])
    return [BytesParser(policy=policy.default).parsebytes(f.read_bytes()) for f in files]


def wait_for_mail(stack, match: Callable[[EmailMessage], bool], timeout: float) -> EmailMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in mails(stack) if match(m)]
        if found:
            return found[0]
        time.sleep(2)
    subjects = [m["Subject"] for m in mails(stack)]
    raise AssertionError(f"no matching mail within {timeout:.0f} s; mails: {subjects}")


def wait_for_run(stack, run_id: UUID, done: Callable[[FlowRun], bool], timeout: float) -> FlowRun:
    deadline = time.monotonic() + timeout
    with api(stack), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if done(run) or time.monotonic() > deadline:
                return run
            time.sleep(2)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def subject_of(message: EmailMessage) -> str:
    """The Subject as a mail client shows it: a subject that fits on one folded line is sent
    as ``Subject:`` CRLF SP ``text``, which Python's parser reads back with a leading space."""
    return str(message["Subject"]).strip()


def text_of(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()


@pytest.fixture(scope="module")
def failed_runs(stack) -> dict[str, FlowRun]:
    """A release on a CSV without the `amount` column and a drift check with no champion yet."""
    frame = pd.read_parquet(generate(stack, stack.home / "data" / "tx-fail.parquet", 2000, 3))
    csv = stack.home / "data" / "no-amount.csv"
    frame.drop(columns=["amount"]).to_csv(csv, index=False)
    with api(stack):
        started = {
            "release": run_deployment(RELEASE, parameters={"data_path": str(csv)}, timeout=0),
            "drift": run_deployment(DRIFT, timeout=0),
        }
    return {
        key: wait_for_run(stack, run.id, lambda r: r.state.is_final(), timeout=300)
        for key, run in started.items()
    }


def test_failed_release_mails_the_run_the_step_and_the_error(stack, failed_runs):
    run = failed_runs["release"]
    assert run.state.is_failed(), run.state
    mail = wait_for_mail(stack, lambda m: f"'{run.name}'" in m["Subject"], timeout=60)
    assert subject_of(mail).startswith(f"[fraud alert] train-and-release FAILED: run '{run.name}'")
    assert "release.enforce_contract(result, policy)" in mail["Subject"]
    assert "after write-quarantine" in mail["Subject"]
    body = text_of(mail)
    assert "column 'amount': missing from the data" in body
    assert str(run.id) in body and "train-and-release/fraud-detector" in body
    assert f"/runs/flow-run/{run.id}" in body
    assert "flows/training/release.py" in body  # where it was raised
    assert "Champion: untouched" in body
    html = mail.get_body(("html",)).get_content()
    assert "column &#39;amount&#39;: missing from the data" in html


def test_failed_drift_check_mails_too(stack, failed_runs):
    run = failed_runs["drift"]
    assert run.state.is_failed(), run.state
    mail = wait_for_mail(stack, lambda m: f"'{run.name}'" in m["Subject"], timeout=60)
    assert subject_of(mail).startswith(f"[fraud alert] drift-check FAILED: run '{run.name}'")
    body = text_of(mail)
    assert "Registered Model with name=fraud-detector not found" in body
    assert "drift-check/fraud-detector" in body and str(run.id) in body


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (read from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def worker_tree(pid_file: Path) -> list[int]:
    """The worker and every process it started (flow runs get a session of their own)."""
    pid = int(pid_file.read_text())
    return [pid, *descendants(pid)]


def freeze_inside_a_task(stack, run_id: UUID) -> list[int]:
    """SIGSTOP the worker and its flow run while a task runs and a heartbeat is on record.

    Returns the frozen processes (the worker's tree), ready to be killed.
    """
    pid_file = stack.home / "run" / "prefect-worker.pid"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with api(stack), get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
        assert not run.state.is_final(), f"the run ended before it could be killed: {run.state}"
        if any(t.state and t.state.is_running() for t in tasks):
            tree = worker_tree(pid_file)
            signal_all(tree, signal.SIGSTOP)
            if wait_until(lambda: heartbeats(stack, run_id) > 0, timeout=20):
                return tree
            signal_all(tree, signal.SIGCONT)  # no heartbeat yet: let it go on
        time.sleep(0.5)
    raise AssertionError(
        "no heartbeat of the running flow run: is PREFECT_FLOWS_HEARTBEAT_FREQUENCY set for "
        "the worker (fraud stack up)?"
    )


def heartbeats(stack, run_id: UUID) -> int:
    with api(stack), get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(since=datetime.now(UTC) - timedelta(hours=1)),
                event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
            ),
            limit=10,
        )
    return len(page.events)


def task_names(stack, run_id: UUID) -> set[str]:
    with api(stack), get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
    return {r.name.rsplit("-", 1)[0] for r in runs}


def test_killed_worker_run_is_crashed_mailed_and_the_champion_stays(stack, failed_runs):
    data = str(generate(stack, stack.home / "data" / "tx-20k.parquet", 20_000, 5))
    params = {"data_path": data, "build_image": False}
    with api(stack):
        first = run_deployment(RELEASE, parameters=params, timeout=600)
    assert first.state.is_completed(), first.state
    client = registry.configure(settings_of(stack))
    champion = client.get_model_version_by_alias("fraud-detector", "champion").version

    with api(stack):
        victim = run_deployment(RELEASE, parameters=params, timeout=0)
    tree = freeze_inside_a_task(stack, victim.id)
    try:
        assert "promote" not in task_names(stack, victim.id)
    finally:
        signal_all(tree, signal.SIGKILL)  # never leave a frozen process tree behind

    crashed = wait_for_run(stack, victim.id, lambda r: r.state.is_final(), SILENCE + 180)
    assert crashed.state.is_crashed(), crashed.state
    assert crashed.state.message.startswith(f"Unresponsive: no heartbeat for {SILENCE} s")

    mail = wait_for_mail(stack, lambda m: f"'{victim.name}'" in m["Subject"], timeout=180)
    assert subject_of(mail).startswith(
        f"[fraud alert] train-and-release CRASHED: run '{victim.name}'"
    )
    assert "(interrupted)" in mail["Subject"]
    body = text_of(mail)
    assert f"no heartbeat for {SILENCE} s" in body and str(victim.id) in body
    assert "Champion: untouched" in body
    assert client.get_model_version_by_alias("fraud-detector", "champion").version == champion
    assert "promote" not in task_names(stack, victim.id)

    up = stack.run("up", timeout=180)
    assert up.returncode == 0, up.stderr
    with api(stack):
        rerun = run_deployment(RELEASE, parameters=params, timeout=600)
    assert rerun.state.is_completed(), rerun.state
    # one run, one alert: neither a hook nor a second rule firing mailed it again
    assert sum(f"'{victim.name}'" in m["Subject"] for m in mails(stack)) == 1


def test_persisted_results_are_json_never_pickle(stack, failed_runs):
    storage = stack.home / "prefect" / "storage"
    files = [p for p in storage.rglob("*") if p.is_file()]
    assert files, f"no persisted results under {storage}"
    payloads = []
    for path in files:
        raw = path.read_bytes()
        assert not raw.startswith(b"\x80"), f"{path} is a pickle"
        doc = json.loads(raw)  # raises on anything but JSON
        if isinstance(doc, dict) and "metadata" in doc:
            assert doc["metadata"]["serializer"]["type"] == "json", path
        payloads.append(doc)
    # the failed runs' exceptions, stored as JSON by the flows' serializer
    assert any(isinstance(d, dict) and d.get("__exc_type__") for d in payloads), payloads


def test_automations_are_kept_once_by_name_when_deployed_again(stack):
    again = subprocess.run(
        [sys.executable, "-m", "flows.cli", "automations"],
        env=stack.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"silent for {SILENCE} s = Crashed" in again.stdout
    with api(stack), get_client(sync_client=True) as client:
        crash = client.read_automations_by_name(CRASH_RULE)
        alert = client.read_automations_by_name(ALERT_RULE)
    assert len(crash) == 1 and len(alert) == 1
    assert crash[0].trigger.within == timedelta(seconds=SILENCE)
    assert crash[0].enabled and alert[0].enabled
