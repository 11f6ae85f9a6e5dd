"""The model search in MLflow: its settings and the winner's scores on the release run, and one
nested run per candidate configuration under it."""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow import MlflowClient

from flows.training.search import SearchResult

CANDIDATE_TAG = "search.candidate"


def search_params(search: SearchResult | None) -> dict[str, Any]:
    """The search's settings as run parameters (``search.preset=off`` without a search)."""
    if search is None:
        return {"search.preset": "off"}
    return {f"search.{k}": v for k, v in search.settings.model_dump().items()} | {
        "search.folds_kind": search.folds_kind,
        "search.rows": search.search_rows,
        "search.winner": search.winner.name,
        "search.family": search.winner.family,
    }


def search_metrics(search: SearchResult | None) -> dict[str, float]:
    """The winner's cross-validated score and the search's cost, as run metrics."""
    if search is None:
        return {}
    return {
        "cv_average_precision": search.winner.cv_ap_mean or 0.0,
        "cv_average_precision_std": search.winner.cv_ap_std or 0.0,
        "search_seconds": search.seconds,
        "search_candidates_scored": sum(c.ok for c in search.ranking),
        "search_candidates_skipped": sum(c.status.startswith("skipped") for c in search.ranking),
        "oof_rows": search.oof_rows,
    }


def log_search_runs(parent_run_id: str, search: SearchResult) -> dict[str, str]:
    """One nested run per candidate under the release run, with its params, scores and status.

    Returns the child run id of each candidate. Safe to retry: a candidate that already has a
    child run of this parent gets it back instead of a duplicate.
    """
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    existing = {
        r.data.tags.get(CANDIDATE_TAG): r.info.run_id
        for r in client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"
        )
    }
    children = {}
    for rank, c in enumerate(search.ranking, start=1):
        with mlflow.start_run(
            run_id=existing.get(c.name),
            run_name=None if c.name in existing else f"candidate-{c.name}",
            nested=True,
            parent_run_id=parent_run_id,
        ) as child:
            winner = str(c.name == search.winner.name).lower()
            mlflow.set_tags(
                {
                    CANDIDATE_TAG: c.name,
                    "search.family": c.family,
                    "search.status": c.status,
                    "search.winner": winner,
                }
            )
            mlflow.log_params({"family": c.family, **c.params})
            scores = {"fit_seconds": c.fit_seconds}
            if c.ok:
                scores["cv_average_precision"] = c.cv_ap_mean or 0.0
                scores["cv_average_precision_std"] = c.cv_ap_std or 0.0
                scores["rank"] = rank
            if c.boosting_rounds is not None:
                scores["boosting_rounds"] = c.boosting_rounds
            mlflow.log_metrics(scores)
            children[c.name] = child.info.run_id
    return children
