"""Facts about model artifacts that the release flows and the bento must agree on, defined once.

The flows write them (import into the BentoML store, build, publish, roll back) and the bento
reads them (which model to serve, its files, its answers), in different processes and images.
Standard library only: the bento image has no training libraries and imports this module.

- Artifact files and metadata: a stored model ``<model>:v<N>`` holds :data:`ONNX_FILE` and
  :data:`SPEC_FILE`; its metadata keys are :data:`META_KEYS`; its labels :data:`LABEL_KEYS`.
- Tags: ``<model>:v<N>`` names the stored model, the bento and the image of MLflow version N.
- The champion pointer: one file per model, ``<BENTOML_HOME>/champions/<model>``, holding the
  served champion's tag; the release and rollback write it atomically, ``bentoml serve`` from a
  checkout reads it. (Before, one file ``champion_tag`` held the tag of whichever model was
  released last; it is still read for its own model only, so homes released before the change
  keep serving until their next release.)
- Version tags: the gate's evidence on each registered version (:data:`TAG_HOLDOUT_F1_INTERVAL`,
  :data:`TAG_F1_VS_CHAMPION`, ...).
- The answers of ``/predict`` and ``/predict_batch``: the response field names.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

# --------------------------------------------------------------------------- artifact files

ONNX_FILE = "model.onnx"
SPEC_FILE = "feature_spec.json"
# the drift reference snapshot in each training run (written by the release, read by drift)
REFERENCE_ARTIFACT = "reference/reference.parquet"

# metadata of a stored model (BentoML model store)
META_THRESHOLD = "threshold"
META_SHA256 = "sha256"
META_SPEC_HASH = "spec_hash"
META_MODEL_VERSION = "model_version"
META_HOLDOUT = "holdout"  # optional: the release's holdout metrics (f1, precision, ...)
META_KEYS = (META_THRESHOLD, META_SHA256, META_SPEC_HASH, META_MODEL_VERSION)
# labels of a stored model and its bento and image: where it came from
# ``calibration``: how the served scores were calibrated (absent: registered before releases
# calibrated, so the scores are the class-weighted ones)
LABEL_CALIBRATION = "calibration"
LABEL_KEYS = (
    "model_name",
    "model_version",
    "run_id",
    "spec_hash",
    "data_digest",
    "git_commit",
    LABEL_CALIBRATION,
)

# --------------------------------------------------------------------------- environment

MODEL_TAG_ENV = "FRAUD_MODEL_TAG"  # serve exactly this stored model
MODEL_NAME_ENV = "FRAUD_MODEL_NAME"  # serve this model's champion (default DEFAULT_MODEL_NAME)
HOME_ENV = "FRAUD_HOME"
_REPO_ROOT = Path(__file__).resolve().parents[1]


def fraud_home(environ: Mapping[str, str] | None = None) -> Path:
    """``FRAUD_HOME``, or ``<repo>/.fraud`` (the same default as the pipeline's settings)."""
    env = os.environ if environ is None else environ
    return Path(env[HOME_ENV]) if env.get(HOME_ENV) else _REPO_ROOT / ".fraud"


DEFAULT_MODEL_NAME = "fraud-detector"  # the shipped spec's name (a test checks they agree)

# --------------------------------------------------------------------------- response fields

REQUEST_ID = "request_id"
TRANSACTION_ID = "transaction_id"
SCORE_FIELD = "fraud_probability"
DECISION_FIELD = "is_fraud"
THRESHOLD_FIELD = "threshold"
VERSION_FIELD = "model_version"
PREDICTIONS_FIELD = "predictions"
RECORDS_FIELD = "records"
PREDICTION_FIELDS = (
    REQUEST_ID,
    TRANSACTION_ID,
    SCORE_FIELD,
    DECISION_FIELD,
    THRESHOLD_FIELD,
    VERSION_FIELD,
)

# --------------------------------------------------------------------------- version tags
# what the release gate saw, on each registered version (the release writes, the summary reads)
TAG_HOLDOUT_F1 = "holdout_f1"
TAG_HOLDOUT_F1_INTERVAL = "holdout_f1_interval"  # "0.7811 to 0.8420 (95%)"
TAG_F1_VS_CHAMPION = "f1_vs_champion"  # "+0.0120 (95% interval -0.0051 to +0.0290) vs v3"
TAG_HOLDOUT_POSITIVES = "holdout_positives"
# which holdout rows the champion comparison used, and why (rows the champion learned from are
# left out): "the 3,120 of 4,000 holdout rows champion v3 never learned from: ..."
TAG_F1_VS_CHAMPION_ROWS = "f1_vs_champion_rows"
# how the version's scores were calibrated ("isotonic ..., cross-fitted on 128,000 training
# rows ..."); versions registered before releases calibrated lack it
TAG_CALIBRATION = "calibration"
TAG_ECE = "holdout_ece"  # "0.0016 [0.0011, 0.0024]"

# --------------------------------------------------------------------------- tags

_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")


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


def parse_tag(tag: str) -> tuple[str, str]:
    """``"fraud-detector:v3"`` -> ``("fraud-detector", "3")``; ValueError for anything else."""
    name, _, label = tag.strip().partition(":")
    check_name(name)
    if not label.startswith("v") or not label[1:].isdigit():
        raise ValueError(f"a model tag must look like '<model>:v<version>', got {tag!r}")
    return name, str(int(label[1:]))


# --------------------------------------------------------------------------- champion pointer

CHAMPIONS_DIR = "champions"
LEGACY_POINTER_FILE = "champion_tag"  # one file for every model: read for migration only


def pointer_path(bentoml_home: Path, model_name: str) -> Path:
    """Where the served champion of ``model_name`` is recorded: ``champions/<model>``."""
    return bentoml_home / CHAMPIONS_DIR / check_name(model_name)


# a pointer holds one tag (a name of at most 63 characters, ":v", a version): anything longer
# is not read (a 200 MB file in its place was read whole on every poll)
MAX_POINTER_BYTES = 1024
POINTER_UNREADABLE = "unreadable"  # not a regular file, or reading it failed
POINTER_UNDECODABLE = "undecodable"  # not UTF-8 text, or empty (a truncated write)
POINTER_OVERSIZED = "oversized"  # longer than MAX_POINTER_BYTES


class PointerError(ValueError):
    """A champion pointer that exists but cannot be used; ``reason`` says how (one of
    :data:`POINTER_UNREADABLE`, :data:`POINTER_UNDECODABLE`, :data:`POINTER_OVERSIZED`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def read_pointer_text(path: Path, max_bytes: int = MAX_POINTER_BYTES) -> str | None:
    """The stripped text of a pointer file, None when there is none; :class:`PointerError`
    for a file that is not a regular file, cannot be read, is over ``max_bytes`` (checked
    before reading: at most ``max_bytes + 1`` bytes are ever read) or is not UTF-8."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise PointerError(POINTER_UNREADABLE, f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise PointerError(
                POINTER_OVERSIZED, f"{path} holds {st.st_size} bytes, over {max_bytes} for a tag"
            )
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise PointerError(POINTER_UNREADABLE, f"{path} cannot be read: {err}") from err
    if len(raw) > max_bytes:  # grew since the stat
        raise PointerError(POINTER_OVERSIZED, f"{path} holds over {max_bytes} bytes for a tag")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise PointerError(POINTER_UNDECODABLE, f"{path} is not UTF-8 text: {err}") from err


