"""``fraud k8s``: render the Kubernetes manifests with the current image tags, push, or check.

``fraud k8s render --registry R --out DIR`` writes ``DIR/fraud.yaml`` (every object, in apply
order) and ``DIR/base-job-template.json`` (the ``kubernetes`` work pool's template), with the
champion's bento image and the pipeline image of the current git commit. ``fraud k8s check``
renders them with sample tags and validates every object, and the Job a worker would build
from the template, against the Kubernetes schemas offline (``make lint`` runs it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows.cli.options import add_model_argument, model_name

REGISTRY_ENV = "FRAUD_IMAGE_REGISTRY"
APPLY_HINT = (
    "apply with:\n"
    "  kubectl apply -f {manifests}\n"
    "  prefect work-pool create {pool} --type kubernetes --base-job-template {template} "
    "--overwrite"
)


def _add_registry_argument(parser: argparse.ArgumentParser) -> None:
    """``--registry`` of ``render`` and ``push``."""
    parser.add_argument(
        "--registry",
        default=os.environ.get(REGISTRY_ENV, ""),
        help=f"image registry and namespace, e.g. registry.example.com/team (${REGISTRY_ENV})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``render``, ``push`` and ``check`` with their options on ``parser``."""
    from flows.serving import kubernetes as k8s

    parser.description = __doc__.split("\n\n")[0]
    sub = parser.add_subparsers(dest="k8s_command", required=True, metavar="ACTION")
    render = sub.add_parser(
        "render",
        help="write the manifests filled with the current image tags",
        description="Fill deploy/k8s/ with the champion's bento image and the pipeline image "
        "of the current git commit, and write them to --out.",
    )
    render.add_argument(
        "--out", type=Path, default=Path("build/k8s"), help="output folder (build/k8s)"
    )
    _add_registry_argument(render)
    add_model_argument(render)
    render.add_argument(
        "--bento-image", help="bento image to serve (default: the champion's <model>:v<N>)"
    )
    render.add_argument(
        "--pipeline-image", help="pipeline image (default: fraud-pipeline:<git commit>)"
    )
    render.add_argument("--git-commit", help="commit recorded on the objects (default: HEAD)")
    render.add_argument(
        "--namespace", default=k8s.DEFAULT_NAMESPACE, help=f"({k8s.DEFAULT_NAMESPACE})"
    )
    render.add_argument(
        "--work-pool", default=k8s.DEFAULT_WORK_POOL, help=f"({k8s.DEFAULT_WORK_POOL})"
    )
    render.add_argument(
        "--prefect-api-url",
        default=k8s.DEFAULT_PREFECT_API_URL,
        help=f"Prefect API the worker and flow runs use ({k8s.DEFAULT_PREFECT_API_URL})",
    )
    render.add_argument(
        "--mlflow-tracking-uri",
        default=k8s.DEFAULT_MLFLOW_URI,
        help=f"MLflow tracking server of the flow runs ({k8s.DEFAULT_MLFLOW_URI})",
    )
    push = sub.add_parser(
        "push",
        help="push the champion's bento image and the pipeline image to a registry",
        description="Tag the champion's bento image <model>:v<N> and the pipeline image for "
        "--registry and push both (log in to the registry first: docker login).",
    )
    _add_registry_argument(push)
    add_model_argument(push)
    push.add_argument(
        "--pipeline-image", required=True, help="local pipeline image, fraud-pipeline:<commit>"
    )
    sub.add_parser(
        "check",
        help="render with sample tags and validate everything against the Kubernetes schemas",
        description=f"Validate every object of deploy/k8s/ and the flow-run Job of the work "
        f"pool template against the Kubernetes {k8s.KUBERNETES_VERSION} schemas, offline and "
        "strict (no unknown field).",
    )


def _render(args: argparse.Namespace) -> int:
    from flows.core.settings import Settings
    from flows.serving import kubernetes as k8s

    try:
        commit = args.git_commit
        if commit is None:
            from flows.registry.registry import git_commit

            commit = git_commit()
            if commit.endswith("-dirty"):
                print(
                    f"warning: the working tree has uncommitted changes; the pipeline image "
                    f"of {commit.removesuffix('-dirty')[:12]} does not hold them",
                    file=sys.stderr,
                )
        bento = args.bento_image or k8s.champion_image(
            Settings(), model_name(args.model), args.registry
        )
        pipeline = args.pipeline_image or k8s.pipeline_image(commit, args.registry)
        values = k8s.RenderValues(
            bento_image=bento,
            pipeline_image=pipeline,
            git_commit=commit,
            namespace=args.namespace,
            work_pool=args.work_pool,
            prefect_api_url=args.prefect_api_url,
            mlflow_tracking_uri=args.mlflow_tracking_uri,
        )
        manifests, template = k8s.write_rendered(args.out, values)
    except (k8s.RenderError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"bento image:    {values.bento_image}\npipeline image: {values.pipeline_image}")
    print(f"wrote {manifests} and {template}")
    print(APPLY_HINT.format(manifests=manifests, template=template, pool=values.work_pool))
    return 0


def _check() -> int:
    from flows.serving import kubernetes as k8s

    try:
        documents = k8s.render_manifests(k8s.SAMPLE_VALUES)
        template = k8s.render_job_template(k8s.SAMPLE_VALUES)
        job = k8s.without_prefect_pod_fields(k8s.flow_run_job(template))
    except ImportError as err:
        print(f"error: {err.name} is missing: run `uv sync` (dev group)", file=sys.stderr)
        return 2
    except (k8s.RenderError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    pool_problems = k8s.work_pool_problems(template)
    object_problems = k8s.schema_problems([*documents, job])
    problems = pool_problems + object_problems
    for problem in problems:
        print(f"invalid: {problem}", file=sys.stderr)
    checked = len(documents) + 1
    print(
        f"deploy/k8s: {checked - len(object_problems)} of {checked} objects valid against "
        f"Kubernetes {k8s.KUBERNETES_VERSION} (strict), the flow-run Job of the work pool "
        f"template included; the work pool template "
        f"{'refused' if pool_problems else 'accepted'} by Prefect's schema"
    )
    return 1 if problems else 0


def _push(args: argparse.Namespace) -> int:
    from flows.core.settings import Settings
    from flows.serving import kubernetes as k8s

    try:
        bento = k8s.champion_image(Settings(), model_name(args.model))
        pushed = k8s.push_images([bento, args.pipeline_image], args.registry)
    except (k8s.RenderError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for image in pushed:
        print(f"pushed {image}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``render``, ``push`` or ``check``; 0 on success, 1 for invalid manifests, 2 for bad
    input or a failed push."""
    actions = {"render": _render, "push": _push, "check": lambda _: _check()}
    return actions[args.k8s_command](args)
