"""Every default of the local stacks in one place: ports, homes, pools, heartbeats.

Read from the environment with the ``FRAUD_`` prefix (the same variable names the Makefile, the
tests and the docs use), validated, so a bad value is an error naming the variable.
:class:`StackConfig` is the embedded default (a local Prefect server on SQLite);
:class:`ProductionConfig` adds the production profile (PostgreSQL, an MLflow tracking server,
the Evidently UI service), whose state lives apart under ``FRAUD_PROD_HOME``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from data_contracts.artifacts import fraud_home
from flows.core.settings import PROJECT_ROOT

PREFECT_MIN_HEARTBEAT = 30  # Prefect's floor for PREFECT_FLOWS_HEARTBEAT_FREQUENCY
HEARTBEAT_SECONDS = 30  # flow runs send a heartbeat this often (the stack sets it on the worker)
HEARTBEAT_SILENCE_SECONDS = 90  # a run silent this long is marked Crashed and mailed
ALERT_POOL = "fraud-alerts"  # prefect.yaml: the failure-alert deployment runs on its own worker
LOCAL_MAIL_RECIPIENTS = "fraud-team@localhost"
SQL_NAME = r"^[a-z_][a-z0-9_]*$"
C = TypeVar("C", bound=BaseSettings)
MLFLOW_AUTH_PROVIDER = "fraud-credentials-file"  # flows/registry/mlflow_auth.py (an MLflow plugin)
MLFLOW_USERS = ("admin", "pipeline", "reader")  # the tracking server's users in the profile
MLFLOW_AUTH_CACHE_SECONDS = 60  # how long the tracking server trusts a login it verified


class StackConfigError(ValueError):
    """A stack setting from the environment is invalid; the message names the variable."""


class _FraudSettings(BaseSettings):
    """``FRAUD_`` variables; an empty one counts as unset, and folders are absolute."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUD_", frozen=True, extra="ignore", env_ignore_empty=True
    )

    @field_validator("*", mode="after")
    @classmethod
    def _absolute(cls, value: object) -> object:
        """Folders are absolute: servers and flow runs work in other folders than the caller."""
        return value.absolute() if isinstance(value, Path) else value


class StackConfig(_FraudSettings):
    """The embedded default: where its state lives and which ports its servers take."""

    home: Path = Field(default_factory=lambda: fraud_home(), description="All local state.")
    prefect_port: int = Field(4200, ge=1, le=65535, description="Local Prefect server (and UI).")
    mail_port: int = Field(8025, ge=1, le=65535, description="Local mail catcher (SMTP).")
    serve_port: int = Field(3000, ge=1, le=65535, description="`make serve` and the fleet.")
    evidently_port: int = Field(8000, ge=1, le=65535, description="`make monitor-ui`.")
    evidently_dir: Path | None = Field(None, description="Drift dashboard workspace.")
    work_pool: str = Field("fraud-pool", description="Process work pool of the pipeline.")
    deployment: str = Field("train-and-release/fraud-detector", description="`make release`.")
    heartbeat_seconds: int = Field(
        HEARTBEAT_SECONDS, ge=PREFECT_MIN_HEARTBEAT, description="Seconds between heartbeats."
    )
    heartbeat_silence_seconds: int = Field(
        HEARTBEAT_SILENCE_SECONDS, ge=1, description="A run silent this long is marked Crashed."
    )
    smtp_host: str | None = Field(None, description="Your SMTP server; unset: a mail catcher.")
    prefect_api_url: str | None = Field(
        None,
        validation_alias=AliasChoices("PREFECT_API_URL"),
        description="An existing Prefect server to use instead of a local one.",
    )

    @property
    def project_root(self) -> Path:
        return PROJECT_ROOT

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def prefect_home(self) -> Path:
        return Path(os.environ.get("PREFECT_HOME") or self.home / "prefect")

    @property
    def bentoml_home(self) -> Path:
        return Path(os.environ.get("BENTOML_HOME") or self.home / "bentoml")

    @property
    def mail_dir(self) -> Path:
        return self.home / "mail"

    @property
    def dashboard_dir(self) -> Path:
        return self.evidently_dir or self.home / "evidently"

    @property
    def external_prefect(self) -> bool:
        return bool(self.prefect_api_url)

    @property
    def api_url(self) -> str:
        return self.prefect_api_url or f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def local_mail(self) -> bool:
        return not self.smtp_host

    @property
    def bin(self) -> Path:
        """The checkout's environment: prefect, mlflow, bentoml, fraud."""
        return PROJECT_ROOT / ".venv" / "bin"


