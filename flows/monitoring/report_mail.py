"""The drift-report email, whole: its body, the MIME message within the size limit, and sending.

:func:`drift_email` writes the subject with the outcome at a glance, an HTML body a person can
decide from (charts inline) and a plain-text part; every value is scrubbed of credentials and
secrets (``flows.alerting.redaction.scrub``) before rendering.

The full Evidently HTML is about 5 MB (7 MB once base64-encoded), more than many company mail
servers take. The message carries the decision, small inline charts and links to the report;
a gzip copy of the report rides along only when the whole message then stays within
``SmtpSettings.max_message_bytes`` (default 1 MB). Otherwise the mail says why it is not
attached and where the report is (:func:`report_message`).

:func:`send_report` and :func:`send_queued_mail` are the check's two mail steps: delivery
retries and queues in ``flows.alerting.outbox``, and neither step ever raises on SMTP errors.
One module for the email, so what a mail says and how it goes out are read in one place.
"""

from __future__ import annotations

import gzip
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from flows.alerting import outbox as mail_outbox
from flows.alerting import smtp as mail
from flows.alerting.emails import Attachment, EmailContent, InlineImage, render
from flows.alerting.redaction import scrub
from flows.monitoring.charts import Chart
from flows.monitoring.results import (
    DriftCheckResult,
    action_text,
    decided_by,
    fmt_number,
    fmt_p_value,
    links,
    performance_facts,
    signals,
)
from flows.monitoring.verdict import Outcome

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]


def _clean(value: Any, secrets: tuple[str, ...]) -> Any:
    """Every string inside ``value`` scrubbed (lists, tuples and dicts walked)."""
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {k: _clean(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clean(v, secrets) for v in value)
    return value


def drift_email(
    result: DriftCheckResult,
    charts: Sequence[Chart] = (),
    report_note: str | None = None,
    secrets: Iterable[str] = (),
) -> EmailContent:
    """Subject with the outcome at a glance; an HTML body a person can decide from, with the
    charts inline; a plain-text part that says everything without the pictures.

    The HTML is ``flows/alerting/templates/drift_report.html`` (autoescaped). ``report_note``
    says whether a compressed copy of the full report is attached; the mail links the report
    either way. Every value is scrubbed of credentials and ``secrets`` before rendering.
    """
    secrets = tuple(secrets)
    v = result.verdict
    subject = f"[{result.model_name} v{result.champion_version}] {result.headline()}"
    colour = {"drift": "#b00020", "no drift": "#1b5e20"}.get(v.outcome.value, "#8a6d00")
    if result.realized_dropped:
        colour = "#b00020"
    rows = []
    for c in sorted(result.columns, key=lambda c: (not c.drifted, -(c.statistic or 0))):
        if not c.drifted and len(rows) >= 5 and v.outcome == Outcome.DRIFT:
            continue
        rows.append(
            {
                "column": c.column,
                "drifted": c.drifted,
                "kind": c.kind,
                "method": c.method,
                "statistic": fmt_number(c.statistic),
                "threshold": fmt_number(c.threshold, 2) if c.threshold is not None else "n/a",
                "verdict": "DRIFT" if c.drifted else "ok",
                "p_value": fmt_p_value(c.p_value),
                "p_value_test": c.p_value_test or "",
                "noise": fmt_number(c.noise_floor),
                "shift": c.shift or c.note,
            }
        )
    hidden = len(result.columns) - len(rows)
    s = result.sampling
    champion = f"{result.model_name} v{result.champion_version} (run {result.champion_run_id})"
    facts = [
        ("Champion", champion),
        ("Window", f"{result.window}: {s.window_rows:,} rows, id {result.window_id}"),
        ("Reference", f"{s.reference_rows:,} rows (the champion's snapshot)"),
        ("Sampling", s.describe()),
        ("Thresholds", f"feature share ≥ {result.policy.drift_share:.0%} or score drift; "
                       f"minimum window {result.policy.min_window_rows:,} rows"),
        *performance_facts(result.performance),
        ("Report", result.report_html or "not written"),
        ("MLflow run", result.mlflow_run_id or "not logged"),
        ("Flow run", result.flow_run_url or "n/a"),
    ]  # fmt: skip
    found = links(result, secrets)
    note = report_note or (
        "The full report is linked above." if result.report_html else "No full report was written."
    )
    # short Content-IDs: a header over 78 characters gets folded or encoded, and mail clients
    # then fail to match it with the HTML's cid: reference
    token = uuid.uuid4().hex[:16]
    images = [
        InlineImage(
            cid=f"chart{i}.{token}@drift-check", data=chart.png, filename=f"{chart.name}.png"
        )
        for i, chart in enumerate(charts)
    ]
    shown = [
        {"cid": image.cid, "title": chart.title, "alt": chart.alt}
        for chart, image in zip(charts, images, strict=True)
    ]
    context = _clean(
        {
            "headline": result.headline(),
            "decided_by": decided_by(result),
            "signals": [sig.model_dump() for sig in signals(result)],
            "reasons": list(v.reasons),
            "action": action_text(result),
            "manual_command": result.manual_command,
            "rows": rows,
            "hidden": hidden,
            "facts": facts,
            "links": [link.model_dump() for link in found],
            "report_note": note,
            "problems": list(result.problems),
            "charts": shown,
        },
        secrets,
    )
    html_body = render(
        "drift_report.html",
        result=result,
        colour=colour,
        **context,
    )
    text_lines = [
        subject,
        "",
        f"Decided by: {context['decided_by']}.",
        *[f"  {sig['name']}: {sig['status']} ({sig['detail']})" for sig in context["signals"]],
        "",
        *context["reasons"],
        context["action"],
        f"Retrain by hand: {context['manual_command']}",
        "",
        "Columns (effect size against threshold):",
        *[
            f"  {r['column']}: {r['verdict']}, {r['method']} {r['statistic']} (threshold "
            f"{r['threshold']}), p {r['p_value']} {r['p_value_test']}; noise {r['noise']}"
            + (f"; {r['shift']}" if r["shift"] else "")
            for r in context["rows"]
        ],
        *([f"  ... {hidden} more columns without drift"] if hidden else []),
        "",
        *([f"Charts (pictures in the HTML part): {len(shown)}"] if shown else []),
        *[f"  {c['title']}: {c['alt']}" for c in context["charts"]],
        *([""] if shown else []),
        *[f"{name}: {value}" for name, value in context["facts"]],
        "",
        "Full report and runs:",
        *[
            f"  {link['text']}: {link['url']}" + (f" ({link['note']})" if link["note"] else "")
            for link in context["links"]
        ],
        f"  {context['report_note']}",
    ]
    if context["problems"]:
        text_lines += ["", "Problems:", *[f"  - {p}" for p in context["problems"]]]
    return EmailContent(
        subject=scrub(subject, secrets),
        html=html_body,
        text=scrub("\n".join(text_lines) + "\n", secrets),
        images=tuple(images),
    )


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
    smtp: mail.SmtpSettings,
    secrets: Iterable[str] = (),
) -> EmailMessage:
    """The drift email, with a gzip copy of the report when it fits ``smtp.max_message_bytes``."""
    secrets = tuple(secrets)
    limit = smtp.max_message_bytes
    if report_html is None or not report_html.is_file():
        return mail.compose_message(drift_email(result, charts, secrets=secrets), smtp)
    full = report_html.stat().st_size
    if limit <= 0:
        note = (
            f"The full report ({_mb(full)}) is not attached (attachments are off): see the links."
        )
        return mail.compose_message(drift_email(result, charts, note, secrets), smtp)
    copy = gzip_copy(report_html)
    attached = (
        f"A gzip copy of the full report is attached ({copy.filename}, "
        f"{len(copy.data) / 1000:,.0f} KB; {_mb(full)} unpacked)."
    )
    message = mail.compose_message(drift_email(result, charts, attached, secrets), smtp, [copy])
    size = message_size(message)
    if size <= limit:
        return message
    note = (
        f"The full report ({_mb(full)}, {_mb(len(copy.data))} compressed) is not attached: the "
        f"message would be {_mb(size)}, over the {_mb(limit)} mail limit "
        "(FRAUD_SMTP_MAX_MESSAGE_BYTES). Open it from the links."
    )
    return mail.compose_message(drift_email(result, charts, note, secrets), smtp)


