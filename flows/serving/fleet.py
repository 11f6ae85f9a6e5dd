"""The local serving fleet: N containers of the champion image behind HAProxy on one port.

Everything the fleet is lives under ``$FRAUD_HOME/fleet/``: ``fleet.json`` (model, version,
replicas with their ports and container ids, the balancer's PID and ports), ``haproxy.cfg``,
the replicas' saved container logs (``logs/``) and the Prometheus ``file_sd`` target files
(``targets/bento.json``: one entry per replica, labelled ``replica`` and ``model_version``;
``targets/balancer.json``: HAProxy's metrics address). The balancer's output goes to
``$FRAUD_HOME/logs/balancer.log`` and its PID to ``$FRAUD_HOME/run/balancer.pid``, beside the
other local servers. Every change of the fleet holds ``fleet/.lock`` (fleet up, down, restore
and a rollout never interleave).

Replicas run ``--network host`` on ports of their own, mount the shared inference-log folder
(each writer's file names are its own) and are verified before they get traffic: ``/readyz``,
then the version's reference records (:func:`flows.packaging.smoke.check_reference`).

One module on purpose (557 lines): the state file, the lock and the replica lifecycle are one
unit that every fleet command and the rollout hold together; the balancer (``balancer.py``), the
rollout (``rollout.py``) and the canary (``canary.py``) are already their own modules.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from data_contracts.artifacts import image_tag, parse_tag
from data_contracts.id_key import KEY_ENV as ID_KEY_ENV
from data_contracts.inference_log import LOG_DIR_ENV
from flows.core.files import write_atomic
from flows.core.http import free_port, http_json
from flows.core.settings import Settings
from flows.packaging import container, smoke
from flows.packaging.errors import SmokeTestError
from flows.packaging.publish import read_champion
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
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def image(self) -> str:
        return image_tag(self.repository, self.version)

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


def replica_name(repository: str, version: str, port: int) -> str:
    """A container name unique on this engine (the port is unique on this host)."""
    return f"{repository.replace('/', '-')}-v{version}-fleet-{port}"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def shared_log_dir(settings: Settings) -> Path:
    """The shared inference-log folder, writable by the image's (non-root) user.

    Sticky and world-writable like /tmp: every replica (and a ``bentoml serve``) writes its own
    files into it, none can remove another's.
    """
    root = settings.inference_log_root
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o1777)
    return root


def start_replica(settings: Settings, image: str, port: int, paths: FleetPaths) -> Replica:
    """``docker run`` one replica of ``image`` on ``port`` (host network); not yet verified."""
    _, version = parse_tag(image)
    name = replica_name(image.rpartition(":")[0], version, port)
    container.docker("rm", "-f", name, timeout=60)  # a leftover of a crashed run
    env = {
        "BENTOML_PORT": str(port),
        "BENTOML_HOST": "127.0.0.1",
        "BENTOML_DO_NOT_TRACK": "true",
        LOG_DIR_ENV: CONTAINER_LOG_DIR,
    }
    env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    # the id-hash key reaches the replica through a 0600 env file, never on a command line
    key_file = paths.root / f".{name}.id-key.env"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{ID_KEY_ENV}={settings.id_key().decode()}\n")
    try:
        proc = container.docker(
            "run", "-d", "--name", name, "--network", "host", *env_args,
            "--env-file", str(key_file),
            "-v", f"{shared_log_dir(settings)}:{CONTAINER_LOG_DIR}",
            "--label", f"fraud.fleet={paths.root}", "--label", f"fraud.model_version={version}",
            image,
        )  # fmt: skip
    finally:
        key_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        container.docker("rm", "-f", name, timeout=60)
        raise FleetError(f"docker run {image} failed: {proc.stderr.strip()}")
    return Replica(name, port, proc.stdout.strip(), version, image)


def save_logs(replica: Replica, paths: FleetPaths) -> Path:
    """Copy the container's log to ``fleet/logs/<name>.log`` (appended: restores keep history)."""
    paths.container_logs.mkdir(parents=True, exist_ok=True)
    target = paths.container_logs / f"{replica.name}.log"
    logs = container.docker("logs", replica.name, timeout=60)
    if logs.returncode == 0:
        with target.open("a") as handle:
            handle.write(f"=== {replica.name} ({replica.container_id[:12]}) {time.ctime()} ===\n")
            handle.write(logs.stdout + logs.stderr)
    return target


def remove_replica(replica: Replica, paths: FleetPaths, stop_timeout_s: int = 10) -> None:
    """Stop (SIGTERM, so the inference log is flushed), save the log, remove the container."""
    container.docker("stop", "-t", str(stop_timeout_s), replica.name, timeout=stop_timeout_s + 60)
    save_logs(replica, paths)
    container.docker("rm", "-f", replica.name, timeout=60)


