"""Operating the release: roll ``champion`` back (or forward) to a version that passed its gates,
and print the audit history of alias moves.

Plain functions plus a small CLI (``python -m flows.cli.ops --help``). A rollback:

1. checks the target: it must exist, have passed its gates (``gate.outcome == promote``) and
   have been packaged (``release.outcome != packaging_failed``), and must not be the champion;
2. makes it servable outside the lock (slow): imports it into the BentoML store and builds its
   bento if missing; reuses the image ``<model>:v<N>`` when Docker has it, builds it when Docker
   answers but the image is gone, and says loudly when Docker is unavailable;
3. inside the same Prefect lock as a release: re-reads the alias (refuses if it moved meanwhile),
   points ``latest`` (image, stores) and the champion pointer at the version, moves the alias and
   appends the move to the audit log. If the alias cannot be moved, the pointers go back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from flows.core.settings import Settings
from flows.delivery import audit, locks, packaging, registry

ACTION = "rollback"
NOT_SERVABLE = frozenset({"packaging_failed"})
EXIT_REFUSED = 3
EXIT_FAILED = 1


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


def _get_version(client: MlflowClient, model_name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(model_name, version)
    except MlflowException as err:
        if err.error_code not in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
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
    stored = packaging.import_registered_version(settings, model_name, version)
    name, _, label = stored.tag.partition(":")
    if (settings.bentoml_home / "bentos" / name / label / "bento.yaml").is_file():
        return stored.tag
    return packaging.build_bento(settings, stored)


def image_exists(ref: str) -> bool:
    """Whether the local Docker engine has the image ``ref``."""
    return packaging._docker("image", "inspect", ref).returncode == 0


def plan_image(
    settings: Settings, tag: str, *, want: bool, repository: str | None = None
) -> ImagePlan:
    """Reuse the version's image, build it when missing, or say why it is not re-pointed."""
    name, _, label = tag.partition(":")
    ref = packaging.image_tag(repository or name, label[1:])
    latest = packaging.latest_image_tag(repository or name)
    if not want:
        return ImagePlan(False, f"IMAGE NOT RE-POINTED: --no-image given; {latest} is unchanged")
    ok, detail = packaging.docker_status()
    if not ok:
        return ImagePlan(
            False,
            f"IMAGE NOT RE-POINTED: Docker is unavailable ({detail}); {latest} still serves the "
            f"previous champion. Only the bento store and the champion pointer moved.",
        )
    if image_exists(ref):
        return ImagePlan(True, f"image: reused {ref}, tagged {latest}")
    facts = packaging.containerize_with_retries(settings, tag, repository=repository)
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
) -> RollbackResult:
    """Move ``champion`` to ``version`` (a version that passed its gates) and re-point serving.

    Raises :class:`RollbackRefused` when the target is not eligible or the champion moved while
    the rollback was preparing; :class:`flows.delivery.packaging.PackagingError` when the
    bento or image cannot be prepared (nothing moved then).
    """
    version = str(version).strip()
    packaging.version_label(version)  # a positive integer, or ValueError
    client = registry.configure(settings)
    alias = settings.champion_alias
    target = _get_version(client, model_name, version)
    before = registry.current_champion(client, model_name, alias)
    before_version = str(before.version) if before else None
    check_eligible(target, before_version)

    repository = repository or settings.image_repository(model_name)
    tag = ensure_bento(settings, model_name, version)
    plan = plan_image(settings, tag, want=image, repository=repository)

    with locks.promotion_lock(model_name, timeout_seconds=lock_timeout_s):
        now = registry.current_champion(client, model_name, alias)
        now_version = str(now.version) if now else None
        if now_version != before_version:
            raise RollbackRefused(
                f"the champion moved from v{before_version} to v{now_version} while the rollback "
                "was preparing; nothing changed. Check `history` and run it again if still wanted."
            )
        previous = packaging.read_champion_pointer(settings)
        packaging.publish_champion(settings, tag, image=plan.repoint, repository=repository)
        try:
            registry.move_alias(client, model_name, alias, version)
        except Exception:
            if previous:
                packaging.publish_champion(
                    settings, previous, image=plan.repoint, repository=repository
                )
            raise
        run_id = audit.record_move(
            client,
            settings,
            model_name=model_name,
            alias=alias,
            action=ACTION,
            from_version=before_version,
            to_version=version,
            reason=reason,
            actor=actor or audit.default_actor(),
        )
    notes = [plan.note, f"champion pointer: {settings.champion_pointer} -> {tag}"]
    notes.append("a running `bentoml serve` keeps its model until restarted (make down serve)")
    return RollbackResult(
        model_name=model_name,
        from_version=before_version,
        to_version=version,
        tag=tag,
        image_repointed=plan.repoint,
        audit_run_id=run_id,
        notes=notes,
    )


def alias_history(settings: Settings, model_name: str) -> list[audit.AliasMove]:
    """Every recorded move of the model's aliases (releases and rollbacks), oldest first."""
    return audit.history(registry.configure(settings), model_name)


# --------------------------------------------------------------------------- CLI


def _default_model() -> str:
    from data_contracts.spec import default_spec

    return default_spec().name


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the rollback options on ``parser`` (shared by ``fraud rollback``)."""
    parser.description = (
        "Move `champion` to VERSION (it must have passed its gates and packaging), "
        "re-point the bento store, the champion pointer and the `latest` image to it, and "
        "record the move in the audit log. Holds the same Prefect lock as a release, so "
        "PREFECT_API_URL must point at the stack's Prefect server. Exit codes: 0 done, "
        f"{EXIT_REFUSED} refused (nothing changed), {EXIT_FAILED} failed."
    )
    parser.add_argument("--version", required=True, help="registered model version, e.g. 3")
    parser.add_argument("--model", default=None, help="registered model name (default: the spec's)")
    parser.add_argument("--reason", default="manual rollback", help="why; kept in the audit log")
    parser.add_argument("--actor", default=None, help="who; default: user:<login name>")
    parser.add_argument(
        "--no-image",
        dest="image",
        action="store_false",
        help="do not touch Docker images (bento store and pointer only)",
    )


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the history options on ``parser`` (shared by ``fraud history``)."""
    parser.description = "Print every recorded move of the champion alias, oldest first."
    parser.add_argument("--model", default=None, help="registered model name (default: the spec's)")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m flows.cli.ops`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.cli.ops",
        description="Operate the fraud model release: roll the champion back, show the history.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_rollback_arguments(
        sub.add_parser(
            "rollback", help="move the champion alias back to a version that passed its gates"
        )
    )
    add_history_arguments(
        sub.add_parser("history", help="print every recorded alias move, oldest first")
    )
    return parser


def run_history(args: argparse.Namespace) -> int:
    """Print the alias moves of ``args.model`` (default: the spec's model); the exit code."""
    settings = Settings()
    model = args.model or _default_model()
    moves = alias_history(settings, model)
    if not moves:
        print(f"no alias moves recorded for {model} (tracking URI {settings.tracking_uri})")
    for move in moves:
        print(move.line())
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    """Roll the champion to ``args.version``; 0 done, EXIT_REFUSED or EXIT_FAILED."""
    settings = Settings()
    model = args.model or _default_model()
    try:
        result = rollback(settings, model, args.version, args.reason, args.actor, image=args.image)
    except (RollbackRefused, ValueError) as err:
        print(f"rollback refused: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except packaging.PackagingError as err:
        print(f"rollback failed, nothing moved: {err}", file=sys.stderr)
        return EXIT_FAILED
    for line in result.lines():
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_history(args) if args.command == "history" else run_rollback(args)


if __name__ == "__main__":
    sys.exit(main())
