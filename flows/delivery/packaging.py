"""Packaging a registered version for serving: BentoML model store, bento, image, smoke test.

Order inside a release (each step a plain function, wired as Prefect tasks by the flow):
``import_registered_version`` -> ``build_bento`` -> ``containerize`` -> ``smoke_test`` -> (alias)
-> ``publish_champion``. Nothing here moves ``latest`` or the champion pointer before the smoke
test passed; ``discard_failed`` puts the stores back to the current champion after a failure.

The BentoML CLI runs as a subprocess with ``BENTOML_HOME`` and ``FRAUD_MODEL_TAG`` set (the
service resolves its model from them at import) and writes its output to a log file under
``Settings().packaging_dir``; every failure raises a :class:`PackagingError` naming the step,
the object and that log.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess  # nosec B404 # argv lists only (bentoml, docker), never a shell
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_contracts.spec import FeatureKind, FeatureSpec
from flows.core.settings import PROJECT_ROOT, Settings
from flows.training.onnx_export import onnx_predict_proba, onnx_session, sha256

ONNX_FILE = "model.onnx"
SPEC_FILE = "feature_spec.json"
MODEL_TAG_ENV = "FRAUD_MODEL_TAG"
SCORE_FIELD = "fraud_probability"
DECISION_FIELD = "is_fraud"
VERSION_FIELD = "model_version"
LOG_TAIL_LINES = 25
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PackagingError(RuntimeError):
    """A packaging step failed; the message says which step, on what, and where its log is."""

    step = "packaging"

    def __init__(self, subject: str, reason: str, log_path: Path | None = None) -> None:
        self.subject = subject
        self.reason = reason
        self.log_path = log_path
        message = f"{self.step} failed for {subject}: {reason}"
        if log_path is not None:
            message += f"\nlog: {log_path}"
            tail = _tail(log_path, LOG_TAIL_LINES)
            if tail:
                message += f"\nlast lines of the log:\n{tail}"
        super().__init__(message)


class DockerUnavailableError(PackagingError):
    step = "docker check"


class ModelImportError(PackagingError):
    step = "import into the BentoML model store"


class BentoBuildError(PackagingError):
    step = "bentoml build"


class ContainerizeError(PackagingError):
    step = "bentoml containerize"


class SmokeTestError(PackagingError):
    step = "image smoke test"


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --------------------------------------------------------------------------- names and tags


def version_label(version: str | int) -> str:
    """The store, bento and image version for an MLflow version: ``"3"`` -> ``"v3"``."""
    text = str(version).strip()
    if not text.isdigit():
        raise ValueError(f"MLflow model versions are positive integers, got {version!r}")
    return f"v{int(text)}"


def check_name(model_name: str) -> str:
    """A model name usable as BentoML model, bento and Docker repository name (lowercase)."""
    if not _NAME_RE.match(model_name) or len(model_name) > 63:
        raise ValueError(
            f"model name {model_name!r} must be lowercase letters, digits and single '.', '_' "
            "or '-' between them (it names the bento and the Docker image)"
        )
    return model_name


def store_tag(model_name: str, version: str | int) -> str:
    """Tag of the model in the BentoML model store, and of the bento: ``fraud-detector:v3``."""
    return f"{check_name(model_name)}:{version_label(version)}"


def image_tag(model_name: str, version: str | int) -> str:
    """Docker image of a version: ``fraud-detector:v3``."""
    return f"{check_name(model_name)}:{version_label(version)}"


def latest_image_tag(model_name: str) -> str:
    """The moving Docker tag of the champion's image: ``fraud-detector:latest``."""
    return f"{check_name(model_name)}:latest"


def release_log_dir(settings: Settings, model_name: str, version: str | int) -> Path:
    """Folder of one version's packaging logs (build, containerize, smoke test)."""
    return settings.packaging_dir / f"{check_name(model_name)}-{version_label(version)}"


