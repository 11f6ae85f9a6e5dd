"""The Kubernetes deployment of the pipeline: fill the checked-in manifests with image tags.

``deploy/k8s/*.yaml`` and ``deploy/k8s/work-pool/base-job-template.json`` carry ``${NAME}``
placeholders (``${BENTO_IMAGE}``, ``${PIPELINE_IMAGE}``, ...). Rendering replaces every one of
them and refuses a file that names a placeholder it does not know, or a value that is missing,
so a rendered file never reaches a cluster with a ``${...}`` left in it. Prefect's own
``{{ variable }}`` placeholders in the base job template are left for the worker.

The bento image is ``<registry>/<image prefix><model>:v<N>`` of the champion recorded by the
last release or rollback (:func:`data_contracts.artifacts.read_champion_pointer`); the pipeline
image is ``<registry>/fraud-pipeline:<git commit>``, as ``make pipeline-image`` tags it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data_contracts.artifacts import image_tag, parse_tag, read_champion_pointer
from flows.core.settings import PROJECT_ROOT, Settings

MANIFEST_DIR = PROJECT_ROOT / "deploy" / "k8s"
JOB_TEMPLATE = Path("work-pool") / "base-job-template.json"
MANIFESTS_FILE = "fraud.yaml"  # every object, in apply order, one file
PIPELINE_REPOSITORY = "fraud-pipeline"
COMMIT_TAG_LENGTH = 12
DEFAULT_NAMESPACE = "fraud"
DEFAULT_WORK_POOL = "fraud-k8s"
DEFAULT_PREFECT_API_URL = "http://prefect-server:4200/api"
DEFAULT_MLFLOW_URI = "http://mlflow:5000"

# objects applied first are the ones later ones refer to
_KIND_ORDER = (
    "Namespace",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
)
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class RenderError(ValueError):
    """A manifest cannot be rendered: an unknown placeholder, a missing or invalid value."""


@dataclass(frozen=True)
class RenderValues:
    """What the manifests are filled with (the placeholder of each field is its upper name)."""

    bento_image: str
    pipeline_image: str
    git_commit: str
    namespace: str = DEFAULT_NAMESPACE
    work_pool: str = DEFAULT_WORK_POOL
    prefect_api_url: str = DEFAULT_PREFECT_API_URL
    mlflow_tracking_uri: str = DEFAULT_MLFLOW_URI

    def __post_init__(self) -> None:
        for name in ("bento_image", "pipeline_image", "git_commit", "work_pool"):
            value = getattr(self, name)
            if not value or any(ch.isspace() for ch in value):
                raise RenderError(f"{name}={value!r} must be a non-empty word without spaces")
        if not _NAMESPACE_RE.match(self.namespace):
            raise RenderError(
                f"namespace={self.namespace!r} is not a Kubernetes name (lowercase letters, "
                "digits and '-', at most 63)"
            )

    @property
    def bento_version(self) -> str:
        """The bento image's tag (``v3``): the served version, as a label value."""
        return self.bento_image.rpartition(":")[2]

    def placeholders(self) -> dict[str, str]:
        """``{"BENTO_IMAGE": ..., ...}``: every placeholder the manifests may use."""
        fields = {
            name.upper(): str(getattr(self, name))
            for name in self.__dataclass_fields__  # type: ignore[attr-defined]
        }
        return {**fields, "BENTO_VERSION": self.bento_version}


def image_ref(registry: str, repository: str, tag: str) -> str:
    """``registry/repository:tag``, or ``repository:tag`` without a registry."""
    registry = registry.strip().rstrip("/")
    return f"{registry}/{repository}:{tag}" if registry else f"{repository}:{tag}"


def champion_image(settings: Settings, model_name: str, registry: str = "") -> str:
    """The image of ``model_name``'s champion in ``registry``; RenderError when none is recorded."""
    tag = read_champion_pointer(settings.bentoml_home, model_name)
    if tag is None:
        raise RenderError(
            f"no champion of {model_name!r} is recorded under {settings.bentoml_home} "
            "(release one first, or pass the bento image explicitly)"
        )
    _, version = parse_tag(tag)
    repository, _, label = image_tag(settings.image_repository(model_name), version).partition(":")
    return image_ref(registry, repository, label)


def pipeline_image(commit: str, registry: str = "") -> str:
    """The pipeline image of a git commit, as ``make pipeline-image`` tags it."""
    sha = commit.removesuffix("-dirty")
    if not re.fullmatch(r"[0-9a-f]{7,40}", sha):
        raise RenderError(f"git commit {commit!r} is not a hexadecimal commit id")
    return image_ref(registry, PIPELINE_REPOSITORY, sha[:COMMIT_TAG_LENGTH])


def render_text(text: str, values: Mapping[str, str], source: str = "<text>") -> str:
    """Replace every ``${NAME}`` in ``text``; RenderError naming the file for an unknown one."""
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values))
    if unknown:
        raise RenderError(
            f"{source}: unknown placeholder(s) {', '.join('${' + u + '}' for u in unknown)}; "
            f"known: {', '.join(sorted(values))}"
        )
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _kind_rank(document: Mapping[str, Any]) -> int:
    kind = document.get("kind", "")
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def render_manifests(values: RenderValues, source: Path = MANIFEST_DIR) -> list[dict[str, Any]]:
    """Every object of ``deploy/k8s/*.yaml``, rendered, in apply order."""
    files = sorted(source.glob("*.yaml"))
    if not files:
        raise RenderError(f"no manifests (*.yaml) in {source}")
    documents: list[dict[str, Any]] = []
    for path in files:
        text = render_text(path.read_text(encoding="utf-8"), values.placeholders(), path.name)
        for document in yaml.safe_load_all(text):
            if document is None:
                continue
            if not isinstance(document, dict) or "kind" not in document:
                raise RenderError(f"{path.name}: every document must be a Kubernetes object")
            documents.append(document)
    return sorted(documents, key=_kind_rank)


