"""The fleet's record: ``fleet.json``, its paths, its lock, and what it renders.

:class:`FleetState` (model, version, replicas, balancer PID and ports) is written atomically with
the Prometheus ``file_sd`` target files beside it; every change of the fleet holds
``fleet/.lock``. The HAProxy configuration of a state is rendered here too, so the fleet
commands (:mod:`flows.serving.fleet`) and the rollout (:mod:`flows.serving.rollout`) share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from data_contracts.artifacts import image_tag
from flows.core.files import write_atomic
from flows.core.settings import Settings
from flows.serving import balancer

STATE_FILE = "fleet.json"
CONTAINER_LOG_DIR = "/fraud/inference_log"  # the shared folder's path inside a replica
DEFAULT_REPLICAS = 2
DEFAULT_PORT = 3000
DEFAULT_METRICS_PORT = 8404


class FleetError(RuntimeError):
    """The fleet could not be started, changed or found; the message says why and what to do."""


@dataclass(frozen=True)
class Replica:
    """One serving container: its name, port on 127.0.0.1, container id, version and image."""

    name: str
    port: int
    container_id: str
    version: str
    image: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class FleetState:
    """What ``fleet.json`` records; enough to stop, restore or roll the fleet later."""

    model: str
    repository: str
    version: str
    replicas: list[Replica]
    port: int = DEFAULT_PORT
    metrics_host: str = "127.0.0.1"
    metrics_port: int = DEFAULT_METRICS_PORT
    balancer_pid: int | None = None
    tls_cert: str | None = None  # the serving port speaks TLS with this PEM (FRAUD_TLS_CERT)
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def image(self) -> str:
        return image_tag(self.repository, self.version)

    @property
    def url(self) -> str:
        """The serving port's URL (https when the balancer terminates TLS)."""
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.port}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FleetState:
        data: dict[str, Any] = json.loads(text)
        data["replicas"] = [Replica(**r) for r in data.get("replicas", [])]
        return cls(**data)


@dataclass(frozen=True)
class FleetPaths:
    """Where the fleet's files live under the home folder."""

    root: Path
    run_dir: Path
    logs_dir: Path

    @classmethod
    def of(cls, settings: Settings) -> FleetPaths:
        return cls(settings.home / "fleet", settings.home / "run", settings.home / "logs")

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def config(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def targets(self) -> Path:
        return self.root / "targets"

    @property
    def container_logs(self) -> Path:
        return self.root / "logs"

    @property
    def balancer_log(self) -> Path:
        return self.logs_dir / "balancer.log"

    @property
    def balancer_pid(self) -> Path:
        return self.run_dir / "balancer.pid"

    @property
    def master_socket(self) -> Path:
        """The HAProxy master CLI socket; a short path in the temp folder when the home's
        would exceed the 107 bytes a Unix socket path may have."""
        path = self.root / "haproxy-master.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"fraud-haproxy-{digest}.sock"


def balancer_spec(state: FleetState, paths: FleetPaths) -> balancer.BalancerSpec:
    """The balancer settings of a fleet."""
    return balancer.BalancerSpec(
        port=state.port,
        metrics_host=state.metrics_host,
        metrics_port=state.metrics_port,
        master_socket=paths.master_socket,
        tls_cert=state.tls_cert,
    )


def render(
    state: FleetState,
    paths: FleetPaths,
    replicas: Sequence[Replica],
    weights: Mapping[str, int] | None = None,
) -> str:
    """The HAProxy configuration sending traffic to ``replicas`` (``weights`` by name: 100)."""
    servers = [balancer.Server(r.name, r.port, (weights or {}).get(r.name, 100)) for r in replicas]
    return balancer.render_config(balancer_spec(state, paths), servers)


@contextlib.contextmanager
def fleet_lock(paths: FleetPaths) -> Iterator[None]:
    """Hold ``fleet/.lock`` (an exclusive ``flock``) for one change of the fleet."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with (paths.root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_state(paths: FleetPaths) -> FleetState | None:
    """The recorded fleet, or None when there is none."""
    try:
        return FleetState.from_json(paths.state.read_text())
    except FileNotFoundError:
        return None


def bento_targets(state: FleetState | None) -> list[dict[str, Any]]:
    """Prometheus ``file_sd`` entries of the replicas (empty without a fleet)."""
    if state is None:
        return []
    return [
        {
            "targets": [f"127.0.0.1:{r.port}"],
            "labels": {"replica": r.name, "model_version": r.version},
        }
        for r in state.replicas
    ]


def balancer_targets(state: FleetState | None) -> list[dict[str, Any]]:
    """Prometheus ``file_sd`` entry of HAProxy's exporter (empty without a fleet)."""
    if state is None:
        return []
    return [
        {
            "targets": [f"{state.metrics_host}:{state.metrics_port}"],
            "labels": {"job_role": "balancer", "model_version": state.version},
        }
    ]


def save_state(paths: FleetPaths, state: FleetState | None) -> None:
    """Write ``fleet.json`` (or remove it) and both target files, each atomically."""
    paths.targets.mkdir(parents=True, exist_ok=True)
    write_atomic(paths.targets / "bento.json", json.dumps(bento_targets(state), indent=1))
    write_atomic(paths.targets / "balancer.json", json.dumps(balancer_targets(state), indent=1))
    if state is None:
        paths.state.unlink(missing_ok=True)
    else:
        write_atomic(paths.state, replace(state, updated_at=time.time()).to_json())
