"""The drift email against a real SMTP server (aiosmtpd on 127.0.0.1), and a whole drift check.

The whole check runs against a real MLflow store (SQLite in a temporary home), a real inference
log and a real SMTP server; only the Prefect API calls (recent runs, run_deployment) are passed
in as functions, because the Prefect server + worker loop is tested in the deployment scenario.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from data_contracts.spec import default_spec
from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.alerting.outbox import deliver, flush_outbox
from flows.alerting.smtp import SmtpSettings, compose_message, resolve_password
from flows.core.http import free_port
from flows.core.settings import Settings
from flows.monitoring.charts import distribution, render_distribution
from flows.monitoring.check import run_drift_check
from flows.monitoring.config import DriftCheckConfig
from flows.monitoring.report_mail import drift_email, report_message
from flows.monitoring.results import decided_by
from flows.monitoring.retraining import RecentRun, RetrainAction, RetrainDecision
from flows.monitoring.verdict import DriftPolicy, Outcome
from flows.monitoring.window import Window
from tests.support.drift import Inbox, register_reference_champion, result, write_log

pytestmark = pytest.mark.integration
SECRET = "pa55-w0rd-never-logged"


def _authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == SECRET
    return AuthResult(success=ok)


def start_server(port: int, inbox: Inbox, auth: bool = False) -> Controller:
    extra = {"authenticator": _authenticate, "auth_require_tls": False} if auth else {}
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **extra)
    controller.start()
    return controller


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Inbox]]:
    port, inbox = free_port(), Inbox()
    controller = start_server(port, inbox)
    yield port, inbox
    controller.stop()


def _cids(message) -> tuple[set[str], set[str]]:
    """(cid: references in the HTML, Content-IDs of the related image parts)."""
    html = message.get_body(("html",)).get_content()
    images = [p for p in message.walk() if p.get_content_maintype() == "image"]
    ids = {str(p["Content-ID"]).strip().strip("<>") for p in images}
    return set(re.findall(r"src='cid:([^']+)'", html)), ids


def test_drift_email_arrives_with_inline_charts_and_the_report_compressed(tmp_path, smtp_server):
    port, inbox = smtp_server
    report = tmp_path / "drift_report.html"
    report.write_text("<html><body>Evidently data drift report</body></html>")
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="monitor@example.test",
                        recipients=["ops@example.test", "risk@example.test"])  # fmt: skip
    checked = result()
    rng = np.random.default_rng(0)
    ref, cur = pd.Series(rng.lognormal(4, 1, 3000)), pd.Series(rng.lognormal(4.6, 1, 2000))
    charts = [render_distribution(distribution("amount", "numeric", ref, cur), checked.columns[0])]
    msg = report_message(checked, charts, report, smtp)
    assert deliver(msg, smtp, tmp_path / "outbox", None).status == "sent"
    (envelope,) = inbox.envelopes
    assert envelope.mail_from == "monitor@example.test"
    assert envelope.rcpt_tos == ["ops@example.test", "risk@example.test"]
    (received,) = inbox.messages()
    assert received["Subject"].startswith("[fraud-detector v3] DRIFT: 2/3 features drifted")
    body = received.get_body(("html",)).get_content()
    assert "merchant_category" in body and "0.3953" in body and "brisk-heron" in body
    referenced, ids = _cids(received)
    assert referenced == ids and len(ids) == 1
    (image,) = [p for p in received.walk() if p.get_content_maintype() == "image"]
    assert image.get_content() == charts[0].png  # the PNG arrives byte for byte
    (attachment,) = list(received.iter_attachments())
    assert attachment.get_filename() == "drift_report.html.gz"
    assert b"Evidently data drift report" in gzip.decompress(attachment.get_content())
    assert "Decided by: input drift and score drift" in received.get_body(("plain",)).get_content()
    assert not (tmp_path / "outbox").exists()


def test_login_uses_the_password_and_never_logs_it(tmp_path, caplog):
    port, inbox = free_port(), Inbox()
    controller = start_server(port, inbox, auth=True)
    try:
        smtp = SmtpSettings(host="127.0.0.1", port=port, user="monitor", password=SECRET,
                            recipients=["ops@example.test"])  # fmt: skip
        with caplog.at_level(logging.DEBUG):
            delivery = deliver(compose_message(drift_email(result()), smtp), smtp,
                               tmp_path / "outbox", SECRET)  # fmt: skip
            once = smtp.model_copy(update={"retries": 1, "timeout": 3.0})
            wrong = deliver(compose_message(drift_email(result()), once), once,
                            tmp_path / "outbox", "wrong")  # fmt: skip
    finally:
        controller.stop()
    assert delivery.status == "sent" and len(inbox.envelopes) == 1
    assert wrong.status == "queued"  # authentication refused: kept, not lost
    assert SECRET not in caplog.text and SECRET not in delivery.model_dump_json()


def test_login_password_from_a_prefect_secret_block(tmp_path, caplog):
    """The password read from a Secret block on a real Prefect server logs in; a block name the
    server does not hold is an error naming the setting and the block."""
    from prefect.blocks.system import Secret
    from prefect.testing.utilities import prefect_test_harness

    port, inbox = free_port(), Inbox()
    controller = start_server(port, inbox, auth=True)
    smtp = SmtpSettings(host="127.0.0.1", port=port, user="monitor", password_secret="smtp-login",
                        recipients=["ops@example.test"])  # fmt: skip
    try:
        with prefect_test_harness(server_startup_timeout=60), caplog.at_level(logging.DEBUG):
            Secret(value=SECRET).save("smtp-login")
            password = resolve_password(smtp)
            delivery = deliver(compose_message(drift_email(result()), smtp), smtp,
                               tmp_path / "outbox", password)  # fmt: skip
            missing = smtp.model_copy(update={"password_secret": "no-such-block"})
            with pytest.raises(ValueError, match=r"FRAUD_SMTP_PASSWORD_SECRET.*'no-such-block'"):
                resolve_password(missing)
    finally:
        controller.stop()
    assert password == SECRET  # the login the server accepted (a wrong one is refused, above)
    assert delivery.status == "sent" and len(inbox.envelopes) == 1
    assert SECRET not in caplog.text and SECRET not in delivery.model_dump_json()


def test_outbox_is_delivered_by_the_next_run_after_the_server_was_down(tmp_path):
    port, inbox = free_port(), Inbox()
    outbox = tmp_path / "outbox"
    smtp = SmtpSettings(host="127.0.0.1", port=port, recipients=["ops@example.test"],
                        retries=2, backoff_seconds=0.01, timeout=2)  # fmt: skip
    first = deliver(compose_message(drift_email(result()), smtp), smtp, outbox, None)
    assert first.status == "queued" and inbox.envelopes == []
    controller = start_server(port, inbox)  # the server is back
    try:
        sent = flush_outbox(smtp, outbox, None)
    finally:
        controller.stop()
    assert [d.status for d in sent] == ["sent"]
    (received,) = inbox.messages()
    assert received["Subject"] == first.subject
    assert inbox.envelopes[0].rcpt_tos == ["ops@example.test"]
    assert list(outbox.glob("*.eml")) == [] and len(list((outbox / "sent").glob("*.eml"))) == 1


# ---------------------------------------------------------------------------------------------
# A whole drift check: real MLflow store, inference log, SMTP server


def _score(frame: pd.DataFrame) -> np.ndarray:
    z = 0.9 * (np.log1p(frame["amount"].to_numpy(float)) - 5) - 2
    return 1 / (1 + np.exp(-z))


def test_whole_drift_check(tmp_path, monkeypatch, smtp_server):
    port, inbox = smtp_server
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings()
    reference = generate(GeneratorConfig(rows=6000, seed=31))
    reference["score"] = _score(reference)
    version = register_reference_champion(settings, reference)

    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    knobs = DriftKnobs(amount_scale=1.8, merchant_shift=0.5)
    window = generate(GeneratorConfig(rows=4000, seed=32, drift=knobs))
    window["score"] = _score(window)
    window["timestamp"] = [now - timedelta(seconds=10 * (i + 1)) for i in range(len(window))]
    write_log(window, settings.inference_log_root, default_spec(), f"v{version}")
    settings.labelled_root.mkdir(parents=True)
    generate(GeneratorConfig(rows=3000, seed=33)).to_parquet(settings.labelled_root / "b1.parquet")

    smtp = SmtpSettings(host="127.0.0.1", port=port, recipients=["ops@example.test"])
    config = DriftCheckConfig(window=Window(hours=24), policy=DriftPolicy(min_window_rows=1000))
    triggered: list[tuple[RetrainDecision, Path]] = []

    def fake_trigger(decision: RetrainDecision, data_path: Path) -> RetrainDecision:
        triggered.append((decision, data_path))
        return decision.model_copy(update={"flow_run_id": "run-1", "flow_run_name": "quick-lynx",
                                           "data_path": str(data_path)})  # fmt: skip

    published = []
    res, delivery = run_drift_check(settings, config, smtp, now=now, publish=published.append,
                                    recent_runs=lambda _: [], trigger=fake_trigger)  # fmt: skip
    assert res.verdict.outcome == Outcome.DRIFT and res.champion_version == version
    assert {"amount", "merchant_category", "score"} <= {c.column for c in res.drifted}
    assert res.retrain.action == RetrainAction.TRIGGERED and res.retrain.flow_run_id == "run-1"
    (decision, data_path) = triggered[0]
    assert (
        decision.idempotency_key == f"drift-retrain:{config.retraining.deployment}:{res.window_id}"
    )
    assert len(pd.read_parquet(data_path)) == 3000
    assert Path(res.report_html).is_file() and published == [res]
    assert res.problems == []
    assert delivery is not None and delivery.status == "sent"
    (received,) = inbox.messages()
    assert "DRIFT" in received["Subject"] and f"v{version}" in received["Subject"]
    # lean: charts inline, the report linked; its gzip copy only within the 1 MB limit
    assert len(inbox.envelopes[0].original_content) <= smtp.max_message_bytes
    names = [a.get_filename() for a in received.iter_attachments()]
    assert names in ([], ["drift_report.html.gz"])
    referenced, ids = _cids(received)
    assert referenced == ids and len(ids) >= 3  # history, top drifted columns, score
    text = received.get_body(("plain",)).get_content()
    assert "score drift" in decided_by(res) and f"Decided by: {decided_by(res)}." in text
    assert res.report_html in text
    assert f"#/runs/{res.mlflow_run_id}" in text and "amount, reference vs window" in text
    assert "not attached" in text or names

    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(res.mlflow_run_id)
    assert run.data.tags["champion_version"] == version and run.data.tags["outcome"] == "drift"
    logged = {a.path for a in client.list_artifacts(res.mlflow_run_id, "drift_report")}
    assert {"drift_report/history.png", "drift_report/dist-score.png"} <= logged
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == settings.monitoring_experiment

    # a second check while the triggered run is in flight: no second trigger
    busy = [RecentRun(id="run-1", name="quick-lynx", state="RUNNING")]
    again, _ = run_drift_check(settings, config, smtp, now=now, recent_runs=lambda _: busy,
                               trigger=fake_trigger)  # fmt: skip
    assert again.retrain.action == RetrainAction.ALREADY_RETRAINING and len(triggered) == 1
    assert again.window_id == res.window_id
    history_text = inbox.messages()[-1].get_body(("plain",)).get_content()
    assert "last 2 checks" in history_text  # the first check, read back from MLflow, and this one

    # a window below the minimum: not enough data, no verdict, no trigger, mail says so
    short, short_mail = run_drift_check(
        settings, config.model_copy(update={"window": Window(rows=50)}), smtp, now=now,
        recent_runs=lambda _: [], trigger=fake_trigger,
    )  # fmt: skip
    assert short.verdict.outcome == Outcome.NOT_ENOUGH_DATA and short.report_html is None
    assert short.retrain.action == RetrainAction.NOT_ENOUGH_DATA and len(triggered) == 1
    assert short_mail is not None and "not enough data" in inbox.messages()[-1]["Subject"]
