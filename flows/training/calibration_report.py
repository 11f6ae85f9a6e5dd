"""What a person reads about the scores as probabilities and about the threshold's cost: the
reliability plot (MLflow) and the markdown sections of the release artifact."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are only written to files
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from flows.training.calibration_evidence import CalibrationEvidence, CostEvidence, Quality
from flows.training.probability_gate import UNRECORDED


def reliability_figure(evidence: CalibrationEvidence, champion: str | None = None) -> Figure:
    """Observed fraud rate against mean score per equal-width bin, candidate and champion,
    with the ECE and Brier of each in the legend (the binning ECE uses)."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfectly calibrated")
    lines: list[tuple[str, Quality | None]] = [
        ("candidate", evidence.candidate),
        (f"champion {champion or ''}".strip(), evidence.champion),
    ]
    for (name, q), marker in zip(lines, ("o", "s"), strict=True):
        if q is None:
            continue
        xs = [b.mean_score for b in q.reliability]
        ys = [b.observed for b in q.reliability]
        label = f"{name}: ECE {q.ece.estimate:.4f}, Brier {q.brier.estimate:.4f}"
        ax.plot(xs, ys, marker=marker, lw=1.5, label=label)
    ax.set(xlabel="mean score in bin", ylabel="observed fraud rate", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Holdout reliability ({evidence.bins} equal-width bins, "
           f"{evidence.rows:,} rows)")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def _q(q: Quality | None, attr: str) -> str:
    return "" if q is None else getattr(q, attr).text()


def calibration_markdown(
    evidence: CalibrationEvidence,
    candidate_calibration: str,
    champion: str | None = None,
    champion_calibration: str = "",
) -> list[str]:
    """The artifact's calibration section: how each model was calibrated, Brier and ECE with
    intervals (and their differences), and the reliability table of both."""
    c, h = evidence.candidate, evidence.champion
    head = "champion" + (f" {champion}" if champion else "")
    lines = [
        "### Calibration: are the scores probabilities?",
        "",
        f"| on {evidence.rows:,} holdout rows | candidate | {head} |",
        "| --- | --- | --- |",
        f"| calibrated | {candidate_calibration} | "
        f"{(champion_calibration or UNRECORDED) if h else ''} |",
        f"| mean score / fraud rate | {c.mean_score:.4f} / {c.observed_rate:.4f} | "
        f"{f'{h.mean_score:.4f} / {h.observed_rate:.4f}' if h else ''} |",
        f"| Brier ({evidence.level}) | {c.brier.text()} | {_q(h, 'brier')} |",
        f"| ECE, {evidence.bins} bins ({evidence.level}) | {c.ece.text()} | {_q(h, 'ece')} |",
    ]
    if evidence.brier_difference is not None and evidence.ece_difference is not None:
        lines += [
            f"| Brier candidate minus champion | {evidence.brier_difference.text(True)} | |",
            f"| ECE candidate minus champion | {evidence.ece_difference.text(True)} | |",
        ]
    lines += ["", "Reliability (mean score -> observed fraud rate, rows; the plot is "
              "`reliability.png` in the MLflow run)", "",
              f"| score bin | candidate | {head} |", "| --- | --- | --- |"]  # fmt: skip
    cand = {b.low: b for b in c.reliability}
    champ = {b.low: b for b in h.reliability} if h else {}
    for low in sorted(set(cand) | set(champ)):
        cells = [
            f"{b.mean_score:.4f} -> {b.observed:.4f} ({b.rows:,})" if b else ""
            for b in (cand.get(low), champ.get(low))
        ]
        lines.append(f"| {low:.1f}-{low + 1 / evidence.bins:.1f} | {cells[0]} | {cells[1]} |")
    return [*lines, ""]


def cost_markdown(
    cost: CostEvidence,
    objective: str,
    threshold: float,
    f1_threshold: float | None,
    champion: str | None = None,
) -> list[str]:
    """The artifact's threshold-and-cost section: the objective, the threshold chosen and the
    one F1 would choose, and the expected cost per 1,000 transactions with intervals."""
    level = f"{cost.confidence * 100:g}%"
    lines = [
        "### Threshold and expected cost",
        "",
        f"objective **{objective}**; {cost.objective}; on {cost.rows:,} holdout rows",
        "",
        "| | candidate | champion" + (f" {champion}" if champion else "") + " |",
        "| --- | --- | --- |",
        f"| threshold ({objective}) | {threshold:.4f} | |",
    ]
    if f1_threshold is not None and f1_threshold != threshold:
        lines.append(f"| threshold F1 would choose | {f1_threshold:.4f} | |")
    champ = cost.champion.text() if cost.champion else ""
    lines.append(f"| expected cost per 1,000 ({level}) | {cost.candidate.text()} | {champ} |")
    if cost.candidate_at_f1_threshold is not None:
        lines.append(
            f"| expected cost per 1,000 at the F1 threshold | "
            f"{cost.candidate_at_f1_threshold:.4f} | |"
        )
    if cost.difference is not None:
        lines.append(f"| candidate minus champion | {cost.difference.text(True)} | |")
    return [*lines, ""]
