"""A real Prefect server and process worker on 127.0.0.1, started by ``fraud stack``.

The stack lives in a temporary FRAUD_HOME; the server and worker are stopped by PID at the end.
With ``FRAUD_TEST_PROFILE=prod`` every stack runs on the production profile
(``fraud stack --profile production``):
its own Prefect and MLflow tracking servers on fresh PostgreSQL databases of one cluster for the
session (dropped at teardown), the MLflow artifacts in a root of their own.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.core.http import free_port
from flows.core.settings import Settings
from tests.support.drift import Inbox, mail_catcher

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / ".venv" / "bin" / "fraud"
STACK = (str(FRAUD), "stack")
PROD = (str(FRAUD), "stack", "--profile", "production")
PROFILE = os.environ.get("FRAUD_TEST_PROFILE", "embedded")
if PROFILE not in {"embedded", "prod"}:
    raise ValueError(f"FRAUD_TEST_PROFILE={PROFILE!r}: expected 'embedded' or 'prod'")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a server stack ``stack``: what the production profile changes.

    ``make test-prod`` runs only these on PostgreSQL; the other integration tests (bentoml serve,
    Docker images, SMTP, in-process Prefect) start no stack and would only repeat themselves.
    """
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)
    if PROFILE != "prod":  # the Docker work pool is the production profile's: make test-prod
        kept = [item for item in items if not item.get_closest_marker("prod_only")]
        if len(kept) != len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in kept])
            items[:] = kept