class ProductionConfig(_FraudSettings):
    """The production profile: PostgreSQL, Prefect and MLflow servers on it, Evidently UI."""

    fraud_home: Path = Field(
        default_factory=lambda: fraud_home(), validation_alias=AliasChoices("FRAUD_HOME")
    )
    prod_home: Path | None = Field(None, description="All state of the profile.")
    pg_port: int = Field(5433, ge=1, le=65535)
    pg_user: str = Field("fraud", pattern=SQL_NAME)
    pg_password_file: Path | None = Field(None, description="Default <prod home>/secrets/...")
    pg_dir: Path | None = Field(
        None, description="The cluster; default /var/lib/fraud-pg/<digest of the prod home>."
    )
    prod_db_prefix: str = Field("fraud", pattern=SQL_NAME)
    prod_prefect_port: int = Field(4201, ge=1, le=65535)
    mlflow_port: int = Field(5001, ge=1, le=65535)
    mlflow_artifacts: Path | None = Field(None, description="Default <prod home>/mlflow-...")
    mail_port: int = Field(8026, ge=1, le=65535)
    prod_prometheus_port: int = Field(9091, ge=1, le=65535)
    prod_evidently_port: int = Field(8001, ge=1, le=65535)

    @property
    def home(self) -> Path:
        return (self.prod_home or self.fraud_home / "prod").absolute()

    @property
    def cluster_dir(self) -> Path:
        """FRAUD_PG_DIR, else a folder the postgres user reaches wherever the checkout is."""
        from flows.stack.pg_home import default_cluster_dir

        return self.pg_dir or default_cluster_dir(self.home)

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def password_file(self) -> Path:
        return self.pg_password_file or self.secrets_dir / "pg-password"

    @property
    def pgpass(self) -> Path:
        return self.secrets_dir / "pgpass"

    @property
    def prefect_db(self) -> str:
        return f"{self.prod_db_prefix}_prefect"

    @property
    def mlflow_db(self) -> str:
        return f"{self.prod_db_prefix}_mlflow"

    @property
    def databases(self) -> tuple[str, ...]:
        """Prefect's, MLflow's tracking store, MLflow's users and permissions."""
        return (self.prefect_db, self.mlflow_db, f"{self.mlflow_db}_auth")

    @property
    def artifacts(self) -> Path:
        return self.mlflow_artifacts or self.home / "mlflow-artifacts"

    @property
    def prefect_url(self) -> str:
        return f"http://127.0.0.1:{self.prod_prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def evidently_url(self) -> str:
        return f"http://127.0.0.1:{self.prod_evidently_port}"

    def stack_environ(self) -> dict[str, str]:
        """The variables that point the embedded stack's workers and commands at this profile."""
        return {
            "FRAUD_HOME": str(self.home),
            "PREFECT_HOME": str(self.home / "prefect"),
            "BENTOML_HOME": str(self.home / "bentoml"),
            "FRAUD_MAIL_PORT": str(self.mail_port),
            "PREFECT_API_URL": self.prefect_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "FRAUD_EVIDENTLY_URL": self.evidently_url,
            "FRAUD_EVIDENTLY_UI_URL": self.evidently_url,
            "FRAUD_EVIDENTLY_PORT": str(self.prod_evidently_port),
            "FRAUD_EVIDENTLY_DIR": str(self.home / "evidently"),
            "FRAUD_PROD_HOME": str(self.home),
            "FRAUD_PROMETHEUS_PORT": str(self.prod_prometheus_port),
        } | self.credential_environ()

    # -- credentials: generated and rotated by flows/stack/credentials.py -----------
    api_keys_file: Path | None = Field(None, description="Bento API keys; default <secrets>/api/")

    @property
    def api_keys_path(self) -> Path:
        """The bento's API keys (one per line, first is current), mode 0600."""
        return self.api_keys_file or self.secrets_dir / "api" / "keys"

    tls_cert: Path | None = Field(None, description="Serving port TLS; default <secrets>/tls/")
    tls_ca: Path | None = Field(None, description="What callers trust; default <secrets>/tls/")

    @property
    def tls_dir(self) -> Path:
        return self.secrets_dir / "tls"

    def credential_environ(self) -> dict[str, str]:
        """Where the profile's replicas and callers read credentials (not the values)."""
        env = {
            "FRAUD_TLS_CERT": str(self.tls_cert or self.tls_dir / "haproxy.pem"),
            "FRAUD_TLS_CA": str(self.tls_ca or self.tls_dir / "ca.pem"),
        }
        if not os.environ.get("FRAUD_API_KEYS"):  # inline keys given: used as they are
            env["FRAUD_API_KEYS_FILE"] = str(self.api_keys_path)
        # the Prefect server's basic auth, for the server and every client (a 0600 file)
        env["PREFECT_PROFILES_PATH"] = str(self.secrets_dir / "prefect-profiles.toml")
        if not os.environ.get("MLFLOW_TRACKING_USERNAME"):  # MLflow's own variables win
            env["MLFLOW_TRACKING_AUTH"] = MLFLOW_AUTH_PROVIDER
            env["FRAUD_MLFLOW_CREDENTIALS_FILE"] = str(
                self.mlflow_credentials_file or self.mlflow_user_file("pipeline")
            )
        return env

    mlflow_credentials_file: Path | None = Field(
        None, description="Who MLflow clients log in as; default <secrets>/mlflow/pipeline."
    )

    @property
    def mlflow_secrets_dir(self) -> Path:
        """The MLflow server's auth config and one credentials file per user (all 0600)."""
        return self.secrets_dir / "mlflow"

    def mlflow_user_file(self, user: str) -> Path:
        return self.mlflow_secrets_dir / user


