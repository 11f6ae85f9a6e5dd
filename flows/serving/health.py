"""How the fleet is doing, and putting it back: each replica's container, ``/readyz``, the
balancer's view of it and whether it can write the shared inference log (``fraud fleet
status``), and restarting replicas that died (``fraud fleet restore``).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from typing import Any

from flows.core.http import http_json
from flows.core.settings import Settings
from flows.packaging import container
from flows.serving import balancer
from flows.serving.fleet import (
    balancer_alive,
    remove_replica,
    shared_log_dir,
    start_verified,
)
from flows.serving.state import (
    FleetError,
    FleetPaths,
    FleetState,
    Replica,
    balancer_spec,
    fleet_lock,
    load_state,
    save_state,
)


@dataclass(frozen=True)
class ReplicaHealth:
    """One replica as ``fleet status`` reports it."""

    replica: Replica
    container: str  # running, exited, missing ...
    ready: bool  # its own /readyz answered 200
    balancer: str  # the balancer's view: UP, DOWN, ... or "not listed"
    log: dict[str, Any] | None = None  # its inference log (GET /model), None: no answer

    @property
    def serving(self) -> bool:
        """Running, ready and in the balancer's rotation."""
        return self.container == "running" and self.ready and self.balancer.startswith("UP")

    @property
    def log_ok(self) -> bool:
        """False when the replica says it cannot write its inference log (or it is off)."""
        return self.log is None or self.log.get("writable") is not False

    @property
    def healthy(self) -> bool:
        return self.serving and self.log_ok

    def log_text(self) -> str:
        """The inference log as ``fleet status`` shows it."""
        log = self.log
        if log is None:
            return "log unknown"
        counts = f"written {log.get('written', 0)}, lost {log.get('lost', 0)}"
        if self.log_ok:
            return f"log ok ({counts})"
        return f"log NOT WRITABLE ({counts}: {log.get('last_error')})"


def container_status(name: str) -> str:
    """Docker's status of the container (running, exited, ...), or "missing"."""
    proc = container.docker("inspect", "-f", "{{.State.Status}}", name, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else "missing"


def replica_log(replica: Replica) -> dict[str, Any] | None:
    """The replica's inference-log status from its ``GET /model``; None when it says nothing."""
    try:
        status, card = http_json("GET", f"{replica.base_url}/model", timeout=2)
    except OSError:
        return None
    log = card.get("inference_log") if status == 200 and isinstance(card, dict) else None
    return log if isinstance(log, dict) else None


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
            f"balancer: {s.url} ({pid}); /readyz {self.balancer_ready}; "
            f"metrics http://{s.metrics_host}:{s.metrics_port}/metrics",
        ]
        for r in self.replicas:
            mark = "ok" if r.healthy else "PROBLEM"
            out.append(
                f"  {r.replica.name} 127.0.0.1:{r.replica.port} v{r.replica.version}: "
                f"container {r.container}, /readyz {'200' if r.ready else 'no'}, "
                f"balancer {r.balancer}, {r.log_text()} [{mark}]"
            )
        if not all(r.serving for r in self.replicas):
            out.append("some replicas are not serving: `fraud fleet restore` restarts them")
        if not all(r.log_ok for r in self.replicas):
            out.append(
                "some replicas cannot write the inference log (the drift check misses what "
                "they score): `fraud fleet restore` makes the shared folder writable again"
            )
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
            code, body = http_json("GET", f"{state.url}/readyz", timeout=2)
            ready = f"{code} {json.dumps(body)}"
    health = [
        ReplicaHealth(
            r,
            container_status(r.name),
            replica_ready(r),
            views.get(r.name, "not listed"),
            replica_log(r),
        )
        for r in state.replicas
    ]
    return FleetStatus(state, running, ready, health)


def restore(settings: Settings, *, ready_timeout_s: float = 90) -> list[Replica]:
    """Restart every replica that is not running and ready, on its own port and name; the
    balancer's health checks put it back in rotation. The shared inference-log folders are
    made writable by every writer again first. Returns the restarted replicas."""
    paths = FleetPaths.of(settings)
    with fleet_lock(paths):
        state = load_state(paths)
        if state is None:
            raise FleetError("no fleet is recorded: `fraud fleet up` starts one")
        if not balancer_alive(state):
            raise FleetError(
                "the fleet's balancer is not running: `fraud fleet down` then `fraud fleet up`"
            )
        shared_log_dir(settings)  # date folders another writer made unshared: shared again
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
