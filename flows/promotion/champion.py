"""The one way the ``champion`` alias moves (release, rollback, and anything later).

:func:`move_champion`, inside the model's lock (:mod:`flows.promotion.locks`):

1. re-reads the alias: MLflow has no compare-and-set, so the move is refused
   (:class:`ChampionMoved`) when the champion is not the one the caller decided against;
2. publishes the version to serving (``latest`` image, stores' ``latest``, the model's pointer);
3. rolls the serving fleet when one runs (:mod:`flows.serving.rollout`): the new version's
   replicas start and pass ``/readyz`` and the reference records, the balancer shifts to them;
4. moves the alias; if publishing, the rollout or the alias move fails, the fleet is put back
   (old replicas never stopped, new ones removed), serving is put back exactly as it was
   (pointer, stores' ``latest``, ``latest`` image) and the error propagates: the alias never
   moved, so it needs no audit record of a move back;
5. stops the old replicas (drained) and appends the move to the audit log.

The rollout comes before the alias move on purpose: its failure (a version that never becomes
ready or answers its reference records wrongly) must leave ``champion`` where it was. When no
fleet runs, nothing is started: :attr:`MoveResult.fleet` says so.

Idempotent when retried: if an earlier attempt of the same move got the alias moved and then
failed (e.g. writing the audit record), the retry finds the alias on its version, publishes
again (harmless) and writes the audit record only if it is still missing, instead of refusing
its own move. If that retry cannot roll the fleet to the version, the alias is moved back to
``expected`` with an audit record of the move back, so ``champion`` is again what is served.
An alias found on the version through *another* recorded move (the newest audit record points
there and is not this move) is refused like any other move of the champion.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from data_contracts.artifacts import clear_champion_pointer, store_tag
from flows.core.settings import Settings
from flows.packaging.publish import publish_champion, restore_served, served_state
from flows.promotion import audit, locks
from flows.registry import registry
from flows.serving import rollout

if TYPE_CHECKING:
    from prefect.states import State

Lock = Callable[..., AbstractContextManager[object]]


class ChampionMoved(RuntimeError):
    """The champion changed since the caller decided: moving now would skip that decision."""

    def __init__(self, message: str, current: str | None = None, expected: str | None = None):
        super().__init__(message)
        self.current = current
        self.expected = expected


def check_champion_unchanged(current: str | None, compared: str | None, candidate: str) -> None:
    """Refuse to promote when the champion is no longer the one the candidate was gated against."""
    if current != compared:
        raise ChampionMoved(
            f"candidate v{candidate} not promoted: it was compared against champion "
            f"{'v' + compared if compared else '(none)'}, but the champion is now "
            f"{'v' + current if current else '(none)'}; rerun to gate against the new champion",
            current,
            compared,
        )


@dataclass(frozen=True)
class MoveRequest:
    """One move of ``champion`` to ``version``, decided while ``expected`` was the champion."""

    model_name: str
    version: str
    expected: str | None
    action: str  # "release" or "rollback": the audit log's action
    reason: str
    actor: str
    image: bool = True  # re-tag the ``latest`` image (False: stores and pointer only)
    repository: str | None = None  # image repository; default: the settings' for the model


@dataclass(frozen=True)
class MoveResult:
    """A finished move: from which version, the served tag, and its audit record."""

    from_version: str | None
    to_version: str
    tag: str
    audit_run_id: str | None  # None: a retry found the move already audited
    resumed: bool  # a retry finished a move an earlier attempt had started
    fleet: str = ""  # what happened to the serving fleet (rolled, or why not)


def _newest_move(client: object, model_name: str) -> audit.AliasMove | None:
    moves = audit.history(client, model_name)  # type: ignore[arg-type]
    return moves[-1] if moves else None


def _is(move: audit.AliasMove | None, request: MoveRequest) -> bool:
    """Whether ``move`` is the audit record of exactly this move."""
    return move is not None and (move.action, move.from_version, move.to_version, move.actor) == (
        request.action,
        request.expected,
        request.version,
        request.actor,
    )


def unaudited_move(client: object, model_name: str, version: str) -> tuple[bool, str | None]:
    """Whether the alias on ``version`` got there without its audit record (an earlier attempt
    moved it and failed before auditing), and the champion the audit log last recorded."""
    last = _newest_move(client, model_name)
    if last is None or last.to_version != version:
        return True, last.to_version if last else None
    return False, last.to_version


def _move_back(
    settings: Settings, client: object, request: MoveRequest, err: BaseException
) -> list[str]:
    """A retry found the alias on ``request.version`` but could not roll serving to it: move
    the alias back to ``request.expected`` (serving with it) and audit that move, so the
    champion is again what the fleet serves. Returns what could not be put back."""
    name, alias = request.model_name, settings.champion_alias
    why = f"rollout of v{request.version} failed after the alias had moved: {err}"
    try:
        if request.expected is None:
            client.delete_registered_model_alias(name, alias)  # type: ignore[attr-defined]
            clear_champion_pointer(settings.bentoml_home, name)
            return [f"champion alias removed again ({why})"]
        back = store_tag(name, request.expected)
        publish_champion(settings, back, image=request.image, repository=request.repository)
        registry.move_alias(client, name, alias, request.expected)  # type: ignore[arg-type]
        audit.record_move(
            client,  # type: ignore[arg-type]
            settings,
            model_name=name,
            alias=alias,
            action="rollback",
            from_version=request.version,
            to_version=request.expected,
            reason=why,
            actor=request.actor,
        )
    except Exception as undo:  # reported on the propagating error, never raised over it
        return [f"could not move champion back to v{request.expected}: {undo}"]
    return [f"champion moved back to v{request.expected} (audited: {why})"]


def move_champion(
    settings: Settings,
    request: MoveRequest,
    *,
    lock: Lock = locks.promotion_lock,
    lock_timeout_s: float = locks.LOCK_TIMEOUT_S,
) -> MoveResult:
    """Move the champion as the module docstring says; returns what moved.

    Raises :class:`ChampionMoved` (nothing changed) when the alias is no longer on
    ``request.expected``; any other error after a failed publish or alias move, with serving
    restored; ``lock`` is the model's lock (a seam for tests without a Prefect server).
    """
    name, version = request.model_name, str(request.version)
    tag = store_tag(name, version)
    repository = request.repository or settings.image_repository(name)
    alias = settings.champion_alias
    with lock(name, timeout_seconds=lock_timeout_s):
        client = registry.configure(settings)
        current = registry.current_champion(client, name, alias)
        current_version = str(current.version) if current else None
        resumed = current_version == version and request.expected != version
        last = _newest_move(client, name) if resumed else None
        if resumed and last is not None and last.to_version == version and not _is(last, request):
            # someone else's recorded move put the alias here: not ours to finish
            raise ChampionMoved(
                f"{name} v{version} not moved by this {request.action}: the champion moved "
                f"to it already ({last.line()})",
                current_version,
                request.expected,
            )
        roll = rollout.begin(settings, name, version)
        if resumed:  # the alias is on the version already: serving and the fleet follow it
            try:
                publish_champion(settings, tag, image=request.image, repository=repository)
                roll.stage(image=request.image)
                roll.shift()
            except Exception as err:
                for problem in [*roll.abandon(), *_move_back(settings, client, request, err)]:
                    err.add_note(problem)
                raise
        else:
            check_champion_unchanged(current_version, request.expected, version)
            before = served_state(settings, name, image=request.image, repository=repository)
            try:
                publish_champion(settings, tag, image=request.image, repository=repository)
                roll.stage(image=request.image)
                roll.shift()
                registry.move_alias(client, name, alias, version)
                roll.committed()
            except BaseException as err:
                for problem in [*roll.abandon(), *restore_served(settings, before)]:
                    err.add_note(problem)
                raise
        fleet_note = roll.finish()
        run_id = None
        if not (resumed and _is(last, request)):
            run_id = audit.record_move(
                client,
                settings,
                model_name=name,
                alias=alias,
                action=request.action,
                from_version=request.expected,
                to_version=version,
                reason=request.reason,
                actor=request.actor,
            )
    return MoveResult(request.expected, version, tag, run_id, resumed, fleet_note)


def promote_release(
    settings: Settings,
    model_name: str,
    version: str,
    *,
    compared: str | None,
    reason: str,
    actor: str,
    image: bool,
    lock: Lock = locks.promotion_lock,
) -> MoveResult:
    """A release's promotion: move ``champion`` to the gated ``version`` if the champion is
    still ``compared`` (the one it was gated against)."""
    request = MoveRequest(model_name, str(version), compared, "release", reason, actor, image)
    return move_champion(settings, request, lock=lock)


def retry_unless_refused(task: Any, task_run: Any, state: State) -> bool:
    """Retry I/O failures of the promotion, never a refusal (the champion moved) nor a rollout
    the fleet refused (the new version failed its checks: trying again starts it again).

    The ``retry_condition_fn`` of the release flow's promote task.
    """
    try:
        state.result()
    except (ChampionMoved, rollout.RolloutFailed):
        return False
    except Exception:
        return True
    return False
