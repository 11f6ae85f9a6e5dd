"""Small PNG charts for the drift email and the report folder, drawn with matplotlib (Agg).

The distributions are computed once, in the analysis, from the reference and window samples the
check already holds (no extra read): shares per bin (numbers; the outer bins hold the 0.5 %
tails on each side) or per category (the largest eight, the rest as ``other``), so both sides
compare whatever their sizes. The history chart draws the series of :data:`SERIES` over the
recent checks (:mod:`flows.monitoring.history`); a new signal is one more entry there.

Charts are 600x300 px at 100 dpi, quantised to a 64-colour palette and optimised: about 15-30 KB
each instead of the 5 MB Evidently HTML. Figures are built with ``matplotlib.figure.Figure`` and
the Agg canvas, never pyplot, so no global backend or figure state is touched.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from data_contracts.inference_log import SCORE_COLUMN
from flows.monitoring.verdict import ColumnDrift, DriftPolicy

WIDTH_IN, HEIGHT_IN, DPI = 6.0, 3.0, 100
BINS = 30
MAX_CATEGORIES = 8
DISCRETE_MAX = 25  # integer features with at most this many values are drawn as bars
TAIL = 0.005
PALETTE_COLOURS = 64
REFERENCE_COLOUR, WINDOW_COLOUR = "#7f8c8d", "#c0392b"


class Distribution(BaseModel):
    """One column's reference and window distribution as shares of rows."""

    model_config = ConfigDict(frozen=True)

    column: str
    kind: str
    labels: list[str]
    edges: list[float] | None = None  # numbers: bin edges (one more than labels)
    reference: list[float]
    current: list[float]
    reference_rows: int
    current_rows: int


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c) / total if total else 0.0 for c in counts]


def _categorical(
    column: str, kind: str, ref: pd.Series, cur: pd.Series, by_value: bool = False
) -> Distribution:
    """Shares per value: the largest first (the rest as ``other``), or every value in order."""
    ref_share = ref.dropna().value_counts(normalize=True)
    cur_share = cur.dropna().value_counts(normalize=True)
    both = pd.concat([ref_share, cur_share], axis=1).fillna(0.0)
    if by_value:
        both = both.sort_index()
    else:
        both = both.loc[both.max(axis=1).sort_values(ascending=False).index]
    if not by_value and len(both) > MAX_CATEGORIES:
        top, rest = both.iloc[: MAX_CATEGORIES - 1], both.iloc[MAX_CATEGORIES - 1 :]
        both = pd.concat([top, rest.sum().to_frame("other").T])
    return Distribution(
        column=column,
        kind=kind,
        labels=[str(i) for i in both.index],
        reference=[float(v) for v in both.iloc[:, 0]],
        current=[float(v) for v in both.iloc[:, 1]],
        reference_rows=int(ref.notna().sum()),
        current_rows=int(cur.notna().sum()),
    )


def distribution(column: str, kind: str, ref: pd.Series, cur: pd.Series) -> Distribution:
    """Shares per bin (numbers) or per category of one column on both sides."""
    if kind in ("categorical", "boolean"):
        return _categorical(column, kind, ref, cur)
    r = pd.to_numeric(ref, errors="coerce").dropna().to_numpy(float)
    c = pd.to_numeric(cur, errors="coerce").dropna().to_numpy(float)
    both = np.concatenate([r, c])
    values = np.unique(both) if len(both) else both
    if kind == "integer" and 0 < len(values) <= DISCRETE_MAX:
        ints = pd.Series(r.astype(int)), pd.Series(c.astype(int))
        return _categorical(column, kind, *ints, by_value=True)
    if column == SCORE_COLUMN:
        lo, hi = 0.0, 1.0
    elif len(both):
        lo, hi = (float(q) for q in np.quantile(both, [TAIL, 1 - TAIL]))
    else:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, BINS + 1)
    ref_counts, _ = np.histogram(np.clip(r, lo, hi), edges)
    cur_counts, _ = np.histogram(np.clip(c, lo, hi), edges)
    return Distribution(
        column=column,
        kind=kind,
        labels=[f"{edges[i]:.4g}" for i in range(BINS)],
        edges=[float(e) for e in edges],
        reference=_shares(ref_counts),
        current=_shares(cur_counts),
        reference_rows=len(r),
        current_rows=len(c),
    )


