"""Email composition, SMTP settings, retries with backoff and the outbox (no server needed)."""

from __future__ import annotations

import logging
from email import policy
from email.parser import BytesParser

from flows.alerting.emails import EmailContent
from flows.alerting.outbox import deliver, flush_outbox
from flows.alerting.smtp import SmtpSettings, compose_message
from flows.core.http import free_port
from flows.monitoring.report_mail import drift_email
from flows.monitoring.run_artifacts import result_markdown
from tests.support.drift import result

SECRET = "s3cr3t-pa55"


def test_settings_from_env_keep_the_password_secret(monkeypatch):
    monkeypatch.setenv("FRAUD_SMTP_HOST", "mail.internal")
    monkeypatch.setenv("FRAUD_SMTP_PORT", "465")
    monkeypatch.setenv("FRAUD_SMTP_SECURITY", "ssl")
    monkeypatch.setenv("FRAUD_SMTP_USER", "monitor")
    monkeypatch.setenv("FRAUD_SMTP_PASSWORD", SECRET)
    monkeypatch.setenv("FRAUD_SMTP_RECIPIENTS", "ops@example.test, risk@example.test")
    smtp = SmtpSettings()
    assert smtp.enabled and smtp.port == 465 and smtp.security == "ssl"
    assert smtp.recipients == ["ops@example.test", "risk@example.test"]
    assert smtp.password is not None and smtp.password.get_secret_value() == SECRET
    for text in (repr(smtp), str(smtp), smtp.describe(), smtp.model_dump_json()):
        assert SECRET not in text
    assert not SmtpSettings(host=None).enabled


def test_drift_email_is_decision_ready():
    content = drift_email(result(drifted=True, triggered=True))
    assert content.subject == (
        "[fraud-detector v3] DRIFT: 2/3 features drifted (67%), score drifted; retraining triggered"
    )
    html = content.html
    for expected in ("amount", "merchant_category", "0.4731", "0.3953", "2.5e-40", "chi-squared",
                     "gaming: 3.1% → 31.4%", "1,000,000 rows", "50,000 of 1,000,000 window rows",
                     "fraud-detector v3", "brisk-heron", "0f6b1c2d-1111-2222-3333-444455556666",
                     "uv run prefect deployment run", "2 of 3 features drifted (67% ≥ 50%)",
                     "model score drifted", "every gate"):  # fmt: skip
        assert expected in html, expected
    assert "amount" in content.text and "brisk-heron" in content.text


def test_all_clear_and_not_enough_data_subjects():
    clear = drift_email(result(drifted=False, triggered=False))
    assert clear.subject == "[fraud-detector v3] no drift: 0/3 features drifted (0%)"
    assert "No retraining started: not needed" in clear.html
    short = result(drifted=False, triggered=False)
    from flows.monitoring.verdict import DriftPolicy, not_enough_data

    short = short.model_copy(
        update={
            "verdict": not_enough_data(12, DriftPolicy()),
            "sampling": short.sampling.model_copy(update={"window_rows": 12}),
            "columns": [],
        }
    )
    content = drift_email(short)
    assert "not enough data: 12 rows in the window (minimum 1,000)" in content.subject
    assert "no drift verdict and no retraining" in content.html


def test_markdown_artifact_lists_drifted_columns_first():
    md = result_markdown(result())
    assert md.startswith("## fraud-detector v3: DRIFT")
    table = [line for line in md.splitlines() if line.startswith("| ") and "(KS)" in line]
    assert table[0].startswith("| amount |") and "**yes**" in table[0]
    assert "| channel |" in md and "/h/drift_reports/x/drift_report.html" in md
    assert "brisk-heron" in md and "50,000 of 1,000,000 window rows" in md


def test_message_has_recipients_alternatives_and_the_attachment(tmp_path):
    report = tmp_path / "drift_report.html"
    report.write_text("<html>evidently</html>")
    smtp = SmtpSettings(host="127.0.0.1", recipients=["a@example.test", "b@example.test"])
    msg = compose_message(EmailContent(subject="s", html="<b>h</b>", text="t"), smtp, [report])
    assert msg["To"] == "a@example.test, b@example.test"
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "drift_report.html"
    assert attachment.get_content() == "<html>evidently</html>"
    assert msg.get_body(("html",)).get_content().strip() == "<b>h</b>"


