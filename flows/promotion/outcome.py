"""How a train-and-release run ends: the outcome's name, its data and the final Prefect state.

Pure functions, so the flow only wires them: ``refused`` (the champion moved while gating),
``unchanged`` (a rerun found its version already champion), else the gate's ``promote`` or
``blocked``.
"""

from __future__ import annotations

from typing import Any

from prefect.states import Completed, State

from flows.training.gate import ChampionScore, Decision


def outcome_name(decision: Decision, *, refused: str | None, unchanged: bool) -> str:
    """``refused``, ``unchanged``, or the gate's outcome."""
    return "refused" if refused else "unchanged" if unchanged else decision.outcome


def outcome_data(
    *,
    model_name: str,
    version: str,
    run_id: str,
    decision: Decision,
    holdout_f1: float,
    champion: ChampionScore | None,
    refused: str | None,
    unchanged: bool,
) -> dict[str, Any]:
    """The run's result (JSON): what was registered and what became of it."""
    name = outcome_name(decision, refused=refused, unchanged=unchanged)
    return {
        "model_name": model_name,
        "version": version,
        "run_id": run_id,
        "outcome": name,
        "reasons": [refused] if refused else decision.reasons,
        "holdout_f1": holdout_f1,
        "holdout_f1_interval": (
            [decision.evidence.f1.candidate.low, decision.evidence.f1.candidate.high]
            if decision.evidence
            else None
        ),
        "f1_vs_champion": (
            decision.evidence.paired.difference_text() if decision.evidence else None
        ),
        "champion_version": version if name == "promote" else (champion and champion.version),
    }


def final_state(outcome: dict[str, Any], decision: Decision) -> State:
    """The flow run's final state: Completed, or the named Refused / Unchanged / Blocked."""
    name, version = outcome["model_name"], outcome["version"]
    if outcome["outcome"] == "refused":
        return Completed(name="Refused", message=outcome["reasons"][0], data=outcome)
    if outcome["outcome"] == "unchanged":
        return Completed(
            name="Unchanged", message=f"{name} v{version} is already the champion", data=outcome
        )
    if decision.promote:
        return Completed(message=f"{name} v{version} promoted to champion", data=outcome)
    return Completed(
        name="Blocked",
        message=f"{name} v{version} blocked: " + "; ".join(decision.reasons),
        data=outcome,
    )
