"""MLflow side effects: the training run, the logged ONNX model, registration and the alias.

Every function takes the :class:`Settings` (or an explicit client) and does one thing; the gate
decision is made elsewhere and only read here.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess  # nosec B404 # fixed git argv, never a shell
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec

from data_contracts.artifacts import (
    META_SHA256,
    META_SPEC_HASH,
    META_THRESHOLD,
    ONNX_FILE,
    SPEC_FILE,
)
from data_contracts.schemas import model_frame, onnx_feed
from data_contracts.spec import FeatureSpec
from flows.core.settings import PROJECT_ROOT, Settings
from flows.training.onnx_export import LABEL, PROBABILITIES, sha256

SPEC_IN_MODEL = f"extra_files/{SPEC_FILE}"  # where mlflow puts extra_files
MODEL_NAME_IN_RUN = "onnx_model"


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the settings' tracking URI and make sure the experiment exists."""
    if settings.uses_local_mlflow:
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
    # bound MLflow's own HTTP retries (a user's explicit MLFLOW_HTTP_REQUEST_* settings win)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_http_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    with _environment_kept("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        # mlflow exports the URI to the environment; Settings reads MLFLOW_TRACKING_URI as the
        # user's choice, so a process that serves several homes must not see its own echo
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    if client.get_experiment_by_name(settings.experiment_name) is None:
        location = settings.artifact_root.resolve().as_uri() if settings.uses_local_mlflow else None
        try:
            client.create_experiment(settings.experiment_name, artifact_location=location)
        except MlflowException:
            if client.get_experiment_by_name(settings.experiment_name) is None:
                raise  # not a concurrent create of the same experiment
    mlflow.set_experiment(settings.experiment_name)
    return client


@contextlib.contextmanager
def _environment_kept(*names: str) -> Iterator[None]:
    """Restore the given environment variables to their values before the block."""
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The project's current git commit (with '-dirty' when the tree has changes), or 'unknown'.

    Outside a checkout (the pipeline image has no .git), the commit the image was built from
    (``FRAUD_GIT_COMMIT``, set by deploy/pipeline.Dockerfile).
    """
    if not (root / ".git").exists() and os.environ.get("FRAUD_GIT_COMMIT"):
        return os.environ["FRAUD_GIT_COMMIT"]
    try:
        sha = subprocess.run(  # nosec B603 B607 # fixed git argv, git from PATH
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(  # nosec B603 B607 # fixed git argv, git from PATH
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


@dataclass(frozen=True)
class ChampionModel:
    """The champion's registry entry and its downloaded ONNX model with its metadata."""

    version: ModelVersion
    model_bytes: bytes
    threshold: float
    spec: dict[str, Any]
    spec_hash: str
    sha256: str


