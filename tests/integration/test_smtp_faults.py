"""The drift email against a real SMTP server (aiosmtpd on 127.0.0.1) that answers with faults.

Temporary answers (421 at the greeting, 4xx at MAIL, RCPT or DATA) keep the message in the
outbox and the next run sends it exactly once; permanent answers (5xx) are never retried and
never lose the message silently: a refused message is kept in ``outbox/failed`` and reported,
a refused configuration keeps the message queued until the settings are fixed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from data_contracts.spec import default_spec
from data_contracts.synthetic import GeneratorConfig, generate
from flows.alerting.outbox import REFUSED_HEADER, deliver, flush_outbox
from flows.alerting.smtp import ENVELOPE_HEADER, SmtpSettings, compose_message
from flows.core.http import free_port
from flows.core.settings import Settings
from flows.monitoring.check import run_drift_check
from flows.monitoring.config import DriftCheckConfig, RetrainPolicy
from flows.monitoring.report_mail import drift_email
from flows.monitoring.verdict import Outcome
from tests.support.drift import Inbox, register_reference_champion, result, write_log

pytestmark = pytest.mark.integration


@dataclass
class Faults:
    """What the server answers instead of accepting: per stage, or per recipient at RCPT."""

    at: dict[str, str] = field(default_factory=dict)  # CONNECT, MAIL, RCPT, DATA, QUIT
    rcpt: dict[str, str] = field(default_factory=dict)  # recipient -> answer
    hits: Counter = field(default_factory=Counter)

    def answer(self, stage: str, recipient: str | None = None) -> str | None:
        found = self.rcpt.get(recipient or "") or self.at.get(stage)
        if found:
            self.hits[stage] += 1
        return found


class FaultyInbox(Inbox):
    """Keeps every accepted envelope; answers what :class:`Faults` says at each stage."""

    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if answer := self.faults.answer("MAIL"):
            return answer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if answer := self.faults.answer("RCPT", address):
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if answer := self.faults.answer("DATA"):
            return answer
        return await super().handle_DATA(server, session, envelope)

    async def handle_QUIT(self, server, session, envelope):
        return self.faults.answer("QUIT") or "221 Bye"


class GreetingSMTP(SMTP):
    """aiosmtpd's SMTP session, but it can greet with a refusal (e.g. 421) and hang up."""

    async def _handle_client(self) -> None:
        answer = self.event_handler.faults.answer("CONNECT")
        if answer is None:
            await super()._handle_client()
            return
        await self.push(answer)
        self.transport.close()


class FaultyController(Controller):
    def factory(self) -> SMTP:
        return GreetingSMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class Server:
    port: int
    faults: Faults
    inbox: FaultyInbox

    def settings(self, recipients: list[str], **extra: object) -> SmtpSettings:
        return SmtpSettings(host="127.0.0.1", port=self.port, recipients=recipients,
                            retries=2, backoff_seconds=0.01, timeout=5, **extra)  # fmt: skip


