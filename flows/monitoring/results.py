"""The result of one drift check and how a person reads it: Prefect artifacts and the email.

Every text a person is shown (the email's HTML and plain text, the Prefect markdown, the table
and the links) goes through ``flows.alerting.redaction.scrub``: database URLs, credentials in
URLs and the given secrets (the SMTP password) never reach a mailbox or the Prefect UI.

Over 400 lines because the markdown, table, links and email are built from one scrubbed view
of the result; splitting them would pass that view across modules for no reuse.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from data_contracts.inference_log import SCORE_COLUMN
from flows.alerting.emails import EmailContent, InlineImage, render
from flows.alerting.redaction import scrub
from flows.monitoring.charts import Chart
from flows.monitoring.feedback import RealizedPerformance
from flows.monitoring.retraining import RetrainAction, RetrainDecision
from flows.monitoring.sampling import Sampling
from flows.monitoring.verdict import ColumnDrift, DriftPolicy, DriftVerdict, Outcome

LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"  # what `make mlflow-ui` serves for the local store


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
    mlflow_run_url: str | None = None
    flow_run_url: str | None = None
    release_run_url: str | None = None
    problems: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    performance: RealizedPerformance | None = None
    dashboard_url: str | None = None

    @property
    def realized_dropped(self) -> bool:
        return self.performance is not None and self.performance.dropped

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
        perf = self.performance
        if perf is not None and perf.dropped and perf.f1 is not None:
            drift = "DRIFT" if v.outcome == Outcome.DRIFT else "no input drift"
            return (
                f"REALIZED PERFORMANCE DROPPED: F1 {perf.f1:.3f} vs holdout "
                f"{perf.champion_f1:.3f}; {drift}: {share}{score}; "
                f"retraining {self.retrain.action.value}"
            )
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


class Signal(BaseModel):
    """One signal a drift check judges, and whether it decided this check."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: Literal["decided", "within limits", "not judged", "not measured"]
    detail: str


def signals(result: DriftCheckResult) -> list[Signal]:
    """Input drift, score drift and realized performance, each with its status.

    Realized performance (the served model's F1 on labelled feedback joined to the window)
    decides when it dropped; "not judged" with too few labels, "not measured" without feedback.
    """
    v, policy = result.verdict, result.policy
    if v.outcome == Outcome.NOT_ENOUGH_DATA:
        why = "window below the minimum size"
        judged = [Signal(name="input drift", status="not judged", detail=why),
                  Signal(name="score drift", status="not judged", detail=why)]  # fmt: skip
    else:
        crossed = v.drift_share >= policy.drift_share
        sign = "≥" if crossed else "<"
        share = (
            f"{len(v.features_drifted)} of {v.features_tested} features drifted "
            f"({v.drift_share:.0%} {sign} {policy.drift_share:.0%})"
        )
        score = next((c for c in result.columns if c.column == SCORE_COLUMN), None)
        if score is None or score.statistic is None:
            score_detail = "score not tested"
        else:
            sign = "≥" if score.drifted else "<"
            score_detail = f"{score.method} {score.statistic:.3f} {sign} {score.threshold}"
        judged = [
            Signal(name="input drift", status="decided" if crossed else "within limits",
                   detail=share),
            Signal(name="score drift", status="decided" if v.score_drifted else "within limits",
                   detail=score_detail),
        ]  # fmt: skip
    return [*judged, realized_signal(result.performance)]


def realized_signal(perf: RealizedPerformance | None) -> Signal:
    """The realized-performance signal of a check."""
    name = "realized performance"
    if perf is None or perf.status == "no feedback":
        return Signal(name=name, status="not measured", detail="no labelled feedback yet")
    coverage = f"; label coverage {perf.coverage:.1%} of {perf.scored_rows:,} scored rows"
    status = {"dropped": "decided", "within limits": "within limits"}.get(perf.status, "not judged")
    return Signal(name=name, status=status, detail=perf.detail + coverage)  # type: ignore[arg-type]


def decided_by(result: DriftCheckResult) -> str:
    """Which signals decided, in one line (``score drift``, ``input drift and score drift``)."""
    names = [s.name for s in signals(result) if s.status == "decided"]
    if names:
        return " and ".join(names)
    if result.verdict.outcome == Outcome.NOT_ENOUGH_DATA:
        return "nothing: not enough data for a verdict"
    return "nothing: every signal within its limits"


class Link(BaseModel):
    """Where to look further: the report, the MLflow run, the Prefect runs."""

    model_config = ConfigDict(frozen=True)

    key: str  # a Prefect artifact key: lowercase letters, digits, dashes
    text: str
    url: str
    note: str = ""


