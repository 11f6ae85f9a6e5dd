"""``fraud work-pools``: make sure the process work pools the stack's workers serve exist.

One process for every pool (instead of an ``inspect`` and a ``create`` CLI call per pool, each
paying Prefect's import time): a pool that exists is left as it is (its concurrency limit and
settings are the operator's); a missing one is created with the ``process`` type.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def ensure_work_pools(names: Sequence[str], pool_type: str = "process") -> dict[str, bool]:
    """Create each missing pool on the server in ``PREFECT_API_URL``; name -> created now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    created: dict[str, bool] = {}
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
                created[name] = False
                continue
            except ObjectNotFound:
                pass
            try:  # another process may create it between the read and the create
                client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
                created[name] = True
            except ObjectAlreadyExists:
                created[name] = False
    return created


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the pool names (positional) on ``parser``."""
    parser.description = (
        __doc__.split("\n\n")[0] + " Talks to the Prefect server in PREFECT_API_URL."
    )
    parser.add_argument("names", nargs="+", metavar="POOL", help="work pool names")
    parser.add_argument(
        "--type", dest="pool_type", default="process", help="type of created pools (process)"
    )


def run(args: argparse.Namespace) -> int:
    """Ensure the pools and say, per pool, whether it was created or already there."""
    for name, created in ensure_work_pools(args.names, args.pool_type).items():
        print(f"work pool {name!r}: {'created' if created else 'exists'}")
    return 0
