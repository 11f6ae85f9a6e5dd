"""The BentoML model store: import a registered version as ``<model>:v<N>``, and its labels.

The stores are reached through :func:`model_store` and :func:`bento_store`, built by
:mod:`bento.internals`, the one module that reaches into BentoML's internals (BentoML has no
public API for a store at a path other than ``BENTOML_HOME``, and one process may serve several
homes).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bento import internals
from data_contracts.artifacts import (
    LABEL_CALIBRATION,
    META_HOLDOUT,
    META_MODEL_VERSION,
    META_SHA256,
    META_SPEC_HASH,
    META_THRESHOLD,
    ONNX_FILE,
    SPEC_FILE,
    TAG_CALIBRATION,
    store_tag,
    version_label,
)
from flows.core.files import write_atomic
from flows.core.settings import Settings
from flows.packaging.errors import ModelImportError
from flows.training.onnx_export import sha256

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredModel:
    """A model version as imported into the BentoML model store."""

    tag: str
    path: Path
    sha256: str
    threshold: float
    spec_hash: str
    model_version: str
    labels: dict[str, str]
    model_bytes: bytes = field(repr=False)
    spec: dict[str, Any] = field(repr=False)


def model_store(bentoml_home: Path) -> Any:
    """The BentoML model store under ``bentoml_home``."""
    return internals.model_store_at(bentoml_home / "models")


def bento_store(bentoml_home: Path) -> Any:
    """The BentoML bento store under ``bentoml_home``."""
    return internals.bento_store_at(bentoml_home / "bentos")


def store_labels(model_name: str, version: str | int, tags: Mapping[str, str]) -> dict[str, str]:
    """Store and bento labels from a registered version's tags: where the model came from."""
    return {
        "model_name": model_name,
        "model_version": str(version),
        "run_id": tags.get("run_id", "unknown"),
        "spec_hash": tags.get("feature_spec_hash", "unknown"),
        "data_digest": tags.get("data_digest", "unknown"),
        "git_commit": tags.get("git_commit", "unknown"),
        LABEL_CALIBRATION: tags.get(TAG_CALIBRATION, "none"),
    }


def set_store_latest(store_dir: Path, tag: str) -> None:
    """Point ``<store_dir>/<model>/latest`` at ``tag``'s version, when the store holds it."""
    name, _, version = tag.partition(":")
    if (store_dir / name / version).is_dir():
        write_atomic(store_dir / name / "latest", version)


def _stored(model: Any, model_bytes: bytes, spec: dict[str, Any]) -> StoredModel:
    meta = model.info.metadata
    return StoredModel(
        tag=str(model.tag),
        path=Path(model.path),
        sha256=str(meta[META_SHA256]),
        threshold=float(meta[META_THRESHOLD]),
        spec_hash=str(meta[META_SPEC_HASH]),
        model_version=str(meta[META_MODEL_VERSION]),
        labels={str(k): str(v) for k, v in model.info.labels.items()},
        model_bytes=model_bytes,
        spec=spec,
    )


def import_model(
    bentoml_home: Path,
    model_name: str,
    version: str | int,
    model_bytes: bytes,
    spec: Mapping[str, Any],
    *,
    threshold: float,
    spec_hash: str,
    labels: Mapping[str, str],
    holdout: Mapping[str, float] | None = None,
) -> StoredModel:
    """Put ``model.onnx`` and ``feature_spec.json`` into the store as ``<model>:v<version>``.

    ``holdout`` (the release's holdout metrics) goes into the metadata, so that the served
    model's page can show how it scored. Idempotent: the same bytes, labels and metrics under
    the same tag are kept as they are; anything different under an existing tag replaces it
    (a re-run of a release after a failed attempt).
    """
    import bentoml

    tag = store_tag(model_name, version)
    digest = sha256(model_bytes)
    store = model_store(bentoml_home)
    spec_dict = dict(spec)
    existing = store.list(tag)
    if existing:
        model = existing[0]
        onnx_path = Path(model.path_of(ONNX_FILE))
        same = (
            model.info.metadata.get(META_SHA256) == digest
            and onnx_path.is_file()
            and sha256(onnx_path.read_bytes()) == digest
            and dict(model.info.labels) == dict(labels)
            and dict(model.info.metadata.get(META_HOLDOUT) or {}) == dict(holdout or {})
        )
        if same:
            return _stored(model, model_bytes, spec_dict)
        store.delete(tag)
    metadata = {
        META_THRESHOLD: float(threshold),
        META_SHA256: digest,
        META_SPEC_HASH: spec_hash,
        META_MODEL_VERSION: str(version),
    }
    if holdout:
        metadata[META_HOLDOUT] = {k: float(v) for k, v in holdout.items()}
    try:
        with bentoml.models.create(
            tag, labels=dict(labels), metadata=metadata, _model_store=store
        ) as model:
            Path(model.path_of(ONNX_FILE)).write_bytes(model_bytes)
            Path(model.path_of(SPEC_FILE)).write_text(json.dumps(spec_dict, indent=2))
    except Exception as err:  # BentoML raises its own exception types
        raise ModelImportError(tag, f"{type(err).__name__}: {err}") from err
    return _stored(store.get(tag), model_bytes, spec_dict)


def import_registered_version(settings: Settings, model_name: str, version: str) -> StoredModel:
    """Download a registered MLflow version and import it into the settings' BentoML store."""
    from flows.registry import registry

    client = registry.configure(settings)
    model_version = client.get_model_version(model_name, str(version))
    dest = settings.work_dir / f"package-{model_name}-{version_label(version)}"
    shutil.rmtree(dest, ignore_errors=True)
    downloaded = registry.download_model(model_version, dest)
    return import_model(
        settings.bentoml_home,
        model_name,
        version,
        downloaded.model_bytes,
        downloaded.spec,
        threshold=downloaded.threshold,
        spec_hash=downloaded.spec_hash,
        labels=store_labels(model_name, version, model_version.tags or {}),
        holdout=holdout_metrics(client, model_version.run_id),
    )


def holdout_metrics(client: Any, run_id: str | None) -> dict[str, float]:
    """The ``holdout_*`` metrics of the version's training run (``f1``, ``precision``, ...).

    Empty when the run has none or cannot be read: the page then says so, and the import,
    which matters more, goes on.
    """
    if not run_id:
        return {}
    try:
        logged = client.get_run(run_id).data.metrics
    except Exception as err:  # MLflow raises its own exception types
        logger.warning("holdout metrics of run %s not read: %s", run_id, err)
        return {}
    prefix = "holdout_"
    return {
        key[len(prefix) :]: float(value)
        for key, value in sorted(logged.items())
        if key.startswith(prefix) and isinstance(value, int | float)
    }
