"""The serving image end to end on a real Docker engine.

A model is trained and registered in MLflow (tmp store), imported into a tmp BentoML store,
built into a bento from this repository's ``bentofile.yaml``, containerized, started with
``--network host`` and queried over 127.0.0.1. With ``CI=true`` a missing engine fails the
tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from data_contracts.schemas import validate_frame
from data_contracts.spec import FeatureSpec
from flows.core import http
from flows.core.settings import Settings
from flows.packaging import container as images
from flows.packaging import errors, publish, smoke, store
from flows.packaging import package as packaging
from flows.registry import registry
from flows.training.onnx_export import export_onnx, sha256
from flows.training.release import train_candidate
from flows.training.train import TrainParams, split

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.timeout(1800)]

MODEL = "fraud-detector"


@dataclass(frozen=True)
class Released:
    settings: Settings
    stored: store.StoredModel
    facts: images.ImageFacts
    case: smoke.SmokeCase
    repository: str


@pytest.fixture(scope="module")
def released(docker_engine, tmp_path_factory, spec: FeatureSpec, small_data) -> Iterator[Released]:
    """Train, register (MLflow), import, build and containerize version 1 once for the module.

    The image gets a repository name of its own so that the test never retags a developer's
    ``fraud-detector`` images.
    """
    home = tmp_path_factory.mktemp("image-home")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "FRAUD_MLFLOW_TRACKING_URI"):
            mp.delenv(name, raising=False)
        settings = Settings(home=home)
    splits = split(validate_frame(small_data, spec).valid, spec, 0.2, 0.2)
    candidate = train_candidate(splits, spec, TrainParams(max_iter=60))
    model_bytes = export_onnx(candidate.pipeline, spec)
    client = registry.configure(settings)
    with mlflow.start_run() as run:
        uri = registry.log_onnx_model(
            model_bytes, spec, candidate.threshold, settings.work_dir, {"model_name": MODEL}
        )
    tags = {
        "run_id": run.info.run_id,
        "feature_spec_hash": spec.spec_hash(),
        "data_digest": "test-data",
        "git_commit": registry.git_commit(),
        "onnx_sha256": sha256(model_bytes),
    }
    version = registry.register_version(client, MODEL, uri, run.info.run_id, tags)
    assert str(version.version) == "1"

    repository = f"{MODEL}-it-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    packaged = packaging.package_version(
        settings, MODEL, "1", splits.holdout, spec, repository=repository
    )
    elapsed = time.perf_counter() - started
    assert packaged.image is not None and packaged.smoke is not None
    facts = packaged.image
    print(f"\nimport + build + containerize + smoke test: {elapsed:.1f} s; {packaged.summary()}")
    stored = store.import_registered_version(settings, MODEL, "1")  # a no-op the second time
    case = smoke.make_smoke_case(model_bytes, spec, splits.holdout, candidate.threshold)
    try:
        yield Released(settings, stored, facts, case, repository)
    finally:
        for tag in (f"{repository}:v1", f"{repository}:latest"):
            subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


def docker_run(image: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a one-off command in the image through its entrypoint (venv activated), no network."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image, *cmd],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_image_is_labelled_with_its_origin_and_not_root(released: Released):
    facts = released.facts
    assert facts.ref == f"{released.repository}:v1"
    assert facts.user and facts.user not in {"root", "0"}
    assert facts.labels["model_version"] == "1"
    assert facts.labels["model_name"] == MODEL
    assert facts.labels["spec_hash"] == released.stored.spec_hash
    assert facts.labels["run_id"] == released.stored.labels["run_id"]
    uid = docker_run(facts.ref, "id", "-u")
    assert uid.returncode == 0, uid.stderr
    assert uid.stdout.strip() != "0"


@pytest.mark.parametrize("module", ["sklearn", "mlflow", "prefect"])
def test_training_stack_is_not_in_the_image(released: Released, module: str):
    proc = docker_run(released.facts.ref, "python", "-c", f"import {module}")
    assert proc.returncode != 0
    assert f"No module named '{module}'" in proc.stderr


def test_serving_stack_is_in_the_image(released: Released):
    """The control for the test above: the same interpreter imports what serving needs."""
    proc = docker_run(
        released.facts.ref, "python", "-c", "import onnxruntime, bentoml, numpy, pyarrow, pydantic"
    )
    assert proc.returncode == 0, proc.stderr


def test_smoke_test_passes_and_then_latest_moves(released: Released):
    settings = released.settings
    report = smoke.smoke_test(settings, released.facts.ref, released.case, model_version="1")
    assert report.records == len(released.case.records)
    assert report.max_abs_diff <= 1e-6
    print(f"\nstart to ready {report.start_to_ready_s:.2f} s, max |dp| {report.max_abs_diff:.1e}")

    publish.publish_champion(settings, released.stored.tag, repository=released.repository)
    latest = images.image_facts(f"{released.repository}:latest")
    assert latest.image_id == released.facts.image_id
    assert publish.read_champion(settings, MODEL) == "fraud-detector:v1"
    assert (settings.bentoml_home / "bentos" / MODEL / "latest").read_text() == "v1"


def test_running_container_answers_and_refuses_bad_input(released: Released, tmp_path: Path):
    with images.run_container(released.facts.ref, tmp_path / "container.log") as container:
        container.wait_ready(60)
        record = dict(released.case.records[0])
        status, reply = http.http_json("POST", f"{container.base_url}/predict", record)
        assert status == 200, reply
        assert reply["model_version"] == "1"
        assert reply["fraud_probability"] == pytest.approx(released.case.probabilities[0], abs=1e-6)

        del record["amount"]
        status, reply = http.http_json("POST", f"{container.base_url}/predict", record)
        assert status == 422
        assert "amount" in str(reply)

        status, metrics = http.http_json("GET", f"{container.base_url}/metrics")
        assert status == 200
        assert "bentoml" in str(metrics)

        whoami = container.exec("id", "-u")
        assert whoami.returncode == 0 and whoami.stdout.strip() != "0"
        name = container.name
    left = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"name={name}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert left.stdout.strip() == ""
    assert (tmp_path / "container.log").stat().st_size > 0  # the container's log was kept


def test_failed_smoke_test_names_the_mismatch_and_cleans_up(released: Released):
    """Expected answers that the model cannot give: the test fails, says why, removes the
    container and leaves ``latest`` where it was."""
    before = subprocess.run(
        ["docker", "ps", "-a", "-q"], capture_output=True, text=True, check=True
    ).stdout.split()
    wrong = smoke.SmokeCase(
        records=released.case.records[:4],
        probabilities=[min(1.0, p + 0.01) for p in released.case.probabilities[:4]],
        threshold=released.case.threshold,
    )
    latest_before = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", f"{released.repository}:latest"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    with pytest.raises(errors.SmokeTestError) as err:
        smoke.smoke_test(released.settings, released.facts.ref, wrong, model_version="1")
    message = str(err.value)
    assert "image smoke test failed" in message
    assert "record 0: probability" in message
    assert "smoke-container.log" in message
    after = subprocess.run(
        ["docker", "ps", "-a", "-q"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(after) <= set(before)
    latest_after = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", f"{released.repository}:latest"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    assert latest_after == latest_before
