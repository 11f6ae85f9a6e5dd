"""Recent drift checks of a model, read back from the MLflow monitoring runs they logged.

Every check logs ``drift_share``, ``drift.<column>`` and its outcome to the monitoring
experiment (:func:`flows.monitoring.reports.mlflow_payload`); the history chart of the email is
drawn from those runs plus the check in progress, so no other store is needed. Checks with
"not enough data" carry no verdict and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from flows.core.settings import Settings
from flows.monitoring.charts import SERIES, HistoryPoint
from flows.monitoring.reports import mlflow_payload
from flows.monitoring.results import DriftCheckResult
from flows.monitoring.verdict import Outcome

HISTORY_CHECKS = 20


def point_of(result: DriftCheckResult) -> HistoryPoint:
    """This check as a history point (the same numbers it logs to MLflow)."""
    metrics = mlflow_payload(result)["metrics"]
    keys = {s.key for s in SERIES}
    return HistoryPoint(
        checked_at=result.checked_at,
        outcome=result.verdict.outcome.value,
        values={k: v for k, v in metrics.items() if k in keys},
    )


def _checked_at(tags: dict[str, str], start_ms: int) -> datetime:
    try:
        return datetime.fromisoformat(tags["checked_at"])
    except (KeyError, ValueError):
        return datetime.fromtimestamp(start_ms / 1000, UTC)


def recent_checks(
    settings: Settings, model_name: str, limit: int = HISTORY_CHECKS
) -> list[HistoryPoint]:
    """Up to ``limit`` latest checks of ``model_name`` with a verdict, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.monitoring_experiment)
    if experiment is None:
        return []
    quoted = model_name.replace("'", "")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.model_name = '{quoted}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit * 2,
    )
    keys = {s.key for s in SERIES}
    points = []
    for run in runs:
        tags = run.data.tags
        if tags.get("model_name") != model_name or tags.get("outcome") not in (
            Outcome.DRIFT.value,
            Outcome.NO_DRIFT.value,
        ):
            continue
        points.append(
            HistoryPoint(
                checked_at=_checked_at(tags, run.info.start_time),
                outcome=tags["outcome"],
                values={k: v for k, v in run.data.metrics.items() if k in keys},
            )
        )
    return sorted(points[:limit], key=lambda p: p.checked_at)


def with_current(
    earlier: Sequence[HistoryPoint], result: DriftCheckResult, limit: int = HISTORY_CHECKS
) -> list[HistoryPoint]:
    """The earlier checks and this one (when it has a verdict), the latest ``limit``."""
    points = list(earlier)
    if result.verdict.outcome != Outcome.NOT_ENOUGH_DATA:
        points.append(point_of(result))
    return sorted(points, key=lambda p: p.checked_at)[-limit:]
