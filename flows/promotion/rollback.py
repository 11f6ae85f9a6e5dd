"""Roll ``champion`` back (or forward) to a version that passed its gates.

A rollback:

1. checks the target: it must exist, have passed its gates (``gate.outcome == promote``) and
   have been packaged (``release.outcome != packaging_failed``), and must not be the champion;
2. makes it servable outside the lock (slow): imports it into the BentoML store and builds its
   bento if missing; reuses the image ``<model>:v<N>`` when Docker has it, builds it when Docker
   answers but the image is gone, and says loudly when Docker is unavailable;
3. moves the champion through :func:`flows.promotion.champion.move_champion` (the same lock,
   re-read, publish, fleet rollout, undo and audit as a release); a champion that moved while
   the rollback was preparing is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from data_contracts.artifacts import image_tag, latest_image_tag, pointer_path, version_label
from flows.core.settings import Settings
from flows.packaging import container
from flows.packaging.build import build_bento, has_bento
from flows.packaging.container import ImageFacts
from flows.packaging.store import import_registered_version
from flows.promotion import audit, locks
from flows.promotion.champion import ChampionMoved, Lock, MoveRequest, move_champion, unaudited_move
from flows.registry import registry

ACTION = "rollback"
NOT_SERVABLE = frozenset({"packaging_failed"})


class RollbackRefused(ValueError):
    """The rollback was refused before anything moved; the message says why."""


@dataclass(frozen=True)
class ImagePlan:
    """What the rollback does with the Docker image of the target version."""

    repoint: bool
    note: str
    built: bool = False


@dataclass(frozen=True)
class RollbackResult:
    """A finished rollback: which versions, what was re-pointed, and the audit run."""

    model_name: str
    from_version: str | None
    to_version: str
    tag: str
    image_repointed: bool
    audit_run_id: str
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Readable lines for the CLI."""
        old = f"v{self.from_version}" if self.from_version else "(none)"
        head = f"{self.model_name}@champion: {old} -> v{self.to_version} (bento {self.tag})"
        return [head, *self.notes, f"audit run: {self.audit_run_id}"]


def get_version(client: MlflowClient, model_name: str, version: str) -> ModelVersion:
    """The registered version, or :class:`RollbackRefused` listing the versions that exist."""
    try:
        return client.get_model_version(model_name, version)
    except MlflowException as err:
        missing = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
        if err.error_code not in missing and not registry.refused_as_missing(
            client, model_name, err
        ):
            raise
    try:
        known = sorted(
            int(v.version) for v in client.search_model_versions(f"name = '{model_name}'")
        )
    except MlflowException:
        known = []
    listed = ", ".join(f"v{v}" for v in known) or "none"
    raise RollbackRefused(
        f"model {model_name!r} has no version {version} (registered versions: {listed})"
    )


def check_eligible(target: ModelVersion, current: str | None) -> None:
    """Refuse a target that never passed its gates, failed packaging, or is the champion."""
    tags = target.tags or {}
    name, version = target.name, str(target.version)
    gate = tags.get("gate.outcome")
    if gate != "promote":
        why = tags.get("gate.reasons") or "no gate outcome recorded"
        raise RollbackRefused(
            f"{name} v{version} did not pass its gates (gate.outcome={gate or 'missing'}): {why}"
        )
    outcome = tags.get("release.outcome")
    if outcome in NOT_SERVABLE:
        why = (tags.get("release.error") or "").splitlines()[:1]
        raise RollbackRefused(
            f"{name} v{version} cannot be served: release.outcome={outcome}"
            + (f" ({why[0]})" if why else "")
        )
    if current == version:
        raise RollbackRefused(f"{name} v{version} is already the champion; nothing to do")


def ensure_bento(settings: Settings, model_name: str, version: str) -> str:
    """Import the version into the BentoML store and build its bento when it is missing."""
    stored = import_registered_version(settings, model_name, version)
    if has_bento(settings, stored.tag):
        return stored.tag
    return build_bento(settings, stored)


