"""The drift check: its steps as plain functions, their one wiring, the flow's tasks and parameters.

No Prefect server and no MLflow: the wiring runs with stand-in steps; the whole check against
real servers is in tests/integration/test_drift_email.py.
"""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from flows import drift_check as flow_module
from flows.alerting.smtp import SmtpSettings
from flows.core.settings import Settings
from flows.monitoring import report_mail, steps
from flows.monitoring.analysis import DriftAnalysis
from flows.monitoring.check import DriftSteps, run_drift_check
from flows.monitoring.config import DriftCheckConfig, RetrainPolicy
from flows.monitoring.reference import Reference
from flows.monitoring.report_mail import send_queued_mail, send_report
from flows.monitoring.retraining import RecentRun, RetrainAction, RetrainDecision
from flows.monitoring.sampling import Sampling
from flows.monitoring.steps import (
    CurrentWindow,
    RetrainPlan,
    plan_retraining,
    read_window,
    start_retraining,
)
from flows.monitoring.verdict import DriftPolicy, DriftVerdict, Outcome
from flows.monitoring.window import Window
from tests.support.drift import DEP, result, write_log

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SMTP_OFF = SmtpSettings(host=None)


def analysis(outcome: Outcome = Outcome.DRIFT) -> DriftAnalysis:
    wanted = outcome == Outcome.DRIFT
    return DriftAnalysis(
        verdict=DriftVerdict(outcome=outcome, retrain_wanted=wanted, reasons=["r"]),
        sampling=Sampling(
            reference_rows=10, window_rows=10, reference_sampled=10, window_sampled=10, seed=0
        ),
    )


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path / "home"))
    return Settings()


def test_queued_mail_is_skipped_without_smtp_and_never_raises(tmp_path, monkeypatch):
    assert send_queued_mail(SMTP_OFF, tmp_path) == []
    smtp = SmtpSettings(host="127.0.0.1", recipients=["ops@example.test"], password_secret="x")

    def broken(_):
        raise RuntimeError("no secret block")

    monkeypatch.setattr(report_mail.mail, "resolve_password", broken)
    assert send_queued_mail(smtp, tmp_path) == ["outbox: RuntimeError"]


def test_read_window_keeps_the_champions_rows(settings, spec):
    from data_contracts.synthetic import GeneratorConfig, generate

    frame = generate(GeneratorConfig(rows=40, seed=3))
    frame["score"] = 0.2
    frame["timestamp"] = [NOW - timedelta(minutes=i + 1) for i in range(40)]
    write_log(frame.iloc[:30], settings.inference_log_root, spec, "v2")
    write_log(frame.iloc[30:], settings.inference_log_root, spec, "v3")
    config = DriftCheckConfig(window=Window(hours=24))
    window = read_window(settings, config, spec, "2", NOW)
    assert window.rows == window.sample.num_rows == 30 and window.id.startswith("v2-")
    assert window.end == NOW - timedelta(minutes=1)
    assert window.scored is None  # no feedback yet: the id column is not even read
    every = read_window(
        settings, config.model_copy(update={"only_champion_rows": False}), spec, "2", NOW
    )
    assert every.rows == 40
    # a window larger than the policy's sample: the size is the window's, the sample exact
    small = config.model_copy(
        update={"policy": config.policy.model_copy(update={"sample_rows": 25})}
    )
    sampled = read_window(
        settings, small.model_copy(update={"only_champion_rows": False}), spec, "2", NOW
    )
    assert sampled.rows == 40 and sampled.sample.num_rows == 25
    assert sampled.id == every.id  # the identity is the window's, not the sample's


def test_plan_asks_prefect_only_when_a_trigger_is_possible(settings):
    asked: list[str] = []

    def recent(deployment: str) -> list[RecentRun]:
        asked.append(deployment)
        return []

    config = DriftCheckConfig()
    calm = plan_retraining(settings, config, analysis(Outcome.NO_DRIFT), "w", NOW, recent)
    assert calm.decision.action == RetrainAction.NOT_NEEDED and asked == []
    off = config.model_copy(update={"retraining": RetrainPolicy(trigger=False)})
    assert plan_retraining(settings, off, analysis(), "w", NOW, recent).decision.action == (
        RetrainAction.DISABLED
    )
    assert asked == []
    none = plan_retraining(settings, config, analysis(), "w", NOW, recent)
    assert asked == [DEP] and none.decision.action == RetrainAction.NO_LABELLED_DATA
    assert none.data_path is None