def send_queued_mail(smtp: mail.SmtpSettings, outbox: Path, sleep: Sleep = time.sleep) -> list[str]:
    """Send what earlier runs left in the outbox; return the problems to report (never raises).

    A queued mail the server refuses for good is a problem of this check's report; the outbox
    must never block the check.
    """
    if not smtp.enabled:
        return []
    problems = []
    try:
        password = mail.resolve_password(smtp)
        for sent in mail_outbox.flush_outbox(smtp, outbox, password, sleep):
            if sent.status == "failed":  # refused for good: kept in outbox/failed, say so
                problems.append(f"outbox: {sent.subject!r} refused: {sent.detail}")
            else:
                log.info("queued mail %s: %s", sent.status, sent.subject)
    except Exception as err:
        problems.append(f"outbox: {type(err).__name__}")
    return problems


def send_report(
    result: DriftCheckResult,
    paths: dict[str, Path],
    smtp: mail.SmtpSettings,
    outbox: Path,
    sleep: Sleep = time.sleep,
    charts: Sequence[Chart] = (),
) -> mail_outbox.Delivery | None:
    """Mail the decision with its charts inline and links to the report; None when no mail is due.

    A gzip copy of the report is attached only within ``smtp.max_message_bytes``
    (:func:`report_message`). No mail for an all-clear unless
    ``mail_all_clear``. Delivery retries and queues the whole message in the outbox itself (see
    ``flows.alerting.outbox``), so this step never raises on SMTP errors.
    """
    dropped = result.performance is not None and result.performance.dropped
    all_clear = result.verdict.outcome == Outcome.NO_DRIFT and not dropped
    if not smtp.enabled or (all_clear and not smtp.mail_all_clear):
        return None
    try:
        password = mail.resolve_password(smtp)
    except Exception as err:  # the message still goes to the outbox when login fails
        log.warning("SMTP password could not be resolved: %s", type(err).__name__)
        password = None
    secrets = [password] if password else []
    message = report_message(result, charts, paths.get("html"), smtp, secrets)
    return mail_outbox.deliver(message, smtp, outbox, password, sleep)
