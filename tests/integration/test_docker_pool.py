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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from data_contracts.spec import default_spec
from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.packaging.container import docker
from flows.registry import registry
from flows.stack.config import DOCKER_DRIFT, DOCKER_RELEASE
from flows.training.onnx_export import onnx_predict_proba, onnx_session
from tests.integration.conftest import ROOT
from tests.support.drift import write_log

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.prod_only]
MODEL = "fraud-detector"
POOL = "fraud-docker"
DRIFT = DriftKnobs(amount_scale=1.8, merchant_shift=0.5)


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
    """Talk to the stack's Prefect server from the test process, with the profile's basic auth."""
    updates = {PREFECT_API_URL: stack.env["PREFECT_API_URL"]}
    if stack.prefect_auth:
        updates[PREFECT_API_AUTH_STRING] = stack.prefect_auth
    with temporary_settings(updates=updates):
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
    assert props["env"]["default"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"  # crash rule
    # no secret in the template the server stores and shows
    assert all(secret not in str(pool.base_job_template) for secret in docker_stack.secrets)
    # MLflow's login: flow containers get the path of the pipeline user's file, never a password
    env = props["env"]["default"]
    assert env["MLFLOW_TRACKING_AUTH"] == "fraud-credentials-file"
    assert env["FRAUD_MLFLOW_CREDENTIALS_FILE"] == str(
        docker_stack.home / "secrets" / "mlflow" / "pipeline"
    )
    for user in ("admin", "pipeline", "reader"):
        assert docker_stack.mlflow_user(user)[1] not in str(pool.base_job_template)
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


def mails(stack) -> list[EmailMessage]:
    box = stack.home / "mail"
    files = sorted([*box.glob("new/*"), *box.glob("cur/*")])
    return [BytesParser(policy=policy.default).parsebytes(f.read_bytes()) for f in files]


def wait_for_mail(stack, match, timeout: float, context: str = "") -> EmailMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in mails(stack) if match(str(m["Subject"]).strip())]
        if found:
            return found[0]
        time.sleep(2)
    subjects = [m["Subject"] for m in mails(stack)]
    raise AssertionError(f"no such mail in {timeout:.0f} s: {subjects}\n{context[-3000:]}")


def wait_for_run(stack, run_id: UUID, timeout: float) -> FlowRun:
    deadline = time.monotonic() + timeout
    with api(stack), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state.is_final() or time.monotonic() > deadline:
                return run
            time.sleep(3)


def drifted_window(stack, rows: int = 6000) -> None:
    """Served traffic that drifted, in the shared inference log, scored by the champion."""
    spec = default_spec()
    frame = generate(GeneratorConfig(rows=rows, seed=41, drift=DRIFT))
    frame = frame.drop(columns=["transaction_id"], errors="ignore")
    client = registry.configure(stack.settings())
    champion = client.get_model_version_by_alias(MODEL, "champion")
    model = registry.download_model(champion, stack.home / "check-drift")
    frame["score"] = onnx_predict_proba(onnx_session(model.model_bytes), frame, spec)
    now = datetime.now(UTC)
    frame["timestamp"] = [now - timedelta(seconds=2 * (i + 1)) for i in range(len(frame))]
    root = stack.settings().inference_log_root
    write_log(frame, root, spec, f"v{champion.version}", model.threshold)


def test_a_drift_check_in_a_container_mails_and_retrains_in_a_container(
    docker_stack, first_release
):
    assert first_release.state.is_completed(), first_release.state
    drifted_window(docker_stack)
    labelled = docker_stack.settings().labelled_root
    labelled.mkdir(parents=True, exist_ok=True)
    batch = generate(GeneratorConfig(rows=30_000, seed=42, drift=DRIFT))
    batch.to_parquet(labelled / "batch-1.parquet", index=False)

    with api(docker_stack):
        check = run_deployment(DOCKER_DRIFT, parameters={"window": {"rows": 5000}}, timeout=900)
    assert check.state.is_completed(), check.state
    assert check.work_pool_name == POOL
    assert f"pipeline image of commit {head()[:12]}" in run_logs(docker_stack, check)
    # mailed through the profile's mail catcher, from inside the container
    logs = run_logs(docker_stack, check)
    mail = wait_for_mail(
        docker_stack, lambda s: "drift" in s.lower() and "alert" not in s, 120, logs
    )
    assert f"[{MODEL} v1]" in str(mail["Subject"])

    with api(docker_stack), get_client(sync_client=True) as client:
        triggered = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["drift-triggered"]))
        )
    assert len(triggered) == 1, [r.name for r in triggered]
    retrain = wait_for_run(docker_stack, triggered[0].id, 1200)
    assert retrain.state.is_final() and not retrain.state.is_crashed(), retrain.state
    assert retrain.work_pool_name == POOL
    assert f"pipeline image of commit {head()[:12]}" in run_logs(docker_stack, retrain)
    with api(docker_stack), get_client(sync_client=True) as client:
        assert client.read_deployment(retrain.deployment_id).name == "fraud-detector-docker"