def test_cooldown_comes_from_the_retrain_policy(settings):
    ended = RecentRun(
        id="r1", name="r", state="COMPLETED", end_time=NOW - timedelta(hours=2),
        tags=("drift-triggered",),
    )  # fmt: skip
    short = DriftCheckConfig(retraining=RetrainPolicy(cooldown_hours=1))
    long = DriftCheckConfig(retraining=RetrainPolicy(cooldown_hours=3))
    action = {
        hours: plan_retraining(settings, cfg, analysis(), "w", NOW, lambda _: [ended]).decision
        for hours, cfg in ((1, short), (3, long))
    }
    assert action[3].action == RetrainAction.COOLDOWN
    assert action[1].action == RetrainAction.NO_LABELLED_DATA


def test_a_failed_trigger_is_recorded_not_raised(tmp_path):
    planned = RetrainPlan(
        RetrainDecision(action=RetrainAction.TRIGGERED, reason="drift", deployment=DEP),
        tmp_path / "train.parquet",
    )

    def down(decision, path):
        raise LookupError("deployment is not deployed")

    failed = start_retraining(planned, tmp_path, down)
    assert failed.decision.action == RetrainAction.FAILED
    assert failed.problems == ["retraining trigger: LookupError: deployment is not deployed"]
    no_data = start_retraining(replace(planned, data_path=None), tmp_path, down)
    assert no_data.problems[0].startswith("retraining trigger: FileNotFoundError")


def test_no_mail_for_an_all_clear_unless_asked(tmp_path):
    on = SmtpSettings(host="127.0.0.1", port=1, recipients=["ops@example.test"])
    assert send_report(result(drifted=False, triggered=False), {}, on, tmp_path) is None
    assert send_report(result(), {}, SMTP_OFF, tmp_path) is None


def test_the_wiring_runs_every_step_in_order_and_reports_problems(settings, spec):
    calls: list[str] = []
    table = pa.table({"timestamp": pa.array([NOW], pa.timestamp("us", tz="UTC"))})

    def step(name, value):
        def run(*args, **kwargs):
            calls.append(name)
            if isinstance(value, Exception):
                raise value
            return value(*args) if callable(value) else value

        return run

    planned = RetrainPlan(
        RetrainDecision(action=RetrainAction.TRIGGERED, reason="drift", deployment=DEP),
        Path("/data/train.parquet"),
        ["labelled data: slow"],
    )
    steps = DriftSteps(
        send_queued_mail=step("mail-queue", ["outbox: queued one refused"]),
        fetch_reference=step("reference", Reference("fraud-detector", "3", "run-3", table)),
        read_window=step("window", CurrentWindow(table, 1, "v3-w", NOW, NOW)),
        analyse=step("analyse", analysis()),
        measure_performance=step("performance", OSError("feedback folder unreadable")),
        plan_retraining=step("plan", planned),
        start_retraining=step("trigger", lambda plan, *_: plan),
        read_history=step("history", TimeoutError("MLflow search timed out")),
        draw_charts=step("charts", []),
        write_reports=step("reports", {}),
        log_monitoring_run=step("mlflow", ConnectionError("MLflow is down")),
        record_dashboard=step("dashboard", PermissionError("workspace is read-only")),
        send_report=step("mail", None),
    )
    published = []
    res, delivery = run_drift_check(
        settings, DriftCheckConfig(), SMTP_OFF, spec=spec, now=NOW,
        publish=published.append, steps=steps,
    )  # fmt: skip
    assert calls == [
        "mail-queue", "reference", "window", "analyse", "performance", "plan", "trigger",
        "history", "charts", "reports", "mlflow", "dashboard", "mail",
    ]  # fmt: skip
    assert published == [res] and delivery is None
    assert res.performance is None  # a broken label feed: reported, the drift verdict stands
    assert res.problems == [
        "outbox: queued one refused",
        "realized performance: OSError: feedback folder unreadable",
        "labelled data: slow",
        "history of recent checks: TimeoutError: MLflow search timed out",
        "MLflow: ConnectionError: MLflow is down",
        "Evidently dashboard: PermissionError: workspace is read-only",
    ]
    assert res.window_id == "v3-w" and res.champion_version == "3"
    assert res.manual_command.endswith("--param data_path=/data/train.parquet --watch")


