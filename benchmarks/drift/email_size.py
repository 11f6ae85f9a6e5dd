"""Size of the drift email on the demo's data: the lean mail (inline charts, links) vs the old one.

Runs the real drift check twice in a temporary home, as ``make demo-drift`` does: a champion
whose reference snapshot is 60,000 unseen rows (what a 200,000-row training set leaves for
validation + holdout), first a window of 5,000 normal rows, then 5,000 drifted rows (amounts
x1.8, half the merchant mix moved). The SMTP server is unreachable on purpose, so every mail
lands in the outbox as the full message; its size is read there. The "before" figure is the
same result composed as the previous release did: HTML + text, the full Evidently HTML
attached, no charts.

    uv run python -m benchmarks.drift.email_size [--reference-rows 60000] [--window-rows 5000]
    [--html-out /tmp/drift_email.html]   # the HTML with the images as data: URIs, for a browser
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pandas as pd

from benchmarks.drift.bench import stand_in_score
from data_contracts.inference_log import LogFiles, build_table
from data_contracts.spec import default_spec
from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.alerting.smtp import SmtpSettings, compose_message
from flows.core.http import free_port
from flows.core.settings import Settings
from flows.monitoring.check import run_drift_check
from flows.monitoring.config import DriftCheckConfig
from flows.monitoring.report_mail import drift_email, message_size
from flows.monitoring.window import Window
from tests.support.drift import register_reference_champion

DRIFT = DriftKnobs(amount_scale=1.8, merchant_shift=0.5)


def serve(frame: pd.DataFrame, settings: Settings, version: str, end: datetime) -> None:
    """Write ``frame`` to the inference log as the bento would, ending at ``end``."""
    frame = frame.copy()
    frame["score"] = stand_in_score(frame)
    stamps = [end - timedelta(seconds=2 * (i + 1)) for i in range(len(frame))]
    table = build_table(
        default_spec(), frame, scores=frame["score"], decisions=frame["score"] >= 0.5,
        timestamps=pd.to_datetime(pd.Series(stamps), utc=True), model_version=f"v{version}",
        request_ids="bench",
    )  # fmt: skip
    LogFiles(settings.inference_log_root).write(table)


def inline_html(message) -> str:
    """The HTML part with every ``cid:`` image replaced by a data: URI (for a browser)."""
    html = message.get_body(("html",)).get_content()
    related = message.get_body(("related",))
    for part in related.iter_parts() if related is not None else []:
        cid = str(part.get("Content-ID", "")).strip().strip("<>")
        if cid:
            data = base64.b64encode(part.get_content()).decode()
            html = html.replace(f"cid:{cid}", f"data:{part.get_content_type()};base64,{data}")
    return html


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-rows", type=int, default=60_000)
    parser.add_argument("--window-rows", type=int, default=5_000)
    parser.add_argument("--html-out", type=Path, help="write the lean HTML with data: URIs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FRAUD_HOME"] = str(Path(tmp) / "home")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        settings = Settings()
        reference = generate(GeneratorConfig(rows=args.reference_rows, seed=201))
        reference["score"] = stand_in_score(reference)
        version = register_reference_champion(settings, reference)
        smtp = SmtpSettings(host="127.0.0.1", port=free_port(), recipients=["risk@example.test"],
                            retries=1, timeout=2, mail_all_clear=True)  # fmt: skip
        config = DriftCheckConfig(window=Window(rows=args.window_rows))
        checks = [("normal", DriftKnobs()), ("drifted", DRIFT)]
        start = datetime.now(UTC) - timedelta(hours=2)
        for i, (name, knobs) in enumerate(checks):
            now = start + timedelta(hours=i + 1)
            window = generate(GeneratorConfig(rows=args.window_rows, seed=202 + i, drift=knobs))
            serve(window, settings, version, now)
            started = time.perf_counter()
            result, delivery = run_drift_check(
                settings, config, smtp, now=now, recent_runs=lambda _: [],
                trigger=lambda decision, _: decision,
            )  # fmt: skip
            took = time.perf_counter() - started
            print(f"{name} window: {result.headline()} ({took:.1f} s)")
        assert delivery is not None and delivery.outbox_path, delivery
        raw = Path(delivery.outbox_path).read_bytes()
        lean = BytesParser(policy=policy.default).parsebytes(raw)
        report = Path(result.report_html)
        before = compose_message(drift_email(result), smtp, [report])
        before_size, after_size = message_size(before), len(raw)
        images = [p for p in lean.walk() if p.get_content_maintype() == "image"]
        attached = [a.get_filename() for a in lean.iter_attachments()]
        print(f"Evidently HTML report: {report.stat().st_size / 1e6:.2f} MB")
        print(f"before (full HTML attached): {before_size / 1e6:.2f} MB ({before_size:,} bytes)")
        print(f"after (inline charts, links): {after_size / 1e6:.3f} MB ({after_size:,} bytes)")
        print(f"ratio before/after: {before_size / after_size:.1f}x")
        sizes = ", ".join(f"{len(p.get_content()) / 1000:.0f} KB" for p in images)
        print(f"inline charts: {len(images)} ({sizes}); attachments: {attached or 'none'}")
        if args.html_out:
            args.html_out.write_text(inline_html(lean))
            print(f"HTML with data: URIs written to {args.html_out}")


if __name__ == "__main__":
    main()
