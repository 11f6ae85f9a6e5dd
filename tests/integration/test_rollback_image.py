"""Rollback on a real Docker engine: reuse a version's image, rebuild a missing one, and serve
the rolled-back model from ``latest``.

Two versions are released by the flow in-process (bento only), version 1's image is built with
``bentoml containerize`` under a repository of the test's own (never the developer's
``fraud-detector`` images). Rolling back to v1 must reuse that image; rolling forward to v2,
whose image does not exist, must build it; the ``latest`` container then answers as v2.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from prefect.testing.utilities import prefect_test_harness

from data_contracts import artifacts
from flows.core import http
from flows.core.settings import Settings
from flows.packaging import container as images
from flows.packaging import publish, smoke
from flows.promotion import audit, rollback
from flows.registry import registry
from flows.train_and_release import train_and_release
from flows.training.train import TrainParams

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.timeout(1800)]

MODEL = "fraud-detector"


def image_id(ref: str) -> str:
    return images.image_facts(ref).image_id


@pytest.fixture(scope="module")
def released(tmp_path_factory, small_data, docker_engine) -> Iterator[tuple[Settings, str]]:
    home = tmp_path_factory.mktemp("rollback-image") / "home"
    data = home.parent / "transactions.parquet"
    small_data.to_parquet(data, index=False)
    repository = f"{MODEL}-rb-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp, prefect_test_harness(server_startup_timeout=60):
        mp.setenv("FRAUD_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("FRAUD_MLFLOW_TRACKING_URI", raising=False)
        for max_iter in (60, 70):  # two models: a rerun of the same one reuses its version
            state = train_and_release(
                data_path=str(data),
                params=TrainParams(max_iter=max_iter),
                build_image=False,
                return_state=True,
            )
            assert state.is_completed(), state.message
        settings = Settings(home=home)
        try:
            images.containerize_with_retries(settings, f"{MODEL}:v1", repository=repository)
            yield settings, repository
        finally:
            for tag in ("v1", "v2", "latest"):
                subprocess.run(
                    ["docker", "rmi", "-f", f"{repository}:{tag}"], capture_output=True, check=False
                )


def test_rollback_reuses_the_image_then_rebuilds_a_missing_one(
    released, tmp_path, small_data, spec
):
    settings, repository = released
    v1 = image_id(f"{repository}:v1")

    back = rollback.rollback(
        settings, MODEL, "1", "incident 42", "user:oncall", image=True, repository=repository
    )
    assert back.image_repointed
    assert f"image: reused {repository}:v1, tagged {repository}:latest" in back.notes
    assert image_id(f"{repository}:latest") == v1
    assert publish.read_champion(settings, MODEL) == "fraud-detector:v1"

    forward = rollback.rollback(settings, MODEL, "2", "fixed", image=True, repository=repository)
    assert forward.image_repointed
    assert any(f"{repository}:v2 was missing and has been rebuilt" in n for n in forward.notes)
    v2 = image_id(f"{repository}:v2")
    assert v2 != v1 and image_id(f"{repository}:latest") == v2
    assert images.image_facts(f"{repository}:latest").labels["model_version"] == "2"

    client = registry.configure(settings)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    moves = [(m.action, m.from_version, m.to_version) for m in audit.history(client, MODEL)]
    assert moves[-2:] == [("rollback", "2", "1"), ("rollback", "1", "2")]

    record = smoke.request_records(small_data.head(1), spec)[0]
    with images.run_container(f"{repository}:latest", tmp_path / "latest.log") as container:
        container.wait_ready(90)
        status, reply = http.http_json("POST", f"{container.base_url}/predict", record)
    assert status == 200, reply
    assert str(reply[artifacts.VERSION_FIELD]) == "2"
