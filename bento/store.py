"""The served model in the BentoML store: its layout, how it is imported, which one to serve.

A stored model ``fraud-detector:v<N>`` (N = the MLflow version) holds ``model.onnx`` and
``feature_spec.json``; its metadata holds the threshold, the sha256 of the ONNX file, the spec
hash and the MLflow version; its labels say where it came from. Which tag is served is decided
by :func:`resolve_model_tag`: the model packed in a built bento, else ``FRAUD_MODEL_TAG``, else
the champion pointer file the release flow writes when the alias moves.

This module imports only BentoML and the standard library, so the release flow can use it to
import models and write the pointer without pulling in the serving code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_NAME = "fraud-detector"
MODEL_FILE = "model.onnx"
SPEC_FILE = "feature_spec.json"
POINTER_FILE = "champion_tag"
TAG_ENV = "FRAUD_MODEL_TAG"
HOME_ENV = "FRAUD_HOME"
# the repository root when running from a checkout (bento/ sits at the top level)
REPO_ROOT = Path(__file__).resolve().parents[1]


class ModelNotFoundError(RuntimeError):
    """No model can be chosen, or the chosen tag is not in the store."""


def store_tag(model_name: str, mlflow_version: str | int) -> str:
    """The store tag of an MLflow version: ``<name>:v<version>``."""
    return f"{model_name}:v{mlflow_version}"


def fraud_home(environ: Mapping[str, str] | None = None) -> Path:
    """``FRAUD_HOME``, or ``<repo>/.fraud`` (the same default as the pipeline's settings)."""
    env = os.environ if environ is None else environ
    return Path(env[HOME_ENV]) if env.get(HOME_ENV) else REPO_ROOT / ".fraud"


def pointer_path(home: Path) -> Path:
    """Where the release flow records the champion's store tag."""
    return home / "bentoml" / POINTER_FILE


def write_champion_pointer(home: Path, tag: str) -> Path:
    """Record ``tag`` as the model ``bentoml serve`` serves from the repository (atomic write)."""
    path = pointer_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{POINTER_FILE}.{os.getpid()}.tmp")
    tmp.write_text(tag.strip() + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_champion_pointer(home: Path) -> str | None:
    """The tag in the pointer file, or None when there is no pointer yet."""
    path = pointer_path(home)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def bento_root(service_file: Path) -> Path | None:
    """The root of the built bento the service file belongs to, or None in a source checkout.

    A built bento is laid out as ``<root>/bento.yaml`` + ``<root>/src/bento/service.py``.
    """
    root = service_file.resolve().parents[2]
    return root if (root / "bento.yaml").is_file() else None


def resolve_model_tag(
    environ: Mapping[str, str] | None = None, packed_tags: list[str] | None = None
) -> str:
    """Which stored model to serve.

    ``packed_tags`` are the models packed in a built bento (None outside one): a bento serves
    its single packed model, whatever the environment says. Outside a bento: ``FRAUD_MODEL_TAG``,
    else the champion pointer under ``FRAUD_HOME``.
    """
    env = os.environ if environ is None else environ
    if packed_tags is not None:
        if len(packed_tags) != 1:
            raise ModelNotFoundError(
                f"the bento must pack exactly one {MODEL_NAME} model, found {packed_tags}"
            )
        return packed_tags[0]
    if env.get(TAG_ENV):
        return env[TAG_ENV].strip()
    home = fraud_home(env)
    tag = read_champion_pointer(home)
    if tag is None:
        raise ModelNotFoundError(
            f"no model to serve: {TAG_ENV} is not set and there is no champion pointer at "
            f"{pointer_path(home)}. Run the train-and-release flow, or set {TAG_ENV} "
            f"(e.g. {MODEL_NAME}:v1) to a model in the BentoML store."
        )
    return tag


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_model(
    model_bytes: bytes,
    spec: Mapping[str, Any],
    *,
    threshold: float,
    mlflow_version: str | int,
    spec_hash: str,
    labels: Mapping[str, str] | None = None,
    model_name: str = MODEL_NAME,
) -> str:
    """Save an ONNX model and its feature spec in the BentoML store; return the tag.

    Idempotent: when the tag already exists with the same sha256 it is kept; with a different
    sha256 it is an error (a version number must never name two models).
    The store used is BentoML's configured one (``BENTOML_HOME``).
    """
    import bentoml
    from bentoml.exceptions import NotFound

    tag = store_tag(model_name, mlflow_version)
    digest = hashlib.sha256(model_bytes).hexdigest()
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata.get("sha256") == digest:
            return str(existing.tag)
        raise ValueError(
            f"{tag} is already in the BentoML store with sha256 "
            f"{existing.info.metadata.get('sha256')}, not {digest}"
        )
    metadata = {
        "threshold": float(threshold),
        "sha256": digest,
        "spec_hash": spec_hash,
        "model_version": str(mlflow_version),
    }
    all_labels = {"model_name": model_name, "model_version": str(mlflow_version)}
    all_labels.update({k: str(v) for k, v in (labels or {}).items()})
    with bentoml.models.create(tag, labels=all_labels, metadata=metadata) as model:
        Path(model.path_of(MODEL_FILE)).write_bytes(model_bytes)
        Path(model.path_of(SPEC_FILE)).write_text(json.dumps(dict(spec), indent=2))
    return tag
