"""The served model in the BentoML store: its layout, how it is imported, which one to serve.

A stored model ``fraud-detector:v<N>`` (N = the MLflow version) holds ``model.onnx`` and
``feature_spec.json``; its metadata holds the threshold, the sha256 of the ONNX file, the spec
hash and the MLflow version; its labels say where it came from. Which tag is served is decided
by :func:`resolve_model_tag`: the model packed in a built bento, else ``FRAUD_MODEL_TAG``, else
the champion pointer file the release flow writes when the alias moves.

The release flow writes both the store entries and the pointer
(``flows.delivery.packaging``); this module only reads them, with the standard library alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

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


def fraud_home(environ: Mapping[str, str] | None = None) -> Path:
    """``FRAUD_HOME``, or ``<repo>/.fraud`` (the same default as the pipeline's settings)."""
    env = os.environ if environ is None else environ
    return Path(env[HOME_ENV]) if env.get(HOME_ENV) else REPO_ROOT / ".fraud"


def pointer_path(home: Path) -> Path:
    """Where the release flow records the champion's store tag."""
    return home / "bentoml" / POINTER_FILE


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


def packed_model_tags(root: Path, model_name: str | None = None) -> list[str]:
    """The model tags a built bento packs (only ``model_name``'s if given), from ``bento.yaml``.

    Any model name is accepted: a bento built for another spec (bring your own data) packs a
    model named after that spec.
    """
    import yaml

    info = yaml.safe_load((root / "bento.yaml").read_text(encoding="utf-8")) or {}
    entries = list(info.get("models") or [])
    for service in info.get("services") or []:
        entries += service.get("models") or []
    tags = {str(e["tag"]) for e in entries if isinstance(e, dict) and "tag" in e}
    return sorted(t for t in tags if model_name is None or t.partition(":")[0] == model_name)


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
            raise ModelNotFoundError(f"the bento must pack exactly one model, found {packed_tags}")
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
