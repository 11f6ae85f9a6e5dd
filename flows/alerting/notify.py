"""The drift email: SMTP settings, a decision-ready message, retries with backoff and an outbox.

A message that cannot be sent after the retries is written to the outbox folder as an ``.eml``
file and sent first by the next run, so no report is lost while the mail server is down.

What the server answers decides what happens to a message (nothing is dropped silently):

- a refused or dropped connection, a timeout or a 4xx answer is temporary: retried with backoff,
  then queued in the outbox for the next run;
- a 5xx answer to the message itself (all recipients refused at RCPT, or the content refused at
  DATA) is permanent: not retried, moved to ``outbox/failed/`` with the server's answer in an
  ``X-Fraud-Refused`` header, logged as an error and reported as ``failed``; move the file back
  into the outbox to send it again;
- a 5xx answer to the configuration (login, sender, greeting) is not retried either, but the
  message stays queued: the next run after the settings are fixed sends it;
- some recipients refused: the accepted ones get the message, a copy for the others is queued
  (4xx) or failed (5xx), addressed to them alone (``X-Fraud-Envelope-To``);
- once the server has accepted the message, a failing QUIT does not send it again.
The password comes from ``FRAUD_SMTP_PASSWORD`` or from a Prefect Secret block named by
``FRAUD_SMTP_PASSWORD_SECRET``; it is never logged, never written to the outbox, never rendered.
"""

from __future__ import annotations

import copy
import html
import logging
import smtplib
import ssl
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]


class SmtpSettings(BaseSettings):
    """Where and how to send mail; from ``FRAUD_SMTP_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_SMTP_", frozen=True, extra="ignore")

    host: str | None = Field(None, description="SMTP server; unset: mail is not sent.")
    port: int = 25
    security: Literal["none", "starttls", "ssl"] = "none"
    user: str | None = None
    password: SecretStr | None = None
    password_secret: str | None = Field(
        None, description="Name of a Prefect Secret block holding the password."
    )
    sender: str = "fraud-monitor@localhost"
    recipients: Annotated[list[str], NoDecode] = Field(default_factory=list)
    timeout: float = Field(10.0, gt=0)
    retries: int = Field(3, ge=1, description="Attempts per message before it goes to the outbox.")
    backoff_seconds: float = Field(2.0, ge=0, description="First retry delay; doubles each time.")
    mail_all_clear: bool = Field(False, description="Also mail when there is no drift.")

    @field_validator("recipients", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.recipients)

    def describe(self) -> str:
        """Where mail goes, without secrets (safe to log)."""
        who = f" as {self.user}" if self.user else ""
        return f"{self.host}:{self.port} ({self.security}){who} -> {', '.join(self.recipients)}"


def resolve_password(smtp: SmtpSettings) -> str | None:
    """The SMTP password from the settings, or from the named Prefect Secret block."""
    if smtp.password is not None:
        return smtp.password.get_secret_value()
    if smtp.password_secret:
        from prefect.blocks.system import Secret

        return str(Secret.load(smtp.password_secret).get())
    return None


class EmailContent(BaseModel):
    """What a message says: subject, HTML body and a plain-text alternative."""

    model_config = ConfigDict(frozen=True)

    subject: str
    html: str
    text: str


def compose_message(
    content: EmailContent, smtp: SmtpSettings, attachments: list[Path] = ()
) -> EmailMessage:
    """A MIME message (plain text + HTML alternative) with the attachments."""
    msg = EmailMessage()
    msg["Subject"] = content.subject
    msg["From"] = smtp.sender
    msg["To"] = ", ".join(smtp.recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=smtp.sender.rsplit("@", 1)[-1] or "localhost")
    msg.set_content(content.text)
    msg.add_alternative(content.html, subtype="html")
    for path in attachments:
        subtype = "html" if path.suffix == ".html" else "json" if path.suffix == ".json" else None
        maintype = "text" if subtype == "html" else "application"
        msg.add_attachment(
            path.read_bytes(),
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=path.name,
        )
    return msg


ENVELOPE_HEADER = "X-Fraud-Envelope-To"
REFUSED_HEADER = "X-Fraud-Refused"
FAILED_DIR = "failed"
SENT_DIR = "sent"

Refused = dict[str, tuple[int, bytes]]


def is_permanent(err: Exception) -> bool:
    """True for a 5xx answer (the server will refuse the same thing again); 4xx, a refused or
    dropped connection and timeouts are temporary."""
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in err.recipients.values()]
        return bool(codes) and all(code >= 500 for code in codes)
    if isinstance(err, smtplib.SMTPResponseException):
        return err.smtp_code >= 500
    return False


def refuses_message(err: Exception) -> bool:
    """A permanent refusal of this message (its recipients or content), not of the settings."""
    return is_permanent(err) and isinstance(
        err, smtplib.SMTPRecipientsRefused | smtplib.SMTPDataError
    )


def _answer(code: int, text: bytes | str) -> str:
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(raw.split())}"


def describe_error(err: Exception) -> str:
    """The server's answer (code and text, per recipient when refused at RCPT), or the error."""
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{rcpt}: {_answer(*answer)}" for rcpt, answer in err.recipients.items())
    if isinstance(err, smtplib.SMTPResponseException):
        return _answer(err.smtp_code, err.smtp_error)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _quit(client: smtplib.SMTP) -> None:
    """End the session; an error here cannot undo (or redo) a delivery already accepted."""
    try:
        client.quit()
    except (OSError, smtplib.SMTPException) as err:
        log.info("SMTP QUIT failed after the exchange (%s); connection closed", describe_error(err))
        client.close()


