"""``fraud work-pools``: make sure the work pools the stack's workers serve exist.

One process for every pool (instead of an ``inspect`` and a ``create`` CLI call per pool, each
paying Prefect's import time): a process pool that exists is left as it is (its concurrency
limit and settings are the operator's); a missing one is created with the ``process`` type.

``--type docker`` sets up the pool whose flow runs are containers of the pipeline image
(``make pipeline-image``): the pool's base job template carries what every such container needs
on this machine, from the environment of the command (:func:`docker_pool_template`), and is
rewritten on every call so it follows the profile's ports and folders. What each deployment
names itself (image, network, mounts, the servers' URLs) is in ``prefect.yaml``.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# What a flow container is given of the environment of the command that sets the pool up:
# the pipeline's own settings, nothing of the machine (PATH, HOME, ...).
FORWARDED_PREFIXES = ("FRAUD_", "MLFLOW_", "BENTOML_")
FORWARDED_NAMES = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "DO_NOT_TRACK")
# Secrets never go into a job template (the Prefect server stores and shows it): flow
# containers read them from Prefect Secret blocks (FRAUD_SMTP_PASSWORD_SECRET) or files under
# FRAUD_HOME (FRAUD_ID_HASH_KEY_FILE).
SECRET_NAME = re.compile(r"PASSWORD(?!_SECRET$|_FILE$)|TOKEN|AUTH_STRING|^FRAUD_ID_HASH_KEY$")
# Only for the commands on this machine: flow containers find the code at /app, and never
# talk to the database.
LOCAL_ONLY = ("FRAUD_PROJECT_DIR", "FRAUD_PG_", "FRAUD_DOCKER_")


def forwarded_env(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The part of ``environ`` flow containers get, and the names held back as secrets."""
    env: dict[str, str] = {}
    held_back: list[str] = []
    for name, value in sorted(environ.items()):
        if not (name.startswith(FORWARDED_PREFIXES) or name in FORWARDED_NAMES):
            continue
        if name.startswith(LOCAL_ONLY):
            continue
        if SECRET_NAME.search(name):
            held_back.append(name)
            continue
        env[name] = value
    return env, held_back


def docker_job_template(
    base: Mapping[str, Any],
    *,
    image: str,
    env: Mapping[str, str],
    user: str,
    groups: Sequence[str] = (),
) -> dict[str, Any]:
    """``base`` (the Docker worker's default template) with this machine's defaults.

    The image (never pulled: it is built here), the pipeline's environment, the user that owns
    the profile home (``uid:gid``, so what a container writes into the mounted home stays the
    owner's) plus the Docker socket's group, the host's process namespace (a release rolls the
    running fleet: it checks and gracefully reloads the fleet's HAProxy by the PID in the
    fleet's state, a process of the host; the container already holds the engine's socket,
    which gives it more than that), and containers removed when they end.
    """
    template = copy.deepcopy(dict(base))
    props = template["variables"]["properties"]
    defaults: dict[str, Any] = {
        "image": image,
        "env": dict(env),
        "network_mode": "host",
        "auto_remove": True,
        "image_pull_policy": "Never",
        "container_create_kwargs": {"user": user, "group_add": list(groups), "pid_mode": "host"},
    }
    for key, value in defaults.items():
        props[key]["default"] = value
    return template


def docker_pool_template(
    environ: Mapping[str, str] = os.environ,
) -> tuple[dict[str, Any], list[str]]:
    """The Docker pool's template from ``environ`` (FRAUD_HOME, FRAUD_PIPELINE_IMAGE)."""
    from prefect_docker.worker import DockerWorker

    image = environ.get("FRAUD_PIPELINE_IMAGE")
    if not image:
        raise SystemExit("FRAUD_PIPELINE_IMAGE is not set: the image the flow runs start from")
    home = Path(environ.get("FRAUD_HOME") or ".fraud").absolute()
    env, held_back = forwarded_env(environ)
    env["FRAUD_HOME"] = str(home)
    socket = environ.get("FRAUD_DOCKER_SOCKET", "/var/run/docker.sock")
    stat = home.stat()
    groups = [str(os.stat(socket).st_gid)] if os.path.exists(socket) else []
    template = docker_job_template(
        DockerWorker.get_default_base_job_template(),
        image=image,
        env=env,
        user=f"{stat.st_uid}:{stat.st_gid}",
        groups=groups,
    )
    return template, held_back


def ensure_work_pools(
    names: Sequence[str],
    pool_type: str = "process",
    base_job_template: Mapping[str, Any] | None = None,
) -> dict[str, bool]:
    """Create each missing pool on the server in ``PREFECT_API_URL``; name -> created now.

    With ``base_job_template``, a pool that exists gets that template (the others keep theirs).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    template = dict(base_job_template or {})
    created: dict[str, bool] = {}
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
                created[name] = False
            except ObjectNotFound:
                try:  # another process may create it between the read and the create
                    client.create_work_pool(
                        WorkPoolCreate(name=name, type=pool_type, base_job_template=template)
                    )
                    created[name] = True
                    continue
                except ObjectAlreadyExists:
                    created[name] = False
            if template:
                client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
    return created


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the pool names (positional) on ``parser``."""
    parser.description = (
        __doc__.split("\n\n")[0] + " Talks to the Prefect server in PREFECT_API_URL."
    )
    parser.add_argument("names", nargs="+", metavar="POOL", help="work pool names")
    parser.add_argument(
        "--type", dest="pool_type", default="process", choices=("process", "docker"),
        help="type of created pools (process); docker: flow runs are containers of "
        "FRAUD_PIPELINE_IMAGE, and the pool's template is rewritten from this environment",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Ensure the pools and say, per pool, whether it was created or already there."""
    template: dict[str, Any] | None = None
    if args.pool_type == "docker":
        template, held_back = docker_pool_template()
        if held_back:
            print(
                "not passed to flow containers (secrets; use Prefect Secret blocks): "
                + ", ".join(held_back)
            )
    for name, created in ensure_work_pools(args.names, args.pool_type, template).items():
        print(f"work pool {name!r}: {'created' if created else 'exists'}")
    return 0
