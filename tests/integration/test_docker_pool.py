"""Flow runs as containers on the production profile's Docker work pool, for real.

The pipeline image of the committed tree (``make pipeline-image``), then ``fraud stack
--profile production up`` with the pool on: it creates the ``docker`` work pool and starts a
Docker worker by PID; ``deploy`` adds the pool's deployments of prefect.yaml. A release on that
pool runs in a container of the image: it ends PROMOTED, with its bento image built and
smoke-tested through the engine's socket from inside the container, and the registry records
the image's commit. A drift check in a container retrains in a container, whose promotion rolls
the profile's TLS fleet under clients that see no failure. Faults: an image of another commit
or a missing one, no Docker socket, the worker down, a flow container killed (mailed once).
Only in the production tier (``make test-prod``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from data_contracts.spec import default_spec
from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.core.http import free_port
from flows.packaging import smoke
from flows.packaging.container import docker
from flows.registry import registry
from flows.serving import fleet
from flows.stack.config import DOCKER_DRIFT, DOCKER_RELEASE
from flows.training.onnx_export import onnx_predict_proba, onnx_session
from tests.integration.conftest import ROOT
from tests.support.docker_pool import (
    api,
    fleet_tls,
    head,
    mail_text,
    mails,
    run_logs,
    status_without_key,
    wait_for_mail,
    wait_for_run,
    wait_for_task,
)
from tests.support.drift import write_log
from tests.support.load import Load

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.prod_only]
MODEL = "fraud-detector"
POOL = "fraud-docker"
DRIFT = DriftKnobs(amount_scale=1.8, merchant_shift=0.5)


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


@pytest.fixture
def tls_fleet(docker_stack) -> Iterator[int]:
    """``fleet-up`` of the production profile on v1: HAProxy with TLS, keys required; its port."""
    port = free_port()
    up = docker_stack.prod("fleet-up", "--replicas", "2", "--port", str(port), timeout=300)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    try:
        yield port
    finally:
        docker_stack.prod("fleet-down", timeout=180)


def test_a_drift_check_in_a_container_mails_and_retrains_in_a_container_rolling_the_fleet(
    docker_stack, first_release, tls_fleet
):
    assert first_release.state.is_completed(), first_release.state
    context = fleet_tls(docker_stack)
    image = f"{docker_stack.env['FRAUD_IMAGE_PREFIX']}{MODEL}:v1"
    records = smoke.load_smoke_case(docker_stack.settings(), image).records
    assert status_without_key(tls_fleet, context, records[0]) == 401
    keys = {"FRAUD_API_KEYS_FILE": str(docker_stack.home / "secrets" / "api" / "keys")}
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
    # from its promote step on (the roll is in it; training is left the machine), clients score
    # over TLS with the key while the retrain in its container promotes v2 and rolls the fleet:
    # replicas through the engine's socket, the host's HAProxy checked and reloaded by its PID
    wait_for_task(docker_stack, triggered[0].id, "promote", 1200)
    with Load(tls_fleet, records, threads=2, tls=context, environ=keys) as load:
        retrain = wait_for_run(docker_stack, triggered[0].id, 600)
        time.sleep(2)
    assert retrain.state.is_completed(), retrain.state
    assert retrain.work_pool_name == POOL
    assert client_champion(docker_stack) == "2"
    state = fleet.load_state(fleet.FleetPaths.of(docker_stack.settings()))
    assert state is not None and state.version == "2", state
    assert "fleet rolled v1 -> v2" in run_logs(docker_stack, retrain)
    assert load.result.failed == 0, load.result.errors
    assert {"1", "2"} <= set(load.result.versions) and load.result.timeline[-1][1] == "2"
    assert status_without_key(tls_fleet, context, records[0]) == 401  # the new replicas too
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
    both = f"holds commit {other[:12]} but the work pool expects commit {head()[:12]}"
    assert both in logs
    assert "loading" not in logs  # stopped before it read the data
    mail = wait_for_mail(docker_stack, lambda s: f"FAILED: run '{run.name}'" in s, 120, logs)
    assert both in mail_text(mail)


def test_a_missing_pipeline_image_fails_the_run_and_the_mail_names_image_and_commit(
    docker_stack, pipeline_image
):
    missing = f"fraud-it-missing-pipeline:{docker_stack.env['FRAUD_PROD_PREFECT_PORT']}"
    assert docker("image", "inspect", missing).returncode != 0
    data = docker_stack.home / "data" / "tx-30k.parquet"
    with api(docker_stack):
        run = run_deployment(
            DOCKER_RELEASE, parameters={"data_path": str(data)},
            job_variables={"image": missing}, timeout=300,
        )  # fmt: skip
    # the worker cannot create the container (never pulled): Crashed, before any task
    assert run.state.is_crashed(), run.state
    assert run.state.message.startswith("Failed to submit flow run to infrastructure")
    assert missing in run.state.message
    with api(docker_stack), get_client(sync_client=True) as client:
        assert client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]})) == []
    mail = wait_for_mail(docker_stack, lambda s: f"CRASHED: run '{run.name}'" in s, 180)
    text = mail_text(mail)
    assert f"the pipeline image {missing} is missing" in text
    assert f"expects the image of commit {head()}" in text


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


def running_container(stack, run_id, timeout: float = 180) -> str:
    """The id of the flow run's container once the run is Running in it (the worker labels it)."""
    deadline = time.monotonic() + timeout
    with api(stack), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            found = docker("ps", "-q", "--filter", f"label=io.prefect.flow-run-id={run_id}")
            state = client.read_flow_run(run_id).state
            assert not state.is_final(), state
            if found.stdout.strip() and state.is_running():
                return found.stdout.split()[0]
            time.sleep(1)
    raise AssertionError(f"no running container for flow run {run_id} in {timeout:.0f} s")


def test_a_killed_flow_container_is_marked_crashed_and_mailed_once(docker_stack, first_release):
    assert first_release.state.is_completed(), first_release.state
    data = docker_stack.home / "data" / "tx-30k.parquet"
    with api(docker_stack):
        started = run_deployment(DOCKER_RELEASE, parameters={"data_path": str(data)}, timeout=0)
    container = running_container(docker_stack, started.id)
    killed = docker("kill", container)
    assert killed.returncode == 0, killed.stderr
    run = wait_for_run(docker_stack, started.id, 120)
    assert run.state.is_crashed(), run.state
    assert run.state.message.startswith("Flow run infrastructure exited with non-zero status code")

    def about_the_run(subject: str) -> bool:
        return "CRASHED" in subject and f"'{run.name}'" in subject

    mail = wait_for_mail(docker_stack, about_the_run, 180, run_logs(docker_stack, run))
    assert str(run.id) in mail_text(mail)
    time.sleep(10)  # a second alert (hook, rule, retry) would come as fast as the first
    assert len([m for m in mails(docker_stack) if about_the_run(str(m["Subject"]))]) == 1