def current_champion(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None when the model or alias does not exist yet."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if err.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        if refused_as_missing(client, model_name, err):
            return None
        raise


def refused_as_missing(client: MlflowClient, model_name: str, err: MlflowException) -> bool:
    """Whether a 403 means "no such model": MLflow's basic-auth app refuses a read of an alias
    or version of a registered model that does not exist, instead of answering 404."""
    return err.error_code == "PERMISSION_DENIED" and not _model_exists(client, model_name)


def download_model(version: ModelVersion, dest: Path) -> ChampionModel:
    """Download a registered version's ONNX file and metadata; verify its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest))
    )
    model_bytes = (local / ONNX_FILE).read_bytes()
    meta = mlflow.models.Model.load(str(local)).metadata or {}
    digest = sha256(model_bytes)
    if meta.get(META_SHA256) and meta[META_SHA256] != digest:
        raise ValueError(
            f"model {version.name} v{version.version}: ONNX sha256 {digest} does not match the "
            f"registered {meta['sha256']}"
        )
    return ChampionModel(
        version=version,
        model_bytes=model_bytes,
        threshold=float(meta[META_THRESHOLD]),
        spec=json.loads((local / SPEC_IN_MODEL).read_text()),
        spec_hash=str(meta[META_SPEC_HASH]),
        sha256=digest,
    )


def model_signature(spec: FeatureSpec) -> ModelSignature:
    """The ONNX model's signature from the spec: one (n, 1) tensor per feature, in order
    (float32 numbers, string categories), and the label and class probabilities out."""
    inputs = [
        TensorSpec(np.dtype(np.float32) if f.is_numeric else np.dtype(object), (-1, 1), f.name)
        for f in spec.features
    ]
    outputs = [
        TensorSpec(np.dtype(np.int64), (-1,), LABEL),
        TensorSpec(np.dtype(np.float32), (-1, 2), PROBABILITIES),
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def log_onnx_model(
    model_bytes: bytes,
    spec: FeatureSpec,
    threshold: float,
    work_dir: Path,
    extra_metadata: dict[str, Any],
    *,
    input_example: pd.DataFrame | None = None,
) -> str:
    """Log the ONNX model into the active run (see :func:`log_onnx_model_info`); its URI."""
    info = log_onnx_model_info(
        model_bytes, spec, threshold, work_dir, extra_metadata, input_example=input_example
    )
    return info.model_uri


def log_onnx_model_info(
    model_bytes: bytes,
    spec: FeatureSpec,
    threshold: float,
    work_dir: Path,
    extra_metadata: dict[str, Any],
    *,
    input_example: pd.DataFrame | None = None,
) -> ModelInfo:
    """Log the ONNX model into the active run with its spec, threshold, sha256 and signature.

    The spec file and the metadata travel inside the model directory, so every registered version
    carries what it needs to be served and re-scored. ``input_example`` (rows with the spec's
    feature columns) is stored as the named (n, 1) inputs the model takes.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / SPEC_FILE
    spec_path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    metadata = {
        META_SHA256: sha256(model_bytes),
        META_THRESHOLD: threshold,
        META_SPEC_HASH: spec.spec_hash(),
        "feature_names": spec.feature_names,
        **extra_metadata,
    }
    example = None
    if input_example is not None and len(input_example):
        example = onnx_feed(model_frame(input_example, spec), spec)
    return mlflow.onnx.log_model(
        onnx.load_from_string(model_bytes),
        name=MODEL_NAME_IN_RUN,
        metadata=metadata,
        extra_files=[str(spec_path)],
        save_as_external_data=False,
        pip_requirements=["onnxruntime"],
        signature=model_signature(spec),
        input_example=example,
    )


KEY_TAG = "release.key"
# tags describing what a version stores; a rerun that reuses the version leaves them alone
IDENTITY_TAGS = frozenset(
    {KEY_TAG, "run_id", "onnx_sha256", "git_commit", "data_digest", "feature_spec_hash"}
)


def find_version(
    client: MlflowClient, model_name: str, run_id: str, key: str | None = None
) -> ModelVersion | None:
    """The version already registered for this release, if any (registration is idempotent).

    First the version registered from ``run_id`` (a retried task), then the one whose
    ``release.key`` tag equals ``key`` (a rerun of a release that failed after registering:
    same data digest, spec and model bytes).
    """
    if not _model_exists(client, model_name):
        return None
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if versions:
        return versions[0]
    if key:
        query = f"name = '{model_name}' and tags.`{KEY_TAG}` = '{key}'"
        keyed = client.search_model_versions(query)
        if keyed:
            return min(keyed, key=lambda v: int(v.version))
    return None


def _model_exists(client: MlflowClient, model_name: str) -> bool:
    try:
        client.get_registered_model(model_name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def register_version(
    client: MlflowClient, model_name: str, model_uri: str, run_id: str, tags: dict[str, str]
) -> ModelVersion:
    """Register the logged model once per release and set its tags.

    A retry of the same run, or a rerun with the same ``release.key`` tag, gets the version that
    already exists instead of a duplicate; the tags then describe the latest attempt.
    """
    existing = find_version(client, model_name, run_id, tags.get(KEY_TAG))
    version = existing or mlflow.register_model(model_uri, model_name, tags=tags)
    rerun = existing is not None and existing.run_id not in (None, run_id)
    if rerun:
        # the version keeps the identity of what it stores (its run, ONNX sha256, commit);
        # the rerun is recorded beside it and the gate tags follow the latest gate
        tags = {k: v for k, v in tags.items() if k not in IDENTITY_TAGS}
        tags["release.rerun_run_id"] = run_id
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    return client.get_model_version(model_name, version.version)


def describe(
    client: MlflowClient, model_name: str, version: str, model: str, version_text: str
) -> None:
    """Set the registered model's description and the version's (shown in the registry UI)."""
    client.update_registered_model(model_name, description=model)
    client.update_model_version(model_name, version, description=version_text)


def move_alias(client: MlflowClient, model_name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``."""
    client.set_registered_model_alias(model_name, alias, version)


def set_version_tags(
    settings: Settings, model_name: str, version: str, tags: dict[str, str]
) -> None:
    """Set (overwrite) tags on a registered version, e.g. the release outcome."""
    client = configure(settings)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def fetch_champion(settings: Settings, model_name: str) -> ChampionModel | None:
    """The model's current champion, downloaded and verified, or None when there is none yet."""
    client = configure(settings)
    version = current_champion(client, model_name, settings.champion_alias)
    if version is None:
        return None
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        return download_model(version, Path(tmp))