@pytest.fixture
def server() -> Iterator[Server]:
    faults = Faults()
    inbox = FaultyInbox(faults)
    port = free_port()
    controller = FaultyController(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Server(port, faults, inbox)
    finally:
        controller.stop()


def parse(path: Path):
    return BytesParser(policy=policy.default).parsebytes(path.read_bytes())


def message_ids(inbox: Inbox) -> list[str]:
    return [m["Message-ID"] for m in inbox.messages()]


TEMPORARY = {
    "CONNECT": "421 4.3.2 Service not available, closing transmission channel",
    "MAIL": "451 4.3.0 Sender verification deferred, try again later",
    "RCPT": "451 4.2.1 Mailbox temporarily unavailable",
    "DATA": "452 4.3.1 Insufficient system storage",
}


@pytest.mark.parametrize("stage", list(TEMPORARY))
def test_temporary_refusal_queues_and_the_next_run_sends_it_once(stage, server, tmp_path):
    outbox = tmp_path / "outbox"
    smtp = server.settings(["ops@example.test"])
    message = compose_message(drift_email(result()), smtp)
    server.faults.at[stage] = TEMPORARY[stage]

    first = deliver(message, smtp, outbox, None)
    assert first.status == "queued", first
    assert TEMPORARY[stage][:3] in first.detail and "after 2 attempts" in first.detail
    assert server.faults.hits[stage] == 2  # retried once, then queued
    assert server.inbox.envelopes == []
    (queued,) = outbox.glob("*.eml")
    assert parse(queued)["Message-ID"] == message["Message-ID"]

    server.faults.at.clear()  # the server recovers: the next run sends the queued message first
    sent = flush_outbox(smtp, outbox, None)
    assert [(d.status, d.subject) for d in sent] == [("sent", first.subject)]
    assert message_ids(server.inbox) == [message["Message-ID"]]
    assert server.inbox.envelopes[0].rcpt_tos == ["ops@example.test"]
    assert list(outbox.glob("*.eml")) == [] and len(list((outbox / "sent").glob("*.eml"))) == 1

    assert flush_outbox(smtp, outbox, None) == []  # nothing left: never sent twice
    assert len(server.inbox.envelopes) == 1


def test_quit_refused_after_acceptance_does_not_send_twice(server, tmp_path):
    smtp = server.settings(["ops@example.test"])
    server.faults.at["QUIT"] = "421 4.4.2 Connection dropped"
    delivery = deliver(compose_message(drift_email(result()), smtp), smtp, tmp_path / "ob", None)
    assert delivery.status == "sent"
    assert server.faults.hits["QUIT"] == 1 and len(server.inbox.envelopes) == 1
    assert not (tmp_path / "ob").exists()


@pytest.mark.parametrize(
    ("stage", "answer"),
    [("RCPT", "550 5.1.1 No such user here"), ("DATA", "554 5.7.1 Message content rejected")],
)
def test_permanent_refusal_of_the_message_is_kept_and_reported(
    stage, answer, server, tmp_path, caplog
):
    outbox = tmp_path / "outbox"
    smtp = server.settings(["ops@example.test"])
    message = compose_message(drift_email(result()), smtp)
    server.faults.at[stage] = answer
    with caplog.at_level(logging.WARNING, logger="flows.alerting"):
        delivery = deliver(message, smtp, outbox, None)
    assert delivery.status == "failed" and answer in delivery.detail
    assert server.faults.hits[stage] == 1  # a 5xx is not asked again
    assert list(outbox.glob("*.eml")) == []  # not queued: it would be refused on every run
    (kept,) = (outbox / "failed").glob("*.eml")
    assert str(kept) == delivery.outbox_path
    stored = parse(kept)
    assert stored["Message-ID"] == message["Message-ID"] and answer in stored[REFUSED_HEADER]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and answer in errors[0].getMessage() and str(kept) in errors[0].getMessage()
    assert server.inbox.envelopes == []


def test_a_message_refused_for_good_does_not_hold_up_the_outbox(server, tmp_path):
    outbox = tmp_path / "outbox"
    gone = server.settings(["gone@example.test"])
    ops = server.settings(["ops@example.test"])
    first = compose_message(drift_email(result()), gone)
    second = compose_message(drift_email(result(drifted=False, triggered=False)), ops)
    server.faults.at["CONNECT"] = TEMPORARY["CONNECT"]  # down: both wait in the outbox
    assert deliver(first, gone, outbox, None).status == "queued"
    assert deliver(second, ops, outbox, None).status == "queued"

    server.faults.at.clear()  # back, but the first recipient no longer exists
    server.faults.rcpt["gone@example.test"] = "550 5.1.1 No such user here"
    handled = flush_outbox(ops, outbox, None)
    assert [(d.status, d.subject) for d in handled] == [
        ("failed", first["Subject"]),
        ("sent", second["Subject"]),
    ]
    assert "550" in handled[0].detail
    assert message_ids(server.inbox) == [second["Message-ID"]]
    (failed,) = (outbox / "failed").glob("*.eml")
    assert parse(failed)["Message-ID"] == first["Message-ID"]
    assert list(outbox.glob("*.eml")) == []


def test_settings_refused_for_good_keep_the_message_queued(server, tmp_path, caplog):
    outbox = tmp_path / "outbox"
    smtp = server.settings(["ops@example.test"], sender="wrong@example.test")
    message = compose_message(drift_email(result()), smtp)
    server.faults.at["MAIL"] = "550 5.7.1 Sender address rejected: not allowed to relay"
    with caplog.at_level(logging.ERROR, logger="flows.alerting"):
        delivery = deliver(message, smtp, outbox, None)
    assert delivery.status == "queued" and "check the SMTP settings" in delivery.detail
    assert server.faults.hits["MAIL"] == 1
    assert "550 5.7.1 Sender address rejected" in caplog.text
    server.faults.at.clear()  # the operator fixes the settings; the next run sends it
    assert [d.status for d in flush_outbox(smtp, outbox, None)] == ["sent"]
    assert message_ids(server.inbox) == [message["Message-ID"]]


def test_recipients_refused_by_some_get_their_own_copy(server, tmp_path):
    outbox = tmp_path / "outbox"
    smtp = server.settings(["ops@example.test", "busy@example.test", "gone@example.test"])
    message = compose_message(drift_email(result()), smtp)
    server.faults.rcpt |= {"busy@example.test": "450 4.2.1 Mailbox busy",
                           "gone@example.test": "550 5.1.1 No such user here"}  # fmt: skip
    delivery = deliver(message, smtp, outbox, None)
    assert delivery.status == "partial"
    assert "accepted for ops@example.test" in delivery.detail
    assert "queued for busy@example.test (busy@example.test: 450" in delivery.detail
    assert "refused for good for gone@example.test" in delivery.detail
    assert [e.rcpt_tos for e in server.inbox.envelopes] == [["ops@example.test"]]
    (queued,) = outbox.glob("*.eml")
    assert str(queued) == delivery.outbox_path
    assert parse(queued)[ENVELOPE_HEADER] == "busy@example.test"
    (failed,) = (outbox / "failed").glob("*.eml")
    assert parse(failed)[ENVELOPE_HEADER] == "gone@example.test"

    del server.faults.rcpt["busy@example.test"]
    assert [d.status for d in flush_outbox(smtp, outbox, None)] == ["sent"]
    envelopes = server.inbox.envelopes
    assert [e.rcpt_tos for e in envelopes] == [["ops@example.test"], ["busy@example.test"]]
    resent = server.inbox.messages()[1]
    assert resent["Message-ID"] == message["Message-ID"] and resent["To"] == message["To"]
    assert resent[ENVELOPE_HEADER] is None and resent[REFUSED_HEADER] is None


# ---------------------------------------------------------------------------------------------
# Two drift checks: the first meets a 4xx, the second sends the queued mail first, then its own


def _register_champion(settings: Settings) -> str:
    """A registered version with a reference snapshot and the champion alias (real MLflow)."""
    reference = generate(GeneratorConfig(rows=2000, seed=41))
    reference["score"] = 0.1
    return register_reference_champion(settings, reference)


def test_next_drift_check_sends_the_queued_mail_first(server, tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings()
    version = _register_champion(settings)
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    window = generate(GeneratorConfig(rows=200, seed=42))
    window["score"] = 0.1
    window["timestamp"] = [now - timedelta(minutes=i + 1) for i in range(len(window))]
    write_log(window, settings.inference_log_root, default_spec(), version)
    smtp = server.settings(["ops@example.test"])

    def check(when: datetime):
        config = DriftCheckConfig(retraining=RetrainPolicy(trigger=False))
        return run_drift_check(settings, config, smtp, now=when, recent_runs=lambda _: [])

    server.faults.at["RCPT"] = TEMPORARY["RCPT"]
    first, queued = check(now)
    assert first.verdict.outcome == Outcome.NOT_ENOUGH_DATA  # a mail is due either way
    assert queued is not None and queued.status == "queued" and server.inbox.envelopes == []

    server.faults.at.clear()
    _, sent = check(now + timedelta(hours=1))
    assert sent is not None and sent.status == "sent"
    subjects = [m["Subject"].strip() for m in server.inbox.messages()]  # unfolded
    assert subjects == [queued.subject, sent.subject]  # the queued mail first, then the new one
    assert len(set(message_ids(server.inbox))) == 2
    outbox = settings.outbox_dir
    assert list(outbox.glob("*.eml")) == [] and len(list((outbox / "sent").glob("*.eml"))) == 1

    check(now + timedelta(hours=2))  # a third run sends only its own mail
    assert len(server.inbox.envelopes) == 3
