"""The result of one drift check and how a person reads it: Prefect markdown and the email."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flows.alerting.emails import EmailContent, render
from flows.monitoring.retraining import RetrainAction, RetrainDecision
from flows.monitoring.sampling import Sampling
from flows.monitoring.verdict import ColumnDrift, DriftPolicy, DriftVerdict, Outcome


class DriftCheckResult(BaseModel):
    """Everything one drift check found and did (also the flow run's return value)."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    champion_version: str
    champion_run_id: str
    checked_at: datetime
    window: str
    window_id: str
    window_start: datetime | None = None
    window_end: datetime | None = None
    policy: DriftPolicy
    verdict: DriftVerdict
    sampling: Sampling
    columns: list[ColumnDrift] = Field(default_factory=list)
    noise_floor_max: float | None = None
    noise_floor_column: str | None = None
    retrain: RetrainDecision
    manual_command: str
    report_dir: str | None = None
    report_html: str | None = None
    mlflow_run_id: str | None = None
    flow_run_url: str | None = None
    problems: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def drifted(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.drifted]

    def headline(self) -> str:
        """The outcome at a glance (also the email subject without the prefix)."""
        v = self.verdict
        if v.outcome == Outcome.NOT_ENOUGH_DATA:
            return (
                f"not enough data: {self.sampling.window_rows:,} rows in the window "
                f"(minimum {self.policy.min_window_rows:,})"
            )
        share = (
            f"{len(v.features_drifted)}/{v.features_tested} features drifted ({v.drift_share:.0%})"
        )
        score = ", score drifted" if v.score_drifted else ""
        if v.outcome == Outcome.NO_DRIFT:
            return f"no drift: {share}{score}"
        return f"DRIFT: {share}{score}; retraining {self.retrain.action.value}"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 1e-300" if value == 0 else f"{value:.2g}"


def action_text(result: DriftCheckResult) -> str:
    """What was done about retraining, in one sentence."""
    r = result.retrain
    if r.action == RetrainAction.TRIGGERED and r.flow_run_id:
        return (
            f"Started {r.deployment} flow run {r.flow_run_name} ({r.flow_run_id}) on "
            f"{r.data_path}. The candidate still has to pass every gate before it replaces "
            "the champion."
        )
    return f"No retraining started: {r.action.value} ({r.reason})."


def result_markdown(result: DriftCheckResult) -> str:
    """The Prefect artifact of a drift-check run: decision first, then the numbers."""
    v = result.verdict
    lines = [
        f"## {result.model_name} v{result.champion_version}: {result.headline()}",
        "",
        *[f"- {reason}" for reason in v.reasons],
        f"- {action_text(result)}",
        "",
        f"Window: {result.window} ({result.window_id}); {result.sampling.describe()}.",
    ]
    if result.noise_floor_max is not None:
        lines.append(
            f"No-drift noise floor at this window size: {result.noise_floor_max:.4f} "
            f"({result.noise_floor_column})."
        )
    if result.columns:
        lines += [
            "",
            "| column | kind | test | statistic | threshold | drifted | p-value | shift |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        ordered = sorted(result.columns, key=lambda c: (not c.drifted, c.column))
        for c in ordered:
            p = f"{_p(c.p_value)} ({c.p_value_test})" if c.p_value_test else "n/a"
            lines.append(
                f"| {c.column} | {c.kind} | {c.method} | {_fmt(c.statistic)} | "
                f"{_fmt(c.threshold, 2) if c.threshold is not None else 'n/a'} | "
                f"{'**yes**' if c.drifted else 'no'} | {p} | {c.shift or c.note} |"
            )
    s = result.sampling
    champion = f"{result.model_name} v{result.champion_version} (run {result.champion_run_id})"
    lines += [
        "",
        "| fact | value |",
        "| --- | --- |",
        f"| champion | {champion} |",
        f"| window rows / sampled | {s.window_rows:,} / {s.window_sampled:,} |",
        f"| reference rows / sampled | {s.reference_rows:,} / {s.reference_sampled:,} |",
        f"| HTML report | {result.report_html or 'none'} |",
        f"| MLflow run | {result.mlflow_run_id or 'none'} |",
        f"| flow run | {result.flow_run_url or 'n/a'} |",
        f"| retrain by hand | `{result.manual_command}` |",
    ]
    if result.problems:
        lines += ["", "Problems:", *[f"- {p}" for p in result.problems]]
    return "\n".join(lines) + "\n"


def drift_email(result: DriftCheckResult) -> EmailContent:
    """Subject with the outcome at a glance; an HTML body a person can decide from.

    The HTML is ``flows/alerting/templates/drift_report.html`` (autoescaped); the plain text
    alternative is built here.
    """
    v = result.verdict
    subject = f"[{result.model_name} v{result.champion_version}] {result.headline()}"
    colour = {"drift": "#b00020", "no drift": "#1b5e20"}.get(v.outcome.value, "#8a6d00")
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
                "statistic": _fmt(c.statistic),
                "threshold": _fmt(c.threshold, 2) if c.threshold is not None else "n/a",
                "verdict": "DRIFT" if c.drifted else "ok",
                "p_value": _p(c.p_value),
                "p_value_test": c.p_value_test or "",
                "noise": _fmt(c.noise_floor),
                "shift": c.shift or c.note,
            }
        )
    s = result.sampling
    champion = f"{result.model_name} v{result.champion_version} (run {result.champion_run_id})"
    facts = [
        ("Champion", champion),
        ("Window", f"{result.window}: {s.window_rows:,} rows, id {result.window_id}"),
        ("Reference", f"{s.reference_rows:,} rows (the champion's snapshot)"),
        ("Sampling", s.describe()),
        ("Thresholds", f"feature share ≥ {result.policy.drift_share:.0%} or score drift; "
                       f"minimum window {result.policy.min_window_rows:,} rows"),
        ("Report", result.report_html or "not written"),
        ("MLflow run", result.mlflow_run_id or "not logged"),
        ("Flow run", result.flow_run_url or "n/a"),
    ]  # fmt: skip
    html_body = render(
        "drift_report.html",
        result=result,
        headline=result.headline(),
        colour=colour,
        reasons=v.reasons,
        action=action_text(result),
        rows=rows,
        facts=facts,
        problems=result.problems,
    )
    text_lines = [
        subject,
        "",
        *v.reasons,
        action_text(result),
        f"Retrain by hand: {result.manual_command}",
        "",
        *[
            f"{c.column}: {c.method} {_fmt(c.statistic)} (threshold {c.threshold}), "
            f"p {_p(c.p_value)}; {c.shift or c.note}"
            for c in result.drifted
        ],
        "",
        f"Sampling: {s.describe()}",
        f"Report: {result.report_html or 'not written'}",
    ]
    return EmailContent(subject=subject, html=html_body, text="\n".join(text_lines))


def mlflow_payload(result: DriftCheckResult) -> dict[str, Any]:
    """Tags and metrics of the monitoring run in MLflow."""
    tags = {
        "model_name": result.model_name,
        "champion_version": result.champion_version,
        "champion_run_id": result.champion_run_id,
        "window_id": result.window_id,
        "outcome": result.verdict.outcome.value,
        "retrain.action": result.retrain.action.value,
        "retrain.flow_run_id": result.retrain.flow_run_id or "",
        "sampling": result.sampling.describe(),
    }
    metrics: dict[str, float] = {
        "window_rows": float(result.sampling.window_rows),
        "reference_rows": float(result.sampling.reference_rows),
        "drift_share": result.verdict.drift_share,
        "features_drifted": float(len(result.verdict.features_drifted)),
        "score_drifted": float(result.verdict.score_drifted),
    }
    for c in result.columns:
        if c.statistic is not None:
            metrics[f"drift.{c.column}"] = c.statistic
    return {"tags": tags, "metrics": metrics}