def store_labels(model_name: str, version: str | int, tags: Mapping[str, str]) -> dict[str, str]:
    """Store and bento labels from a registered version's tags: where the model came from."""
    return {
        "model_name": model_name,
        "model_version": str(version),
        "run_id": tags.get("run_id", "unknown"),
        "spec_hash": tags.get("feature_spec_hash", "unknown"),
        "data_digest": tags.get("data_digest", "unknown"),
        "git_commit": tags.get("git_commit", "unknown"),
    }


# --------------------------------------------------------------------------- pointer file


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: readers see the old or the new content only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_champion_pointer(settings: Settings, tag: str) -> Path:
    """Record ``tag`` (``<model>:v<version>``) as the served champion; return the file."""
    name, _, version = tag.partition(":")
    check_name(name)
    if not version.startswith("v") or not version[1:].isdigit():
        raise ValueError(f"champion tag must look like '<model>:v<version>', got {tag!r}")
    write_atomic(settings.champion_pointer, tag + "\n")
    return settings.champion_pointer


def read_champion_pointer(settings: Settings) -> str | None:
    """The champion tag recorded by the last successful release, or None."""
    try:
        text = settings.champion_pointer.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


# --------------------------------------------------------------------------- model store


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


def _model_store(bentoml_home: Path) -> Any:
    from bentoml._internal.models.model import ModelStore

    return ModelStore(bentoml_home / "models")


def _bento_store(bentoml_home: Path) -> Any:
    from bentoml._internal.bento.bento import BentoStore

    return BentoStore(bentoml_home / "bentos")


def _stored(model: Any, model_bytes: bytes, spec: dict[str, Any]) -> StoredModel:
    meta = model.info.metadata
    return StoredModel(
        tag=str(model.tag),
        path=Path(model.path),
        sha256=str(meta["sha256"]),
        threshold=float(meta["threshold"]),
        spec_hash=str(meta["spec_hash"]),
        model_version=str(meta["model_version"]),
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
) -> StoredModel:
    """Put ``model.onnx`` and ``feature_spec.json`` into the store as ``<model>:v<version>``.

    Idempotent: the same bytes under the same tag are kept as they are; different bytes under
    an existing tag replace it (a re-run of a release after a failed attempt).
    """
    import bentoml

    tag = store_tag(model_name, version)
    digest = sha256(model_bytes)
    store = _model_store(bentoml_home)
    spec_dict = dict(spec)
    existing = store.list(tag)
    if existing:
        model = existing[0]
        same = (
            model.info.metadata.get("sha256") == digest
            and Path(model.path_of(ONNX_FILE)).is_file()
            and sha256(Path(model.path_of(ONNX_FILE)).read_bytes()) == digest
            and dict(model.info.labels) == dict(labels)
        )
        if same:
            return _stored(model, model_bytes, spec_dict)
        store.delete(tag)
    metadata = {
        "threshold": float(threshold),
        "sha256": digest,
        "spec_hash": spec_hash,
        "model_version": str(version),
    }
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
    from flows.delivery import registry

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
    )


# --------------------------------------------------------------------------- subprocesses


def bentoml_env(settings: Settings, model_tag: str) -> dict[str, str]:
    """Environment for the BentoML CLI: our store, the model to pack, no telemetry."""
    env = dict(os.environ)
    env.update(
        {
            "BENTOML_HOME": str(settings.bentoml_home.resolve()),
            MODEL_TAG_ENV: model_tag,
            "FRAUD_HOME": str(settings.home.resolve()),
            "BENTOML_DO_NOT_TRACK": "true",
            "DOCKER_BUILDKIT": "0",
        }
    )
    return env


