"""What a person reads about a release: plots for MLflow and the Prefect markdown summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: figures are only written to files
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from data_contracts.schemas import LABEL_INT
from flows.training.gate import ChampionScore, Decision
from flows.training.slices import SliceReport
from flows.training.splitting import PARTS, Splits
from flows.training.train import Metrics
from flows.training.uncertainty import F1Bootstrap


def pr_curve_figure(y_true: np.ndarray, scores: np.ndarray, metrics: Metrics) -> Figure:
    """Precision-recall curve on the holdout with the tuned threshold's operating point."""
    precision, recall, _ = precision_recall_curve(y_true, scores)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall, precision, lw=1.5, label=f"PR-AUC {metrics.pr_auc:.3f}")
    ax.scatter([metrics.recall], [metrics.precision], color="red", zorder=3,
               label=f"threshold {metrics.threshold:.3f}, F1 {metrics.f1:.3f}")  # fmt: skip
    ax.set(xlabel="recall", ylabel="precision", title="Holdout precision-recall", xlim=(0, 1),
           ylim=(0, 1.02))  # fmt: skip
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def confusion_figure(metrics: Metrics) -> Figure:
    """Confusion matrix on the holdout at the tuned threshold."""
    cells = np.array([[metrics.tn, metrics.fp], [metrics.fn, metrics.tp]])
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.imshow(cells, cmap="Blues")
    for (i, j), value in np.ndenumerate(cells):
        ax.text(j, i, f"{value:,}", ha="center", va="center",
                color="white" if value > cells.max() / 2 else "black")  # fmt: skip
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["legit", "fraud"],
           yticklabels=["legit", "fraud"], xlabel="predicted", ylabel="actual",
           title=f"Holdout at threshold {metrics.threshold:.3f}")  # fmt: skip
    fig.tight_layout()
    return fig


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _interval_rows(boot: F1Bootstrap | None) -> list[str]:
    """Table rows with the bootstrap intervals of the F1s and of their difference."""
    if boot is None:
        return []
    champ = boot.champion.text() if boot.champion else ""
    rows = [f"| F1 {boot.level} interval (estimate [low, high]) | {boot.candidate.text()} | "
            f"{champ} |"]  # fmt: skip
    if boot.difference is not None:
        rows.append(f"| F1 candidate minus champion | {boot.difference.text(signed=True)} | |")
    rows.append(f"| bootstrap | {boot.resamples} paired resamples, seed {boot.seed} | |")
    return rows


def _slice_rows(report: SliceReport) -> list[str]:
    """The per-segment table: each segment's size and both models' F1."""
    lines = [
        f"Holdout F1 by segment of {', '.join(report.features)} (segments with fewer than "
        f"{report.min_positives} positives are too small to judge)",
        "",
        "| segment | rows | positives | candidate F1 | champion F1 | candidate - champion "
        "| judged |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    escaped_bar = "\\|"  # a "|" inside a category would end the markdown cell
    for s in report.segments:
        drop = "" if s.drop is None else f"{-s.drop:+.4f}"
        lines.append(
            f"| {s.label.replace('|', escaped_bar)} | {s.rows:,} | {s.positives:,} | "
            f"{_fmt(s.candidate_f1)} | "
            f"{_fmt(s.champion_f1) if s.champion_f1 is not None else ''} | {drop} | "
            f"{'yes' if s.judged else 'too small to judge'} |"
        )
    return [*lines, ""]


def release_markdown(
    *,
    model_name: str,
    decision: Decision | None,
    metrics: Metrics | None,
    champion: ChampionScore | None,
    facts: dict[str, Any],
    stopped: str | None = None,
    refused: str | None = None,
    splits: Splits | None = None,
    warnings: Sequence[str] = (),
) -> str:
    """The Prefect artifact of a train-and-release run: outcome first, then the numbers
    (with the split used and its periods, and the data checks' warnings)."""
    if stopped:
        head = f"## {model_name}: STOPPED before training\n\n{stopped}\n"
    elif refused:
        head = f"## {model_name}: NOT PROMOTED (v{facts.get('version')} registered)\n\n"
        head += f"{refused}\n"
    elif decision is not None and decision.promote:
        head = f"## {model_name}: PROMOTED to champion (v{facts.get('version')})\n"
    else:
        head = f"## {model_name}: BLOCKED (v{facts.get('version')} registered, alias unchanged)\n"
        if decision is not None:
            head += "\n" + "\n".join(f"- {r}" for r in decision.reasons) + "\n"
    lines = [head]
    lines += [f"**WARNING: {w}**\n" for w in warnings]
    if str(facts.get("image", "")).startswith("NOT BUILT"):
        lines.append(f"**IMAGE {facts['image']}**\n")
    if decision is not None:
        lines += ["| check | passed | detail |", "| --- | --- | --- |"]
        lines += [
            f"| {c.name} | {'yes' if c.passed else '**no**'} | {c.detail} |"
            for c in decision.checks
        ]
        lines.append("")
    evidence = decision.evidence if decision is not None else None
    if metrics is not None:
        champ = champion.f1 if champion else None
        lines += [
            "| holdout metric | candidate | champion |",
            "| --- | --- | --- |",
            f"| F1 | {_fmt(metrics.f1)} | {_fmt(champ)} |",
            *_interval_rows(evidence.f1 if evidence else None),
            f"| precision | {_fmt(metrics.precision)} | |",
            f"| recall | {_fmt(metrics.recall)} | |",
            f"| PR-AUC | {_fmt(metrics.pr_auc)} | |",
            f"| ROC-AUC | {_fmt(metrics.roc_auc)} | |",
            f"| threshold | {_fmt(metrics.threshold)} | |",
            f"| rows / positives | {metrics.rows:,} / {metrics.positives:,} | |",
            "",
        ]
    if splits is not None:
        lines += split_table(splits)
    if evidence is not None and evidence.slices is not None:
        lines += _slice_rows(evidence.slices)
    if facts:
        lines += ["| fact | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in facts.items()]
    return "\n".join(lines) + "\n"


def split_table(splits: Splits) -> list[str]:
    """Markdown lines: the split kind, and each part's rows, positives and event-time period
    (the period columns only when the spec has an event-time column)."""
    b = splits.boundaries
    head = f"| {splits.kind} split | rows | positives |"
    lines = [head + (" first event | last event |" if b else ""), "| --- " * (5 if b else 3) + "|"]
    for name in PARTS:
        part = getattr(splits, name)
        positives = int(part[LABEL_INT].sum()) if LABEL_INT in part else 0
        row = f"| {name} | {len(part):,} | {positives:,} |"
        if b:
            row += f" {b.get(f'{name}_min', 'n/a')} | {b.get(f'{name}_max', 'n/a')} |"
        lines.append(row)
    return [*lines, ""]
