"""A real Prefect server and process worker on 127.0.0.1, started by the project's stack script.

The stack lives in a temporary FRAUD_HOME; the server and worker are stopped by PID at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    home: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run ``scripts/stack.sh ARGS`` against this stack; output captured."""
        return subprocess.run(
            [str(STACK), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def prefect(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / ".venv" / "bin" / "prefect"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def stack_extra_env() -> dict[str, str]:
    """Extra environment for the stack's server and worker (a module may override it)."""
    return {}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, stack_extra_env: dict[str, str]
) -> Iterator[Stack]:
    """A Prefect server + worker with prefect.yaml deployed, one per test module."""
    home = tmp_path_factory.mktemp("stack") / "home"
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "FRAUD_", "MLFLOW_", "BENTOML_"))
    }
    env |= {
        "FRAUD_HOME": str(home),
        "FRAUD_PREFECT_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "BENTOML_DO_NOT_TRACK": "true",
        # images of test releases never touch a developer's fraud-detector:latest
        "FRAUD_IMAGE_PREFIX": f"fraud-it-{port}-",
        **stack_extra_env,
    }
    s = Stack(home=home, env=env)
    up = s.run("up", timeout=180)
    assert up.returncode == 0, up.stderr
    env |= {
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_HOME": str(home / "prefect"),
        "BENTOML_HOME": str(home / "bentoml"),
    }
    try:
        deployed = s.run("deploy", timeout=300)
        assert deployed.returncode == 0, deployed.stderr
        yield s
    finally:
        s.run("down", timeout=120)
        remove_images(f"fraud-it-{port}-")


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
    from flows.packaging import docker_status

    ok, detail = docker_status()
    if not ok:
        message = f"a Docker engine is needed: {detail} (as root: scripts/docker-engine.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return detail
