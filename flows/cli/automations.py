"""The crashed-run rule: Prefect automations that catch runs whose process died silently.

A run whose worker and flow process die together (host lost, ``kill -9`` of the worker's
process tree) has no one left to report its end: without a rule it stays Running forever.
Flow runs of the pipeline emit a heartbeat event every ``FRAUD_HEARTBEAT_SECONDS`` (Prefect's
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, at least 30 s; ``fraud stack up`` sets it for the
worker). Two automations, created or updated by name (idempotent) at deploy time:

1. ``fraud: crash silent runs`` (proactive): after a heartbeat of a ``train-and-release`` or
   ``drift-check`` run, expect another event of that run (a heartbeat or any state change)
   within ``FRAUD_HEARTBEAT_SILENCE_SECONDS``; when none comes, set the run Crashed with a
   message starting ``Unresponsive:``.
2. ``fraud: alert on silent crashes`` (reactive): a ``train-and-release`` or ``drift-check``
   run entering Crashed *with that message*, or with the message a worker writes when the run's
   container died under it (``Flow run infrastructure exited ...``: a killed or OOM-killed flow
   container of the Docker pool, where no flow hook runs) or never started (``Failed to submit
   flow run to infrastructure ...``: its pipeline image is missing), starts the
   ``failure-alert`` deployment for it, on its own work pool, so the mail does not wait for a
   dead worker. Runs that ended any other way were mailed by their flow hooks
   (``flows.alerting.alerts``); the message filter, and the failure-alert flow skipping a run
   that already has its alert artifact, keep it to one mail per run.

``fraud automations`` creates or updates both (needs the deployment to exist);
``fraud stack deploy`` runs it after deploying ``prefect.yaml``.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.stack.config import HEARTBEAT_SECONDS, HEARTBEAT_SILENCE_SECONDS, PREFECT_MIN_HEARTBEAT

# Prefect is imported where the rules are built, so `fraud automations --help` stays fast.
if TYPE_CHECKING:
    from prefect.events.schemas.automations import AutomationCore

CRASH_RULE = "fraud: crash silent runs"
ALERT_RULE = "fraud: alert on silent crashes"
SILENT_PREFIX = "Unresponsive:"
# what a worker writes when a flow run's infrastructure ended without a final state, or could
# not be started (prefect.workers.base: _submit_run_and_capture_errors)
WORKER_CRASH_PREFIXES = (
    "Flow run infrastructure exited with non-zero status code",
    "Failed to submit flow run to infrastructure",
)


class HeartbeatSettings(BaseSettings):
    """Heartbeat interval, silence threshold and the alert deployment; ``FRAUD_`` env."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", frozen=True, extra="ignore")

    heartbeat_seconds: int = Field(
        HEARTBEAT_SECONDS, ge=PREFECT_MIN_HEARTBEAT, description="Seconds between heartbeats."
    )
    heartbeat_silence_seconds: int = Field(
        HEARTBEAT_SILENCE_SECONDS, description="A run silent this long is marked Crashed."
    )
    alert_deployment: str = Field(
        "failure-alert/fraud-pipeline", description="Deployment that mails silent crashes."
    )

    @model_validator(mode="after")
    def _silence_covers_a_heartbeat(self) -> HeartbeatSettings:
        if self.heartbeat_silence_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"heartbeat_silence_seconds ({self.heartbeat_silence_seconds}) must be longer "
                f"than heartbeat_seconds ({self.heartbeat_seconds}), or every run is crashed"
            )
        return self


def crash_message(settings: HeartbeatSettings) -> str:
    """The state message the rule sets (the alert automation matches its prefix)."""
    return (
        f"{SILENT_PREFIX} no heartbeat for {settings.heartbeat_silence_seconds} s; the worker "
        "or host running this flow run is gone"
    )


def crash_rule(settings: HeartbeatSettings) -> AutomationCore:
    """Mark a watched run Crashed when its heartbeats stop before a final state."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    from flows.alerting.alerts import WATCHED_FLOWS

    return AutomationCore(
        name=CRASH_RULE,
        description="Flow runs of the fraud pipeline that stopped sending heartbeats.",
        enabled=True,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": list(WATCHED_FLOWS)}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=settings.heartbeat_silence_seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=crash_message(settings))],
    )


def alert_rule(deployment_id: UUID) -> AutomationCore:
    """Run the ``failure-alert`` deployment for a watched run that crashed where no flow hook
    could report it: marked Crashed by the crash rule, or by a worker (see the module doc)."""
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    from flows.alerting.alerts import WATCHED_FLOWS

    messages = [f"{prefix}*" for prefix in (SILENT_PREFIX, *WORKER_CRASH_PREFIXES)]
    return AutomationCore(
        name=ALERT_RULE,
        description="Mail the failure alert of runs crashed where no flow hook could report it.",
        enabled=True,
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification(
                {"prefect.resource.id": "prefect.flow-run.*", "prefect.state-message": messages}
            ),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": list(WATCHED_FLOWS)}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                parameters={"flow_run_id": "{{ event.resource.id }}"},
            )
        ],
    )


def upsert(client, automation: AutomationCore) -> UUID:
    """Create the automation, or update the one with its name (extra duplicates removed)."""
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        return client.create_automation(automation)
    keep, *extra = existing
    client.update_automation(keep.id, automation)
    for duplicate in extra:
        client.delete_automation(duplicate.id)
    return keep.id


def ensure_automations(settings: HeartbeatSettings | None = None) -> dict[str, UUID]:
    """Create or update both automations on the Prefect server in ``PREFECT_API_URL``."""
    from prefect.client.orchestration import get_client

    settings = settings or HeartbeatSettings()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(settings.alert_deployment)
        return {
            CRASH_RULE: upsert(client, crash_rule(settings)),
            ALERT_RULE: upsert(client, alert_rule(deployment.id)),
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Describe the command on ``parser`` (it takes no options; settings come from FRAUD_*)."""
    parser.description = (
        __doc__.split("\n\n")[0]
        + f" Creates or updates '{CRASH_RULE}' and '{ALERT_RULE}' on the Prefect server in "
        "PREFECT_API_URL (the failure-alert deployment must exist). Settings: "
        "FRAUD_HEARTBEAT_SECONDS, FRAUD_HEARTBEAT_SILENCE_SECONDS, FRAUD_ALERT_DEPLOYMENT."
    )


def run(args: argparse.Namespace) -> int:
    """Create or update the crashed-run automations and print them; returns the exit code."""
    settings = HeartbeatSettings()
    for name, automation_id in ensure_automations(settings).items():
        print(f"automation '{name}': {automation_id}")
    print(
        f"heartbeat every {settings.heartbeat_seconds} s; silent for "
        f"{settings.heartbeat_silence_seconds} s = Crashed; alerts by {settings.alert_deployment}"
    )
    return 0
