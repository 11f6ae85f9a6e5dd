"""Rolling the fleet to a new version: part of every champion move.

:func:`flows.promotion.champion.move_champion` drives a :class:`Rollout` in this order, so that
the champion alias never points at a version the fleet refused:

1. :meth:`Rollout.stage` (before the alias moves): start the new version's replicas beside the
   old ones, wait for ``/readyz`` and check the reference records on each (no traffic yet);
2. :meth:`Rollout.shift` (before the alias moves): first the canary (:mod:`~flows.serving.canary`,
   on by default: ``share`` of the traffic to the new replicas for ``seconds``, then their error
   ratio and response time against the old ones'), then the balancer configuration naming only
   the new replicas; each configuration validated and installed atomically, each change a
   graceful HAProxy reload (the old worker finishes its requests in flight on the old
   replicas, which are still running);
3. the alias moves (``move_champion``);
4. :meth:`Rollout.finish`: wait for the old worker to drain, stop the old replicas, record the
   new fleet (``fleet.json`` and the Prometheus targets).

A failure in 1-3 calls :meth:`Rollout.abandon`: the previous configuration goes back (reload)
when it had been shifted, the new containers are removed, the old replicas never stopped, and
``move_champion`` puts serving back and re-raises (the alias never moved). When no fleet runs
(or it serves another model) nothing starts: :attr:`Rollout.note` says so for the summary.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

from data_contracts.artifacts import image_tag
from flows.core.settings import Settings
from flows.serving import balancer, canary, fleet


class RolloutFailed(RuntimeError):
    """The fleet refused the new version; the old replicas kept serving."""


@dataclass
class Rollout:
    """One rollout of the fleet to ``version`` (see the module docstring for the order)."""

    settings: Settings
    model_name: str
    version: str
    paths: fleet.FleetPaths
    state: fleet.FleetState | None = None
    new: list[fleet.Replica] = field(default_factory=list)
    shifted: bool = False
    old_config: str | None = None
    note: str = ""
    canary_policy: canary.CanaryPolicy = field(default_factory=canary.CanaryPolicy)
    verdict: canary.Verdict | None = None
    started: float = field(default_factory=time.perf_counter)
    committed_at: float | None = None  # when the alias moved (perf_counter)
    _lock: ExitStack = field(default_factory=ExitStack)

    @property
    def active(self) -> bool:
        """Whether there is a fleet to roll (stage found one running this model)."""
        return self.state is not None

    def stage(self, *, image: bool = True, ready_timeout_s: float = 90) -> None:
        """Take the fleet lock and start + verify the new replicas (see the module docstring)."""
        self._lock.enter_context(fleet.fleet_lock(self.paths))
        state = fleet.load_state(self.paths)
        if state is None or not fleet.balancer_alive(state):
            self.note = "no fleet running: nothing rolled (make fleet-up serves the champion)"
            return self.release()
        if state.model != self.model_name:
            self.note = f"the fleet serves {state.model}, not {self.model_name}: nothing rolled"
            return self.release()
        if state.version == self.version:
            self.note = f"the fleet already serves v{self.version}: nothing rolled"
            return self.release()
        if not image:
            self.note = (
                f"FLEET NOT ROLLED: this move published no image; the fleet still serves "
                f"v{state.version} ({state.image})"
            )
            return self.release()
        target = image_tag(state.repository, self.version)
        self.state = state
        try:
            self.new = fleet.start_verified(
                self.settings, target, len(state.replicas), self.paths,
                ready_timeout_s=ready_timeout_s,
            )  # fmt: skip
        except fleet.FleetError as err:
            self.abandon()
            raise RolloutFailed(
                f"rollout of {target} abandoned, v{state.version} keeps serving: {err}"
            ) from err
        return None

    def shift(self) -> None:
        """Point the balancer at the new replicas only (validated config, graceful reload)."""
        if self.state is None:
            return
        state, spec = self.state, fleet.balancer_spec(self.state, self.paths)
        self.old_config = self.paths.config.read_text()
        try:
            if self.canary_policy.enabled:
                self._canary(state, spec)
            balancer.install_config(self.paths.config, fleet.render(state, self.paths, self.new))
            self.shifted = True
            balancer.reload(state.balancer_pid, self.paths.master_socket)
            balancer.wait_servers(spec, [r.name for r in self.new], 20)
        except balancer.BalancerError as err:
            self.abandon()
            raise RolloutFailed(
                f"rollout to v{self.version} abandoned, v{state.version} keeps serving: {err}"
            ) from err

    def _canary(self, state: fleet.FleetState, spec: balancer.BalancerSpec) -> None:
        """Send the policy's share to the new replicas for its window, then judge them."""
        policy = self.canary_policy
        old_w, new_w = policy.weights()
        both = [*state.replicas, *self.new]
        weights = {r.name: old_w for r in state.replicas} | {r.name: new_w for r in self.new}
        balancer.install_config(self.paths.config, fleet.render(state, self.paths, both, weights))
        self.shifted = True
        balancer.reload(state.balancer_pid, self.paths.master_socket)
        start = {s.name: s for s in balancer.wait_servers(spec, [r.name for r in both], 20)}
        time.sleep(policy.seconds)
        end = {s.name: s for s in balancer.server_states(spec)}
        old = canary.figures(state.version, [r.name for r in state.replicas], start, end)
        new = canary.figures(self.version, [r.name for r in self.new], start, end)
        self.verdict = canary.judge(old, new, policy)
        if not self.verdict.passed:
            raise balancer.BalancerError(self.verdict.text())

    def abandon(self) -> list[str]:
        """Undo :meth:`stage` and :meth:`shift`; returns what could not be undone (readable)."""
        problems: list[str] = []
        if self.state is not None and self.shifted and self.old_config is not None:
            try:
                balancer.install_config(self.paths.config, self.old_config)
                balancer.reload(self.state.balancer_pid, self.paths.master_socket)
            except (balancer.BalancerError, OSError) as err:
                problems.append(f"could not put the balancer back on v{self.state.version}: {err}")
        self.shifted = False
        for replica in self.new:
            try:
                fleet.remove_replica(replica, self.paths, stop_timeout_s=2)
            except Exception as err:  # keep undoing the rest
                problems.append(f"could not remove {replica.name}: {err}")
        self.new = []
        self.release()
        return problems

    def committed(self) -> None:
        """Record the moment the alias moved (the rollout's figures count from it)."""
        self.committed_at = time.perf_counter()

    def finish(self) -> str:
        """After the alias moved: drain and stop the old replicas, record the new fleet."""
        if self.state is None:
            return self.note
        old = self.state
        new_state = replace(old, version=self.version, replicas=self.new)
        problems: list[str] = []
        try:
            fleet.save_state(self.paths, new_state)
            drained = balancer.wait_drained(self.paths.master_socket, old_drain_s())
            for replica in old.replicas:
                try:
                    fleet.remove_replica(replica, self.paths)
                except Exception as err:  # the new version serves: report, do not fail the move
                    problems.append(f"could not stop old replica {replica.name}: {err}")
        finally:
            self.release()
        now = time.perf_counter()
        since_move = (
            f", {now - self.committed_at:.1f} s after the alias move"
            if (self.committed_at is not None)
            else ""
        )
        self.note = (
            f"fleet rolled v{old.version} -> v{self.version}: {len(self.new)} replicas verified "
            f"and serving, old replicas {'drained and ' if drained else ''}stopped "
            f"{now - self.started:.1f} s after the rollout began{since_move}"
        ) + "".join(f"; {p}" for p in problems)
        if self.verdict is not None:
            self.note += f"; {self.verdict.text()}"
        return self.note

    def release(self) -> None:
        """Let go of the fleet lock (idempotent)."""
        self._lock.close()