def render_job_template(values: RenderValues, source: Path = MANIFEST_DIR) -> dict[str, Any]:
    """The work pool's base job template, rendered (``prefect work-pool create`` reads it)."""
    path = source / JOB_TEMPLATE
    text = render_text(path.read_text(encoding="utf-8"), values.placeholders(), str(JOB_TEMPLATE))
    template = json.loads(text)
    missing = {"job_configuration", "variables"} - set(template)
    if missing:
        raise RenderError(f"{JOB_TEMPLATE}: missing {', '.join(sorted(missing))}")
    return template


def write_rendered(out_dir: Path, values: RenderValues, source: Path = MANIFEST_DIR) -> list[Path]:
    """Write ``fraud.yaml`` (all objects) and ``base-job-template.json`` into ``out_dir``."""
    documents = render_manifests(values, source)
    template = render_job_template(values, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifests = out_dir / MANIFESTS_FILE
    manifests.write_text(
        yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False), encoding="utf-8"
    )
    job_template = out_dir / JOB_TEMPLATE.name
    job_template.write_text(json.dumps(template, indent=2) + "\n", encoding="utf-8")
    return [manifests, job_template]


# --------------------------------------------------------------------------- offline checks

# the Kubernetes release the manifests are checked against: old enough for current managed
# clusters, new enough for the preStop sleep action and the PDB's unhealthyPodEvictionPolicy
KUBERNETES_VERSION = "1.33"
SAMPLE_VALUES = RenderValues(
    bento_image="registry.invalid/team/fraud-detector:v7",
    pipeline_image="registry.invalid/team/fraud-pipeline:0123456789ab",
    git_commit="0123456789abcdef0123456789abcdef01234567",
)


def object_name(document: Mapping[str, Any]) -> str:
    """``Deployment/fraud-detector``: how a document is named in messages."""
    metadata = document.get("metadata", {})
    return f"{document.get('kind')}/{metadata.get('name') or metadata.get('generateName')}"


def schema_problems(
    documents: list[dict[str, Any]], version: str = KUBERNETES_VERSION
) -> list[str]:
    """Each document checked against the Kubernetes ``version`` schemas (strict: no unknown
    field); one line per invalid document. Needs the dev dependency ``kubernetes-validate``."""
    import kubernetes_validate

    problems = []
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            problems.append(f"{object_name(document)}: {getattr(e, 'message', e)}")
    return problems


def work_pool_problems(template: dict[str, Any], pool: str = DEFAULT_WORK_POOL) -> list[str]:
    """What the Prefect server would refuse in the template of ``prefect work-pool create``
    (every placeholder of the job configuration declared as a variable, and so on)."""
    from prefect.server.schemas.actions import WorkPoolCreate
    from pydantic import ValidationError

    try:
        WorkPoolCreate(name=pool, type="kubernetes", base_job_template=template)
    except ValidationError as err:
        return [f"{JOB_TEMPLATE}: {e['msg']}" for e in err.errors()]
    return []


def flow_run_job(template: dict[str, Any], values: Mapping[str, Any] | None = None) -> dict:
    """The Job a Kubernetes worker would submit for a flow run, built by prefect-kubernetes
    itself from the base job template and deployment ``values`` (its job variables)."""
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    # from_template_and_values without its server round trips (blocks and Prefect variables,
    # which this template does not use): defaults, then the deployment's values, then the
    # configuration class validates the Job (required parts, fixed values)
    cls = KubernetesWorkerJobConfiguration
    variables = cls._get_base_config_defaults(template["variables"].get("properties", {}))
    variables.update(values or {})
    config = cls(**apply_values(template=template["job_configuration"], values=variables))
    config._populate_env_in_manifest()  # what prepare_for_flow_run does to the env
    return config.job_manifest


# prefect-kubernetes requires these two in the pod spec of every Job it submits (its default
# template has them there); they are Job fields, so the API server drops them with a warning
PREFECT_POD_FIELDS = ("parallelism", "completions")


def without_prefect_pod_fields(job: Mapping[str, Any]) -> dict[str, Any]:
    """The Job as the API server keeps it: Prefect's two pod-spec fields removed."""
    copy = json.loads(json.dumps(job))
    pod = copy["spec"]["template"]["spec"]
    for name in PREFECT_POD_FIELDS:
        pod.pop(name, None)
    return copy


def in_registry(image: str, registry: str) -> str:
    """``fraud-detector:v3`` as named in ``registry`` (``registry/fraud-detector:v3``)."""
    repository, _, tag = image.rpartition(":")
    if not repository or not tag or "/" in tag:
        raise RenderError(f"image {image!r} must be <repository>:<tag>")
    return image_ref(registry, repository, tag)


def push_images(images: list[str], registry: str) -> list[str]:
    """Tag each local image for ``registry`` and push it; the pushed names. Raises RenderError
    naming the image and Docker's message when a tag or push fails (login is the caller's)."""
    from flows.packaging.container import docker

    if not registry.strip():
        raise RenderError("no registry given (--registry or FRAUD_IMAGE_REGISTRY)")
    pushed = []
    for image in images:
        remote = in_registry(image, registry)
        for args, timeout in ((("tag", image, remote), 60), (("push", remote), 1800)):
            proc = docker(*args, timeout=timeout)
            if proc.returncode != 0:
                detail = (proc.stderr or proc.stdout).strip()
                raise RenderError(f"docker {args[0]} {image} failed: {detail}")
        pushed.append(remote)
    return pushed