def read_champion_pointer(
    bentoml_home: Path, model_name: str, *, strict: bool = False
) -> str | None:
    """The champion tag of ``model_name`` recorded by the last release or rollback, or None.

    A home released before pointers were per model has only the shared legacy file; its tag
    counts only when it names this model (never another model's champion). A pointer that
    cannot be used raises :class:`PointerError`; an empty one counts as none, unless
    ``strict`` (the serving follower: an empty pointer is a truncated write, undecodable).
    """
    path = pointer_path(bentoml_home, model_name)
    tag = read_pointer_text(path)
    if tag == "" and strict:
        raise PointerError(POINTER_UNDECODABLE, f"{path} is empty")
    if tag:
        return tag
    legacy = read_pointer_text(bentoml_home / LEGACY_POINTER_FILE)
    if legacy and legacy.partition(":")[0] == model_name:
        return legacy
    return None


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


def write_champion_pointer(bentoml_home: Path, tag: str) -> Path:
    """Record ``tag`` (``<model>:v<N>``) as its model's served champion, atomically; the file."""
    name, _ = parse_tag(tag)
    path = pointer_path(bentoml_home, name)
    write_atomic(path, tag.strip() + "\n")
    return path


def clear_champion_pointer(bentoml_home: Path, model_name: str) -> None:
    """Forget ``model_name``'s champion (undo of a first release whose alias did not move)."""
    pointer_path(bentoml_home, model_name).unlink(missing_ok=True)