def _run_logged(
    cmd: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> int:
    """Run ``cmd`` with stdout and stderr appended to ``log_path``; return its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(  # nosec B603 # argv built here, no shell
                list(cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.write(f"\n[timed out after {timeout}s]\n")
            return 124
        log.write(f"[exit code {proc.returncode}]\n")
        return proc.returncode


def _bentoml_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bentoml", *args]


# --------------------------------------------------------------------------- bento


def build_bento(
    settings: Settings,
    stored: StoredModel,
    *,
    build_ctx: Path = PROJECT_ROOT,
    bentofile: str = "bentofile.yaml",
    timeout: float = 900,
) -> str:
    """``bentoml build`` the service for ``stored``; the bento tag is the model's tag.

    A bento already built under that tag is replaced, so a re-run rebuilds from the current
    sources. Labels on the bento are the model's labels.
    """
    name, _, version = stored.tag.partition(":")
    log_path = release_log_dir(settings, name, version[1:]) / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    env = bentoml_env(settings, stored.tag)
    label_args = [arg for k, v in stored.labels.items() for arg in ("--label", f"{k}={v}")]
    bentos = _bento_store(settings.bentoml_home)
    if bentos.list(stored.tag):
        bentos.delete(stored.tag)
    cmd = _bentoml_cli(
        "build", "-f", bentofile, "--name", name, "--version", version, *label_args, str(build_ctx)
    )
    code = _run_logged(cmd, log_path, env=env, cwd=build_ctx, timeout=timeout)
    if code != 0:
        raise BentoBuildError(stored.tag, f"exit code {code}", log_path)
    if not (settings.bentoml_home / "bentos" / name / version / "bento.yaml").is_file():
        raise BentoBuildError(stored.tag, "the bento is not in the store after the build", log_path)
    return stored.tag


# --------------------------------------------------------------------------- docker


def docker_status() -> tuple[bool, str]:
    """Whether a Docker engine answers, with the reason when it does not."""
    if shutil.which("docker") is None:
        return False, "the docker client is not on PATH"
    try:
        proc = subprocess.run(  # nosec B603 B607 # fixed argv; docker from PATH
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "`docker info` did not answer within 20 s"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return False, f"`docker info` failed: {detail[-1] if detail else 'no output'}"
    return True, f"Docker engine {proc.stdout.strip()}"


def require_docker() -> str:
    """Raise :class:`DockerUnavailableError` with a clear message when no engine answers."""
    ok, detail = docker_status()
    if not ok:
        raise DockerUnavailableError(
            "this machine",
            f"{detail}. Start one (as root: scripts/docker-engine.sh) or run the release "
            "without the image step.",
        )
    return detail


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # nosec B603 B607 # docker from PATH, argv list, no shell
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass(frozen=True)
class ImageFacts:
    """What ``docker image inspect`` says about a built image."""

    ref: str
    image_id: str
    size_bytes: int
    user: str
    labels: dict[str, str]

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def image_facts(ref: str) -> ImageFacts:
    """Id, size, user and labels of a local image."""
    proc = _docker("image", "inspect", ref)
    if proc.returncode != 0:
        raise ContainerizeError(ref, f"image not found: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)[0]
    config = data.get("Config") or {}
    return ImageFacts(
        ref=ref,
        image_id=str(data["Id"]),
        size_bytes=int(data["Size"]),
        user=str(config.get("User") or ""),
        labels=dict(config.get("Labels") or {}),
    )


def containerize(
    settings: Settings, bento_tag: str, *, repository: str | None = None, timeout: float = 1800
) -> ImageFacts:
    """``bentoml containerize`` the bento to the image ``<model>:v<version>`` (never ``latest``).

    Uses the legacy builder (``DOCKER_BUILDKIT=0``) with host networking for the build steps,
    and puts the bento's labels on the image. ``repository`` overrides the image name (default:
    the model name). Retry on failure: this step does network I/O.
    """
    name, _, version = bento_tag.partition(":")
    log_path = release_log_dir(settings, name, version[1:]) / "containerize.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"=== containerize {bento_tag} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
    require_docker()
    bento = _bento_store(settings.bentoml_home).get(bento_tag)
    ref = image_tag(repository or name, version[1:])
    label_args = [f"--opt=label={k}={v}" for k, v in bento.info.labels.items()]
    cmd = _bentoml_cli(
        "containerize",
        bento_tag,
        "--backend",
        "docker",
        "-t",
        ref,
        "--opt=network=host",
        *label_args,
    )
    env = bentoml_env(settings, bento_tag)
    started = time.perf_counter()
    # BentoML resolves a bento's Dockerfile template inside a temporary copy of the bento and
    # refuses paths outside the working directory: run from the temporary directory's root.
    cwd = Path(tempfile.gettempdir())
    code = _run_logged(cmd, log_path, env=env, cwd=cwd, timeout=timeout)
    if code != 0:
        raise ContainerizeError(bento_tag, f"exit code {code}", log_path)
    facts = image_facts(ref)
    with log_path.open("a") as log:
        log.write(
            f"[image {ref} {facts.image_id} {facts.size_mb:.0f} MB user={facts.user!r} "
            f"built in {time.perf_counter() - started:.1f}s]\n"
        )
    if not facts.user or facts.user in {"root", "0"}:
        raise ContainerizeError(bento_tag, f"image {ref} runs as root (User={facts.user!r})")
    return facts


def containerize_with_retries(
    settings: Settings,
    bento_tag: str,
    *,
    repository: str | None = None,
    delays_s: Sequence[float] = (5.0, 15.0),
) -> ImageFacts:
    """:func:`containerize`, tried again after ``delays_s`` when the build fails: the build
    downloads packages and can hit a network error. A root image is not retried."""
    for delay in (*delays_s, None):
        try:
            return containerize(settings, bento_tag, repository=repository)
        except ContainerizeError as err:
            if delay is None or "runs as root" in err.reason:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- smoke test


@dataclass(frozen=True)
class SmokeCase:
    """A frozen set of request records with the offline ONNX predictions they must get back."""

    records: list[dict[str, Any]]
    probabilities: list[float]
    threshold: float

    @property
    def decisions(self) -> list[int]:
        return [int(p >= self.threshold) for p in self.probabilities]

    def to_json(self) -> str:
        return json.dumps(
            {
                "threshold": self.threshold,
                "probabilities": self.probabilities,
                "records": self.records,
            },
            indent=1,
        )


def _json_value(value: Any, kind: FeatureKind) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if kind == FeatureKind.CATEGORICAL:
        return str(value)
    if kind == FeatureKind.BOOLEAN:
        return bool(value)
    if kind == FeatureKind.INTEGER:
        return int(value)
    return float(value)


def request_records(frame: pd.DataFrame, spec: FeatureSpec) -> list[dict[str, Any]]:
    """Rows as JSON objects keyed by feature name, with values typed as the spec says."""
    records = []
    for row in frame[spec.feature_names].itertuples(index=False, name=None):
        records.append(
            {
                feature.name: _json_value(value, feature.kind)
                for feature, value in zip(spec.features, row, strict=True)
            }
        )
    return records


def make_smoke_case(
    model_bytes: bytes,
    spec: FeatureSpec,
    frame: pd.DataFrame,
    threshold: float,
    *,
    rows: int = 64,
    seed: int = 20240601,
) -> SmokeCase:
    """Pick a deterministic set of rows and score them offline with the ONNX model.

    Half are a seeded sample, the rest the highest-scoring rows, so both decisions are covered.
    """
    if len(frame) == 0:
        raise ValueError("smoke test: no reference rows to send")
    features = frame[spec.feature_names].reset_index(drop=True)
    session = onnx_session(model_bytes)
    scores = onnx_predict_proba(session, features, spec)
    sampled = features.sample(n=min(rows // 2, len(features)), random_state=seed).index
    top = pd.Index(np.argsort(-scores, kind="stable")[: rows - len(sampled)])
    chosen = sampled.append(top.difference(sampled))
    picked = features.loc[chosen]
    return SmokeCase(
        records=request_records(picked, spec),
        probabilities=[float(p) for p in scores[chosen.to_numpy()]],
        threshold=float(threshold),
    )


@dataclass(frozen=True)
class SmokeComparison:
    """How the served answers compare with the offline ones."""

    records: int
    max_abs_diff: float
    mismatches: list[str]

    @property
    def passed(self) -> bool:
        return not self.mismatches


def compare_replies(
    case: SmokeCase,
    replies: Sequence[Mapping[str, Any]],
    *,
    tolerance: float = 1e-6,
    model_version: str | None = None,
) -> SmokeComparison:
    """Compare each reply's probability and decision with the offline prediction."""
    mismatches: list[str] = []
    if len(replies) != len(case.records):
        mismatches.append(f"{len(replies)} replies for {len(case.records)} records")
    max_diff = 0.0
    for i, (reply, expected_p, expected_d) in enumerate(
        zip(replies, case.probabilities, case.decisions, strict=False)
    ):
        try:
            served_p = float(reply[SCORE_FIELD])
            served_d = int(reply[DECISION_FIELD])
        except (KeyError, TypeError, ValueError) as err:
            mismatches.append(f"record {i}: unreadable reply {reply!r} ({err})")
            continue
        diff = abs(served_p - expected_p) if math.isfinite(served_p) else math.inf
        max_diff = max(max_diff, diff)
        if diff > tolerance:
            mismatches.append(f"record {i}: probability {served_p!r} != offline {expected_p!r}")
        if served_d != expected_d:
            mismatches.append(f"record {i}: decision {served_d} != offline {expected_d}")
        if model_version is not None and str(reply.get(VERSION_FIELD)) != model_version:
            mismatches.append(
                f"record {i}: model_version {reply.get(VERSION_FIELD)!r} != {model_version!r}"
            )
    return SmokeComparison(records=len(replies), max_abs_diff=max_diff, mismatches=mismatches)


