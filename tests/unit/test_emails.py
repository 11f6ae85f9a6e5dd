"""The HTML mails come from autoescaped jinja2 templates: values never become markup."""

from __future__ import annotations

from datetime import UTC, datetime

from flows.alerting.emails import render
from flows.alerting.failure import FailureReport, Step, alert_email
from flows.monitoring.report_mail import drift_email
from tests.support.drift import result

EVIL = "<script>alert(1)</script>"


def test_drift_email_escapes_every_value():
    checked = result()
    columns = [checked.columns[0].model_copy(update={"column": EVIL, "shift": f"a & {EVIL}"})]
    evil = checked.model_copy(
        update={"columns": columns, "problems": [EVIL], "manual_command": f"run '{EVIL}'"}
    )
    html = drift_email(evil).html
    assert "<script>" not in html
    assert "<b>&lt;script&gt;alert(1)&lt;/script&gt;</b>" in html  # drifted columns in bold
    assert "a &amp; &lt;script&gt;" in html and "<h3>Problems</h3>" in html


def test_failure_alert_escapes_every_value_and_the_link():
    report = FailureReport(
        flow_name="drift-check",
        run_name=EVIL,
        run_id="r1",
        parameters={"window": {"rows": EVIL}},
        state_type="FAILED",
        state_name="Failed",
        error=f"ValueError: {EVIL}",
        steps=[Step(name="read-window", state="Failed", message=EVIL)],
        step_summary="read-window",
        champion="untouched",
        ui_url='http://ui/"onmouseover="x',
        occurred_at=datetime(2026, 3, 10, 12, 0, tzinfo=UTC),
    )
    html = alert_email(report).html
    assert "<script>" not in html and '"onmouseover="' not in html
    assert "<pre>ValueError: &lt;script&gt;" in html
    assert "<li><b>read-window</b>: Failed (&lt;script&gt;" in html


def test_templates_are_found_in_the_package():
    assert "<p>(defaults)</p>" in render(
        "failure_alert.html",
        r=FailureReport(
            flow_name="f", run_name="n", run_id="i", state_type="FAILED", state_name="Failed",
            step_summary="s", champion="c", occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        occurred="2026-01-01 00:00:00", error="e", state_message="", link=None,
    )  # fmt: skip
