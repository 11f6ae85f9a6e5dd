"""Failure alerts: what the mail says, what it never says, and the crashed-run automations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import policy
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun, TaskRun, WorkPool
from prefect.serializers import JSONSerializer
from prefect.server.events.schemas.automations import AutomationCore as ServerAutomation
from prefect.server.events.schemas.events import RelatedResource, Resource
from prefect.states import Completed, Crashed, Failed, Running
from pydantic import ValidationError

from flows import failure_alert
from flows.alerting import alerts
from flows.alerting.failure import (
    Step,
    alert_email,
    build_report,
    champion_note,
    describe_steps,
    image_note,
    step_name,
    summarize_task_runs,
    ui_base_url,
)
from flows.alerting.redaction import redact_parameters, scrub, truncate
from flows.alerting.smtp import SmtpSettings, compose_message
from flows.cli import automations
from flows.cli.automations import HeartbeatSettings, alert_rule, crash_message, crash_rule
from flows.drift_check import drift_check
from flows.train_and_release import train_and_release
from tests.support.drift import result

PASSWORD = "s3cr3t-smtp-pa55"
DB_URL = "postgresql+psycopg2://mlflow:dbpass@db.internal:5432/mlflow"
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def task_run(name: str, state, minute: int) -> TaskRun:
    """A task run as the Prefect API returns it."""
    return TaskRun(
        id=uuid4(),
        name=name,
        task_key=name.rsplit("-", 1)[0],
        dynamic_key="0",
        flow_run_id=uuid4(),
        state=state,
        start_time=T0 + timedelta(minutes=minute),
    )


def flow_run(**parameters) -> FlowRun:
    return FlowRun(id=uuid4(), name="brisk-heron", flow_id=uuid4(), parameters=parameters)


def contract_violation() -> ValueError:
    """An exception raised in project code, with its traceback (as a hook receives it)."""

    def enforce() -> None:
        raise ValueError(f"data contract violated: column 'amount' missing; store {DB_URL}")

    try:
        enforce()
    except ValueError as err:
        return err
    raise AssertionError("unreachable")


def test_scrub_removes_database_urls_credentials_and_secrets():
    text = (
        f"cannot reach {DB_URL} nor sqlite:////home/u/.fraud/mlflow/mlflow.db; "
        f"https://user:token123@mlflow.example/api ok; password {PASSWORD}"
    )
    out = scrub(text, [PASSWORD])
    assert "dbpass" not in out and "db.internal" not in out and "mlflow.db" not in out
    assert "token123" not in out and "https://***@mlflow.example/api" in out
    assert PASSWORD not in out and out.count("<database URL removed>") == 2


def test_parameters_lose_secret_keys_and_urls_keep_the_rest():
    params = {
        "data_path": "/data/tx.parquet",
        "smtp_password": PASSWORD,
        "policy": {"f1_floor": 0.8, "api_token": "abc"},
        "tracking_uri": "http://mlflow:5000",
        "notes": [f"from {DB_URL}"],
    }
    shown = redact_parameters(params, [PASSWORD])
    assert shown["data_path"] == "/data/tx.parquet"
    assert shown["smtp_password"] == "***" and shown["tracking_uri"] == "***"
    assert shown["policy"] == {"f1_floor": 0.8, "api_token": "***"}
    assert shown["notes"] == ["from <database URL removed>"]


def test_truncate_keeps_head_and_tail():
    text = "HEAD" + "x" * 10_000 + "TAIL"
    cut = truncate(text, 1000)
    assert cut.startswith("HEAD") and cut.endswith("TAIL") and len(cut) < 1100
    assert "characters cut" in cut
    assert truncate("short", 1000) == "short"


def test_step_names_and_the_failed_step():
    assert step_name("promote-3f2") == "promote"
    assert step_name("export-onnx-and-parity-a0b") == "export-onnx-and-parity"
    runs = [
        task_run("load-data-1a2", Completed(), 0),
        task_run("validate-contract-3b4", Completed(), 1),
        task_run("train-5c6", Failed(message="MemoryError in fit"), 2),
    ]
    steps, latest, last = summarize_task_runs(runs)
    assert steps == [Step(name="train", state="Failed", message="MemoryError in fit")]
    assert latest["load-data"] == "Completed" and last == "validate-contract"
    assert describe_steps(steps, last, None) == "train"


def test_interrupted_and_flow_body_steps():
    running = [task_run("load-data-1a2", Completed(), 0), task_run("train-5c6", Running(), 1)]
    steps, _, last = summarize_task_runs(running)
    assert describe_steps(steps, last, None) == "train (interrupted)"
    done = [task_run("write-quarantine-9d9", Completed(), 0)]
    steps, _, last = summarize_task_runs(done)
    body = describe_steps(steps, last, "release.enforce_contract(result, policy)")
    assert body == "`release.enforce_contract(result, policy)` after write-quarantine"
    assert describe_steps([], None, None) == "flow run before any task"


def test_champion_note_follows_the_promote_step():
    assert champion_note("train-and-release", {"train": "Failed"}).startswith("untouched")
    assert champion_note("train-and-release", {"promote": "Completed"}).startswith("MOVED")
    assert champion_note("train-and-release", {"promote": "Failed"}).startswith("not moved")
    assert champion_note("train-and-release", {"promote": "Running"}).startswith("UNKNOWN")
    assert champion_note("drift-check", {}).startswith("untouched")


def test_ui_url_from_settings_or_api_url():
    assert ui_base_url("http://ui:4200/", None) == "http://ui:4200"
    assert ui_base_url(None, "http://127.0.0.1:4200/api") == "http://127.0.0.1:4200"
    assert ui_base_url(None, None) is None


def test_alert_names_run_step_error_and_never_the_password_or_db_url():
    exc = contract_violation()
    run = flow_run(
        data_path="/data/<broken>.csv", smtp_password=PASSWORD, store=DB_URL, build_image=False
    )
    state = Failed(message=f"Flow run encountered an exception: {exc} (login {PASSWORD})")
    report = build_report(
        run,
        "train-and-release",
        state,
        [task_run("write-quarantine-1a1", Completed(), 0)],
        deployment="train-and-release/fraud-detector",
        secrets=[PASSWORD],
        exc=exc,
        ui_url="http://127.0.0.1:4200",
    )
    assert report.raised_at and "tests/unit/test_failure_alerts.py" in report.raised_at
    assert "enforce" in report.raised_at
    smtp = SmtpSettings(
        host="127.0.0.1", user="monitor", password=PASSWORD, recipients=["ops@example.test"]
    )
    content = alert_email(report)
    assert content.subject == (
        "[fraud alert] train-and-release FAILED: run 'brisk-heron' at `enforce()` after "
        "write-quarantine"
    )
    message = compose_message(content, smtp)
    raw = message.as_bytes(policy=policy.SMTP).decode()
    assert PASSWORD not in raw and "dbpass" not in raw and "db.internal" not in raw
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for body in (text, html):
        assert "brisk-heron" in body and str(run.id) in body
        assert "train-and-release/fraud-detector" in body
        assert "data contract violated: column" in body
        assert f"http://127.0.0.1:4200/runs/flow-run/{run.id}" in body
        assert "untouched" in body
    assert "ValueError: data contract violated" in text
    assert "&lt;broken&gt;.csv" in html and "<broken>" not in html
    assert "smtp_password = ***" in text


def test_crashed_by_the_rule_reads_as_interrupted_with_the_rule_message():
    settings = HeartbeatSettings(heartbeat_seconds=30, heartbeat_silence_seconds=60)
    state = Crashed(message=crash_message(settings))
    report = build_report(
        flow_run(),
        "train-and-release",
        state,
        [task_run("split-1a1", Completed(), 0), task_run("train-2b2", Running(), 1)],
    )
    content = alert_email(report)
    assert "CRASHED: run 'brisk-heron' at train (interrupted)" in content.subject
    assert "no heartbeat for 60 s" in content.text and report.raised_at is None


class PoolClient:
    """What :func:`alerts.pipeline_image_of` reads: one work pool."""

    def __init__(self, pool_type: str, image: str, env: dict[str, str]) -> None:
        props = {"image": {"default": image}, "env": {"default": env}, "command": {}}
        self.pool = WorkPool(
            name="fraud-docker",
            type=pool_type,
            base_job_template={"job_configuration": {}, "variables": {"properties": props}},
        )

    def read_work_pool(self, name: str) -> WorkPool:
        assert name == self.pool.name
        return self.pool


def test_a_missing_pipeline_image_is_named_with_the_commit_the_pool_expects():
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    client = PoolClient(
        "docker", f"fraud-pipeline:{commit[:12]}", {"FRAUD_EXPECTED_COMMIT": commit}
    )
    run = flow_run().model_copy(
        update={"work_pool_name": "fraud-docker", "job_variables": {"image": "fraud-pipeline:gone"}}
    )
    image, expected = alerts.pipeline_image_of(client, run, None)
    assert (image, expected) == ("fraud-pipeline:gone", commit)  # the run's variable wins
    # the deployment's image wins over the pool's default, the pool's env is the one with it
    deployment = type("D", (), {"job_variables": {"image": "fraud-pipeline:dep", "env": {}}})()
    plain = run.model_copy(update={"job_variables": {}})
    assert alerts.pipeline_image_of(client, plain, deployment) == ("fraud-pipeline:dep", commit)
    assert alerts.pipeline_image_of(PoolClient("process", "", {}), run, None) == (None, None)

    message = (
        "Failed to submit flow run to infrastructure: ImageNotFound: 404 Client Error for "
        'http+docker://localhost/v1.47/containers/create: Not Found ("No such image: '
        'fraud-pipeline:gone")'
    )
    note = image_note(message, image, expected)
    assert "fraud-pipeline:gone is missing" in note and commit in note
    report = build_report(
        run, "train-and-release", Crashed(message=message), [], pipeline_image=note
    )
    content = alert_email(report)
    for body in (content.text, content.html):
        assert "fraud-pipeline:gone is missing" in body and commit in body
    assert "CRASHED: run 'brisk-heron' at flow run before any task" in content.subject
    running = image_note(
        "Flow run infrastructure exited with non-zero status code 137.", image, None
    )
    assert running == "fraud-pipeline:gone; the work pool expects the image of an unrecorded commit"
    assert image_note(message, None, commit) == ""


def test_heartbeat_settings_refuse_a_silence_shorter_than_the_interval():
    with pytest.raises(ValidationError, match="heartbeat_silence_seconds"):
        HeartbeatSettings(heartbeat_seconds=30, heartbeat_silence_seconds=30)
    with pytest.raises(ValidationError, match="heartbeat_seconds"):
        HeartbeatSettings(heartbeat_seconds=10, heartbeat_silence_seconds=60)


def flow_run_resource(message: str = "", name: str = "Running") -> Resource:
    return Resource(
        {
            "prefect.resource.id": f"prefect.flow-run.{uuid4()}",
            "prefect.state-message": message,
            "prefect.state-name": name,
        }
    )


def test_crash_rule_as_the_server_reads_it():
    settings = HeartbeatSettings(heartbeat_seconds=30, heartbeat_silence_seconds=75)
    server = ServerAutomation.model_validate(crash_rule(settings).model_dump(mode="json"))
    trigger = server.trigger
    assert trigger.posture == "Proactive" and trigger.within == timedelta(seconds=75)
    assert trigger.starts_after("prefect.flow-run.heartbeat")
    for event in ("heartbeat", "Completed", "Failed", "Blocked", "Unchanged", "Cancelled"):
        assert trigger.expects(f"prefect.flow-run.{event}")
    run = flow_run_resource()
    flow = RelatedResource(
        {
            "prefect.resource.id": f"prefect.flow.{uuid4()}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": "train-and-release",
        }
    )
    other = RelatedResource({**flow.root, "prefect.resource.name": "failure-alert"})
    assert trigger.covers_resources(run, [flow])
    assert not trigger.covers_resources(run, [other])
    (action,) = server.actions
    assert action.state == "CRASHED" and action.message.startswith(automations.SILENT_PREFIX)


def test_alert_rule_takes_watched_runs_crashed_where_no_hook_ran():
    settings = HeartbeatSettings()
    deployment_id = uuid4()
    server = ServerAutomation.model_validate(alert_rule(deployment_id).model_dump(mode="json"))
    trigger = server.trigger
    assert trigger.expects("prefect.flow-run.Crashed")
    assert not trigger.expects("prefect.flow-run.Failed")
    flow = RelatedResource(
        {
            "prefect.resource.id": f"prefect.flow.{uuid4()}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": "drift-check",
        }
    )
    other = RelatedResource({**flow.root, "prefect.resource.name": "failure-alert"})
    killed = "Flow run infrastructure exited with non-zero status code 137. Process was killed."
    no_image = (
        "Failed to submit flow run to infrastructure: ImageNotFound: 404 Client Error: "
        "No such image: fraud-pipeline:0123456789ab"
    )
    for message in (crash_message(settings), killed, no_image):
        run = flow_run_resource(message, "Crashed")
        assert trigger.covers_resources(run, [flow]), message
        assert not trigger.covers_resources(run, [other]), message
    # a run its hook already reported (the process runner's own message) is not taken again
    hooked = "Process exited with status code: -9. This indicates that the process exited"
    assert not trigger.covers_resources(flow_run_resource(hooked, "Crashed"), [flow])
    assert not trigger.covers_resources(flow_run_resource("", "Crashed"), [flow])
    (action,) = server.actions
    assert action.deployment_id == deployment_id
    assert action.parameters == {"flow_run_id": "{{ event.resource.id }}"}


def test_flows_persist_json_and_alert_on_failure_and_crash():
    for flow in (train_and_release, drift_check):
        assert isinstance(flow.result_serializer, JSONSerializer) or (
            flow.result_serializer == "json"
        )
        assert alerts.alert_on_failure in flow.on_failure_hooks
        assert alerts.alert_on_failure in flow.on_crashed_hooks
    assert failure_alert.failure_alert.persist_result is True
    assert failure_alert.failure_alert.result_serializer in ("json", JSONSerializer())
    # what the drift check returns round-trips through the JSON serializer
    checked = result()
    assert JSONSerializer().loads(JSONSerializer().dumps(checked)) == checked