# ---------------------------------------------------------------- the Docker work pool
DOCKER_SOCKET = Path("/var/run/docker.sock")
# prefect.yaml: the process deployments (every profile) and those of the Docker work pool
PROCESS_DEPLOYMENTS = (
    "train-and-release/fraud-detector",
    "drift-check/fraud-detector",
    "failure-alert/fraud-pipeline",
)
DOCKER_RELEASE = "train-and-release/fraud-detector-docker"
DOCKER_DRIFT = "drift-check/fraud-detector-docker"
DOCKER_DEPLOYMENTS = (DOCKER_RELEASE, DOCKER_DRIFT)


class DockerPoolConfig(_FraudSettings):
    """The production profile's Docker work pool: flow runs as containers of the pipeline image.

    On by default in the production profile (``FRAUD_DOCKER_POOL=off`` leaves it out); the
    embedded default never has one. See :mod:`flows.stack.docker_pool`.
    """

    docker_pool: Literal["on", "off"] = Field("on", description="The Docker work pool.")
    docker_pool_name: str = Field("fraud-docker", description="prefect.yaml names it too.")
    pipeline_image: str | None = Field(
        None, description="Default fraud-pipeline:<12 characters of the checkout's commit>."
    )
    docker_socket: Path = Field(DOCKER_SOCKET, description="Mounted into flow containers.")
    pipeline_image_timeout: int = Field(
        1800, ge=60, description="Seconds a build of the pipeline image may take."
    )

    @property
    def enabled(self) -> bool:
        return self.docker_pool == "on"


def load(kind: type[C]) -> C:
    """Build a config from the environment; an invalid value is an error naming its variable."""
    try:
        return kind()
    except ValidationError as err:
        problems = "; ".join(
            f"{_variable(str(e['loc'][0]))}={e.get('input')!r}: {e['msg']}" for e in err.errors()
        )
        raise StackConfigError(problems) from None


def _variable(field: str) -> str:
    return field if field.isupper() else f"FRAUD_{field.upper()}"