def test_the_decision_file_names_where_the_check_was_recorded(settings, spec, tmp_path):
    table = pa.table({"timestamp": pa.array([NOW], pa.timestamp("us", tz="UTC"))})
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps({"result": {"mlflow_run_id": None}, "verdict": {"x": 1}}))
    planned = RetrainPlan(
        RetrainDecision(action=RetrainAction.NOT_NEEDED, reason="calm", deployment=DEP)
    )

    def const(value):
        return lambda *args, **kwargs: value

    steps = DriftSteps(
        send_queued_mail=const([]),
        fetch_reference=const(Reference("fraud-detector", "3", "run-3", table)),
        read_window=const(CurrentWindow(table, 1, "v3-w", NOW, NOW)),
        analyse=const(analysis()),
        measure_performance=const(None),
        plan_retraining=const(planned),
        start_retraining=const(planned),
        read_history=const([]),
        draw_charts=const([]),
        write_reports=const({"decision": decision}),
        log_monitoring_run=const("run-77"),
        record_dashboard=const("http://127.0.0.1:8000/projects/p1"),
        send_report=const(None),
    )
    res, _ = run_drift_check(
        settings, DriftCheckConfig(), SMTP_OFF, spec=spec, now=NOW, steps=steps
    )
    written = json.loads(decision.read_text())
    assert written["result"]["mlflow_run_id"] == res.mlflow_run_id == "run-77"
    assert written["result"]["dashboard_url"] == "http://127.0.0.1:8000/projects/p1"
    assert written["verdict"] == {"x": 1} and res.problems == []  # the rest of the file stays


def test_flow_steps_are_tasks_retried_only_on_io():
    retried = {"load-reference", "read-window", "realized-performance", "decide-retraining",
               "trigger-retraining", "read-history", "log-monitoring-run"}  # fmt: skip
    names = set()
    for field in DriftSteps.__dataclass_fields__:
        task = getattr(flow_module.TASKS, field)
        assert task.name and task.fn.__module__ == "flows.drift_check", field
        assert (task.retries > 0) == (task.name in retried), task.name
        names.add(task.name)
    assert {"read-window", "analyse", "draw-charts", "write-reports", "send-report"} <= names


def test_flow_body_is_thin():
    source = inspect.getsource(flow_module.drift_check)
    body = ast.parse(source).body[0].body
    assert body[-1].end_lineno - body[0].lineno <= 60


def test_the_deployment_parameters_are_the_flow_defaults():
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    process, docker = [
        d for d in deployments if d["entrypoint"].endswith("drift_check.py:drift_check")
    ]
    params = flow_module.drift_check.validate_parameters(process["parameters"])
    assert params["window"] == Window(hours=24)
    assert params["policy"] == DriftPolicy()
    assert params["retraining"] == RetrainPolicy()
    # the Docker pool's drift check retrains on the Docker pool, otherwise the same
    in_docker = flow_module.drift_check.validate_parameters(docker["parameters"])
    assert in_docker["retraining"].deployment == "train-and-release/fraud-detector-docker"
    assert in_docker["policy"] == params["policy"] and in_docker["window"] == params["window"]
    rows = flow_module.drift_check.validate_parameters({"window": {"rows": 3000}})
    assert rows["window"] == Window(rows=3000)
    with pytest.raises(Exception, match="exactly one"):
        flow_module.drift_check.validate_parameters({"window": {"hours": 1, "rows": 5}})


