"""The drift email as one MIME message, within the mail size limit.

The full Evidently HTML is about 5 MB (7 MB once base64-encoded), more than many company mail
servers take. The message carries the decision, small inline charts and links to the report;
a gzip copy of the report rides along only when the whole message then stays within
``SmtpSettings.max_message_bytes`` (default 1 MB). Otherwise the mail says why it is not
attached and where the report is.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from email import policy
from email.message import EmailMessage
from pathlib import Path

from flows.alerting.emails import Attachment
from flows.alerting.smtp import SmtpSettings, compose_message
from flows.monitoring.charts import Chart
from flows.monitoring.results import DriftCheckResult, drift_email


def message_size(message: EmailMessage) -> int:
    """Bytes of the message as it goes over SMTP (CRLF line ends, base64 parts)."""
    return len(message.as_bytes(policy=policy.SMTP))


def gzip_copy(path: Path) -> Attachment:
    """``path`` gzip-compressed (reproducibly: no timestamp) as an attachment."""
    data = gzip.compress(path.read_bytes(), compresslevel=9, mtime=0)
    return Attachment(filename=f"{path.name}.gz", data=data, maintype="application", subtype="gzip")


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def report_message(
    result: DriftCheckResult,
    charts: Sequence[Chart],
    report_html: Path | None,
    smtp: SmtpSettings,
    secrets: Iterable[str] = (),
) -> EmailMessage:
    """The drift email, with a gzip copy of the report when it fits ``smtp.max_message_bytes``."""
    secrets = tuple(secrets)
    limit = smtp.max_message_bytes
    if report_html is None or not report_html.is_file():
        return compose_message(drift_email(result, charts, secrets=secrets), smtp)
    full = report_html.stat().st_size
    if limit <= 0:
        note = (
            f"The full report ({_mb(full)}) is not attached (attachments are off): see the links."
        )
        return compose_message(drift_email(result, charts, note, secrets), smtp)
    copy = gzip_copy(report_html)
    attached = (
        f"A gzip copy of the full report is attached ({copy.filename}, "
        f"{len(copy.data) / 1000:,.0f} KB; {_mb(full)} unpacked)."
    )
    message = compose_message(drift_email(result, charts, attached, secrets), smtp, [copy])
    size = message_size(message)
    if size <= limit:
        return message
    note = (
        f"The full report ({_mb(full)}, {_mb(len(copy.data))} compressed) is not attached: the "
        f"message would be {_mb(size)}, over the {_mb(limit)} mail limit "
        "(FRAUD_SMTP_MAX_MESSAGE_BYTES). Open it from the links."
    )
    return compose_message(drift_email(result, charts, note, secrets), smtp)
