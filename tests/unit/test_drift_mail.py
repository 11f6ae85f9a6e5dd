"""The drift email as MIME: inline charts by Content-ID, a complete text part, the report linked
and attached (compressed) only within the size limit, redaction, and the outbox keeping it all."""

from __future__ import annotations

import gzip
import re
from email import policy
from email.parser import BytesParser

import pytest

from flows.alerting.outbox import deliver
from flows.alerting.smtp import SmtpSettings
from flows.core.http import free_port
from flows.monitoring.charts import Chart
from flows.monitoring.report_mail import drift_email, message_size, report_message
from tests.support.drift import result

SECRET = "s3cr3t-pa55"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
CHARTS = [
    Chart(
        name="history", title="last 3 checks", alt="share of drifted features: 0.1, 0.6", png=PNG
    ),
    Chart(name="dist-amount", title="amount", alt="amount: median 56.87 → 103.1", png=PNG + b"1"),
]


def smtp(limit: int = 1_000_000) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=free_port(), recipients=["ops@example.test"],
                        max_message_bytes=limit, retries=1, timeout=1)  # fmt: skip


def report(tmp_path, size: int, compressible: bool = True):
    path = tmp_path / "drift_report.html"
    if compressible:
        body = ("<div class='evidently'>drift</div>\n" * (size // 34 + 1))[:size]
    else:
        import random

        rnd = random.Random(0)
        body = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(size))
    path.write_text(f"<html>{body}</html>")
    return path


def parse(message):
    return BytesParser(policy=policy.default).parsebytes(message.as_bytes(policy=policy.SMTP))


def test_charts_are_related_parts_that_the_html_references(tmp_path):
    msg = parse(report_message(result(), CHARTS, None, smtp()))
    assert msg.get_content_type() == "multipart/alternative"
    text, related = msg.get_payload()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, *images = related.get_payload()
    assert html_part.get_content_type() == "text/html"
    assert [i.get_content_type() for i in images] == ["image/png", "image/png"]
    html = html_part.get_content()
    referenced = set(re.findall(r"src='cid:([^']+)'", html))
    ids = {str(i["Content-ID"]).strip().strip("<>") for i in images}
    assert referenced == ids and len(ids) == 2
    for image in images:  # short headers: a folded or encoded Content-ID would not match
        assert len(f"Content-ID: {image['Content-ID']}") <= 78
    assert [i.get_content() for i in images] == [PNG, PNG + b"1"]
    assert "share of drifted features: 0.1, 0.6" in html  # the alt text is shown as caption too


def test_the_text_part_is_complete_without_the_pictures():
    text = drift_email(result(), CHARTS).text
    for expected in ("DRIFT: 2/3 features drifted", "Decided by: input drift and score drift",
                     "realized performance: not measured", "model score drifted",
                     "brisk-heron", "uv run prefect deployment run",
                     "merchant_category: DRIFT", "gaming: 3.1% → 31.4%", "channel: ok",
                     "amount: median 56.87 → 103.1", "share of drifted features: 0.1, 0.6",
                     "Sampling: uniform", "/h/drift_reports/x/drift_report.html",
                     "MLflow run: run-42", "The full report is linked above."):  # fmt: skip
        assert expected in text, expected


def test_a_small_report_rides_along_compressed(tmp_path):
    path = report(tmp_path, 400_000)
    msg = parse(report_message(result(), CHARTS, path, smtp()))
    assert msg.get_content_type() == "multipart/mixed"
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "drift_report.html.gz"
    assert attachment.get_content_type() == "application/gzip"
    assert gzip.decompress(attachment.get_content()) == path.read_bytes()
    assert "A gzip copy of the full report is attached" in msg.get_body(("plain",)).get_content()
    assert message_size(msg) <= 1_000_000


def test_a_report_over_the_limit_is_linked_not_attached(tmp_path):
    path = report(tmp_path, 900_000, compressible=False)  # ~600 KB gzip, ~800 KB base64
    limit = 500_000
    msg = parse(report_message(result(), CHARTS, path, smtp(limit)))
    assert list(msg.iter_attachments()) == []
    assert message_size(msg) < limit
    text = msg.get_body(("plain",)).get_content()
    assert "is not attached: the message would be" in text and "0.5 MB mail limit" in text
    assert "FRAUD_SMTP_MAX_MESSAGE_BYTES" in msg.get_body(("html",)).get_content()
    off = parse(report_message(result(), CHARTS, report(tmp_path, 1000), smtp(0)))
    assert list(off.iter_attachments()) == []
    assert "attachments are off" in off.get_body(("plain",)).get_content()


def test_no_image_and_no_attachment_without_charts_or_report():
    msg = parse(report_message(result(), [], None, smtp()))
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/alternative", "text/plain", "text/html"]  # fmt: skip


@pytest.mark.parametrize("part", ["plain", "html"])
def test_redaction_applies_to_everything_added_to_the_mail(part):
    leaky = result().model_copy(
        update={
            "problems": [
                f"MLflow: OperationalError: postgresql://mlflow:{SECRET}@db:5432/mlflow",
                f"history of recent checks: login with {SECRET} refused",
            ],
            "mlflow_run_url": f"https://monitor:{SECRET}@mlflow.internal/#/runs/run-42",
            "flow_run_url": "http://127.0.0.1:4200/runs/flow-run/f1",
            "release_run_url": "http://127.0.0.1:4200/runs/flow-run/0f6b1c2d",
        }
    )
    charts = [Chart(name="dist-x", title=f"x {SECRET}", alt=f"x with {SECRET}", png=PNG)]
    msg = parse(report_message(leaky, charts, None, smtp(), [SECRET]))
    raw = msg.as_string()
    body = msg.get_body((part,)).get_content()
    assert SECRET not in raw and "mlflow:" + SECRET not in body
    assert "database URL removed" in body
    assert "https://***@mlflow.internal/#/runs/run-42" in body
    assert "http://127.0.0.1:4200/runs/flow-run/0f6b1c2d" in body  # the release run is linked
    assert SECRET not in msg["Subject"]


def test_the_outbox_keeps_the_whole_message_with_its_images(tmp_path):
    settings = smtp()
    path = report(tmp_path, 300_000)
    message = report_message(result(), CHARTS, path, settings)
    delivery = deliver(message, settings, tmp_path / "outbox", None, sleep=lambda _: None)
    assert delivery.status == "queued"
    with open(delivery.outbox_path, "rb") as stored:
        queued = BytesParser(policy=policy.default).parse(stored)
    images = [p for p in queued.walk() if p.get_content_maintype() == "image"]
    assert [i.get_content() for i in images] == [PNG, PNG + b"1"]
    (attachment,) = list(queued.iter_attachments())
    assert gzip.decompress(attachment.get_content()) == path.read_bytes()
    assert queued.get_body(("plain",)).get_content() == message.get_body(("plain",)).get_content()