def _script(
    command: Path | tuple[str, ...], args: tuple[str, ...], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    argv = [str(command)] if isinstance(command, Path) else list(command)
    return subprocess.run(
        [*argv, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _clean_env() -> dict[str, str]:
    """The test process's environment without any of the pipeline's own settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "FRAUD_", "MLFLOW_", "BENTOML_", "PGPASS"))
    }


@dataclass
class Stack:
    """One test stack: its home, the environment to talk to it, and its MLflow tracking URI."""

    home: Path
    env: dict[str, str]
    profile: str = "embedded"
    tracking_uri: str | None = None  # None: the embedded SQLite store under ``home``
    secrets: tuple[str, ...] = ()  # passwords the stack was started with (prod: the database's)

    @property
    def prefect_auth(self) -> str | None:
        """``user:password`` of the Prefect server (the production profile makes one)."""
        path = self.home / "secrets" / "prefect-auth"
        return path.read_text().strip() if self.profile == "prod" and path.exists() else None

    def mlflow_user(self, user: str) -> tuple[str, str]:
        """``(username, password)`` of an MLflow user of the production profile's server."""
        from flows.registry.mlflow_auth import read_credentials

        return read_credentials(self.home / "secrets" / "mlflow" / user)

    def prefect_headers(self) -> dict[str, str]:
        """The Authorization header of a direct call to the stack's Prefect API ({} if none)."""
        auth = self.prefect_auth
        return (
            {"Authorization": f"Basic {base64.b64encode(auth.encode()).decode()}"} if auth else {}
        )

    def settings(self) -> Settings:
        """The pipeline settings of this stack (its home and its tracking server)."""
        return Settings(home=self.home, mlflow_tracking_uri=self.tracking_uri)

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run ``fraud stack ARGS`` against this stack; output captured."""
        return _script(STACK, args, self.env, timeout)

    def prod(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run ``fraud stack --profile production ARGS`` against this stack; output captured."""
        return _script(PROD, args, self.env, timeout)

    def prefect(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return _script(ROOT / ".venv" / "bin" / "prefect", args, self.env, timeout)


@dataclass(frozen=True)
class PgCluster:
    """The session's PostgreSQL cluster (production profile), reached through a password file."""

    root: Path
    port: int
    password: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "FRAUD_PG_DIR": str(self.root / "pg"),
            "FRAUD_PG_PORT": str(self.port),
            "FRAUD_PG_PASSWORD_FILE": str(self.root / "secrets" / "pg-password"),
        }


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster | None]:
    """One PostgreSQL cluster for the session in the production profile; None otherwise."""
    if PROFILE != "prod":
        yield None
        return
    # not in pytest's private folder: the cluster runs as the postgres user
    root = Path(tempfile.mkdtemp(prefix="fraud-it-pg-", dir=os.environ.get("FRAUD_TEST_PG_ROOT")))
    root.chmod(0o755)
    cluster = PgCluster(root=root, port=free_port(), password=f"db-{secrets.token_hex(12)}")
    (root / "secrets").mkdir(mode=0o700)
    pw_file = root / "secrets" / "pg-password"
    pw_file.touch(mode=0o600)
    pw_file.write_text(cluster.password)
    env = _clean_env() | cluster.env | {"FRAUD_PROD_HOME": str(root)}
    try:
        up = _script(PROD, ("pg-up",), env, 300)
        assert up.returncode == 0, up.stderr
        yield cluster
    finally:
        _script(PROD, ("pg-down",), env, 120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def smtp_port() -> int:
    """Chosen when the module starts, not at collection: a port free minutes ago may be taken."""
    return free_port()


@pytest.fixture(scope="module")
def smtp(smtp_port: int) -> Iterator[Inbox]:
    """A real SMTP server on ``smtp_port`` for the module; its mail in the returned inbox."""
    with mail_catcher(Inbox(), smtp_port) as inbox:
        yield inbox


@pytest.fixture(scope="module")
def stack_extra_env() -> dict[str, str]:
    """Extra environment for the stack's server and worker (a module may override it)."""
    return {}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    stack_extra_env: dict[str, str],
    pg_cluster: PgCluster | None,
) -> Iterator[Stack]:
    """A Prefect server + worker with prefect.yaml deployed, one per test module.

    In the production profile the module gets its own Prefect and MLflow servers on fresh
    databases of the session's PostgreSQL cluster.
    """
    home = tmp_path_factory.mktemp("stack") / "home"
    port = free_port()
    env = _clean_env() | {
        "FRAUD_HOME": str(home),
        "FRAUD_PREFECT_PORT": str(port),
        "FRAUD_MAIL_PORT": str(free_port()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "BENTOML_DO_NOT_TRACK": "true",
        # images of test releases never touch a developer's fraud-detector:latest
        "FRAUD_IMAGE_PREFIX": f"fraud-it-{port}-",
        **stack_extra_env,
    }
    if pg_cluster is None:
        yield from _embedded_stack(home, port, env)
    else:
        yield from _prod_stack(home, port, env, pg_cluster)


def _embedded_stack(home: Path, port: int, env: dict[str, str]) -> Iterator[Stack]:
    s = Stack(home=home, env=env)
    try:  # `down` also stops what a half-failed `up` started
        up = s.run("up", timeout=180)
        assert up.returncode == 0, up.stderr
        env |= {
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_HOME": str(home / "prefect"),
            "BENTOML_HOME": str(home / "bentoml"),
        }
        deployed = s.run("deploy", timeout=300)
        assert deployed.returncode == 0, deployed.stderr
        yield s
    finally:
        s.run("down", timeout=120)
        remove_images(f"fraud-it-{port}-")


def _prod_stack(home: Path, port: int, env: dict[str, str], pg: PgCluster) -> Iterator[Stack]:
    mlflow_port, evidently_port = free_port(), free_port()
    env |= pg.env | {
        # the Docker work pool only in the module that tests it (test_docker_pool.py)
        "FRAUD_DOCKER_POOL": env.get("FRAUD_DOCKER_POOL", "off"),
        "FRAUD_PROD_HOME": str(home),
        "FRAUD_PROD_DB_PREFIX": f"it{port}",
        "FRAUD_PROD_PREFECT_PORT": str(port),
        "FRAUD_MLFLOW_PORT": str(mlflow_port),
        "FRAUD_PROD_PROMETHEUS_PORT": str(free_port()),
        "FRAUD_PROD_EVIDENTLY_PORT": str(evidently_port),
    }
    s = Stack(home=home, env=env, profile="prod", secrets=(pg.password,))
    try:
        up = s.prod("up", timeout=420)
        assert up.returncode == 0, up.stderr
        s.tracking_uri = f"http://127.0.0.1:{mlflow_port}"
        env |= {
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "MLFLOW_TRACKING_URI": s.tracking_uri,
            "FRAUD_EVIDENTLY_URL": f"http://127.0.0.1:{evidently_port}",
            # the bento's API keys the profile generated: tests call /predict as operators do
            "FRAUD_API_KEYS_FILE": str(home / "secrets" / "api" / "keys"),
            # the Prefect server's basic auth, as `fraud stack --profile production env` gives it
            "PREFECT_PROFILES_PATH": str(home / "secrets" / "prefect-profiles.toml"),
            "PREFECT_HOME": str(home / "prefect"),
            "BENTOML_HOME": str(home / "bentoml"),
        } | mlflow_login(home, "pipeline")
        deployed = s.run("deploy", timeout=300)
        assert deployed.returncode == 0, deployed.stderr
        with pytest.MonkeyPatch.context() as mp:  # the test's own MLflow clients log in too
            for name, value in mlflow_login(home, "pipeline").items():
                mp.setenv(name, value)
            yield s
    finally:
        s.prod("down", timeout=180)
        s.prod("drop-db", timeout=120)
        remove_images(f"fraud-it-{port}-")


def mlflow_login(home: Path, user: str) -> dict[str, str]:
    """What makes MLflow clients log in as ``user`` of the production profile in ``home``."""
    return {
        "MLFLOW_TRACKING_AUTH": "fraud-credentials-file",
        "FRAUD_MLFLOW_CREDENTIALS_FILE": str(home / "secrets" / "mlflow" / user),
    }


def remove_images(prefix: str) -> None:
    """Delete the images a test stack built (their repository starts with ``prefix``)."""
    listed = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    refs = [r for r in listed.stdout.split() if r.startswith(prefix)]
    if refs:
        subprocess.run(["docker", "rmi", "--force", *refs], capture_output=True, check=False)


@pytest.fixture(scope="module")
def docker_engine() -> str:
    """A Docker engine that answers: missing fails under CI=true, and skips (with why) elsewhere."""
    from flows.packaging.container import docker_status

    ok, detail = docker_status()
    if not ok:
        message = f"a Docker engine is needed: {detail} (as root: scripts/docker-engine.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return detail