def test_an_image_of_another_commit_fails_before_training_naming_both(docker_stack, pipeline_image):
    other = "0123456789abcdef0123456789abcdef01234567"
    stale = f"fraud-it-stale-pipeline:{docker_stack.env['FRAUD_PROD_PREFECT_PORT']}"
    built = subprocess.run(
        ["docker", "build", "-t", stale, "-"],
        input=f"FROM {pipeline_image}\nENV FRAUD_GIT_COMMIT={other}\n",
        capture_output=True, text=True, check=False, timeout=300,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "DOCKER_BUILDKIT": "0"},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    data = docker_stack.home / "data" / "tx-30k.parquet"
    try:
        with api(docker_stack):
            run = run_deployment(
                DOCKER_RELEASE, parameters={"data_path": str(data)},
                job_variables={"image": stale}, timeout=600,
            )  # fmt: skip
    finally:
        docker("rmi", "-f", stale)
    assert run.state.is_failed(), run.state
    logs = run_logs(docker_stack, run)
    assert f"holds commit {other[:12]} but the work pool expects commit {head()[:12]}" in logs
    assert "loading" not in logs  # stopped before it read the data


def test_a_flow_container_without_the_socket_never_promotes_an_untested_image(
    docker_stack, first_release
):
    assert first_release.state.is_completed(), first_release.state
    client = registry.configure(docker_stack.settings())
    before = client.get_model_version_by_alias(MODEL, "champion").version
    home = str(docker_stack.home)
    data = docker_stack.home / "data" / "tx-30k-b.parquet"
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "fraud"), "generate-data", str(data), "--rows", "30000",
         "--seed", "23", "--invalid-rows", "10", "--quiet"],
        check=True, env=docker_stack.env, timeout=300,
    )  # fmt: skip
    with api(docker_stack):
        run = run_deployment(
            DOCKER_RELEASE,
            parameters={
                "data_path": str(data),
                "policy": {"champion_tolerance": 1.0, "f1_floor": 0.0},
            },
            job_variables={"volumes": [f"{home}:{home}"]},  # no Docker socket
            timeout=900,
        )
    assert run.state.is_failed() or run.state.name == "Blocked", run.state
    with api(docker_stack), get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    decision = "\n".join(str(a.data) for a in artifacts if a.key == "release-decision")
    assert "image not built" in decision.lower(), decision[:2000]
    assert client_champion(docker_stack) == before


def client_champion(stack) -> str:
    client = registry.configure(stack.settings())
    return client.get_model_version_by_alias(MODEL, "champion").version


def test_a_run_scheduled_while_the_docker_worker_is_down_waits_late_then_runs(
    docker_stack, first_release
):
    from flows.core.processes import ProcessManager

    assert first_release.state.is_completed(), first_release.state
    home = docker_stack.home
    manager = ProcessManager(home / "run", home / "logs", say=lambda _: None)
    assert manager.stop("prefect-docker-worker", grace_s=10)
    data = home / "data" / "tx-30k.parquet"
    with api(docker_stack):
        waiting = run_deployment(DOCKER_RELEASE, parameters={"data_path": str(data)}, timeout=0)
    deadline = time.monotonic() + 180
    with api(docker_stack), get_client(sync_client=True) as client:
        while (state := client.read_flow_run(waiting.id).state).name != "Late":
            assert state.is_scheduled(), state  # nothing picks it up while the worker is down
            assert time.monotonic() < deadline, f"not Late in 180 s: {state}"
            time.sleep(3)
    up = docker_stack.prod("up", timeout=600)  # the worker again, nothing else restarted
    assert up.returncode == 0, up.stderr
    assert "starting prefect-docker-worker" in up.stderr
    ran = wait_for_run(docker_stack, waiting.id, 900)
    assert ran.state.is_completed(), ran.state
    assert ran.work_pool_name == POOL
