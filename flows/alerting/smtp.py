"""SMTP: the mail settings, one message as MIME, and sending it with retries and backoff.

What the server answers decides what happens next (``flows.alerting.outbox`` acts on it):
a refused or dropped connection, a timeout or a 4xx answer is temporary (retried with backoff);
a 5xx answer is permanent (not retried: asking again gets the same answer). Once the server has
accepted a message, a failing QUIT does not send it again.

The password comes from ``FRAUD_SMTP_PASSWORD`` or from a Prefect Secret block named by
``FRAUD_SMTP_PASSWORD_SECRET``; it is never logged, never written to the outbox, never rendered.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flows.alerting.emails import Attachment, EmailContent

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]
ENVELOPE_HEADER = "X-Fraud-Envelope-To"  # on a stored copy addressed to some recipients only
Refused = dict[str, tuple[int, bytes]]


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
    max_message_bytes: int = Field(
        1_000_000,
        ge=0,
        description="A compressed copy of the full report is attached only when the whole "
        "message stays within this size (0: never attach; the mail links the report).",
    )

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

        try:
            block = Secret.load(smtp.password_secret)
        except ValueError as err:  # Prefect's "Unable to find block document named ..."
            raise ValueError(
                f"FRAUD_SMTP_PASSWORD_SECRET names the Prefect Secret block "
                f"{smtp.password_secret!r}, which the Prefect server does not hold: create it "
                f"(prefect block create secret, or Secret(value=...).save(name)) or unset it"
            ) from err
        return str(block.get())
    return None


def compose_message(
    content: EmailContent, smtp: SmtpSettings, attachments: Sequence[Path | Attachment] = ()
) -> EmailMessage:
    """A MIME message: plain text + HTML alternative, the HTML's images as multipart/related
    parts (``Content-ID``), then the attachments.

    Layout: multipart/mixed [ multipart/alternative [ text/plain, multipart/related
    [ text/html, image/png ... ] ], attachments ... ] (without attachments the top is the
    alternative part).
    """
    msg = EmailMessage()
    msg["Subject"] = content.subject
    msg["From"] = smtp.sender
    msg["To"] = ", ".join(smtp.recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=smtp.sender.rsplit("@", 1)[-1] or "localhost")
    msg.set_content(content.text)
    msg.add_alternative(content.html, subtype="html")
    if content.images:
        html_part = msg.get_payload()[1]
        for image in content.images:
            html_part.add_related(
                image.data,
                maintype="image",
                subtype=image.subtype,
                cid=f"<{image.cid}>",
                filename=image.filename,
                disposition="inline",
            )
    for item in attachments:
        if isinstance(item, Attachment):
            msg.add_attachment(
                item.data, maintype=item.maintype, subtype=item.subtype, filename=item.filename
            )
            continue
        path = item
        subtype = "html" if path.suffix == ".html" else "json" if path.suffix == ".json" else None
        maintype = "text" if subtype == "html" else "application"
        msg.add_attachment(
            path.read_bytes(),
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=path.name,
        )
    return msg


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


def answer_text(code: int, text: bytes | str) -> str:
    """A server answer on one line: ``550 no such user``."""
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(raw.split())}"


def describe_error(err: Exception) -> str:
    """The server's answer (code and text, per recipient when refused at RCPT), or the error."""
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        return "; ".join(
            f"{rcpt}: {answer_text(*answer)}" for rcpt, answer in err.recipients.items()
        )
    if isinstance(err, smtplib.SMTPResponseException):
        return answer_text(err.smtp_code, err.smtp_error)
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