def test_a_missing_model_or_alias_is_not_retried_but_an_outage_is():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
    from prefect.states import Failed

    missing = MlflowException("Registered Model with name=x not found", RESOURCE_DOES_NOT_EXIST)
    outage = MlflowException("API request failed", TEMPORARILY_UNAVAILABLE)
    retry = flow_module.retry_unless_missing
    assert retry(None, None, Failed(data=missing)) is False
    assert retry(None, None, Failed(data=outage)) is True
    assert retry(None, None, Failed(data=ConnectionError("reset"))) is True
    assert flow_module.TASKS.fetch_reference.retry_condition_fn is retry


def served_with_feedback(settings, spec, caught_every: int):
    """500 frauds among 5,000 served rows; the model catches one fraud in ``caught_every``."""
    import numpy as np
    import pandas as pd

    from data_contracts.synthetic import GeneratorConfig, generate

    frame = generate(GeneratorConfig(rows=5000, seed=4))
    fraud = np.arange(len(frame)) % 10 == 0
    caught = fraud & (np.arange(len(frame)) % (10 * caught_every) == 0)
    frame["score"] = np.where(caught, 0.9, 0.1)
    frame["timestamp"] = [NOW - timedelta(seconds=i + 1) for i in range(len(frame))]
    write_log(frame, settings.inference_log_root, spec, "3")
    settings.feedback_root.mkdir(parents=True)
    pd.DataFrame(
        {
            "transaction_id": frame["transaction_id"],
            "label": fraud.astype(int),
            "labelled_at": NOW - timedelta(minutes=1),
        }
    ).to_csv(settings.feedback_root / "chargebacks.csv", index=False)
    settings.labelled_root.mkdir(parents=True)
    frame.drop(columns=["score", "timestamp"]).to_parquet(settings.labelled_root / "b.parquet")


def test_a_recall_collapse_without_input_drift_triggers_retraining(settings, spec):
    served_with_feedback(settings, spec, caught_every=4)
    config = DriftCheckConfig(window=Window(hours=24))
    window = read_window(settings, config, spec, "3", NOW)
    perf = steps.measure_performance(settings, config, window, 0.8, NOW)
    assert perf.labelled == 5000 and perf.coverage == 1.0  # clear ids hashed with the bento's key
    assert perf.recall == pytest.approx(0.25) and perf.dropped
    plan = plan_retraining(
        settings, config, analysis(Outcome.NO_DRIFT), window.id, NOW, lambda _: [], perf
    )
    assert plan.decision.action == RetrainAction.TRIGGERED
    assert plan.decision.reason == "realized performance dropped"
    res = result(drifted=False, triggered=True).model_copy(update={"performance": perf})
    assert res.headline().startswith("REALIZED PERFORMANCE DROPPED: F1 0.400 vs holdout 0.800")
    from flows.monitoring.report_mail import drift_email
    from flows.monitoring.reports import mlflow_payload
    from flows.monitoring.results import decided_by

    assert decided_by(res) == "realized performance"
    mail = drift_email(res)
    assert "realized performance: decided" in mail.text and "recall 0.250" in mail.text
    assert mlflow_payload(res)["metrics"]["realized_recall"] == pytest.approx(0.25)
    off = config.model_copy(
        update={"feedback": config.feedback.model_copy(update={"trigger": False})}
    )
    calm = plan_retraining(settings, off, analysis(Outcome.NO_DRIFT), window.id, NOW, None, perf)
    assert calm.decision.action == RetrainAction.NOT_NEEDED


def test_a_model_still_catching_fraud_is_within_limits(settings, spec):
    served_with_feedback(settings, spec, caught_every=1)
    config = DriftCheckConfig(window=Window(hours=24))
    window = read_window(settings, config, spec, "3", NOW)
    perf = steps.measure_performance(settings, config, window, 0.8, NOW)
    assert perf.status == "within limits" and perf.f1 == 1.0
    plan = plan_retraining(
        settings, config, analysis(Outcome.NO_DRIFT), window.id, NOW, lambda _: [], perf
    )
    assert plan.decision.action == RetrainAction.NOT_NEEDED