def links(result: DriftCheckResult, secrets: Iterable[str] = ()) -> list[Link]:
    """The links of this check (only those it has), scrubbed of credentials and secrets."""
    from pathlib import Path

    out = []
    if result.report_html:
        url = Path(result.report_html).resolve().as_uri()
        note = "on the host that ran the check; also in the MLflow run"
        out.append(Link(key="drift-report", text="full Evidently report", url=url, note=note))
    perf = result.performance
    if perf is not None and perf.report_html:
        url = Path(perf.report_html).resolve().as_uri()
        text = "Evidently classification report of the labelled rows"
        out.append(Link(key="drift-performance-report", text=text, url=url))
    if result.mlflow_run_url:
        note = "reports, charts and metrics of this check"
        if result.mlflow_run_url.startswith(LOCAL_MLFLOW_UI):
            note += "; start the UI with make mlflow-ui"
        text = f"MLflow run {result.mlflow_run_id}"
        out.append(Link(key="drift-mlflow-run", text=text, url=result.mlflow_run_url, note=note))
    if result.dashboard_url:
        text = "drift and realized performance over time (Evidently dashboard)"
        note = "start the UI with make monitor-ui" if "127.0.0.1" in result.dashboard_url else None
        out.append(Link(key="drift-dashboard", text=text, url=result.dashboard_url, note=note))
    if result.flow_run_url:
        text = "this drift-check run in Prefect"
        out.append(Link(key="drift-check-run", text=text, url=result.flow_run_url))
    if result.release_run_url:
        r = result.retrain
        text = f"triggered {r.deployment} run {r.flow_run_name or r.flow_run_id}"
        out.append(Link(key="drift-release-run", text=text, url=result.release_run_url))
    secrets = tuple(secrets)
    return [
        link.model_copy(update={"url": scrub(link.url, secrets), "text": scrub(link.text, secrets)})
        for link in out
    ]


def column_table(result: DriftCheckResult) -> list[dict[str, Any]]:
    """Per-column results as rows of a Prefect table artifact, drifted columns first."""
    ordered = sorted(result.columns, key=lambda c: (not c.drifted, -(c.statistic or 0)))
    return [
        {
            "column": c.column,
            "kind": c.kind,
            "test": c.method,
            "statistic": None if c.statistic is None else round(c.statistic, 4),
            "threshold": c.threshold,
            "drifted": c.drifted,
            "p_value": None if c.p_value is None else float(f"{c.p_value:.3g}"),
            "p_value_test": c.p_value_test or "",
            "noise_floor": None if c.noise_floor is None else round(c.noise_floor, 4),
            "what_changed": c.shift or c.note,
        }
        for c in ordered
    ]


def result_markdown(result: DriftCheckResult, secrets: Iterable[str] = ()) -> str:
    """The Prefect artifact of a drift-check run: decision and deciding signal first."""
    v = result.verdict
    lines = [
        f"## {result.model_name} v{result.champion_version}: {result.headline()}",
        "",
        f"**Decided by: {decided_by(result)}.**",
        "",
        "| signal | status | detail |",
        "| --- | --- | --- |",
        *[f"| {s.name} | {s.status} | {s.detail} |" for s in signals(result)],
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
        *[
            f"| {name.lower()} | {value} |"
            for name, value in _performance_facts(result.performance)
        ],
        f"| HTML report | {result.report_html or 'none'} |",
        f"| MLflow run | {result.mlflow_run_id or 'none'} |",
        f"| flow run | {result.flow_run_url or 'n/a'} |",
        f"| retrain by hand | `{result.manual_command}` |",
    ]
    found = links(result, secrets)
    if found:
        lines += ["", "Links:", *[f"- [{link.text}]({link.url})" for link in found]]
    if result.problems:
        lines += ["", "Problems:", *[f"- {p}" for p in result.problems]]
    return scrub("\n".join(lines) + "\n", tuple(secrets))


def _clean(value: Any, secrets: tuple[str, ...]) -> Any:
    """Every string inside ``value`` scrubbed (lists, tuples and dicts walked)."""
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {k: _clean(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clean(v, secrets) for v in value)
    return value


def _performance_facts(perf: RealizedPerformance | None) -> list[tuple[str, str]]:
    """Rows of the email's facts table about labelled feedback (none without feedback)."""
    if perf is None or perf.status == "no feedback":
        return []
    rows = [
        (
            "Labels",
            f"{perf.labelled:,} of {perf.scored_rows:,} scored rows labelled "
            f"({perf.coverage:.1%}), {perf.positives:,} frauds",
        )
    ]
    if perf.f1 is not None:
        rows.append(
            (
                "Realized",
                f"precision {perf.precision:.3f}, recall {perf.recall:.3f}, F1 {perf.f1:.3f} "
                f"[{perf.f1_low:.3f}, {perf.f1_high:.3f}], PR-AUC "
                + ("n/a" if perf.pr_auc is None else f"{perf.pr_auc:.3f}")
                + (f"; holdout F1 {perf.champion_f1:.3f}" if perf.champion_f1 is not None else ""),
            )
        )
    faults = perf.counts.faults()
    if faults:
        rows.append(("Feedback faults", "; ".join(faults)))
    return rows


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
                "statistic": _fmt(c.statistic),
                "threshold": _fmt(c.threshold, 2) if c.threshold is not None else "n/a",
                "verdict": "DRIFT" if c.drifted else "ok",
                "p_value": _p(c.p_value),
                "p_value_test": c.p_value_test or "",
                "noise": _fmt(c.noise_floor),
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
        *_performance_facts(result.performance),
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
        "checked_at": result.checked_at.isoformat(),
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
    if result.performance is not None:
        tags["realized.status"] = result.performance.status
        metrics.update(result.performance.metrics())
    return {"tags": tags, "metrics": metrics}
