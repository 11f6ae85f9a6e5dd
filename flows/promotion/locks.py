"""The lock that serialises alias moves of one model (releases and rollbacks).

MLflow alias writes are last-writer-wins, so every move of ``champion`` happens inside a one-slot
Prefect global concurrency limit taken with ``strict=True``: a run that cannot reach the Prefect
API fails instead of moving the alias unlocked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LOCK_TIMEOUT_S = 300.0


def promotion_lock_name(model_name: str) -> str:
    """The Prefect global concurrency limit that serialises alias moves of one model."""
    return f"promote-{model_name}"


def ensure_lock(name: str) -> None:
    """Create the one-slot global concurrency limit ``name`` if the server does not have it."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


@contextlib.contextmanager
def promotion_lock(model_name: str, timeout_seconds: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the model's alias lock for the duration of the ``with`` block."""
    name = promotion_lock_name(model_name)
    ensure_lock(name)
    with concurrency(name, occupy=1, strict=True, timeout_seconds=timeout_seconds):
        yield