def header_recipients(message: EmailMessage) -> list[str]:
    """The envelope recipients of ``message``: ``X-Fraud-Envelope-To`` if set, else ``To``."""
    raw = message[ENVELOPE_HEADER] or message["To"] or ""
    return [a.strip() for a in str(raw).split(",") if a.strip()]


def send_once(
    message: EmailMessage,
    smtp: SmtpSettings,
    password: str | None,
    recipients: list[str] | None = None,
) -> Refused:
    """One delivery attempt (SSL, STARTTLS or plain; login when a user is set).

    Returns the recipients the server refused while accepting the message for the others.
    """
    if not smtp.host:
        raise ValueError("SMTP host is not set")
    to_addrs = recipients if recipients is not None else header_recipients(message)
    context = ssl.create_default_context()
    if smtp.security == "ssl":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            smtp.host, smtp.port, timeout=smtp.timeout, context=context
        )
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
    try:
        if smtp.security == "starttls":
            client.starttls(context=context)
        if smtp.user:
            client.login(smtp.user, password or "")
        refused = client.send_message(message, to_addrs=to_addrs)
    except BaseException:
        client.close()
        raise
    _quit(client)
    return dict(refused)


def send_with_retries(
    message: EmailMessage,
    smtp: SmtpSettings,
    password: str | None,
    sleep: Sleep = time.sleep,
    recipients: list[str] | None = None,
) -> Refused:
    """Send with ``smtp.retries`` attempts and exponential backoff; re-raise the last error.

    A permanent (5xx) answer is raised at once: asking again gets the same answer.
    """
    delay, attempt = smtp.backoff_seconds, 1
    while True:
        try:
            return send_once(message, smtp, password, recipients)
        except (OSError, smtplib.SMTPException) as err:
            permanent = is_permanent(err)
            log.warning(
                "mail to %s failed (attempt %d/%d, %s): %s",
                smtp.describe(),
                attempt,
                smtp.retries,
                "permanent" if permanent else "temporary",
                describe_error(err),
            )
            if permanent or attempt >= smtp.retries:
                raise
        sleep(delay)
        delay, attempt = delay * 2, attempt + 1


class Delivery(BaseModel):
    """What happened to one message.

    ``sent``: accepted for every recipient; ``partial``: accepted for some, the others' copy is
    queued or failed (see ``detail``); ``queued``: in the outbox for the next run; ``failed``:
    refused for good, kept in ``outbox/failed``; ``skipped``: mail is not configured.
    """

    model_config = ConfigDict(frozen=True)

    status: Literal["sent", "partial", "queued", "failed", "skipped"]
    subject: str
    detail: str = ""
    outbox_path: str | None = None


def write_outbox(
    message: EmailMessage,
    outbox: Path,
    recipients: list[str] | None = None,
    refused: str | None = None,
) -> Path:
    """Store the message as an ``.eml`` file (atomically) for a later run to send.

    ``recipients`` narrows the envelope to some of the addressees; ``refused`` records the
    server's answer (both as headers of the stored copy only, removed before sending).
    """
    outbox.mkdir(parents=True, exist_ok=True)
    stored = copy.deepcopy(message)
    for name, value in ((ENVELOPE_HEADER, recipients), (REFUSED_HEADER, refused)):
        del stored[name]
        if value:
            stored[name] = ", ".join(value) if isinstance(value, list) else value
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = outbox / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
    tmp = path.with_suffix(".eml.tmp")
    tmp.write_bytes(stored.as_bytes(policy=policy.SMTP))
    tmp.replace(path)
    return path


def _fail(message: EmailMessage, outbox: Path, answer: str, recipients: list[str]) -> Path:
    path = write_outbox(message, outbox / FAILED_DIR, recipients, answer)
    log.error(
        "mail %r refused for good by the server (%s); kept in %s",
        str(message["Subject"]),
        answer,
        path,
    )
    return path