def test_unreachable_server_queues_after_retries_with_backoff(tmp_path, caplog):
    port = free_port()  # nothing listens here
    smtp = SmtpSettings(host="127.0.0.1", port=port, user="monitor", password=SECRET,
                        recipients=["ops@example.test"], retries=3, backoff_seconds=0.5,
                        timeout=2)  # fmt: skip
    slept: list[float] = []
    msg = compose_message(drift_email(result()), smtp)
    with caplog.at_level(logging.DEBUG):
        delivery = deliver(msg, smtp, tmp_path / "outbox", SECRET, sleep=slept.append)
    assert delivery.status == "queued" and slept == [0.5, 1.0]
    queued = list((tmp_path / "outbox").glob("*.eml"))
    assert [str(p) for p in queued] == [delivery.outbox_path]
    raw = queued[0].read_bytes()
    assert SECRET.encode() not in raw and SECRET not in caplog.text
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert parsed["Subject"] == msg["Subject"] and parsed["To"] == "ops@example.test"
    # still down: the next run's flush leaves it queued
    assert flush_outbox(smtp, tmp_path / "outbox", SECRET, sleep=slept.append) == []
    assert list((tmp_path / "outbox").glob("*.eml")) == queued


def test_mail_is_skipped_without_host(tmp_path):
    smtp = SmtpSettings(host=None, recipients=["ops@example.test"])
    msg = compose_message(drift_email(result()), smtp)
    assert deliver(msg, smtp, tmp_path / "outbox", None).status == "skipped"
    assert not (tmp_path / "outbox").exists()


def test_temporary_and_permanent_answers_are_told_apart():
    from smtplib import (
        SMTPAuthenticationError,
        SMTPConnectError,
        SMTPDataError,
        SMTPRecipientsRefused,
        SMTPSenderRefused,
        SMTPServerDisconnected,
    )

    from flows.alerting.smtp import describe_error, is_permanent, refuses_message

    busy = SMTPRecipientsRefused({"a@example.test": (451, b"try later")})
    gone = SMTPRecipientsRefused({"a@example.test": (550, b"no such user")})
    mixed = SMTPRecipientsRefused({"a@x.test": (550, b"no"), "b@x.test": (421, b"closing")})
    cases = [
        (ConnectionRefusedError(111, "Connection refused"), False, False),
        (SMTPServerDisconnected("Connection unexpectedly closed"), False, False),
        (SMTPConnectError(421, b"Service not available"), False, False),
        (busy, False, False),
        (SMTPDataError(452, b"Insufficient storage"), False, False),
        (mixed, False, False),  # one recipient may still pass: try again later
        (gone, True, True),
        (SMTPDataError(554, b"Content rejected"), True, True),
        (SMTPSenderRefused(550, b"Relay denied", "m@x.test"), True, False),
        (SMTPAuthenticationError(535, b"Credentials invalid"), True, False),
    ]
    for err, permanent, of_message in cases:
        assert (is_permanent(err), refuses_message(err)) == (permanent, of_message), err
    assert describe_error(gone) == "a@example.test: 550 no such user"
    assert describe_error(SMTPDataError(554, b"Content\r\n  rejected")) == "554 Content rejected"
    assert describe_error(SMTPServerDisconnected()) == "SMTPServerDisconnected"


def test_outbox_copy_carries_envelope_and_answer_but_the_original_does_not(tmp_path):
    from flows.alerting.outbox import REFUSED_HEADER, write_outbox
    from flows.alerting.smtp import ENVELOPE_HEADER, header_recipients

    smtp = SmtpSettings(host="127.0.0.1", recipients=["a@example.test", "b@example.test"])
    msg = compose_message(EmailContent(subject="s", html="<b>h</b>", text="t"), smtp)
    path = write_outbox(msg, tmp_path, ["b@example.test"], "b@example.test: 550 no such user")
    stored = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert header_recipients(stored) == ["b@example.test"]
    assert stored[REFUSED_HEADER] == "b@example.test: 550 no such user"
    assert stored["To"] == msg["To"] and stored["Message-ID"] == msg["Message-ID"]
    assert msg[ENVELOPE_HEADER] is None and header_recipients(msg) == smtp.recipients
    assert not list(tmp_path.glob("*.tmp"))
