"""One settings object for every flow run: where state lives and which servers to talk to.

All state of the embedded default lives under one git-ignored home folder (``.fraud`` in the
project, or ``FRAUD_HOME``). ``MLFLOW_TRACKING_URI`` points the pipeline at a real tracking
server instead of the local SQLite store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from data_contracts.artifacts import HOME_ENV
from data_contracts.id_key import KEY_ENV, load_id_key

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Locations and service addresses; built once per flow run and passed down."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", frozen=True, extra="ignore")

    home: Path = Field(PROJECT_ROOT / ".fraud", description="Root of all local state.")
    mlflow_tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("FRAUD_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking server; default: SQLite under the home folder.",
    )
    mlflow_http_retries: int = Field(
        3,
        ge=0,
        description="Retries of one MLflow HTTP call (exponential backoff) before the task's own "
        "retries take over; MLflow's default of 7 can hold a run for minutes when the server is "
        "down.",
    )
    experiment_name: str = "train-and-release"
    image_prefix: str = Field(
        "",
        pattern=r"^([a-z0-9][a-z0-9._-]*)?$",
        description="Prefix of image names (e.g. 'team-'); image = prefix + model.",
    )
    champion_alias: str = "champion"
    monitoring_experiment: str = "drift-monitoring"
    canary_seconds: float = Field(
        5.0,
        ge=0,
        description="Canary window of a fleet rollout: the new version gets canary_share of the "
        "traffic this long before the full shift (0: no canary).",
    )
    canary_share: float = Field(
        0.1, ge=0, lt=1, description="Share of the traffic the new version gets in the canary."
    )
    inference_log_dir: Path | None = Field(
        None, description="Root of the inference log; default: <home>/inference_log."
    )
    labelled_data_dir: Path | None = Field(
        None, description="Folder where labelled batches land; default: <home>/labelled."
    )
    feedback_dir: Path | None = Field(
        None,
        description="Folder where labelled feedback for served transactions lands (hashed or "
        "clear transaction id, label, labelled_at); default: <home>/feedback.",
    )
    evidently_dir: Path | None = Field(
        None, description="Evidently workspace of the drift dashboard; default: <home>/evidently."
    )
    evidently_url: str | None = Field(
        None, description="The Evidently UI service to record checks in (instead of the folder)."
    )
    evidently_ui_url: str = Field(
        "http://127.0.0.1:8000", description="Where a reader opens the dashboard (make monitor-ui)."
    )
    id_hash_key_block: str | None = Field(
        None,
        description="Prefect Secret block holding the transaction-id hash key (instead of "
        "FRAUD_ID_HASH_KEY or the key file under the home folder).",
    )

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking (and registry) URI in force."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow' / 'mlflow.db').resolve()}"

    def image_repository(self, model_name: str) -> str:
        """The Docker repository of ``model_name``'s images."""
        return f"{self.image_prefix}{model_name}"

    @property
    def uses_local_mlflow(self) -> bool:
        return not self.mlflow_tracking_uri

    @property
    def artifact_root(self) -> Path:
        """Artifact root of the embedded MLflow store."""
        return self.home / "mlflow" / "artifacts"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def default_data_path(self) -> Path:
        """The generated data set that ``make run`` trains on."""
        return self.data_dir / "transactions.parquet"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def packaging_dir(self) -> Path:
        """Build, containerize and smoke-test logs of each packaged version."""
        return self.home / "packaging"

    @property
    def work_dir(self) -> Path:
        """Scratch space for downloads and exports of a run."""
        return self.home / "work"

    @property
    def inference_log_root(self) -> Path:
        """Date-partitioned Parquet log written by the bento, read by the drift check."""
        return self.inference_log_dir or self.home / "inference_log"

    @property
    def labelled_root(self) -> Path:
        """Where labelled batches (chargeback-resolved transactions) land for retraining."""
        return self.labelled_data_dir or self.home / "labelled"

    @property
    def feedback_root(self) -> Path:
        """Labelled feedback for served transactions: the drift check joins it to the window."""
        return self.feedback_dir or self.home / "feedback"

    @property
    def evidently_root(self) -> Path:
        """The Evidently workspace folder every drift check adds its point to."""
        return self.evidently_dir or self.home / "evidently"

    def id_key(self) -> bytes:
        """The transaction-id hash key the bento uses with this home folder (never logged).

        A Prefect Secret block named by ``FRAUD_ID_HASH_KEY_BLOCK`` wins; otherwise
        :func:`data_contracts.id_key.load_id_key` (env, key file, or ``<home>/secrets``).
        """
        if self.id_hash_key_block:
            from prefect.blocks.system import Secret

            value = Secret.load(self.id_hash_key_block).get()
            return load_id_key({KEY_ENV: str(value)})
        return load_id_key({**os.environ, HOME_ENV: str(self.home)})

    @property
    def drift_reports_dir(self) -> Path:
        return self.home / "drift_reports"

    @property
    def outbox_dir(self) -> Path:
        """Emails that could not be sent yet; the next drift check sends them first."""
        return self.home / "outbox"


# the commit the pipeline image was built from (deploy/pipeline.Dockerfile), and the one the
# Docker work pool of the production profile expects (the checkout's, when it set the pool up)
COMMIT_ENV = "FRAUD_GIT_COMMIT"
EXPECTED_COMMIT_ENV = "FRAUD_EXPECTED_COMMIT"


class PipelineImageMismatch(RuntimeError):
    """A flow container's image holds other code than its work pool was set up for."""


def check_pipeline_commit(environ: Mapping[str, str] = os.environ) -> str | None:
    """Raise when this flow run's code is not the commit its work pool expects.

    The Docker work pool names the commit it was set up for (``FRAUD_EXPECTED_COMMIT``); the
    image records its own (``FRAUD_GIT_COMMIT``). A stale or re-tagged image would otherwise
    train and release other code than the deployment says. Returns the commit when both are
    known and agree, None when there is nothing to compare (a run from the checkout).
    """
    expected, actual = environ.get(EXPECTED_COMMIT_ENV), environ.get(COMMIT_ENV)
    if not expected or not actual:
        return None
    if expected != actual:
        raise PipelineImageMismatch(
            f"the pipeline image holds commit {actual[:12]} but the work pool expects commit "
            f"{expected[:12]}: build the image of {expected[:12]} (make pipeline-image in that "
            "checkout) and set the pool up again (make up-prod)"
        )
    return actual
