"""What one drift check looks at, its thresholds and what it may do: the check's configuration.

:class:`DriftCheckConfig` gathers the flow's parameters (window, drift policy, retraining and
feedback policies) into one value the steps take. Kept apart from the steps: it is the check's
input, which the flow, the tests and the benchmarks build on their own.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from flows.monitoring.performance import FeedbackPolicy
from flows.monitoring.verdict import DriftPolicy
from flows.monitoring.window import Window

DEFAULT_DEPLOYMENT = "train-and-release/fraud-detector"


class RetrainPolicy(BaseModel):
    """Whether and what a drift check may start when drift crosses the threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trigger: bool = Field(True, description="Start train-and-release when drift crosses the line.")
    deployment: str = Field(DEFAULT_DEPLOYMENT, description="The train-and-release deployment.")
    cooldown_hours: float = Field(
        6.0, ge=0, description="No new retraining within this many hours after the last one."
    )


class DriftCheckConfig(BaseModel):
    """What one drift check looks at, its thresholds and what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = "fraud-detector"
    window: Window = Window(hours=24)
    policy: DriftPolicy = DriftPolicy()
    retraining: RetrainPolicy = RetrainPolicy()
    feedback: FeedbackPolicy = FeedbackPolicy()
    labelled_max_rows: int = Field(
        500_000, ge=1, description="Rows of labelled batches to train on."
    )
    only_champion_rows: bool = Field(True, description="Keep window rows served by the champion.")
