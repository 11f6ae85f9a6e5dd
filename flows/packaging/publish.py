"""What serving follows, per model: the ``latest`` image, the stores' ``latest`` and the pointer.

:func:`publish_champion` points them at a version (after its smoke test, inside the champion
move); :func:`served_state` and :func:`restore_served` take them back when the move fails;
:func:`discard_failed` drops a version that failed packaging. Everything is keyed by the model
name: releasing one model never touches another model's pointer, ``latest`` or image.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_contracts.artifacts import (
    clear_champion_pointer,
    latest_image_tag,
    read_champion_pointer,
    write_champion_pointer,
)
from flows.core.settings import Settings
from flows.packaging import container
from flows.packaging.errors import PackagingError
from flows.packaging.store import bento_store, model_store, set_store_latest


def read_champion(settings: Settings, model_name: str) -> str | None:
    """The served champion tag of ``model_name`` in the settings' home, or None."""
    return read_champion_pointer(settings.bentoml_home, model_name)


def publish_champion(
    settings: Settings, tag: str, *, image: bool = True, repository: str | None = None
) -> None:
    """After the smoke test: tag the image ``latest``, point stores and pointer file at it.

    ``tag`` is ``<model>:v<version>`` (model store, bento and image share it; ``repository``
    overrides the image name as in :func:`flows.packaging.container.containerize`).
    """
    name, _, version = tag.partition(":")
    if image:
        source = f"{repository or name}:{version}"
        target = latest_image_tag(repository or name)
        proc = container.docker("tag", source, target)
        if proc.returncode != 0:
            raise PackagingError(tag, f"docker tag {source} {target}: {proc.stderr.strip()}")
    set_store_latest(settings.bentoml_home / "models", tag)
    set_store_latest(settings.bentoml_home / "bentos", tag)
    write_champion_pointer(settings.bentoml_home, tag)


@dataclass(frozen=True)
class ServedState:
    """What one model's serving followed before a move: enough to put it back exactly."""

    model_name: str
    pointer: str | None
    repository: str
    image: bool  # whether the move re-tags ``latest`` (then latest_image_id was read)
    latest_image_id: str | None = None


def served_state(
    settings: Settings, model_name: str, *, image: bool, repository: str | None = None
) -> ServedState:
    """Read the pointer (and the ``latest`` image's id when the move touches images)."""
    repository = repository or model_name
    latest_id = None
    if image:
        proc = container.docker("image", "inspect", "-f", "{{.Id}}", latest_image_tag(repository))
        latest_id = proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None
    pointer = read_champion(settings, model_name)
    return ServedState(model_name, pointer, repository, image, latest_id)


def restore_served(settings: Settings, state: ServedState) -> list[str]:
    """Put pointer, stores' ``latest`` and the ``latest`` image back as ``state`` saw them.

    Runs while a failure propagates, so it never raises for the image: what could not be put
    back is returned as readable lines (the caller attaches them to the error).
    """
    if state.pointer:
        set_store_latest(settings.bentoml_home / "models", state.pointer)
        set_store_latest(settings.bentoml_home / "bentos", state.pointer)
        write_champion_pointer(settings.bentoml_home, state.pointer)
    else:
        clear_champion_pointer(settings.bentoml_home, state.model_name)
    problems: list[str] = []
    if state.image:
        latest = latest_image_tag(state.repository)
        if state.latest_image_id:
            proc = container.docker("tag", state.latest_image_id, latest)
        else:  # there was no latest image: remove the tag this move added (not the image)
            proc = container.docker("image", "rm", "--no-prune", latest)
            if "No such image" in proc.stderr:
                return problems
        if proc.returncode != 0:
            problems.append(f"could not put back {latest}: {proc.stderr.strip()}")
    return problems


def discard_failed(settings: Settings, tag: str) -> None:
    """After a failed build or smoke test: drop the version's bento and store model, and point
    both stores' ``latest`` back at its model's champion. The ``latest`` image is never
    touched; the failed ``<model>:v<version>`` image (if any) stays for inspection.
    """
    champion = read_champion(settings, tag.partition(":")[0])
    if champion == tag:
        return
    for store in (bento_store(settings.bentoml_home), model_store(settings.bentoml_home)):
        if store.list(tag):
            store.delete(tag)
    if champion:
        set_store_latest(settings.bentoml_home / "models", champion)
        set_store_latest(settings.bentoml_home / "bentos", champion)