def verify_replica(
    settings: Settings, replica: Replica, case: smoke.SmokeCase, ready_timeout_s: float
) -> float:
    """Wait for ``/readyz``, then the reference records; seconds to ready, or SmokeTestError."""
    handle = container.RunningContainer(
        replica.name, replica.image, replica.port, time.perf_counter(), Path(replica.name)
    )
    ready_s = handle.wait_ready(ready_timeout_s)
    smoke.check_reference(replica.base_url, replica.image, case, model_version=replica.version)
    return ready_s


def start_verified(
    settings: Settings,
    image: str,
    count: int,
    paths: FleetPaths,
    *,
    ports: Sequence[int] | None = None,
    ready_timeout_s: float = 90,
) -> list[Replica]:
    """Start ``count`` replicas of ``image`` and verify each; on any failure remove them all
    and raise :class:`FleetError` with the reason (the replica's log is saved)."""
    started: list[Replica] = []
    try:
        case = smoke.load_smoke_case(settings, image)
        for i in range(count):
            started.append(
                start_replica(settings, image, ports[i] if ports else free_port(), paths)
            )
        for replica in started:
            verify_replica(settings, replica, case, ready_timeout_s)
    except (SmokeTestError, FleetError) as err:
        for replica in started:
            remove_replica(replica, paths, stop_timeout_s=2)
        logs = f"; container logs in {paths.container_logs}" if started else ""
        raise FleetError(f"new replicas of {image} refused: {err}{logs}") from err
    except BaseException:
        for replica in started:
            remove_replica(replica, paths, stop_timeout_s=2)
        raise
    return started


def champion_version(settings: Settings, model_name: str) -> str:
    """The version the champion pointer names, or :class:`FleetError` when there is none."""
    tag = read_champion(settings, model_name)
    if tag is None:
        raise FleetError(f"{model_name} has no champion yet: release one first (make run)")
    return parse_tag(tag)[1]


