"""train-and-release as a real Prefect deployment: server, process worker, `prefect deploy`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from flows.registry import registry

pytestmark = pytest.mark.integration
DEPLOYMENT = "train-and-release/fraud-detector"


def generate(stack, rows: int, seed: int) -> str:
    path = stack.home / "data" / f"tx-{seed}.parquet"
    subprocess.run(
        [sys.executable, "-m", "flows.cli", "generate-data", str(path), "--rows", str(rows),
         "--seed", str(seed), "--invalid-rows", "20", "--quiet"],
        check=True, env=stack.env,
    )  # fmt: skip
    return str(path)


def test_deployment_run_releases_then_blocks_a_worse_candidate(stack):
    data = generate(stack, 40_000, seed=21)
    first = stack.prefect(
        "deployment", "run", DEPLOYMENT, "--watch", "--param", f"data_path={data}"
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    client: MlflowClient = registry.configure(stack.settings())
    champion = client.get_model_version_by_alias("fraud-detector", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["gate.outcome"] == "promote"
    artifacts = {a.path for a in client.list_artifacts(champion.run_id)}
    assert "reference" in artifacts
    model = registry.download_model(champion, stack.home / "check")
    assert model.sha256 == champion.tags["onnx_sha256"]
    assert client.get_run(champion.run_id).data.tags["prefect.flow_run_id"]

    crippled = json.dumps({"cripple": True, "max_iter": 30})
    second = stack.prefect(
        "deployment", "run", DEPLOYMENT, "--watch",
        "--param", f"data_path={data}", "--param", f"params={crippled}",
    )  # fmt: skip
    assert "Blocked" in second.stdout + second.stderr
    blocked = client.get_model_version("fraud-detector", "2")
    assert blocked.tags["gate.outcome"] == "blocked"
    assert "f1_floor" in blocked.tags["gate.reasons"]
    assert str(client.get_model_version_by_alias("fraud-detector", "champion").version) == "1"


def test_bring_your_own_data_through_the_deployment(stack):
    root_examples = registry.PROJECT_ROOT / "data_contracts" / "examples"
    run = stack.prefect(
        "deployment", "run", DEPLOYMENT, "--watch",
        "--param", f"data_path={root_examples / 'credit_risk.csv'}",
        "--param", f"spec_path={root_examples / 'credit_risk.yaml'}",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = registry.configure(stack.settings())
    champion = client.get_model_version_by_alias("credit-risk", "champion")
    assert champion.tags["gate.outcome"] == "promote"
