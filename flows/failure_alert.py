"""The ``failure-alert`` Prefect flow: mail the alert of a run that crashed where no hook ran.

Started by the automation "fraud: alert on silent crashes" (``flows.cli.automations``) for runs
the heartbeat rule marked Crashed, or whose flow container died or never started, on its own
work pool, never scheduled; the report and the mail are built by ``flows.alerting.alerts``.
A run that already has its ``failure-alert`` artifact is skipped: one mail per run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.orchestration import get_client

from flows.alerting.alerts import alert_for_run, flow_run_id_of, wait_for_final_state


@flow(
    name="failure-alert",
    log_prints=True,
    persist_result=True,
    result_serializer="json",
    description="Mail the failure alert of a run that crashed where no flow hook could report it.",
)
def failure_alert(flow_run_id: str) -> dict[str, Any]:
    """Mail the alert of a Failed or Crashed run unless one was already sent.

    Args:
        flow_run_id: the run's id, bare or as the event resource ``prefect.flow-run.<id>``.
    """
    run_id = flow_run_id_of(flow_run_id)
    with get_client(sync_client=True) as client:
        run = wait_for_final_state(client, run_id)
        flow_name = client.read_flow(run.flow_id).name
    state = run.state
    if state is None or not (state.is_failed() or state.is_crashed()):
        name = state.name if state else "without a state"
        return {"flow_run_id": str(run_id), "status": "skipped", "detail": f"run is {name}"}
    delivery = alert_for_run(run, flow_name, state, skip_if_alerted=True)
    return {"flow_run_id": str(run_id), **delivery.model_dump(exclude={"outbox_path"})}
