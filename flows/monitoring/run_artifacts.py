"""What a drift-check run shows in the Prefect UI: the markdown summary, the per-column table
and the link artifacts.

The markdown leads with the decision and the signal that decided it. Kept apart from the result
model and from the email: this is the only module that talks to Prefect's artifact API, and the
Prefect view has its own layout (markdown tables) of the shared readings in
:mod:`flows.monitoring.results`. The markdown and the links are scrubbed of credentials and the
given secrets (``flows.alerting.redaction.scrub``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.alerting.redaction import scrub
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
            p = f"{fmt_p_value(c.p_value)} ({c.p_value_test})" if c.p_value_test else "n/a"
            lines.append(
                f"| {c.column} | {c.kind} | {c.method} | {fmt_number(c.statistic)} | "
                f"{fmt_number(c.threshold, 2) if c.threshold is not None else 'n/a'} | "
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
        *[f"| {name.lower()} | {value} |" for name, value in performance_facts(result.performance)],
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


def publish(result: DriftCheckResult) -> None:
    """The run's artifacts: the summary (which signal decided), the per-column table, links."""
    about = f"{result.model_name} v{result.champion_version}: {result.headline()}"
    create_markdown_artifact(key="drift-check", markdown=result_markdown(result), description=about)
    if result.columns:
        create_table_artifact(
            key="drift-columns", table=column_table(result), description=f"per column: {about}"
        )
    for link in links(result):
        create_link_artifact(
            key=link.key, link=link.url, link_text=link.text, description=link.note or about
        )
