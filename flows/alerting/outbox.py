"""The outbox: mail that could not go out waits as ``.eml`` files and the next run sends it first.

What the server answers decides what happens to a message (nothing is dropped silently):

- a refused or dropped connection, a timeout or a 4xx answer is temporary: retried with backoff
  (``flows.alerting.smtp``), then queued in the outbox for the next run;
- a 5xx answer to the message itself (all recipients refused at RCPT, or the content refused at
  DATA) is permanent: not retried, moved to ``outbox/failed/`` with the server's answer in an
  ``X-Fraud-Refused`` header, logged as an error and reported as ``failed``; move the file back
  into the outbox to send it again;
- a 5xx answer to the configuration (login, sender, greeting) is not retried either, but the
  message stays queued: the next run after the settings are fixed sends it;
- some recipients refused: the accepted ones get the message, a copy for the others is queued
  (4xx) or failed (5xx), addressed to them alone (``X-Fraud-Envelope-To``).

Hand-written on purpose: the flows run as short batch jobs with no mail daemon or queue service
beside them, and none of the installed libraries keeps undelivered mail across runs with these
per-recipient rules; a folder of ``.eml`` files is what an operator can read and move by hand.
"""

from __future__ import annotations

import copy
import logging
import smtplib
import time
import uuid
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from flows.alerting.smtp import (
    ENVELOPE_HEADER,
    Refused,
    Sleep,
    SmtpSettings,
    answer_text,
    describe_error,
    header_recipients,
    is_permanent,
    refuses_message,
    send_with_retries,
)

log = logging.getLogger(__name__)

REFUSED_HEADER = "X-Fraud-Refused"
FAILED_DIR = "failed"
SENT_DIR = "sent"


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
        answers = "; ".join(f"{r}: {answer_text(*refused[r])}" for r in later)
        parts.append(f"queued for {', '.join(later)} ({answers})")
        log.warning("mail %r queued for %s (%s): %s", subject, later, answers, queued_path)
    if never:
        answers = "; ".join(f"{r}: {answer_text(*a)}" for r, a in never.items())
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
