"""What a person reads about a release: plots for MLflow and the Prefect markdown summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: figures are only written to files
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from data_contracts.schemas import LABEL_INT
from flows.training.calibration_report import calibration_markdown, cost_markdown
from flows.training.gate import ChampionScore, Decision, Evidence
from flows.training.search import SearchResult
from flows.training.slices import SliceReport
from flows.training.splitting import PARTS, Splits
from flows.training.train import Metrics


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


def roc_figure(y_true: np.ndarray, scores: np.ndarray, metrics: Metrics) -> Figure:
    """ROC curve on the holdout with the tuned threshold's operating point."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(fpr, tpr, lw=1.5, label=f"ROC-AUC {metrics.roc_auc:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    point = metrics.fp / max(metrics.fp + metrics.tn, 1), metrics.recall
    ax.scatter([point[0]], [point[1]], color="red", zorder=3,
               label=f"threshold {metrics.threshold:.3f}")  # fmt: skip
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Holdout ROC",
           xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def threshold_figure(y_true: np.ndarray, scores: np.ndarray, metrics: Metrics) -> Figure:
    """Precision, recall and F1 on the holdout as the threshold moves; the tuned one marked."""
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.where(precision + recall > 0,
                  2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)  # fmt: skip
    fig, ax = plt.subplots(figsize=(5, 4))
    for values, label in ((precision, "precision"), (recall, "recall"), (f1, "F1")):
        ax.plot(thresholds, values, lw=1.5, label=label)
    ax.axvline(metrics.threshold, color="red", ls="--", lw=1,
               label=f"threshold {metrics.threshold:.3f}")  # fmt: skip
    ax.set(xlabel="score threshold", ylabel="holdout value", title="Threshold trade-off",
           xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def calibration_figure(y_true: np.ndarray, scores: np.ndarray, bins: int = 10) -> Figure:
    """Observed fraud rate per score bin against the mean score (class-weighted models score
    above the base rate by design: the plot shows by how much)."""
    observed, predicted = calibration_curve(y_true, np.clip(scores, 0, 1), n_bins=bins,
                                            strategy="quantile")  # fmt: skip
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(predicted, observed, marker="o", lw=1.5, label="holdout")
    ax.set(xlabel="mean score in bin", ylabel="observed positive rate",
           title=f"Calibration ({bins} quantile bins)", xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def importance_figure(importance: pd.DataFrame) -> Figure:
    """Permutation importance (drop in average precision when a feature is shuffled)."""
    top = importance.head(20).iloc[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(top) + 1.2))
    ax.barh(top["feature"], top["mean"], xerr=top["std"], color="tab:blue")
    ax.set(xlabel="drop in holdout average precision", title="Permutation importance")
    fig.tight_layout()
    return fig


def search_markdown(result: SearchResult, threshold_from: str | None = None) -> list[str]:
    """The model search's ranking as markdown lines: every candidate with its CV score.

    ``threshold_from`` names where the release's threshold came from when it is not the
    search's out-of-fold one (the validation rows, after a search on a sample).
    """
    s = result.settings
    oof = f"{result.oof_rows:,} out-of-fold scores"
    threshold = (
        f"threshold {result.threshold:.4f} from {oof}"
        if threshold_from in (None, oof)
        else f"threshold tuned on {threshold_from} (the folds' models saw a sample; their "
        f"out-of-fold threshold was {result.threshold:.4f})"
    )
    lines = [
        "### Model search",
        "",
        f"preset `{s.preset}`, {result.folds_kind} {s.folds}-fold CV on "
        f"{result.search_rows:,} of {result.train_rows:,} training rows, budget "
        f"{s.budget_seconds:.0f} s, took {result.seconds:.1f} s; winner **{result.winner.name}** "
        f"refitted on all training rows; {threshold}",
        "",
        "| rank | candidate | family | parameters | CV average precision | fit s | status |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rank, c in enumerate(result.ranking, start=1):
        params = ", ".join(f"{k}={v}" for k, v in c.params.items())
        if c.boosting_rounds is not None:
            params += f" (folds stopped at {c.boosting_rounds})"
        score = f"{c.cv_ap_mean:.4f} ± {c.cv_ap_std:.4f}" if c.ok else "n/a"
        name = f"**{c.name}**" if c.name == result.winner.name else c.name
        lines.append(f"| {rank if c.ok else '-'} | {name} | {c.family} | {params} | {score} "
                     f"| {c.fit_seconds:.1f} | {c.status} |")  # fmt: skip
    lines.append("")
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _interval_rows(evidence: Evidence | None) -> list[str]:
    """Table rows with the bootstrap intervals of the F1s and of their difference (the
    champion's on the rows it is compared on, which the last row names)."""
    if evidence is None:
        return []
    boot, paired = evidence.f1, evidence.paired
    champ = boot.champion.text() if boot.champion else ""
    rows = [f"| F1 {boot.level} interval (estimate [low, high]) | {boot.candidate.text()} | "
            f"{champ} |"]  # fmt: skip
    if evidence.comparison is not None and paired.champion is not None:
        rows.append(f"| F1 on the compared rows | {paired.candidate.text()} | "
                    f"{paired.champion.text()} |")  # fmt: skip
    if paired.difference is not None:
        rows.append(f"| F1 candidate minus champion | {paired.difference.text(signed=True)} | |")
    rows.append(f"| bootstrap | {boot.resamples} paired resamples, seed {boot.seed} | |")
    if evidence.compared:
        rows.append(f"| champion compared on | {evidence.compared} | |")
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
    search: SearchResult | None = None,
    threshold_from: str | None = None,
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
            *_interval_rows(evidence),
            f"| precision | {_fmt(metrics.precision)} | |",
            f"| recall | {_fmt(metrics.recall)} | |",
            f"| PR-AUC | {_fmt(metrics.pr_auc)} | |",
            f"| ROC-AUC | {_fmt(metrics.roc_auc)} | |",
            f"| threshold | {_fmt(metrics.threshold)} | |",
            f"| rows / positives | {metrics.rows:,} / {metrics.positives:,} | |",
            "",
        ]
    if evidence is not None and evidence.probability is not None and metrics is not None:
        lines += _probability_sections(evidence, metrics.threshold, champion)
    if splits is not None:
        lines += split_table(splits)
    if evidence is not None and evidence.slices is not None:
        lines += _slice_rows(evidence.slices)
    if search is not None:
        lines += search_markdown(search, threshold_from)
    if facts:
        lines += ["| fact | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in facts.items()]
    return "\n".join(lines) + "\n"


def _probability_sections(
    evidence: Evidence, threshold: float, champion: ChampionScore | None
) -> list[str]:
    """Calibration of both models (on the compared rows when the champion saw some holdout
    rows) and, with costs set, the threshold's expected cost."""
    prob = evidence.probability
    if prob is None:
        return []
    scored = champion is not None and champion.f1 is not None
    name = f"v{champion.version}" if champion is not None and scored else None
    paired = prob.paired_calibration
    lines = calibration_markdown(paired, evidence.candidate_calibration or "not stated", name,
                                 champion.calibration if champion is not None else "")  # fmt: skip
    if prob.calibration_comparison is not None:
        c = prob.calibration.candidate
        lines += [f"Candidate on all {prob.calibration.rows:,} holdout rows: ECE {c.ece.text()}, "
                  f"Brier {c.brier.text()}; compared on {evidence.compared}.", ""]  # fmt: skip
    if prob.cost is not None:
        lines += cost_markdown(prob.cost, evidence.threshold_objective, threshold,
                               evidence.f1_threshold, name)  # fmt: skip
    paired_cost = prob.cost_comparison
    if paired_cost is not None and paired_cost.champion and paired_cost.difference:
        lines += [f"On the {paired_cost.rows:,} compared rows: expected cost per 1,000 candidate "
                  f"{paired_cost.candidate.text()}, champion {paired_cost.champion.text()}, "
                  f"difference {paired_cost.difference.text(True)}.", ""]  # fmt: skip
    return lines


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
