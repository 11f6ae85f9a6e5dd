"""The drift email: SMTP settings, a decision-ready message, retries with backoff and an outbox.

A message that cannot be sent after the retries is written to the outbox folder as an ``.eml``
file and sent first by the next run, so no report is lost while the mail server is down.
The password comes from ``FRAUD_SMTP_PASSWORD`` or from a Prefect Secret block named by
``FRAUD_SMTP_PASSWORD_SECRET``; it is never logged, never written to the outbox, never rendered.
"""

from __future__ import annotations

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


def send_once(message: EmailMessage, smtp: SmtpSettings, password: str | None) -> None:
    """One delivery attempt (SSL, STARTTLS or plain; login when a user is set)."""
    if not smtp.host:
        raise ValueError("SMTP host is not set")
    recipients = [a.strip() for a in str(message["To"]).split(",") if a.strip()]
    context = ssl.create_default_context()
    if smtp.security == "ssl":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            smtp.host, smtp.port, timeout=smtp.timeout, context=context
        )
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
    with client:
        if smtp.security == "starttls":
            client.starttls(context=context)
        if smtp.user:
            client.login(smtp.user, password or "")
        client.send_message(message, to_addrs=recipients)


def send_with_retries(
    message: EmailMessage, smtp: SmtpSettings, password: str | None, sleep: Sleep = time.sleep
) -> None:
    """Send with ``smtp.retries`` attempts and exponential backoff; re-raise the last error."""
    delay = smtp.backoff_seconds
    for attempt in range(1, smtp.retries + 1):
        try:
            send_once(message, smtp, password)
            return
        except (OSError, smtplib.SMTPException) as err:
            log.warning(
                "mail to %s failed (attempt %d/%d): %s",
                smtp.describe(),
                attempt,
                smtp.retries,
                type(err).__name__,
            )
            if attempt == smtp.retries:
                raise
            sleep(delay)
            delay *= 2


class Delivery(BaseModel):
    """What happened to one message."""

    model_config = ConfigDict(frozen=True)

    status: Literal["sent", "queued", "skipped"]
    subject: str
    detail: str = ""
    outbox_path: str | None = None


def write_outbox(message: EmailMessage, outbox: Path) -> Path:
    """Store the message as an ``.eml`` file (atomically) for a later run to send."""
    outbox.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = outbox / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
    tmp = path.with_suffix(".eml.tmp")
    tmp.write_bytes(message.as_bytes(policy=policy.SMTP))
    tmp.replace(path)
    return path


def deliver(
    message: EmailMessage,
    smtp: SmtpSettings,
    outbox: Path,
    password: str | None,
    sleep: Sleep = time.sleep,
) -> Delivery:
    """Send the message, or put it in the outbox when the server stays unreachable."""
    subject = str(message["Subject"])
    if not smtp.enabled:
        return Delivery(status="skipped", subject=subject, detail="SMTP host or recipients unset")
    try:
        send_with_retries(message, smtp, password, sleep)
    except (OSError, smtplib.SMTPException) as err:
        path = write_outbox(message, outbox)
        log.warning("mail queued in the outbox (%s): %s", type(err).__name__, path)
        return Delivery(
            status="queued",
            subject=subject,
            detail=f"{type(err).__name__} after {smtp.retries} attempts",
            outbox_path=str(path),
        )
    return Delivery(status="sent", subject=subject, detail=smtp.describe())


def flush_outbox(
    smtp: SmtpSettings, outbox: Path, password: str | None, sleep: Sleep = time.sleep
) -> list[Delivery]:
    """Send queued messages, oldest first; sent ones move to ``outbox/sent``.

    Stops at the first failure (the server is still down) and leaves the rest queued.
    """
    if not smtp.enabled or not outbox.is_dir():
        return []
    done: list[Delivery] = []
    for path in sorted(outbox.glob("*.eml")):
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        subject = str(message["Subject"])
        try:
            send_with_retries(message, smtp, password, sleep)  # type: ignore[arg-type]
        except (OSError, smtplib.SMTPException) as err:
            log.warning(
                "outbox still not deliverable (%s); %s stays queued", type(err).__name__, path
            )
            break
        sent = outbox / "sent"
        sent.mkdir(exist_ok=True)
        path.replace(sent / path.name)
        done.append(Delivery(status="sent", subject=subject, detail=f"from outbox {path.name}"))
    return done


def esc(value: object) -> str:
    """HTML-escape any value for the email body."""
    return html.escape(str(value))