def _split_refused(
    message: EmailMessage, refused: Refused, outbox: Path, recipients: list[str]
) -> Delivery:
    """Accepted for some recipients: queue (4xx) or fail (5xx) a copy for the others."""
    subject = str(message["Subject"])
    later = [r for r, (code, _) in refused.items() if code < 500]
    never = {r: answer for r, answer in refused.items() if answer[0] >= 500}
    accepted = [r for r in recipients if r not in refused]
    parts = [f"accepted for {', '.join(accepted)}"]
    queued_path = None
    if later:
        queued_path = write_outbox(message, outbox, later)
        answers = "; ".join(f"{r}: {_answer(*refused[r])}" for r in later)
        parts.append(f"queued for {', '.join(later)} ({answers})")
        log.warning("mail %r queued for %s (%s): %s", subject, later, answers, queued_path)
    if never:
        answers = "; ".join(f"{r}: {_answer(*a)}" for r, a in never.items())
        failed = _fail(message, outbox, answers, list(never))
        parts.append(f"refused for good for {', '.join(never)} ({answers}); kept in {failed}")
    return Delivery(
        status="partial",
        subject=subject,
        detail="; ".join(parts),
        outbox_path=str(queued_path) if queued_path else None,
    )


def deliver(
    message: EmailMessage,
    smtp: SmtpSettings,
    outbox: Path,
    password: str | None,
    sleep: Sleep = time.sleep,
) -> Delivery:
    """Send the message, or keep it: queued in the outbox while the server answers temporary
    errors, in ``outbox/failed`` when it refuses the message for good (see the module doc)."""
    subject = str(message["Subject"])
    if not smtp.enabled:
        return Delivery(status="skipped", subject=subject, detail="SMTP host or recipients unset")
    recipients = header_recipients(message)
    try:
        refused = send_with_retries(message, smtp, password, sleep, recipients)
    except (OSError, smtplib.SMTPException) as err:
        answer = describe_error(err)
        if refuses_message(err):
            path = _fail(message, outbox, answer, recipients)
            return Delivery(status="failed", subject=subject, detail=answer, outbox_path=str(path))
        path = write_outbox(message, outbox)
        if is_permanent(err):
            log.error(
                "mail queued in the outbox: the server refuses the settings (%s); fix them and "
                "the next run sends it: %s",
                answer,
                path,
            )
            detail = f"{answer} (refused for good: check the SMTP settings)"
        else:
            log.warning("mail queued in the outbox (%s): %s", answer, path)
            detail = f"{answer} after {smtp.retries} attempts"
        return Delivery(status="queued", subject=subject, detail=detail, outbox_path=str(path))
    if refused:
        return _split_refused(message, refused, outbox, recipients)
    return Delivery(status="sent", subject=subject, detail=smtp.describe())


def flush_outbox(
    smtp: SmtpSettings, outbox: Path, password: str | None, sleep: Sleep = time.sleep
) -> list[Delivery]:
    """Send queued messages, oldest first; sent ones move to ``outbox/sent``.

    Stops at the first temporary failure (the server is still down) and leaves the rest queued.
    A message the server refuses for good moves to ``outbox/failed`` (logged as an error) and
    does not hold up the ones behind it. Returns what happened to each message handled:
    ``sent``, ``partial`` or ``failed`` (those still queued are not listed).
    """
    if not smtp.enabled or not outbox.is_dir():
        return []
    done: list[Delivery] = []
    for path in sorted(outbox.glob("*.eml")):
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        recipients = header_recipients(message)  # type: ignore[arg-type]
        del message[ENVELOPE_HEADER], message[REFUSED_HEADER]
        subject = str(message["Subject"]).strip()  # a folded header parses with a leading space
        try:
            refused = send_with_retries(message, smtp, password, sleep, recipients)  # type: ignore[arg-type]
        except (OSError, smtplib.SMTPException) as err:
            if refuses_message(err):
                answer = describe_error(err)
                kept = _fail(message, outbox, answer, recipients)  # type: ignore[arg-type]
                path.unlink()
                done.append(
                    Delivery(status="failed", subject=subject, detail=answer, outbox_path=str(kept))
                )
                continue
            log.warning(
                "outbox still not deliverable (%s); %s stays queued", describe_error(err), path
            )
            break
        sent = outbox / SENT_DIR
        sent.mkdir(exist_ok=True)
        path.replace(sent / path.name)
        if refused:
            partial = _split_refused(message, refused, outbox, recipients)  # type: ignore[arg-type]
            done.append(
                partial.model_copy(update={"detail": f"from outbox {path.name}: {partial.detail}"})
            )
        else:
            done.append(Delivery(status="sent", subject=subject, detail=f"from outbox {path.name}"))
    return done


def esc(value: object) -> str:
    """HTML-escape any value for the email body."""
    return html.escape(str(value))
