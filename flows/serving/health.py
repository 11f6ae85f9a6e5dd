"""How the fleet is doing, and putting it back: each replica's container, ``/readyz`` and the
balancer's view of it (``fraud fleet status``), and restarting replicas that died
(``fraud fleet restore``).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace

from flows.core.http import http_json
from flows.core.settings import Settings
from flows.packaging import container
from flows.serving import balancer
from flows.serving.fleet import (
    balancer_alive,
    remove_replica,
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
