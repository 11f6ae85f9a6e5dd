"""Builders shared by the drift-check tests: a check result, a served log, a registered
champion with its reference snapshot, and a mail catcher."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pandas as pd

from data_contracts.artifacts import REFERENCE_ARTIFACT
from data_contracts.inference_log import LogFiles, build_table
from data_contracts.spec import FeatureSpec
from flows.core.settings import Settings
from flows.monitoring.results import DriftCheckResult
from flows.monitoring.retraining import RetrainAction, RetrainDecision
from flows.monitoring.sampling import Sampling
from flows.monitoring.statistics import JENSEN_SHANNON, WASSERSTEIN
from flows.monitoring.verdict import ColumnDrift, DriftPolicy, decide

DEP = "train-and-release/fraud-detector"


def write_log(
    frame: pd.DataFrame, root: Path, spec: FeatureSpec, model_version: str, threshold: float = 0.5
) -> list[Path]:
    """Write ``frame`` (features, ``score``, ``timestamp``, optionally ``transaction_id``) with
    the inference log's one writer (ids hashed with the home folder's key)."""
    ids = list(frame["transaction_id"]) if "transaction_id" in frame.columns else None
    table = build_table(
        spec,
        frame,
        scores=frame["score"],
        decisions=frame["score"] >= threshold,
        timestamps=pd.to_datetime(frame["timestamp"], utc=True),
        model_version=str(model_version),
        request_ids="backfill",
        transaction_ids=ids,
    )
    written = LogFiles(root).write(table)
    assert not written.failures, written.failures
    return written.files


def columns(drifted: bool) -> list[ColumnDrift]:
    out = [
        ColumnDrift(column="amount", kind="numeric", method=WASSERSTEIN, statistic=0.4731,
                    threshold=0.1, drifted=drifted, p_value=0.0, p_value_test="KS",
                    noise_floor=0.012, shift="median 56.87 → 103.1"),
        ColumnDrift(column="merchant_category", kind="categorical", method=JENSEN_SHANNON,
                    statistic=0.3953, threshold=0.1, drifted=drifted, p_value=2.5e-40,
                    p_value_test="chi-squared", noise_floor=0.01, shift="gaming: 3.1% → 31.4%"),
        ColumnDrift(column="channel", kind="categorical", method=JENSEN_SHANNON, statistic=0.0031,
                    threshold=0.1, drifted=False, p_value=0.61, p_value_test="chi-squared"),
        ColumnDrift(column="score", kind="score", method=WASSERSTEIN, statistic=0.2585,
                    threshold=0.1, drifted=drifted, p_value=3.4e-186, p_value_test="KS"),
    ]  # fmt: skip
    return out


def result(drifted: bool = True, triggered: bool = True) -> DriftCheckResult:
    """A drift-check result like the flow produces (drift + triggered, or all clear)."""
    policy = DriftPolicy(drift_share=0.5)
    cols = columns(drifted)
    retrain = RetrainDecision(
        action=RetrainAction.TRIGGERED if triggered else RetrainAction.NOT_NEEDED,
        reason="drift crossed the threshold" if triggered else "drift below the threshold",
        deployment=DEP,
        idempotency_key=f"drift-retrain:{DEP}:v3-w" if triggered else None,
        data_path="/h/work/retrain/train.parquet" if triggered else None,
        flow_run_id="0f6b1c2d-1111-2222-3333-444455556666" if triggered else None,
        flow_run_name="brisk-heron" if triggered else None,
    )
    return DriftCheckResult(
        model_name="fraud-detector",
        champion_version="3",
        champion_run_id="abc123",
        checked_at=datetime(2026, 3, 10, 12, 0, tzinfo=UTC),
        window="last 24 h",
        window_id="v3-20260309T1200-20260310T1159-0123456789",
        policy=policy,
        verdict=decide(cols, policy),
        sampling=Sampling(
            reference_rows=200_000,
            window_rows=1_000_000,
            reference_sampled=50_000,
            window_sampled=50_000,
            seed=0,
        ),
        columns=cols,
        noise_floor_max=0.012,
        noise_floor_column="amount",
        retrain=retrain,
        manual_command=f"uv run prefect deployment run '{DEP}' --param data_path=/h/t.parquet",
        report_html="/h/drift_reports/x/drift_report.html",
        mlflow_run_id="run-42",
    )


class Inbox:
    """aiosmtpd handler that keeps every envelope."""

    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        return [
            BytesParser(policy=policy.default).parsebytes(e.original_content)
            for e in self.envelopes
        ]


def register_reference_champion(settings: Settings, reference: pd.DataFrame) -> str:
    """Register a version whose run holds ``reference`` as its snapshot and give it the
    champion alias, in the real MLflow registry of ``settings``; return the version."""
    from mlflow import MlflowClient

    settings.artifact_root.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    exp = client.create_experiment(
        "train-and-release", artifact_location=settings.artifact_root.resolve().as_uri()
    )
    run = client.create_run(exp)
    path = settings.work_dir / "reference.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(path, index=False)
    client.log_artifact(run.info.run_id, str(path), Path(REFERENCE_ARTIFACT).parent.as_posix())
    client.create_registered_model("fraud-detector")
    mv = client.create_model_version(
        "fraud-detector", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("fraud-detector", "champion", mv.version)
    return str(mv.version)


@contextmanager
def mail_catcher(handler: Inbox, port: int, **extra: Any) -> Iterator[Inbox]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1:``port`` keeping mail in ``handler``."""
    from aiosmtpd.controller import Controller

    controller = Controller(handler, hostname="127.0.0.1", port=port, **extra)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


def smtp_env(port: int, recipients: str = "risk-team@example.test", **more: str) -> dict[str, str]:
    """The stack's mail settings for a catcher on ``port`` (``more``: further FRAUD_SMTP_*)."""
    return {
        "FRAUD_SMTP_HOST": "127.0.0.1",
        "FRAUD_SMTP_PORT": str(port),
        "FRAUD_SMTP_SENDER": "fraud-monitor@example.test",
        "FRAUD_SMTP_RECIPIENTS": recipients,
        **more,
    }
