"""The champion's reference snapshot: the rows a drift check compares the window with.

The release logs it in the champion's MLflow run (``REFERENCE_ARTIFACT``, unseen rows with the
model's ``score``), so the reference follows the champion when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_contracts.artifacts import REFERENCE_ARTIFACT
from data_contracts.inference_log import SCORE_COLUMN

HOLDOUT_F1_METRIC = "holdout_f1"  # logged by the release on the version's run


@dataclass(frozen=True)
class Reference:
    """The champion's reference snapshot and where it came from."""

    model_name: str
    version: str
    run_id: str
    frame: pa.Table
    holdout_f1: float | None = None  # the champion's own holdout F1 (realized F1 is judged by it)


def load_reference(tracking_uri: str, model_name: str, alias: str, dest: Path) -> Reference:
    """Download the reference snapshot logged in the run of the version holding ``alias``."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri, tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if err.error_code == "PERMISSION_DENIED":  # MLflow's basic-auth app says 403 for a
            client.get_registered_model(model_name)  # missing model: this raises "not found"
        raise
    dest.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        run_id=version.run_id,
        artifact_path=REFERENCE_ARTIFACT,
        dst_path=str(dest),
        tracking_uri=tracking_uri,
    )
    frame = pq.read_table(local)
    if SCORE_COLUMN not in frame.column_names:
        raise ValueError(f"reference of {model_name} v{version.version} has no {SCORE_COLUMN!r}")
    holdout_f1 = client.get_run(version.run_id).data.metrics.get(HOLDOUT_F1_METRIC)
    return Reference(model_name, str(version.version), str(version.run_id), frame, holdout_f1)


MISSING_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def is_missing(err: BaseException) -> bool:
    """Whether ``err`` is the registry saying the model or its alias does not exist: a fact,
    not an outage, so retrying it only delays the failure (and its alert)."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code in MISSING_CODES