def distributions(
    reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str]
) -> dict[str, Distribution]:
    """The distribution of every column in ``kinds`` (from the samples the analysis used)."""
    return {
        column: distribution(column, kind, reference[column], current[column])
        for column, kind in kinds.items()
        if column in reference.columns and column in current.columns
    }


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class Chart:
    """One PNG chart: a stable name, its title, a text description (alt and plain text)."""

    name: str
    title: str
    alt: str
    png: bytes


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def to_png(fig: Any) -> bytes:
    """The figure as an optimised palette PNG of exactly 600x300 px."""
    from PIL import Image

    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=DPI)
    image = Image.open(raw).convert("RGB").quantize(colors=PALETTE_COLOURS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _style(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)


def _verdict(drift: ColumnDrift | None) -> str:
    if drift is None or drift.statistic is None:
        return ""
    if drift.threshold is None:
        return f": {drift.statistic:.3f}"
    sign, mark = ("≥", "drift") if drift.drifted else ("<", "ok")
    return f": {drift.statistic:.3f} {sign} {drift.threshold:g} ({mark})"


def render_distribution(dist: Distribution, drift: ColumnDrift | None = None) -> Chart:
    """Reference vs window of one column: step histograms (numbers) or paired bars."""
    fig, ax = _figure()
    ref_label = f"reference ({dist.reference_rows:,} rows)"
    cur_label = f"window ({dist.current_rows:,} rows)"
    if dist.edges is not None:
        edges = np.asarray(dist.edges)
        ax.stairs(dist.reference, edges, fill=True, color=REFERENCE_COLOUR, alpha=0.45,
                  label=ref_label)  # fmt: skip
        ax.stairs(dist.current, edges, color=WINDOW_COLOUR, linewidth=1.8, label=cur_label)
        ax.set_xlim(edges[0], edges[-1])
    else:
        x = np.arange(len(dist.labels))
        ax.bar(x - 0.2, dist.reference, 0.4, color=REFERENCE_COLOUR, label=ref_label)
        ax.bar(x + 0.2, dist.current, 0.4, color=WINDOW_COLOUR, label=cur_label)
        ax.set_xticks(x, [label[:14] for label in dist.labels],
                      rotation=25 if len(dist.labels) > 4 else 0, ha="right"
                      if len(dist.labels) > 4 else "center")  # fmt: skip
    _style(ax)
    ax.set_ylabel("share of rows", fontsize=8)
    ax.yaxis.set_major_formatter(_percent())
    ax.legend(fontsize=7, frameon=False, loc="best")
    title = f"{dist.column}{_verdict(drift)}"
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
    fig.tight_layout(pad=0.6)
    shift = f": {drift.shift}" if drift is not None and drift.shift else ""
    stat = ""
    if drift is not None and drift.statistic is not None:
        stat = f" ({drift.method} {drift.statistic:.3f}, threshold {drift.threshold})"
    alt = f"{dist.column}, reference vs window{shift}{stat}"
    return Chart(name=f"dist-{dist.column}", title=title.strip(), alt=alt, png=to_png(fig))


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


# ---------------------------------------------------------------------------------------------
# History


@dataclass(frozen=True)
class Series:
    """One line of the history chart: a value each check records, and its threshold."""

    key: str
    label: str
    colour: str
    threshold: Callable[[DriftPolicy], float | None]


SERIES: tuple[Series, ...] = (
    Series("drift_share", "share of drifted features", "#2c3e50", lambda p: p.drift_share),
    Series(
        f"drift.{SCORE_COLUMN}",
        "score drift (statistic)",
        "#c0392b",
        lambda p: p.score_threshold or p.column_threshold or 0.1,
    ),
)


@dataclass(frozen=True)
class HistoryPoint:
    """One earlier (or this) check as the history chart reads it."""

    checked_at: datetime
    outcome: str
    values: dict[str, float]


def render_history(
    points: Sequence[HistoryPoint], policy: DriftPolicy, series: Sequence[Series] = SERIES
) -> Chart:
    """Every series of ``series`` over the checks, thresholds dashed, drift checks marked."""
    fig, ax = _figure()
    ordered = sorted(points, key=lambda p: p.checked_at)
    x = np.arange(len(ordered))
    top = 1.0
    for s in series:
        ys = np.array([p.values.get(s.key, np.nan) for p in ordered], dtype=float)
        if np.all(np.isnan(ys)):
            continue
        ax.plot(x, ys, marker="o", markersize=4, linewidth=1.6, color=s.colour, label=s.label)
        drift = np.array([p.outcome == "drift" for p in ordered])
        ax.scatter(x[drift], ys[drift], s=42, facecolors="none", edgecolors=s.colour, zorder=3)
        line = s.threshold(policy)
        if line is not None:
            ax.axhline(line, color=s.colour, linestyle="--", linewidth=0.9, alpha=0.7)
        top = max(top, float(np.nanmax(ys)) * 1.1, (line or 0) * 1.1)
    ax.set_ylim(0, top)
    ticks = x[:: -(-len(x) // 6)] if len(x) else x  # at most 6 labels
    ax.set_xticks(ticks, [f"{ordered[i].checked_at:%m-%d\n%H:%M}" for i in ticks], fontsize=7)
    if len(x) == 1:
        ax.set_xlim(-0.5, 0.5)
    _style(ax)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    checks = f"{len(ordered)} check{'s' if len(ordered) != 1 else ''}"
    title = f"last {checks} (dashed: thresholds; circled: drift)"
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
    fig.tight_layout(pad=0.6)
    parts = []
    for s in series:
        values = [p.values[s.key] for p in ordered if s.key in p.values]
        if values:
            parts.append(f"{s.label}: " + ", ".join(f"{v:.2f}" for v in values))
    alt = f"Recent checks, oldest first. {'; '.join(parts)}."
    return Chart(name="history", title=title, alt=alt, png=to_png(fig))


def top_columns(columns: Sequence[ColumnDrift], limit: int) -> list[ColumnDrift]:
    """The most drifted features (largest statistic first), at most ``limit``, then the score."""
    features = [c for c in columns if c.column != SCORE_COLUMN and c.statistic is not None]
    drifted = sorted((c for c in features if c.drifted), key=lambda c: -(c.statistic or 0))
    score = [c for c in columns if c.column == SCORE_COLUMN]
    return [*drifted[:limit], *score]


def draw_charts(
    dists: dict[str, Distribution],
    columns: Sequence[ColumnDrift],
    history: Sequence[HistoryPoint],
    policy: DriftPolicy,
    top: int = 3,
) -> list[Chart]:
    """The email's charts: the history of recent checks, then the top drifted columns + score."""
    charts = [render_history(history, policy)] if history else []
    for drift in top_columns(columns, top):
        if drift.column in dists:
            charts.append(render_distribution(dists[drift.column], drift))
    return charts
