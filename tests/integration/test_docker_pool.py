"""Flow runs as containers on the production profile's Docker work pool, for real.

The pipeline image of the committed tree (``make pipeline-image``), then ``fraud stack
--profile production up`` with the pool on: it creates the ``docker`` work pool and starts a
Docker worker by PID; ``deploy`` adds the pool's deployments of prefect.yaml. A release on that
pool runs in a container of the image: it ends PROMOTED, with its bento image built and
smoke-tested through the engine's socket from inside the container, and the registry records
the image's commit. Only in the production tier (``make test-prod``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.packaging.container import docker
from flows.registry import registry
from flows.stack.config import DOCKER_RELEASE
from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.prod_only]
MODEL = "fraud-detector"
POOL = "fraud-docker"


def head() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def pipeline_image(docker_engine: str) -> str:
    """The pipeline image of HEAD, as ``make pipeline-image`` builds it (cached layers reused)."""
    tag = f"fraud-pipeline:{head()[:12]}"
    built = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "pipeline-image"],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    labels = docker("image", "inspect", "-f", "{{json .Config.Env}}", tag)
    assert f"FRAUD_GIT_COMMIT={head()}" in labels.stdout, labels.stdout + labels.stderr
    return tag


@pytest.fixture(scope="module")
def stack_extra_env(pipeline_image: str) -> dict[str, str]:
    # the pool on (the test tier turns it off elsewhere); the worker polls every 2 s
    return {"FRAUD_DOCKER_POOL": "on", "PREFECT_WORKER_QUERY_SECONDS": "2"}


@contextmanager
def api(stack) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: stack.env["PREFECT_API_URL"]}):
        yield


def run_logs(stack, run: FlowRun) -> str:
    with api(stack), get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200)
    return "\n".join(entry.message for entry in logs)


@pytest.fixture(scope="module")
def docker_stack(stack):
    """The module's production stack with the Docker pool's deployments deployed too."""
    deployed = stack.prod("deploy", timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    return stack


@pytest.fixture(scope="module")
def first_release(docker_stack) -> FlowRun:
    data = docker_stack.home / "data" / "tx-30k.parquet"
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "fraud"), "generate-data", str(data), "--rows", "30000",
         "--seed", "11", "--invalid-rows", "10", "--quiet"],
        check=True, env=docker_stack.env, timeout=300,
    )  # fmt: skip
    with api(docker_stack):
        return run_deployment(DOCKER_RELEASE, parameters={"data_path": str(data)}, timeout=1500)


def test_up_creates_the_pool_and_a_docker_worker_by_pid(docker_stack, pipeline_image):
    with api(docker_stack), get_client(sync_client=True) as client:
        pool = client.read_work_pool(POOL)
        deployment = client.read_deployment_by_name(DOCKER_RELEASE)
    assert pool.type == "docker"
    props = pool.base_job_template["variables"]["properties"]
    assert props["image"]["default"] == pipeline_image
    assert props["env"]["default"]["FRAUD_EXPECTED_COMMIT"] == head()
    # no secret in the template the server stores and shows
    assert all(secret not in str(pool.base_job_template) for secret in docker_stack.secrets)
    assert deployment.work_pool_name == POOL
    assert deployment.job_variables["image"] == pipeline_image
    assert deployment.job_variables["env"]["FRAUD_HOME"] == str(docker_stack.home)
    pid_file = docker_stack.home / "run" / "prefect-docker-worker.pid"
    pid = int(pid_file.read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    at = argv.index(b"worker")  # after the interpreter and the prefect script
    assert argv[at : at + 6] == [
        b"worker",
        b"start",
        b"--pool",
        POOL.encode(),
        b"--type",
        b"docker",
    ]
    assert (docker_stack.home / "logs" / "prefect-docker-worker.log").exists()
    status = docker_stack.prod("status", timeout=120)
    assert f"prefect-docker-worker: running (pid {pid})" in status.stdout


def test_a_release_in_a_flow_container_promotes_with_its_image_tested(docker_stack, first_release):
    assert first_release.state.is_completed(), first_release.state
    assert first_release.work_pool_name == POOL
    # only a flow container of the pipeline image says this (FRAUD_GIT_COMMIT of the image)
    assert f"pipeline image of commit {head()[:12]}" in run_logs(docker_stack, first_release)
    client = registry.configure(docker_stack.settings())
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "1" and champion.tags["gate.outcome"] == "promote"
    assert client.get_run(champion.run_id).data.tags["git_commit"] == head()
    # the bento image was built and smoke-tested from inside the container, through the socket
    image = f"{docker_stack.env['FRAUD_IMAGE_PREFIX']}{MODEL}:v1"
    assert docker("image", "inspect", image).returncode == 0, image
    packaging = docker_stack.settings().packaging_dir
    smoke = list(packaging.glob(f"*{MODEL}-v1/smoke-container.log"))
    assert smoke, sorted(str(p) for p in packaging.rglob("*"))
    summary = docker_stack.run("summary", timeout=120)
    assert "IMAGE NOT BUILT" not in summary.stdout + summary.stderr
    # MLflow artifacts went through the tracking server: the model is downloadable from it
    model = registry.download_model(champion, docker_stack.home / "check")
    assert model.sha256 == champion.tags["onnx_sha256"]
