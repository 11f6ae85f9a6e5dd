"""The audit log of alias moves (release, rollback), kept in MLflow as one run per move.

Each move is a finished run in the ``release-audit`` experiment whose tags say when, which model,
from which version to which, why, and by whom (flow run or user). Runs are append-only, so the
log survives concurrent writers and is browsable in the MLflow UI.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict

from flows.core.settings import Settings

AUDIT_EXPERIMENT = "release-audit"


class AliasMove(BaseModel):
    """One move of an alias."""

    model_config = ConfigDict(frozen=True)

    time: datetime
    model_name: str
    alias: str
    action: str
    from_version: str | None
    to_version: str
    reason: str
    actor: str

    def line(self) -> str:
        """One readable line for the history command."""
        old = f"v{self.from_version}" if self.from_version else "(none)"
        return (
            f"{self.time:%Y-%m-%d %H:%M:%S}Z  {self.action:<8} {self.model_name}@{self.alias}: "
            f"{old} -> v{self.to_version}  by {self.actor}  ({self.reason})"
        )


def _experiment_id(client: MlflowClient, settings: Settings) -> str:
    exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    location = settings.artifact_root.resolve().as_uri() if settings.uses_local_mlflow else None
    try:
        return client.create_experiment(AUDIT_EXPERIMENT, artifact_location=location)
    except MlflowException:
        exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
        if exp is None:
            raise
        return exp.experiment_id


def default_actor() -> str:
    """Who acts when no flow run does: the local user name."""
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def record_move(
    client: MlflowClient,
    settings: Settings,
    *,
    model_name: str,
    alias: str,
    action: str,
    from_version: str | None,
    to_version: str,
    reason: str,
    actor: str,
) -> str:
    """Append one alias move to the audit log; returns the audit run id."""
    move = AliasMove(
        time=datetime.now(UTC),
        model_name=model_name,
        alias=alias,
        action=action,
        from_version=from_version,
        to_version=to_version,
        reason=reason,
        actor=actor,
    )
    run = client.create_run(
        _experiment_id(client, settings),
        run_name=f"{action} {model_name}@{alias} v{from_version or '-'} -> v{to_version}",
        tags={
            "audit.time": move.time.isoformat(),
            "audit.model_name": model_name,
            "audit.alias": alias,
            "audit.action": action,
            "audit.from_version": from_version or "",
            "audit.to_version": to_version,
            "audit.reason": reason[:4900],
            "audit.actor": actor,
        },
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def history(client: MlflowClient, model_name: str) -> list[AliasMove]:
    """Every recorded alias move of ``model_name``, oldest first."""
    exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`audit.model_name` = '{model_name}'",
        max_results=10_000,
    )
    moves = [
        AliasMove(
            time=datetime.fromisoformat(r.data.tags["audit.time"]),
            model_name=model_name,
            alias=r.data.tags["audit.alias"],
            action=r.data.tags["audit.action"],
            from_version=r.data.tags["audit.from_version"] or None,
            to_version=r.data.tags["audit.to_version"],
            reason=r.data.tags["audit.reason"],
            actor=r.data.tags["audit.actor"],
        )
        for r in runs
    ]
    return sorted(moves, key=lambda m: m.time)
