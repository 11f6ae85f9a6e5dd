"""The Docker work pool: what flow containers get, what they never get, and the deployments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from prefect.utilities.templating import apply_values
from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

from flows.cli import work_pools
from flows.stack.config import DOCKER_DEPLOYMENTS, PROCESS_DEPLOYMENTS

ROOT = Path(__file__).resolve().parents[2]
ENVIRON = {
    "FRAUD_HOME": "/srv/fraud",
    "FRAUD_SMTP_HOST": "127.0.0.1",
    "FRAUD_SMTP_PASSWORD": "s3cret-smtp",
    "FRAUD_SMTP_PASSWORD_SECRET": "smtp-password",
    "FRAUD_ID_HASH_KEY": "k" * 64,
    "FRAUD_ID_HASH_KEY_FILE": "/srv/fraud/secrets/id-hash.key",
    "FRAUD_PG_PASSWORD_FILE": "/srv/fraud/secrets/pg-password",
    "FRAUD_PROJECT_DIR": "/home/me/fraud-pipeline",
    "FRAUD_DOCKER_SOCKET": "/var/run/docker.sock",
    "FRAUD_EXPECTED_COMMIT": "a" * 40,
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:5001",
    "MLFLOW_TRACKING_PASSWORD": "s3cret-mlflow",
    "PREFECT_API_AUTH_STRING": "admin:s3cret",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
    "PATH": "/usr/bin",
    "HOME": "/root",
}


def test_flow_containers_get_the_pipeline_settings_and_no_secret_nor_checkout_path():
    env, held_back = work_pools.forwarded_env(ENVIRON)
    assert env == {
        "FRAUD_HOME": "/srv/fraud",
        "FRAUD_SMTP_HOST": "127.0.0.1",
        "FRAUD_SMTP_PASSWORD_SECRET": "smtp-password",
        "FRAUD_ID_HASH_KEY_FILE": "/srv/fraud/secrets/id-hash.key",
        "FRAUD_EXPECTED_COMMIT": "a" * 40,
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5001",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
    }
    assert held_back == ["FRAUD_ID_HASH_KEY", "FRAUD_SMTP_PASSWORD", "MLFLOW_TRACKING_PASSWORD"]


def job_configuration(template: dict, values: dict) -> DockerWorkerJobConfiguration:
    """What the Docker worker makes of ``template`` and a deployment's ``values``, without the
    block look-up of ``from_template_and_values`` (it needs a server; the template has none)."""
    variables = DockerWorkerJobConfiguration._get_base_config_defaults(
        template["variables"]["properties"]
    )
    base = dict(template["job_configuration"])
    env = variables.get("env", {}) | values.get("env", {})
    filled = apply_values(base, variables | values | {"env": env})
    return DockerWorkerJobConfiguration.model_validate(filled)


def test_the_template_is_one_the_docker_worker_accepts():
    env, _ = work_pools.forwarded_env(ENVIRON)
    template = work_pools.docker_job_template(
        DockerWorker.get_default_base_job_template(),
        image="fraud-pipeline:0123456789ab",
        env=env,
        user="0:0",
        groups=["105"],
    )
    config = job_configuration(template, {"env": {"EXTRA": "1"}})
    assert config.image == "fraud-pipeline:0123456789ab"
    assert config.network_mode == "host" and config.image_pull_policy == "Never"
    # the host's PIDs: a release signals the fleet's HAProxy master by its PID
    assert config.container_create_kwargs == {
        "user": "0:0",
        "group_add": ["105"],
        "pid_mode": "host",
    }
    assert config.auto_remove is True
    # a deployment's env is added to the pool's, not put in its place
    assert config.env["EXTRA"] == "1" and config.env["FRAUD_HOME"] == "/srv/fraud"
    default = DockerWorker.get_default_base_job_template()["variables"]["properties"]["image"]
    assert default.get("default") != "fraud-pipeline:0123456789ab"  # the worker's own is intact


def test_the_pool_needs_to_know_its_image(tmp_path):
    with pytest.raises(SystemExit, match="FRAUD_PIPELINE_IMAGE"):
        work_pools.docker_pool_template({"FRAUD_HOME": str(tmp_path)})
    template, _ = work_pools.docker_pool_template(
        {"FRAUD_HOME": str(tmp_path), "FRAUD_PIPELINE_IMAGE": "fraud-pipeline:abc"}
    )
    props = template["variables"]["properties"]
    assert props["env"]["default"]["FRAUD_HOME"] == str(tmp_path)
    stat = tmp_path.stat()
    assert props["container_create_kwargs"]["default"]["user"] == f"{stat.st_uid}:{stat.st_gid}"


def test_the_docker_deployments_run_the_image_with_home_socket_and_servers(monkeypatch):
    """prefect.yaml's Docker deployments, filled as `prefect deploy` fills them."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    environ = {
        "FRAUD_DOCKER_POOL_NAME": "fraud-docker",
        "FRAUD_PIPELINE_IMAGE": "fraud-pipeline:0123456789ab",
        "FRAUD_HOME": "/srv/fraud/prod",
        "BENTOML_HOME": "/srv/fraud/prod/bentoml",
        "FRAUD_DOCKER_SOCKET": "/run/docker.sock",
        "PREFECT_API_URL": "http://127.0.0.1:4201/api",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5001",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    by_name = {}
    for deployment in config["deployments"]:
        flow = deployment["entrypoint"].split(":")[1].replace("_", "-")
        filled = apply_values(deployment, os.environ, remove_notset=False)
        by_name[f"{flow}/{deployment['name']}"] = filled
    assert set(by_name) == {*PROCESS_DEPLOYMENTS, *DOCKER_DEPLOYMENTS}
    for name in DOCKER_DEPLOYMENTS:
        deployment = by_name[name]
        pool, variables = deployment["work_pool"], deployment["work_pool"]["job_variables"]
        assert pool["name"] == "fraud-docker"
        assert variables["image"] == "fraud-pipeline:0123456789ab"
        assert variables["network_mode"] == "host"
        assert variables["volumes"] == [
            "/srv/fraud/prod:/srv/fraud/prod",
            "/run/docker.sock:/var/run/docker.sock",
        ]
        assert variables["env"]["PREFECT_API_URL"] == "http://127.0.0.1:4201/api"
        assert variables["env"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5001"
        assert variables["env"]["FRAUD_HOME"] == "/srv/fraud/prod"
        # the code is the image's: no checkout path in the pull steps
        assert deployment["pull"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}
        ]
    for name in PROCESS_DEPLOYMENTS:
        assert by_name[name]["work_pool"]["name"] in {"fraud-pool", "fraud-alerts"}


def test_an_image_of_another_commit_is_refused_with_both_named():
    from flows.core.settings import PipelineImageMismatch, check_pipeline_commit

    same = {"FRAUD_EXPECTED_COMMIT": "a" * 40, "FRAUD_GIT_COMMIT": "a" * 40}
    assert check_pipeline_commit(same) == "a" * 40
    assert check_pipeline_commit({}) is None  # a run from the checkout: nothing to compare
    with pytest.raises(
        PipelineImageMismatch,
        match="holds commit bbbbbbbbbbbb but the work pool expects commit aaaaaaaaaaaa",
    ):
        check_pipeline_commit({"FRAUD_EXPECTED_COMMIT": "a" * 40, "FRAUD_GIT_COMMIT": "b" * 40})
