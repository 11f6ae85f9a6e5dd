"""Where a drift check's reports go: the home folder (Evidently HTML + JSON, our decision JSON)
and the MLflow monitoring experiment (the same files, tagged with the champion version, and the
check's statistics as metrics: :func:`mlflow_payload`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows.alerting.redaction import scrub
from flows.core.settings import Settings
from flows.monitoring.analysis import DriftAnalysis
from flows.monitoring.results import LOCAL_MLFLOW_UI, DriftCheckResult


def save_reports(analysis: DriftAnalysis, folder: Path, facts: dict[str, Any]) -> dict[str, Path]:
    """Write the Evidently HTML and JSON plus our decision JSON into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if analysis.snapshot is not None:
        paths["html"] = folder / "drift_report.html"
        paths["json"] = folder / "drift_report.json"
        analysis.snapshot.save_html(str(paths["html"]))
        paths["json"].write_text(json.dumps(analysis.snapshot.dict(), indent=1, default=str))
    paths["decision"] = folder / "decision.json"
    decision = {
        **facts,
        "verdict": analysis.verdict.model_dump(mode="json"),
        "sampling": {**analysis.sampling.model_dump(), "statement": analysis.sampling.describe()},
        "columns": [r.model_dump(mode="json") for r in analysis.results],
        "summary": analysis.summary,
    }
    paths["decision"].write_text(json.dumps(decision, indent=1, default=str))
    return paths


def complete_decision(path: Path, result: dict[str, Any]) -> None:
    """Replace the decision JSON's ``result`` with the final one (MLflow run, dashboard links).

    The decision file is written before MLflow and the dashboard record the check (MLflow logs
    it); this rewrite, atomic, lets the local copy name where the check was recorded too.
    """
    decision = json.loads(path.read_text())
    decision["result"] = result
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(decision, indent=1, default=str))
    tmp.replace(path)


def mlflow_run_url(settings: Settings, run_id: str) -> str | None:
    """The run's page in the MLflow UI: the tracking server's, or `make mlflow-ui`'s for the
    embedded store; None for a tracking URI that is no web server (e.g. a database URL).
    Credentials in the tracking URI are removed: the link is shown in mail and in Prefect."""
    if settings.uses_local_mlflow:
        base = LOCAL_MLFLOW_UI
    elif settings.tracking_uri.startswith(("http://", "https://")):
        base = settings.tracking_uri.rstrip("/")
    else:
        return None
    return scrub(f"{base}/#/runs/{run_id}")


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


def log_monitoring_run(settings: Settings, result: DriftCheckResult, paths: dict[str, Path]) -> str:
    """Log reports, tags (champion version, outcome) and statistics to the monitoring experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.monitoring_experiment)
    if experiment is None:
        location = None
        if settings.uses_local_mlflow:
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = settings.artifact_root.resolve().as_uri()
        experiment_id = client.create_experiment(
            settings.monitoring_experiment, artifact_location=location
        )
    else:
        experiment_id = experiment.experiment_id
    payload = mlflow_payload(result)
    run = client.create_run(
        experiment_id,
        tags=payload["tags"],
        run_name=f"drift-{result.model_name}-v{result.champion_version}-{result.checked_at:%Y%m%dT%H%M}",
    )
    run_id = run.info.run_id
    for key, value in payload["metrics"].items():
        client.log_metric(run_id, key, value)
    for path in paths.values():
        client.log_artifact(run_id, str(path), "drift_report")
    client.set_terminated(run_id)
    return run_id