def old_drain_s() -> float:
    """How long an old HAProxy worker may take to finish its requests (its hard stop)."""
    return float(balancer.BalancerSpec().drain_timeout_s)


def begin(
    settings: Settings, model_name: str, version: str, policy: canary.CanaryPolicy | None = None
) -> Rollout:
    """A rollout of ``model_name``'s fleet (if one runs) to ``version``; call ``stage`` next.
    The canary policy comes from the settings (``FRAUD_CANARY_SECONDS``, ``FRAUD_CANARY_SHARE``)
    unless ``policy`` is given."""
    policy = policy or canary.CanaryPolicy(settings.canary_seconds, settings.canary_share)
    return Rollout(
        settings, model_name, str(version), fleet.FleetPaths.of(settings), canary_policy=policy
    )


def roll(
    settings: Settings,
    model_name: str,
    version: str,
    *,
    ready_timeout_s: float = 90,
    policy: canary.CanaryPolicy | None = None,
) -> str:
    """Roll the fleet to ``version`` without moving any alias (``fraud fleet roll``); the
    summary line."""
    rollout = begin(settings, model_name, version, policy)
    rollout.stage(ready_timeout_s=ready_timeout_s)
    try:
        rollout.shift()
    except BaseException:
        rollout.abandon()
        raise
    return rollout.finish()
