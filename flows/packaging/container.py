"""Docker: is an engine there, ``bentoml containerize``, image facts, and test containers.

Images are ``<repository>:v<N>``; nothing here moves ``latest`` (see
:mod:`flows.packaging.publish`).
Docker is called through its CLI with argv lists, never a shell.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess  # nosec B404 # argv lists only (docker, bentoml), never a shell
import tempfile
import time
import urllib.error
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from data_contracts.artifacts import image_tag
from flows.core.http import free_port, http_json
from flows.core.settings import Settings
from flows.packaging.build import bentoml_cli, bentoml_env, release_log_dir, run_logged
from flows.packaging.errors import ContainerizeError, DockerUnavailableError, SmokeTestError
from flows.packaging.store import bento_store


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``docker <args>`` and capture its output (never raises on a non-zero exit)."""
    return subprocess.run(  # nosec B603 B607 # docker from PATH, argv list, no shell
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def docker_status() -> tuple[bool, str]:
    """Whether a Docker engine answers, with the reason when it does not."""
    if shutil.which("docker") is None:
        return False, "the docker client is not on PATH"
    try:
        proc = subprocess.run(  # nosec B603 B607 # fixed argv; docker from PATH
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "`docker info` did not answer within 20 s"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return False, f"`docker info` failed: {detail[-1] if detail else 'no output'}"
    return True, f"Docker engine {proc.stdout.strip()}"


def require_docker() -> str:
    """Raise :class:`DockerUnavailableError` with a clear message when no engine answers."""
    ok, detail = docker_status()
    if not ok:
        raise DockerUnavailableError(
            "this machine",
            f"image not built: {detail}. Start one (as root: scripts/docker-engine.sh), give a "
            "flow container the engine's socket, or run the release without the image step.",
        )
    return detail


def image_exists(ref: str) -> bool:
    """Whether the local Docker engine has the image ``ref``."""
    return docker("image", "inspect", ref).returncode == 0


@dataclass(frozen=True)
class ImageFacts:
    """What ``docker image inspect`` says about a built image."""

    ref: str
    image_id: str
    size_bytes: int
    user: str
    labels: dict[str, str]

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def image_facts(ref: str) -> ImageFacts:
    """Id, size, user and labels of a local image."""
    proc = docker("image", "inspect", ref)
    if proc.returncode != 0:
        raise ContainerizeError(ref, f"image not found: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)[0]
    config = data.get("Config") or {}
    return ImageFacts(
        ref=ref,
        image_id=str(data["Id"]),
        size_bytes=int(data["Size"]),
        user=str(config.get("User") or ""),
        labels=dict(config.get("Labels") or {}),
    )


def containerize(
    settings: Settings, bento_tag: str, *, repository: str | None = None, timeout: float = 1800
) -> ImageFacts:
    """``bentoml containerize`` the bento to the image ``<model>:v<version>`` (never ``latest``).

    Uses the legacy builder (``DOCKER_BUILDKIT=0``) with host networking for the build steps,
    and puts the bento's labels on the image. ``repository`` overrides the image name (default:
    the model name). Retry on failure: this step does network I/O.
    """
    name, _, version = bento_tag.partition(":")
    log_path = release_log_dir(settings, name, version[1:]) / "containerize.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"=== containerize {bento_tag} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
    require_docker()
    bento = bento_store(settings.bentoml_home).get(bento_tag)
    ref = image_tag(repository or name, version[1:])
    label_args = [f"--opt=label={k}={v}" for k, v in bento.info.labels.items()]
    cmd = bentoml_cli(
        "containerize",
        bento_tag,
        "--backend",
        "docker",
        "-t",
        ref,
        "--opt=network=host",
        *label_args,
    )
    env = bentoml_env(settings, bento_tag)
    started = time.perf_counter()
    # BentoML resolves a bento's Dockerfile template inside a temporary copy of the bento and
    # refuses paths outside the working directory: run from the temporary directory's root.
    cwd = Path(tempfile.gettempdir())
    code = run_logged(cmd, log_path, env=env, cwd=cwd, timeout=timeout)
    if code != 0:
        raise ContainerizeError(bento_tag, f"exit code {code}", log_path)
    facts = image_facts(ref)
    with log_path.open("a") as log:
        log.write(
            f"[image {ref} {facts.image_id} {facts.size_mb:.0f} MB user={facts.user!r} "
            f"built in {time.perf_counter() - started:.1f}s]\n"
        )
    if not facts.user or facts.user in {"root", "0"}:
        raise ContainerizeError(bento_tag, f"image {ref} runs as root (User={facts.user!r})")
    return facts


def containerize_with_retries(
    settings: Settings,
    bento_tag: str,
    *,
    repository: str | None = None,
    delays_s: Sequence[float] = (5.0, 15.0),
    build: Callable[..., ImageFacts] = containerize,
) -> ImageFacts:
    """:func:`containerize` (or ``build``), tried again after ``delays_s`` when the build fails:
    the build downloads packages and can hit a network error. A root image is not retried."""
    for delay in (*delays_s, None):
        try:
            return build(settings, bento_tag, repository=repository)
        except ContainerizeError as err:
            if delay is None or "runs as root" in err.reason:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


PORT_RACE_MESSAGE = "Address already in use"


@dataclass
class RunningContainer:
    """A container started for a test, addressed on 127.0.0.1:port (host network)."""

    name: str
    image: str
    port: int
    started_at: float
    log_path: Path
    port_race_restarts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        proc = docker("inspect", "-f", "{{.State.Running}}", self.name, timeout=30)
        return proc.returncode == 0 and proc.stdout.strip() == "true"

    def exec(self, *cmd: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (as its image user unless ``user`` is given)."""
        user_args = ["-u", user] if user else []
        return docker("exec", *user_args, self.name, *cmd, timeout=120)

    def lost_port_race(self) -> bool:
        """Whether the stopped container's log says a port it picked was taken meanwhile.

        BentoML picks free ports for its internal sockets, releases them, and binds them a
        moment later; on the host network another process can take one in between.
        """
        logs = docker("logs", "--tail", "50", self.name, timeout=30)
        return PORT_RACE_MESSAGE in logs.stdout + logs.stderr

    def wait_ready(self, timeout: float = 60, *, port_race_restarts: int = 2) -> float:
        """Poll ``/readyz`` until it answers 200; return seconds since ``docker run``.

        A container that exited because it lost a port race (see :meth:`lost_port_race`) is
        started again, up to ``port_race_restarts`` times in the container's life (counted in
        the field of that name); any other exit is an error.
        """
        deadline = time.monotonic() + timeout
        next_check = 0.0
        while time.monotonic() < deadline:
            try:
                status, _ = http_json("GET", f"{self.base_url}/readyz", timeout=2)
                if status == 200:
                    return time.perf_counter() - self.started_at
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() >= next_check:
                if not self.running():
                    if self.port_race_restarts < port_race_restarts and self.lost_port_race():
                        self.port_race_restarts += 1
                        docker("start", self.name, timeout=60)
                    else:
                        raise SmokeTestError(self.image, "the container exited before it was ready")
                next_check = time.monotonic() + 1.0
            time.sleep(0.1)
        raise SmokeTestError(self.image, f"/readyz did not answer 200 within {timeout:.0f}s")


@contextmanager
def run_container(
    image: str,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Iterator[RunningContainer]:
    """Start ``image`` on the host network on a free port; always save its log and remove it.

    The bento's entrypoint runs ``bentoml serve`` and takes the port from ``BENTOML_PORT``.
    """
    port = port or free_port()
    name = f"{image.replace(':', '-').replace('/', '-')}-test-{os.getpid()}-{port}"
    env_args: list[str] = []
    for key, value in {
        "BENTOML_PORT": str(port),
        "BENTOML_HOST": "127.0.0.1",
        "BENTOML_DO_NOT_TRACK": "true",
        **(env or {}),
    }.items():
        env_args += ["-e", f"{key}={value}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = docker("run", "-d", "--name", name, "--network", "host", *env_args, image)
    if proc.returncode != 0:
        log_path.write_text(proc.stdout + proc.stderr)
        docker("rm", "-f", name)
        raise SmokeTestError(image, f"docker run failed: {proc.stderr.strip()}", log_path)
    container = RunningContainer(name, image, port, started, log_path)
    try:
        yield container
    finally:
        logs = docker("logs", name, timeout=60)
        log_path.write_text(logs.stdout + logs.stderr)
        docker("rm", "-f", name, timeout=60)
