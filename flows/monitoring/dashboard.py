"""Drift and realized performance over time: every check adds a point to an Evidently project.

Each drift check adds one small Evidently run to the project ``<model name>`` of a workspace
(``<home>/evidently`` by default, or the Evidently UI service at ``FRAUD_EVIDENTLY_URL``): a
report of ``MeanValue`` metrics over a one-row table of the check's own figures (share of drifted
features, the score's drift statistic, each feature's drift statistic, realized F1 with its
interval, precision, recall, label coverage), stamped with the check's time. The project's
dashboard plots them as lines over the checks, so a reader sees whether drift crept up for a
week or F1 slid, in ``make monitor-ui``. A one-row run keeps 90 daily checks light to load; the
full reports stay in the report folder and MLflow. Never raises into the check: the caller
reports a problem instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from data_contracts.inference_log import SCORE_COLUMN
from flows.monitoring.results import DriftCheckResult
from flows.monitoring.verdict import Outcome


def check_values(result: DriftCheckResult) -> dict[str, float]:
    """The figures one check adds to the dashboard (absent ones are left out, not zero)."""
    values: dict[str, float] = {}
    if result.verdict.outcome != Outcome.NOT_ENOUGH_DATA:
        values["drift_share"] = result.verdict.drift_share
        values["features_drifted"] = float(len(result.verdict.features_drifted))
        for c in result.columns:
            if c.statistic is not None:
                name = "score_drift" if c.column == SCORE_COLUMN else f"drift.{c.column}"
                values[name] = float(c.statistic)
    perf = result.performance
    if perf is not None and perf.status != "no feedback":
        values["label_coverage"] = perf.coverage
        for name in ("f1", "f1_low", "f1_high", "precision", "recall"):
            value = getattr(perf, name)
            if value is not None:
                values[f"realized_{name}"] = float(value)
    return {k: v for k, v in values.items() if not math.isnan(v)}


def _line(title: str, series: list[tuple[str, str]], description: str, size: str = "half") -> Any:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    return line_plot_panel(
        title,
        [
            PanelMetric(legend=legend, metric="MeanValue", metric_labels={"column": column})
            for legend, column in series
        ],
        description=description,
        size=size,
    )


def panels(feature_names: list[str]) -> list[Any]:
    """The dashboard's panels, in page order (one page: Evidently OSS has no tabs remotely)."""
    return [
        _line("Share of drifted features", [("share", "drift_share")],
              "drift-check decides drift at the policy's share (0.3 by default)"),
        _line("Score drift", [("score", "score_drift")],
              "drift statistic of the model score (threshold 0.1 by default)"),
        _line("Realized F1 on labelled feedback",
              [("F1", "realized_f1"), ("interval low", "realized_f1_low"),
               ("interval high", "realized_f1_high")],
              "served decisions against delayed labels, with the 95% bootstrap interval"),
        _line("Label coverage", [("labelled share", "label_coverage")],
              "share of the window's scored transactions with a label yet"),
        _line("Realized precision and recall",
              [("precision", "realized_precision"), ("recall", "realized_recall")],
              "at the served threshold"),
        _line("Per-feature drift statistic", [(f, f"drift.{f}") for f in feature_names],
              "Wasserstein (numeric) or Jensen-Shannon (categorical) per spec feature", "full"),
    ]  # fmt: skip


def open_workspace(root: Path | None, url: str | None) -> Any:
    """The Evidently UI service at ``url``, else the local workspace folder ``root``."""
    if url:
        from evidently.ui.workspace import RemoteWorkspace

        return RemoteWorkspace(url)
    from evidently.ui.workspace import Workspace

    assert root is not None
    root.mkdir(parents=True, exist_ok=True)
    return Workspace(str(root))


def project_for(workspace: Any, model_name: str, feature_names: list[str]) -> Any:
    """The model's project, created with its dashboard the first time."""
    found = list(workspace.search_project(model_name))
    if found:
        return found[0]
    project = workspace.create_project(
        model_name, description=f"drift-check of {model_name}: drift and realized performance"
    )
    for panel in panels(feature_names):
        project.dashboard.add_panel(panel)
    return project


def record_check(
    result: DriftCheckResult,
    feature_names: list[str],
    root: Path | None,
    url: str | None = None,
    workspace: Any = None,
) -> str | None:
    """Add this check's point to the model's project; the project id (None: nothing to add).

    ``workspace`` reuses an open workspace (a backfill of many checks opens it once).
    """
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue

    values = check_values(result)
    if not values:
        return None
    workspace = workspace or open_workspace(root, url)
    project = project_for(workspace, result.model_name, feature_names)
    frame = pd.DataFrame({k: [v] for k, v in values.items()})
    dataset = Dataset.from_pandas(
        frame, data_definition=DataDefinition(numerical_columns=list(values))
    )
    snapshot = Report([MeanValue(column=c) for c in values]).run(
        dataset,
        None,
        timestamp=result.checked_at.replace(tzinfo=None),
        tags=[f"v{result.champion_version}", result.verdict.outcome.value],
        metadata={"window_id": result.window_id, "champion_version": result.champion_version},
    )
    workspace.add_run(project.id, snapshot)
    return str(project.id)


def project_url(ui_url: str, project_id: str) -> str:
    """The dashboard page of a project in the Evidently UI."""
    return f"{ui_url.rstrip('/')}/projects/{project_id}"