def plan_image(
    settings: Settings,
    tag: str,
    *,
    want: bool,
    repository: str | None = None,
    docker_status: Callable[[], tuple[bool, str]] = container.docker_status,
    image_exists: Callable[[str], bool] = container.image_exists,
    containerize: Callable[..., ImageFacts] = container.containerize_with_retries,
) -> ImagePlan:
    """Reuse the version's image, build it when missing, or say why it is not re-pointed.

    The Docker calls are parameters so that the plan can be tested without an engine.
    """
    name, _, label = tag.partition(":")
    ref = image_tag(repository or name, label[1:])
    latest = latest_image_tag(repository or name)
    if not want:
        return ImagePlan(False, f"IMAGE NOT RE-POINTED: --no-image given; {latest} is unchanged")
    ok, detail = docker_status()
    if not ok:
        return ImagePlan(
            False,
            f"IMAGE NOT RE-POINTED: Docker is unavailable ({detail}); {latest} still serves the "
            f"previous champion. Only the bento store and the champion pointer moved.",
        )
    if image_exists(ref):
        return ImagePlan(True, f"image: reused {ref}, tagged {latest}")
    facts = containerize(settings, tag, repository=repository)
    return ImagePlan(
        True,
        f"image: {ref} was missing and has been rebuilt from the current sources "
        f"({facts.size_mb:.0f} MB, not smoke-tested), tagged {latest}",
        built=True,
    )


def rollback(
    settings: Settings,
    model_name: str,
    version: str | int,
    reason: str,
    actor: str | None = None,
    image: bool = True,
    *,
    repository: str | None = None,
    lock_timeout_s: float = locks.LOCK_TIMEOUT_S,
    lock: Lock = locks.promotion_lock,
    prepare: Callable[[Settings, str, str], str] = ensure_bento,
) -> RollbackResult:
    """Move ``champion`` to ``version`` (a version that passed its gates) and re-point serving.

    Raises :class:`RollbackRefused` when the target is not eligible or the champion moved while
    the rollback was preparing; :class:`flows.packaging.errors.PackagingError` when the bento or
    image cannot be prepared (nothing moved then). ``prepare`` makes the bento servable and
    returns its tag; ``lock`` is the model's lock (both are seams for tests).
    """
    version = str(version).strip()
    version_label(version)  # a positive integer, or ValueError
    client = registry.configure(settings)
    alias = settings.champion_alias
    target = get_version(client, model_name, version)
    before = registry.current_champion(client, model_name, alias)
    before_version = str(before.version) if before else None
    if before_version == version:
        # an earlier rollback may have moved the alias and failed before auditing: finish it
        unaudited, audited_champion = unaudited_move(client, model_name, version)
        if unaudited:
            before_version = audited_champion
    check_eligible(target, before_version)

    repository = repository or settings.image_repository(model_name)
    tag = prepare(settings, model_name, version)
    plan = plan_image(settings, tag, want=image, repository=repository)
    request = MoveRequest(
        model_name,
        version,
        before_version,
        ACTION,
        reason,
        actor or audit.default_actor(),
        plan.repoint,
        repository,
    )
    try:
        moved = move_champion(settings, request, lock=lock, lock_timeout_s=lock_timeout_s)
    except ChampionMoved as err:
        raise RollbackRefused(
            f"the champion moved from v{before_version} to v{err.current} while the rollback "
            "was preparing; nothing changed. Check `history` and run it again if still wanted."
        ) from err
    pointer = pointer_path(settings.bentoml_home, model_name)
    notes = [plan.note, f"champion pointer: {pointer} -> {tag}", f"fleet: {moved.fleet}"]
    notes.append(
        "a running `bentoml serve` from the checkout swaps to it within seconds (it follows "
        "the champion pointer; `fraud served` shows the version answering)"
    )
    return RollbackResult(
        model_name=model_name,
        from_version=before_version,
        to_version=version,
        tag=tag,
        image_repointed=plan.repoint,
        audit_run_id=moved.audit_run_id or "(already recorded)",
        notes=notes,
    )


def alias_history(settings: Settings, model_name: str) -> list[audit.AliasMove]:
    """Every recorded move of the model's aliases (releases and rollbacks), oldest first."""
    return audit.history(registry.configure(settings), model_name)
