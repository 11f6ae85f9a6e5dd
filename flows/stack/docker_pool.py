"""The production profile's Docker work pool: flow runs as containers of the pipeline image.

``up`` builds the pipeline image of the checkout's commit when it is missing (``make
pipeline-image``, deploy/pipeline.Dockerfile, tag ``fraud-pipeline:<12 characters>``), creates
the ``docker`` work pool (its base job template from this profile's environment: see
:mod:`flows.cli.work_pools`) and starts a Docker worker through the process manager (PID file,
log file). ``deploy`` deploys the pool's deployments of ``prefect.yaml``, whose job variables
name the image, host networking, the profile home and the Docker socket as mounts, and the
servers' URLs. Flow containers reach the servers on 127.0.0.1 (host network), read and write
the profile home at the same path as the host (the inference log, data, the BentoML store), send
MLflow artifacts through the tracking server (``--serve-artifacts``) and build and smoke-test
the bento image through the engine's socket.
"""

from __future__ import annotations

import subprocess  # nosec B404 # argv lists only (git, docker, make, fraud)

from flows.core.files import tail
from flows.core.processes import ProcessManager, Server
from flows.stack.config import DOCKER_DEPLOYMENTS, DOCKER_DRIFT, DOCKER_RELEASE, DockerPoolConfig
from flows.stack.embedded import EmbeddedStack, StackError, say

WORKER = "prefect-docker-worker"
WORKER_STOP_GRACE_S = 10


class DockerPool:
    """The Docker work pool of one profile home, its worker and its image."""

    release_deployment = DOCKER_RELEASE
    drift_deployment = DOCKER_DRIFT

    def __init__(self, config: DockerPoolConfig, stack: EmbeddedStack) -> None:
        self.config = config
        self.stack = stack

    # ------------------------------------------------------------------ image
    def commit(self) -> str | None:
        """The checkout's commit (the pipeline image holds the committed tree)."""
        found = subprocess.run(  # nosec B603 B607 # fixed git argv
            ["git", "-C", str(self.stack.config.project_root), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        return (found.stdout.strip() or None) if found.returncode == 0 else None

    def image(self) -> str:
        """FRAUD_PIPELINE_IMAGE, else ``fraud-pipeline:<12 characters of the commit>``."""
        if self.config.pipeline_image:
            return self.config.pipeline_image
        commit = self.commit()
        if commit is None:
            raise StackError(
                "the Docker work pool needs the pipeline image of a commit, and this checkout "
                "is not a git repository: set FRAUD_PIPELINE_IMAGE, or FRAUD_DOCKER_POOL=off"
            )
        return f"fraud-pipeline:{commit[:12]}"

    def environ(self) -> dict[str, str]:
        """What ``prefect.yaml``'s Docker deployments and the pool's template are filled from."""
        env = {
            "FRAUD_PIPELINE_IMAGE": self.image(),
            "FRAUD_DOCKER_SOCKET": str(self.config.docker_socket),
            "FRAUD_DOCKER_POOL_NAME": self.config.docker_pool_name,
            # flow containers send heartbeats as process runs do: a silent one is marked Crashed
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(self.stack.config.heartbeat_seconds),
        }
        commit = self.commit()
        if commit:  # a run in an image of another commit stops before training
            env["FRAUD_EXPECTED_COMMIT"] = commit
        return env

    def ensure_image(self) -> str:
        """The pipeline image, built by ``make pipeline-image`` when missing."""
        image = self.image()
        if _docker("image", "inspect", image).returncode == 0:
            return image
        if self.config.pipeline_image:
            raise StackError(f"FRAUD_PIPELINE_IMAGE={image} is not an image of this engine")
        cfg = self.stack.config
        log = cfg.log_dir / "pipeline-image.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        say(f"building the pipeline image {image} (make pipeline-image; log: {log})")
        with log.open("ab") as out:
            try:
                code = subprocess.run(  # nosec B603 B607 # make of this checkout, argv list
                    ["make", "--no-print-directory", "-C", str(cfg.project_root),
                     "pipeline-image", f"PIPELINE_IMAGE={image}"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    check=False, timeout=self.config.pipeline_image_timeout,
                ).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                raise StackError(
                    f"building {image} took over {self.config.pipeline_image_timeout} s "
                    f"(FRAUD_PIPELINE_IMAGE_TIMEOUT); see {log}"
                ) from None
        if code != 0:
            raise StackError(f"building {image} failed; see {log}:\n{tail(log, 20)}")
        return image

    # ------------------------------------------------------------------ pool and worker
    def worker(self) -> Server:
        return Server(
            WORKER,
            [self.stack.tool("prefect"), "worker", "start", "--pool",
             self.config.docker_pool_name, "--type", "docker"],
            env=self.stack.child_env(**self.environ()),
            cwd=self.stack.config.home,
            stop_grace_s=WORKER_STOP_GRACE_S,
        )  # fmt: skip

    def up(self) -> None:
        """The image (built if missing), the pool (its template from this profile), a worker."""
        from flows.packaging.container import docker_status

        ok, detail = docker_status()
        if not ok:
            raise StackError(
                f"the production profile runs its flows on a Docker work pool, and no Docker "
                f"engine answers ({detail}): run 'make docker' as root, or set "
                "FRAUD_DOCKER_POOL=off to use the process worker only"
            )
        image = self.ensure_image()
        log = self.stack.config.log_dir / "docker-pool.log"
        say(f"Docker work pool {self.config.docker_pool_name}: flow runs are containers of {image}")
        self.stack._logged(
            [self.stack.tool("fraud"), "work-pools", self.config.docker_pool_name,
             "--type", "docker"],
            log, "setting up the Docker work pool", env=self.environ(),
        )  # fmt: skip
        self.stack.processes.ensure(self.worker())

    def deploy(self) -> None:
        """Deploy the pool's deployments of ``prefect.yaml``, filled from this profile."""
        self.stack.deploy(DOCKER_DEPLOYMENTS, env=self.environ(), automations=False)

    def status(self) -> list[str]:
        return self.stack.processes.status_lines([WORKER])


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # nosec B603 B607 # docker CLI, argv list
            ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(["docker", *args], 1, "", str(err))


def for_profile(config: DockerPoolConfig, stack: EmbeddedStack) -> DockerPool | None:
    """The profile's Docker pool, or None when ``FRAUD_DOCKER_POOL=off``."""
    return DockerPool(config, stack) if config.enabled else None


def stop_worker(processes: ProcessManager) -> None:
    """Stop the Docker worker by its PID file (running flow containers are left to finish)."""
    processes.stop(WORKER, grace_s=WORKER_STOP_GRACE_S)
