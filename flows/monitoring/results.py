"""The result of one drift check, and the plain-language pieces every view of it shares.

:class:`DriftCheckResult` is what a check found and did (also the flow run's return value).
Beside it are the readings both the Prefect run page (:mod:`flows.monitoring.run_artifacts`)
and the email (:mod:`flows.monitoring.report_mail`) show: the headline, the signals and which
one decided, the retraining action, the facts about labelled feedback and the links. They live
with the model so the two views say the same thing in the same words.

Links are scrubbed with ``flows.alerting.redaction.scrub``: database URLs, credentials in URLs
and the given secrets (the SMTP password) never reach a mailbox or the Prefect UI.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from data_contracts.inference_log import SCORE_COLUMN
from flows.alerting.redaction import scrub
from flows.monitoring.performance import RealizedPerformance
from flows.monitoring.retraining import RetrainAction, RetrainDecision
from flows.monitoring.sampling import Sampling
from flows.monitoring.verdict import ColumnDrift, DriftPolicy, DriftVerdict, Outcome

LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"  # what `make mlflow-ui` serves for the local store


class DriftCheckResult(BaseModel):
    """Everything one drift check found and did (also the flow run's return value)."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    champion_version: str
    champion_run_id: str
    checked_at: datetime
    window: str
    window_id: str
    window_start: datetime | None = None
    window_end: datetime | None = None
    policy: DriftPolicy
    verdict: DriftVerdict
    sampling: Sampling
    columns: list[ColumnDrift] = Field(default_factory=list)
    noise_floor_max: float | None = None
    noise_floor_column: str | None = None
    retrain: RetrainDecision
    manual_command: str
    report_dir: str | None = None
    report_html: str | None = None
    mlflow_run_id: str | None = None
    mlflow_run_url: str | None = None
    flow_run_url: str | None = None
    release_run_url: str | None = None
    problems: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    performance: RealizedPerformance | None = None
    dashboard_url: str | None = None

    @property
    def realized_dropped(self) -> bool:
        return self.performance is not None and self.performance.dropped

    @property
    def drifted(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.drifted]

    def headline(self) -> str:
        """The outcome at a glance (also the email subject without the prefix)."""
        v = self.verdict
        if v.outcome == Outcome.NOT_ENOUGH_DATA:
            return (
                f"not enough data: {self.sampling.window_rows:,} rows in the window "
                f"(minimum {self.policy.min_window_rows:,})"
            )
        share = (
            f"{len(v.features_drifted)}/{v.features_tested} features drifted ({v.drift_share:.0%})"
        )
        score = ", score drifted" if v.score_drifted else ""
        perf = self.performance
        if perf is not None and perf.dropped and perf.f1 is not None:
            drift = "DRIFT" if v.outcome == Outcome.DRIFT else "no input drift"
            return (
                f"REALIZED PERFORMANCE DROPPED: {dropped_text(perf)}; {drift}: {share}{score}; "
                f"retraining {self.retrain.action.value}"
            )
        if v.outcome == Outcome.NO_DRIFT:
            return f"no drift: {share}{score}"
        return f"DRIFT: {share}{score}; retraining {self.retrain.action.value}"


def dropped_text(perf: RealizedPerformance) -> str:
    """What dropped: ``F1 0.31 vs holdout 0.86`` and/or the collapsed calibration."""
    parts = []
    f1_dropped = (
        perf.f1_high is not None
        and perf.champion_f1 is not None
        and perf.f1_high < perf.champion_f1 - perf.tolerance
    )
    if f1_dropped and perf.f1 is not None and perf.champion_f1 is not None:
        parts.append(f"F1 {perf.f1:.3f} vs holdout {perf.champion_f1:.3f}")
    cal = perf.calibration
    if cal is not None and cal.collapsed:
        parts.append(
            f"observed fraud rate {cal.observed_rate:.2%} vs predicted {cal.predicted_rate:.2%}"
        )
    return " and ".join(parts) or "F1 " + fmt_number(perf.f1, 3)


def fmt_number(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals; "n/a" for a missing one."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_p_value(value: float | None) -> str:
    """A p-value in two significant digits; one that underflowed to 0 as "< 1e-300"."""
    if value is None:
        return "n/a"
    return "< 1e-300" if value == 0 else f"{value:.2g}"


def action_text(result: DriftCheckResult) -> str:
    """What was done about retraining, in one sentence."""
    r = result.retrain
    if r.action == RetrainAction.TRIGGERED and r.flow_run_id:
        return (
            f"Started {r.deployment} flow run {r.flow_run_name} ({r.flow_run_id}) on "
            f"{r.data_path}. The candidate still has to pass every gate before it replaces "
            "the champion."
        )
    return f"No retraining started: {r.action.value} ({r.reason})."


class Signal(BaseModel):
    """One signal a drift check judges, and whether it decided this check."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: Literal["decided", "within limits", "not judged", "not measured"]
    detail: str


def signals(result: DriftCheckResult) -> list[Signal]:
    """Input drift, score drift and realized performance, each with its status.

    Realized performance (the served model's F1 on labelled feedback joined to the window)
    decides when it dropped; "not judged" with too few labels, "not measured" without feedback.
    """
    v, policy = result.verdict, result.policy
    if v.outcome == Outcome.NOT_ENOUGH_DATA:
        why = "window below the minimum size"
        judged = [Signal(name="input drift", status="not judged", detail=why),
                  Signal(name="score drift", status="not judged", detail=why)]  # fmt: skip
    else:
        crossed = v.drift_share >= policy.drift_share
        sign = "≥" if crossed else "<"
        share = (
            f"{len(v.features_drifted)} of {v.features_tested} features drifted "
            f"({v.drift_share:.0%} {sign} {policy.drift_share:.0%})"
        )
        score = next((c for c in result.columns if c.column == SCORE_COLUMN), None)
        if score is None or score.statistic is None:
            score_detail = "score not tested"
        else:
            sign = "≥" if score.drifted else "<"
            score_detail = f"{score.method} {score.statistic:.3f} {sign} {score.threshold}"
        judged = [
            Signal(name="input drift", status="decided" if crossed else "within limits",
                   detail=share),
            Signal(name="score drift", status="decided" if v.score_drifted else "within limits",
                   detail=score_detail),
        ]  # fmt: skip
    return [*judged, realized_signal(result.performance)]


def realized_signal(perf: RealizedPerformance | None) -> Signal:
    """The realized-performance signal of a check."""
    name = "realized performance"
    if perf is None or perf.status == "no feedback":
        return Signal(name=name, status="not measured", detail="no labelled feedback yet")
    coverage = f"; label coverage {perf.coverage:.1%} of {perf.scored_rows:,} scored rows"
    status = {"dropped": "decided", "within limits": "within limits"}.get(perf.status, "not judged")
    return Signal(name=name, status=status, detail=perf.detail + coverage)  # type: ignore[arg-type]


def decided_by(result: DriftCheckResult) -> str:
    """Which signals decided, in one line (``score drift``, ``input drift and score drift``)."""
    names = [s.name for s in signals(result) if s.status == "decided"]
    if names:
        return " and ".join(names)
    if result.verdict.outcome == Outcome.NOT_ENOUGH_DATA:
        return "nothing: not enough data for a verdict"
    return "nothing: every signal within its limits"


class Link(BaseModel):
    """Where to look further: the report, the MLflow run, the Prefect runs."""

    model_config = ConfigDict(frozen=True)

    key: str  # a Prefect artifact key: lowercase letters, digits, dashes
    text: str
    url: str
    note: str = ""


def links(result: DriftCheckResult, secrets: Iterable[str] = ()) -> list[Link]:
    """The links of this check (only those it has), scrubbed of credentials and secrets."""
    from pathlib import Path

    out = []
    if result.report_html:
        url = Path(result.report_html).resolve().as_uri()
        note = "on the host that ran the check; also in the MLflow run"
        out.append(Link(key="drift-report", text="full Evidently report", url=url, note=note))
    perf = result.performance
    if perf is not None and perf.report_html:
        url = Path(perf.report_html).resolve().as_uri()
        text = "Evidently classification report of the labelled rows"
        out.append(Link(key="drift-performance-report", text=text, url=url))
    if result.mlflow_run_url:
        note = "reports, charts and metrics of this check"
        if result.mlflow_run_url.startswith(LOCAL_MLFLOW_UI):
            note += "; start the UI with make mlflow-ui"
        text = f"MLflow run {result.mlflow_run_id}"
        out.append(Link(key="drift-mlflow-run", text=text, url=result.mlflow_run_url, note=note))
    if result.dashboard_url:
        text = "drift and realized performance over time (Evidently dashboard)"
        note = "start the UI with make monitor-ui" if "127.0.0.1" in result.dashboard_url else None
        out.append(Link(key="drift-dashboard", text=text, url=result.dashboard_url, note=note))
    if result.flow_run_url:
        text = "this drift-check run in Prefect"
        out.append(Link(key="drift-check-run", text=text, url=result.flow_run_url))
    if result.release_run_url:
        r = result.retrain
        text = f"triggered {r.deployment} run {r.flow_run_name or r.flow_run_id}"
        out.append(Link(key="drift-release-run", text=text, url=result.release_run_url))
    secrets = tuple(secrets)
    return [
        link.model_copy(update={"url": scrub(link.url, secrets), "text": scrub(link.text, secrets)})
        for link in out
    ]


def performance_facts(perf: RealizedPerformance | None) -> list[tuple[str, str]]:
    """Rows of the facts tables (email and Prefect) about labelled feedback (none without it)."""
    if perf is None or perf.status == "no feedback":
        return []
    rows = [
        (
            "Labels",
            f"{perf.labelled:,} of {perf.scored_rows:,} scored rows labelled "
            f"({perf.coverage:.1%}), {perf.positives:,} frauds",
        )
    ]
    if perf.f1 is not None:
        rows.append(
            (
                "Realized",
                f"precision {perf.precision:.3f}, recall {perf.recall:.3f}, F1 {perf.f1:.3f} "
                f"[{perf.f1_low:.3f}, {perf.f1_high:.3f}], PR-AUC "
                + ("n/a" if perf.pr_auc is None else f"{perf.pr_auc:.3f}")
                + (f"; holdout F1 {perf.champion_f1:.3f}" if perf.champion_f1 is not None else ""),
            )
        )
    if perf.calibration is not None:
        rows.append(("Calibration", perf.calibration.detail))
    faults = perf.counts.faults()
    if faults:
        rows.append(("Feedback faults", "; ".join(faults)))
    return rows