def compare_batch_reply(
    case: SmokeCase, reply: Mapping[str, Any], *, tolerance: float = 1e-6
) -> SmokeComparison:
    """Compare a ``/predict_batch`` reply (``predictions`` in record order) with the case."""
    predictions = reply.get("predictions")
    if not isinstance(predictions, list):
        return SmokeComparison(0, 0.0, [f"no 'predictions' list in {str(reply)[:200]!r}"])
    return compare_replies(case, predictions, tolerance=tolerance)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(
    method: str, url: str, body: Any | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """One HTTP request to a local server (no proxy); returns the status and the decoded JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


@dataclass
class RunningContainer:
    """A container started for a test, addressed on 127.0.0.1:port (host network)."""

    name: str
    image: str
    port: int
    started_at: float
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        proc = _docker("inspect", "-f", "{{.State.Running}}", self.name, timeout=30)
        return proc.returncode == 0 and proc.stdout.strip() == "true"

    def exec(self, *cmd: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (as its image user unless ``user`` is given)."""
        user_args = ["-u", user] if user else []
        return _docker("exec", *user_args, self.name, *cmd, timeout=120)

    def wait_ready(self, timeout: float = 60) -> float:
        """Poll ``/readyz`` until it answers 200; return seconds since ``docker run``."""
        deadline = time.monotonic() + timeout
        next_check = 0.0
        while time.monotonic() < deadline:
            try:
                status, _ = http_json("GET", f"{self.base_url}/readyz", timeout=2)
                if status == 200:
                    return time.perf_counter() - self.started_at
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() >= next_check:
                if not self.running():
                    raise SmokeTestError(self.image, "the container exited before it was ready")
                next_check = time.monotonic() + 1.0
            time.sleep(0.1)
        raise SmokeTestError(self.image, f"/readyz did not answer 200 within {timeout:.0f}s")


@contextmanager
def run_container(
    image: str,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Iterator[RunningContainer]:
    """Start ``image`` on the host network on a free port; always save its log and remove it.

    The bento's entrypoint runs ``bentoml serve`` and takes the port from ``BENTOML_PORT``.
    """
    port = port or free_port()
    name = f"{image.replace(':', '-').replace('/', '-')}-test-{os.getpid()}-{port}"
    env_args: list[str] = []
    for key, value in {
        "BENTOML_PORT": str(port),
        "BENTOML_HOST": "127.0.0.1",
        "BENTOML_DO_NOT_TRACK": "true",
        **(env or {}),
    }.items():
        env_args += ["-e", f"{key}={value}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = _docker("run", "-d", "--name", name, "--network", "host", *env_args, image)
    if proc.returncode != 0:
        log_path.write_text(proc.stdout + proc.stderr)
        _docker("rm", "-f", name)
        raise SmokeTestError(image, f"docker run failed: {proc.stderr.strip()}", log_path)
    container = RunningContainer(name, image, port, started, log_path)
    try:
        yield container
    finally:
        logs = _docker("logs", name, timeout=60)
        log_path.write_text(logs.stdout + logs.stderr)
        _docker("rm", "-f", name, timeout=60)


@dataclass(frozen=True)
class SmokeReport:
    """Outcome of a passed smoke test, with the figures worth printing."""

    image: str
    records: int
    max_abs_diff: float
    start_to_ready_s: float
    log_path: Path


def smoke_test(
    settings: Settings,
    image: str,
    case: SmokeCase,
    *,
    model_version: str,
    ready_timeout: float = 60,
    tolerance: float = 1e-6,
    batch: bool = True,
) -> SmokeReport:
    """Start the image, wait for ``/readyz``, POST every record to ``/predict`` (and all of
    them at once to ``/predict_batch``), compare with the offline predictions.

    Passes only when every reply matches its offline ONNX prediction (probability within
    ``tolerance``, identical decision, the expected model version). The container is always
    stopped and removed; its log stays in the version's packaging folder.
    """
    name, _, version = image.rpartition("/")[2].partition(":")
    folder = release_log_dir(settings, name, version[1:])
    log_path = folder / "smoke-container.log"
    write_atomic(folder / "smoke-case.json", case.to_json())
    require_docker()
    # a path inside the throw-away smoke-test container, not on this host
    env = {"FRAUD_INFERENCE_LOG_DIR": "/tmp/inference_log"}  # nosec B108
    batch_reply: dict[str, Any] = {}
    with run_container(image, log_path, env=env) as container:
        try:
            ready_s = container.wait_ready(ready_timeout)
            replies: list[Any] = []
            for i, record in enumerate(case.records):
                status, reply = http_json("POST", f"{container.base_url}/predict", record)
                if status != 200:
                    raise SmokeTestError(image, f"record {i}: HTTP {status}: {reply!r}")
                replies.append(reply)
            if batch:
                status, reply = http_json(
                    "POST", f"{container.base_url}/predict_batch", {"records": case.records}
                )
                if status != 200 or not isinstance(reply, dict):
                    raise SmokeTestError(image, f"/predict_batch: HTTP {status}: {reply!r}")
                batch_reply = reply
        except SmokeTestError as err:
            failure: SmokeTestError | None = err
        else:
            failure = None
    if failure is not None:
        raise SmokeTestError(image, failure.reason, log_path) from failure
    comparison = compare_replies(case, replies, tolerance=tolerance, model_version=model_version)
    mismatches = [f"/predict {m}" for m in comparison.mismatches]
    if batch:
        batch_cmp = compare_batch_reply(case, batch_reply, tolerance=tolerance)
        mismatches += [f"/predict_batch {m}" for m in batch_cmp.mismatches]
        if str(batch_reply.get(VERSION_FIELD)) != model_version:
            mismatches.append(
                f"/predict_batch model_version {batch_reply.get(VERSION_FIELD)!r} "
                f"!= {model_version!r}"
            )
    if mismatches:
        shown = "; ".join(mismatches[:10])
        more = len(mismatches) - 10
        reason = f"{len(mismatches)} mismatches with the offline ONNX predictions: {shown}" + (
            f" (+{more} more)" if more > 0 else ""
        )
        raise SmokeTestError(image, reason, log_path)
    return SmokeReport(
        image=image,
        records=comparison.records,
        max_abs_diff=comparison.max_abs_diff,
        start_to_ready_s=ready_s,
        log_path=log_path,
    )


# --------------------------------------------------------------------------- promotion side


def _set_store_latest(store_dir: Path, tag: str) -> None:
    name, _, version = tag.partition(":")
    if (store_dir / name / version).is_dir():
        write_atomic(store_dir / name / "latest", version)


def publish_champion(
    settings: Settings, tag: str, *, image: bool = True, repository: str | None = None
) -> None:
    """After the smoke test and the alias: tag the image ``latest``, point stores and file at it.

    ``tag`` is ``<model>:v<version>`` (model store, bento and image share it; ``repository``
    overrides the image name as in :func:`containerize`).
    """
    name, _, version = tag.partition(":")
    if image:
        source = f"{repository or name}:{version}"
        target = latest_image_tag(repository or name)
        proc = _docker("tag", source, target)
        if proc.returncode != 0:
            raise PackagingError(tag, f"docker tag {source} {target}: {proc.stderr.strip()}")
    _set_store_latest(settings.bentoml_home / "models", tag)
    _set_store_latest(settings.bentoml_home / "bentos", tag)
    write_champion_pointer(settings, tag)


def discard_failed(settings: Settings, tag: str) -> None:
    """After a failed build or smoke test: drop the version's bento and store model, and point
    both stores' ``latest`` back at the champion. The ``latest`` image is never touched; the
    failed ``<model>:v<version>`` image (if any) stays for inspection.
    """
    champion = read_champion_pointer(settings)
    if champion == tag:
        return
    for store in (_bento_store(settings.bentoml_home), _model_store(settings.bentoml_home)):
        if store.list(tag):
            store.delete(tag)
    if champion:
        _set_store_latest(settings.bentoml_home / "models", champion)
        _set_store_latest(settings.bentoml_home / "bentos", champion)


# --------------------------------------------------------------------------- whole sequence


@dataclass(frozen=True)
class PackagedVersion:
    """A version ready to be promoted: its bento, and its image with the smoke test it passed."""

    tag: str
    image: ImageFacts | None
    smoke: SmokeReport | None
    skipped: str | None = None

    def summary(self) -> dict[str, str]:
        """Facts for the run's summary; says loudly when no image was built."""
        facts = {"bento": self.tag}
        if self.image is None or self.smoke is None:
            facts["image"] = f"NOT BUILT: {self.skipped or 'image step skipped'}"
            return facts
        facts["image"] = f"{self.image.ref} ({self.image.size_mb:.0f} MB, user {self.image.user})"
        facts["smoke test"] = (
            f"{self.smoke.records} records, max |dp| {self.smoke.max_abs_diff:.1e}, "
            f"ready in {self.smoke.start_to_ready_s:.1f} s"
        )
        return facts


def package_version(
    settings: Settings,
    model_name: str,
    version: str,
    reference: pd.DataFrame,
    spec: FeatureSpec,
    *,
    build_image: bool = True,
    repository: str | None = None,
) -> PackagedVersion:
    """Import, build, containerize and smoke-test a registered version, before any promotion.

    ``reference`` holds rows the smoke test may send (e.g. the holdout). On failure the
    version's bento and store model are dropped and both stores point back at the champion,
    then the :class:`PackagingError` propagates; the ``latest`` image is never touched here.
    """
    stored = import_registered_version(settings, model_name, version)
    try:
        bento = build_bento(settings, stored)
        if not build_image:
            return PackagedVersion(
                bento, None, None, "the image step was switched off for this run (no Docker)"
            )
        facts = containerize_with_retries(settings, bento, repository=repository)
        case = make_smoke_case(stored.model_bytes, spec, reference, stored.threshold)
        report = smoke_test(settings, facts.ref, case, model_version=stored.model_version)
    except PackagingError:
        discard_failed(settings, stored.tag)
        raise
    return PackagedVersion(bento, facts, report)
