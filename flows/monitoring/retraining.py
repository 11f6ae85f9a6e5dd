"""Whether a drift check starts train-and-release, and starting it at most once.

The decision is a pure function of the verdict, the recent runs of the train-and-release
deployment and the clock: a run that is scheduled, pending or running means "already
retraining"; one that finished within the cooldown means "cooldown". The trigger itself passes an
idempotency key made of the deployment and the window id, so a repeated trigger for the same
window (a retried flow, two checks racing) returns the same flow run instead of a second one.

Retraining reads labelled data, not the inference log: in card fraud, labels (chargebacks) arrive
weeks after the prediction. Labelled batches land as Parquet or CSV files in
``Settings().labelled_root``; the newest batches are concatenated (newest first, up to
``max_rows``) into one training file that train-and-release validates against the contract
like any other data set.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from flows.monitoring.verdict import Outcome

ACTIVE_STATES = frozenset({"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"})
BATCH_SUFFIXES = (".parquet", ".pq", ".csv")


TRIGGER_TAG = "drift-triggered"  # on every train-and-release run started by a drift check


class RetrainAction(StrEnum):
    """What the drift check did about retraining."""

    TRIGGERED = "triggered"
    ALREADY_RETRAINING = "already retraining"
    COOLDOWN = "cooldown"
    NOT_NEEDED = "not needed"
    NOT_ENOUGH_DATA = "not enough data"
    DISABLED = "disabled"
    NO_LABELLED_DATA = "no labelled data"
    FAILED = "trigger failed"


class RecentRun(BaseModel):
    """A flow run of the train-and-release deployment, as far as the decision needs it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    state: str  # Prefect state type: SCHEDULED, RUNNING, COMPLETED, ...
    end_time: datetime | None = None
    tags: tuple[str, ...] = ()

    @property
    def triggered_by_drift(self) -> bool:
        return TRIGGER_TAG in self.tags


class RetrainDecision(BaseModel):
    """The retraining decision with its reason, and the run it started when it did."""

    model_config = ConfigDict(frozen=True)

    action: RetrainAction
    reason: str
    deployment: str
    idempotency_key: str | None = None
    data_path: str | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None

    @property
    def should_trigger(self) -> bool:
        return self.action == RetrainAction.TRIGGERED and self.flow_run_id is None


def idempotency_key(deployment: str, window: str) -> str:
    """The key that makes a trigger for the same window idempotent."""
    return f"drift-retrain:{deployment}:{window}"


def decide_retraining(
    *,
    outcome: Outcome,
    retrain_wanted: bool,
    enabled: bool,
    recent: list[RecentRun],
    now: datetime,
    cooldown: timedelta,
    window: str,
    deployment: str,
    has_labelled_data: bool,
    why: str = "drift crossed the threshold",
) -> RetrainDecision:
    """Decide whether to start retraining (pure: no I/O); the reason says why or why not."""

    def result(action: RetrainAction, reason: str) -> RetrainDecision:
        key = idempotency_key(deployment, window) if action == RetrainAction.TRIGGERED else None
        return RetrainDecision(
            action=action, reason=reason, deployment=deployment, idempotency_key=key
        )

    if outcome == Outcome.NOT_ENOUGH_DATA:
        return result(RetrainAction.NOT_ENOUGH_DATA, "not enough data for a verdict")
    if not retrain_wanted:
        return result(RetrainAction.NOT_NEEDED, "drift below the retraining threshold")
    if not enabled:
        return result(RetrainAction.DISABLED, "retraining trigger is switched off for this run")
    active = [r for r in recent if r.state in ACTIVE_STATES]
    if active:
        run = active[0]
        return result(
            RetrainAction.ALREADY_RETRAINING,
            f"{deployment} run {run.name} ({run.id}) is {run.state.lower()}",
        )
    # any release in progress blocks a new one; the cooldown follows drift-triggered retrainings
    # only, so a hand-started release does not silence the monitoring
    finished = [
        r
        for r in recent
        if r.triggered_by_drift and r.end_time is not None and now - r.end_time < cooldown
    ]
    if finished:
        run = max(finished, key=lambda r: r.end_time or now)
        until = (run.end_time or now) + cooldown
        return result(
            RetrainAction.COOLDOWN,
            f"{deployment} run {run.name} ({run.id}) ended {run.state.lower()} at "
            f"{run.end_time:%Y-%m-%d %H:%M} UTC; cooldown until {until:%Y-%m-%d %H:%M} UTC",
        )
    if not has_labelled_data:
        return result(RetrainAction.NO_LABELLED_DATA, "no labelled batch has landed yet")
    return result(RetrainAction.TRIGGERED, why)


def labelled_batches(folder: Path) -> list[Path]:
    """Labelled batch files in ``folder``, newest first (by modification time, then name)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in BATCH_SUFFIXES]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def assemble_training_data(folder: Path, dest: Path, max_rows: int) -> Path | None:
    """Concatenate the newest labelled batches (up to ``max_rows``) into one Parquet file.

    Returns None when no batch has landed. The file name carries nothing secret; it is passed
    to train-and-release as ``data_path``.
    """
    from flows.core.tables import load_table

    frames, rows = [], 0
    for path in labelled_batches(folder):
        frame = load_table(path)
        frames.append(frame)
        rows += len(frame)
        if rows >= max_rows:
            break
    if not frames:
        return None
    data = pd.concat(frames, ignore_index=True).head(max_rows)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".parquet.tmp")
    data.to_parquet(tmp, index=False)
    tmp.replace(dest)
    return dest


def manual_command(deployment: str, data_path: str | None) -> str:
    """The command a person runs to start the same retraining by hand.

    Without labelled data the command trains on the deployment's default data path.
    """
    param = f" --param data_path={data_path}" if data_path else ""
    return f"uv run prefect deployment run '{deployment}'{param} --watch"


def recent_runs(deployment: str, limit: int = 20) -> list[RecentRun]:
    """The newest runs of ``deployment`` from the Prefect API (empty if it is not deployed)."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return []
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )
    return [
        RecentRun(
            id=str(r.id),
            name=r.name,
            state=r.state.type.value if r.state else "UNKNOWN",
            end_time=r.end_time,
            tags=tuple(r.tags or ()),
        )
        for r in runs
    ]


def trigger(decision: RetrainDecision, data_path: Path) -> RetrainDecision:
    """Start the deployment without waiting (``timeout=0``) with the window's idempotency key."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run = run_deployment(
            decision.deployment,
            parameters={"data_path": str(data_path)},
            timeout=0,
            idempotency_key=decision.idempotency_key,
            tags=[TRIGGER_TAG],
            as_subflow=False,
        )
    except ObjectNotFound as err:
        raise LookupError(f"deployment {decision.deployment!r} is not deployed") from err
    return decision.model_copy(
        update={"flow_run_id": str(run.id), "flow_run_name": run.name, "data_path": str(data_path)}
    )