def wait_balancer_ready(port: int, timeout_s: float = 20) -> dict[str, Any]:
    """Wait until the balancer's ``/readyz`` answers 200; its JSON body."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, last = http_json("GET", f"http://127.0.0.1:{port}/readyz", timeout=2)
            if status == 200 and isinstance(last, dict):
                return last
        except OSError:
            pass
        time.sleep(0.2)
    raise FleetError(f"the balancer's /readyz did not answer 200 within {timeout_s:.0f}s: {last}")


def balancer_alive(state: FleetState | None) -> bool:
    """Whether the recorded balancer process is running."""
    return state is not None and balancer.alive(state.balancer_pid)


def up(
    settings: Settings,
    model_name: str,
    *,
    replicas: int = DEFAULT_REPLICAS,
    port: int = DEFAULT_PORT,
    metrics_port: int = DEFAULT_METRICS_PORT,
    version: str | None = None,
    repository: str | None = None,
    ready_timeout_s: float = 90,
) -> FleetState:
    """Start the fleet: ``replicas`` verified containers of ``<repository>:v<version>`` (default:
    the champion) behind HAProxy on ``port``. Nothing is left running when it fails."""
    if replicas < 1:
        raise FleetError(f"--replicas must be at least 1 (got {replicas})")
    paths = FleetPaths.of(settings)
    with fleet_lock(paths):
        existing = load_state(paths)
        if existing is not None and balancer_alive(existing):
            raise FleetError(
                f"a fleet of {existing.model} v{existing.version} is already running on port "
                f"{existing.port} (balancer pid {existing.balancer_pid}); `fraud fleet status` "
                "shows it, `fraud fleet down` stops it"
            )
        if existing is not None:  # a fleet whose balancer died: clear what is left of it
            _teardown(existing, paths)
        version = str(version or champion_version(settings, model_name))
        repository = repository or settings.image_repository(model_name)
        image = image_tag(repository, version)
        if not container.image_exists(image):
            raise FleetError(
                f"image {image} not found: release with the image step (Docker running) or "
                f"`fraud rollback --version {version}` to rebuild it"
            )
        for wanted, what in ((port, "--port"), (metrics_port, "--metrics-port")):
            if port_in_use(wanted):
                raise FleetError(
                    f"port {wanted} ({what}) is already in use on 127.0.0.1 (a `make serve` "
                    "bento on 3000? `make down` stops it), or choose another port"
                )
        balancer.haproxy_binary()
        container.require_docker()
        state = FleetState(model_name, repository, version, [], port, "127.0.0.1", metrics_port)
        new = start_verified(settings, image, replicas, paths, ready_timeout_s=ready_timeout_s)
        state = replace(state, replicas=new)
        pid = None
        try:
            balancer.install_config(paths.config, render(state, paths, new))
            pid = balancer.start(
                paths.config, paths.balancer_log, paths.balancer_pid, paths.master_socket
            )
            state = replace(state, balancer_pid=pid)
            balancer.wait_servers(balancer_spec(state, paths), [r.name for r in new], 20)
            wait_balancer_ready(port)
        except BaseException as err:
            balancer.stop(pid, grace_s=1)
            for replica in new:
                remove_replica(replica, paths, stop_timeout_s=2)
            if isinstance(err, balancer.BalancerError):
                raise FleetError(f"{err} (balancer log: {paths.balancer_log})") from err
            raise
        save_state(paths, state)
        return state


def _teardown(state: FleetState, paths: FleetPaths) -> None:
    balancer.stop(state.balancer_pid)
    paths.balancer_pid.unlink(missing_ok=True)
    for replica in state.replicas:
        remove_replica(replica, paths)
    save_state(paths, None)


def down(settings: Settings) -> FleetState | None:
    """Stop the balancer (graceful) and every replica (SIGTERM: logs flushed); the state it had."""
    paths = FleetPaths.of(settings)
    with fleet_lock(paths):
        state = load_state(paths)
        if state is not None:
            _teardown(state, paths)
        return state


@dataclass(frozen=True)
class ReplicaHealth:
    """One replica as ``fleet status`` reports it."""

    replica: Replica
    container: str  # running, exited, missing ...
    ready: bool  # its own /readyz answered 200
    balancer: str  # the balancer's view: UP, DOWN, ... or "not listed"

    @property
    def healthy(self) -> bool:
        return self.container == "running" and self.ready and self.balancer.startswith("UP")


def container_status(name: str) -> str:
    """Docker's status of the container (running, exited, ...), or "missing"."""
    proc = container.docker("inspect", "-f", "{{.State.Status}}", name, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else "missing"


def replica_ready(replica: Replica) -> bool:
    """Whether the replica's own ``/readyz`` answers 200 right now."""
    try:
        status, _ = http_json("GET", f"{replica.base_url}/readyz", timeout=2)
    except OSError:
        return False
    return status == 200


@dataclass(frozen=True)
class FleetStatus:
    """The fleet's health: each replica, the balancer process and its ``/readyz``."""

    state: FleetState
    balancer_running: bool
    balancer_ready: str
    replicas: list[ReplicaHealth]

    @property
    def healthy(self) -> bool:
        return self.balancer_running and all(r.healthy for r in self.replicas)

    def lines(self) -> list[str]:
        s = self.state
        pid = f"pid {s.balancer_pid}" if self.balancer_running else "NOT RUNNING"
        out = [
            f"fleet: {s.model} v{s.version} ({s.image}), {len(s.replicas)} replicas",
            f"balancer: http://127.0.0.1:{s.port} ({pid}); /readyz {self.balancer_ready}; "
            f"metrics http://{s.metrics_host}:{s.metrics_port}/metrics",
        ]
        for r in self.replicas:
            mark = "ok" if r.healthy else "PROBLEM"
            out.append(
                f"  {r.replica.name} 127.0.0.1:{r.replica.port} v{r.replica.version}: "
                f"container {r.container}, /readyz {'200' if r.ready else 'no'}, "
                f"balancer {r.balancer} [{mark}]"
            )
        if not self.healthy:
            out.append("some replicas are not serving: `fraud fleet restore` restarts them")
        return out


def status(settings: Settings) -> FleetStatus | None:
    """The fleet's health, or None when no fleet is recorded."""
    paths = FleetPaths.of(settings)
    state = load_state(paths)
    if state is None:
        return None
    running = balancer_alive(state)
    views: dict[str, str] = {}
    ready = "no answer"
    if running:
        with contextlib.suppress(OSError):
            views = {s.name: s.status for s in balancer.server_states(balancer_spec(state, paths))}
        with contextlib.suppress(OSError):
            code, body = http_json("GET", f"http://127.0.0.1:{state.port}/readyz", timeout=2)
            ready = f"{code} {json.dumps(body)}"
    health = [
        ReplicaHealth(
            r, container_status(r.name), replica_ready(r), views.get(r.name, "not listed")
        )
        for r in state.replicas
    ]
    return FleetStatus(state, running, ready, health)


def restore(settings: Settings, *, ready_timeout_s: float = 90) -> list[Replica]:
    """Restart every replica that is not running and ready, on its own port and name; the
    balancer's health checks put it back in rotation. Returns the restarted replicas."""
    paths = FleetPaths.of(settings)
    with fleet_lock(paths):
        state = load_state(paths)
        if state is None:
            raise FleetError("no fleet is recorded: `fraud fleet up` starts one")
        if not balancer_alive(state):
            raise FleetError(
                "the fleet's balancer is not running: `fraud fleet down` then `fraud fleet up`"
            )
        broken = [
            r
            for r in state.replicas
            if container_status(r.name) != "running" or not replica_ready(r)
        ]
        restarted: list[Replica] = []
        for replica in broken:
            remove_replica(replica, paths, stop_timeout_s=2)
            fresh = start_verified(
                settings, replica.image, 1, paths, ports=[replica.port],
                ready_timeout_s=ready_timeout_s,
            )[0]  # fmt: skip
            restarted.append(fresh)
        if restarted:
            by_name = {r.name: r for r in restarted}
            state = replace(state, replicas=[by_name.get(r.name, r) for r in state.replicas])
            save_state(paths, state)
            balancer.wait_servers(balancer_spec(state, paths), [r.name for r in state.replicas], 20)
        return restarted
