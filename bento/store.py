"""The served model in the BentoML store: which one to serve, and where its files are.

A stored model ``<model>:v<N>`` (N = the MLflow version) holds ``model.onnx`` and
``feature_spec.json``; its metadata holds the threshold, the sha256 of the ONNX file, the spec
hash and the MLflow version; its labels say where it came from (all names in
:mod:`data_contracts.artifacts`). Which tag is served is decided by :func:`resolve_model_tag`:

1. the model packed in a built bento (a bento serves only what it packs);
2. else ``FRAUD_MODEL_TAG`` (an exact ``<model>:v<N>``);
3. else the champion pointer of the model named by ``FRAUD_MODEL_NAME``, default
   ``fraud-detector`` (the shipped spec's name): ``<FRAUD_HOME>/bentoml/champions/<model>``.
   Pointers are per model, so releasing another model (bring your own spec) never changes what
   a plain ``bentoml serve`` serves to card traffic; serve that model with
   ``FRAUD_MODEL_NAME=credit-risk bentoml serve``.

The release flow writes the store entries and the pointers (``flows.packaging``,
``flows.promotion``); this module only reads them, with the standard library alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from data_contracts.artifacts import (
    DEFAULT_MODEL_NAME,
    MODEL_NAME_ENV,
    MODEL_TAG_ENV,
    PointerError,
    fraud_home,
    pointer_path,
    read_champion_pointer,
)

# the repository root when running from a checkout (bento/ sits at the top level)


class ModelNotFoundError(RuntimeError):
    """No model can be chosen, or the chosen tag is not in the store."""


def served_model_name(environ: Mapping[str, str] | None = None) -> str:
    """The model whose champion a checkout serves: ``FRAUD_MODEL_NAME`` or ``fraud-detector``."""
    env = os.environ if environ is None else environ
    return (env.get(MODEL_NAME_ENV) or "").strip() or DEFAULT_MODEL_NAME


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
    """Which stored model to serve (see the module docstring for the order).

    ``packed_tags`` are the models packed in a built bento (None outside one): a bento serves
    its single packed model, whatever the environment says.
    """
    env = os.environ if environ is None else environ
    if packed_tags is not None:
        if len(packed_tags) != 1:
            raise ModelNotFoundError(f"the bento must pack exactly one model, found {packed_tags}")
        return packed_tags[0]
    if env.get(MODEL_TAG_ENV):
        return env[MODEL_TAG_ENV].strip()
    bentoml_home = fraud_home(env) / "bentoml"
    model = served_model_name(env)
    try:
        tag = read_champion_pointer(bentoml_home, model)
    except PointerError as err:
        raise ModelNotFoundError(
            f"no model to serve: the champion pointer of {model} is {err.reason}: {err}"
        ) from err
    if tag is None:
        raise ModelNotFoundError(
            f"no model to serve: {MODEL_TAG_ENV} is not set and {model} has no champion pointer "
            f"at {pointer_path(bentoml_home, model)}. Run the train-and-release flow, set "
            f"{MODEL_NAME_ENV} to a released model, or set {MODEL_TAG_ENV} "
            f"(e.g. {model}:v1) to a model in the BentoML store."
        )
    return tag


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
