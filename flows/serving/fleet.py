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

The record and its lock are :mod:`flows.serving.state`; status and restore are
:mod:`flows.serving.health`; the balancer, the rollout and the canary have modules of their own.
"""

from __future__ import annotations

import contextlib
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from data_contracts.artifacts import image_tag, parse_tag
from data_contracts.inference_log import LOG_DIR_ENV, PARTITION_PREFIX
from flows.core.http import free_port, http_json
from flows.core.settings import Settings
from flows.packaging import container, smoke
from flows.packaging.errors import SmokeTestError
from flows.packaging.publish import read_champion
from flows.serving import balancer, secrets, tls
from flows.serving.state import (
    CONTAINER_LOG_DIR,
    DEFAULT_METRICS_PORT,
    DEFAULT_PORT,
    DEFAULT_REPLICAS,
    FleetError,
    FleetPaths,
    FleetState,
    Replica,
    balancer_spec,
    fleet_lock,
    load_state,
    render,
    save_state,
)

SHARED_MODE = 0o1777  # the shared inference-log folders: sticky, writable by every writer


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
    files into it, none can remove another's. Its date folders get the same bits: those a
    writer made before the folder was shared (a root ``make serve`` earlier today) here, the
    later ones from their writer (:func:`data_contracts.inference_log.ensure_folder`).
    """
    root = settings.inference_log_root
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(SHARED_MODE)
    for day in root.glob(f"{PARTITION_PREFIX}*"):
        if day.is_dir() and stat.S_IMODE(day.stat().st_mode) != SHARED_MODE:
            with contextlib.suppress(OSError):  # another user's: made shared by its writer
                day.chmod(SHARED_MODE)
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
    # keys reach the replica as files in mounted folders: never on a command line, never in
    # its environment (which `docker inspect` shows); see flows/serving/secrets.py
    secret_args = secrets.replica_secret_args(paths.root, name, settings.id_key())
    proc = container.docker(
        "run", "-d", "--name", name, "--network", "host", *env_args, *secret_args,
        "-v", f"{shared_log_dir(settings)}:{CONTAINER_LOG_DIR}",
        "--label", f"fraud.fleet={paths.root}", "--label", f"fraud.model_version={version}",
        image,
    )  # fmt: skip
    if proc.returncode != 0:
        container.docker("rm", "-f", name, timeout=60)
        secrets.remove_replica_secrets(paths.root, name)
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
    secrets.remove_replica_secrets(paths.root, replica.name)


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


def wait_balancer_ready(url: str, timeout_s: float = 20) -> dict[str, Any]:
    """Wait until the balancer's ``/readyz`` (at ``url``) answers 200; its JSON body."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, last = http_json("GET", f"{url}/readyz", timeout=2)
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
        try:
            cert = tls.serving_cert()  # FRAUD_TLS_CERT: the serving port speaks TLS
        except tls.TlsError as err:
            raise FleetError(str(err)) from err
        state = FleetState(model_name, repository, version, [], port, "127.0.0.1", metrics_port)
        state = replace(state, tls_cert=cert)
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
            wait_balancer_ready(state.url)
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
