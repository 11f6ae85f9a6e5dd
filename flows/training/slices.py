"""Sliced evaluation: holdout F1 per segment of the spec's categorical features, for the candidate
and the champion, each at its own threshold, with the segment's rows and positives.

A fraud team asks how a model does for each card type or channel, not only overall: a candidate
can win on average and still lose badly on one segment. Segments with fewer positives than the
policy's minimum are reported as too small to judge; only the others take part in the check.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from data_contracts.spec import FeatureKind, FeatureSpec
from flows.training.uncertainty import f1_from_counts

MISSING_SEGMENT = "(missing)"
_METRIC_UNSAFE = re.compile(r"[^\w.\- ]")  # what an MLflow metric name may hold, minus ':' and '/'


class Segment(BaseModel):
    """One value of one feature on the holdout: its size and both models' F1 on it."""

    model_config = ConfigDict(frozen=True)

    feature: str
    value: str
    rows: int
    positives: int
    candidate_f1: float
    champion_f1: float | None = None
    judged: bool  # enough positives to compare the two models on it

    @property
    def drop(self) -> float | None:
        """How far the candidate's F1 is below the champion's (negative: above)."""
        return None if self.champion_f1 is None else self.champion_f1 - self.candidate_f1

    @property
    def label(self) -> str:
        return f"{self.feature}={self.value}"


class SliceReport(BaseModel):
    """Per-segment holdout F1 of the candidate (and the champion) over the sliced features."""

    model_config = ConfigDict(frozen=True)

    features: tuple[str, ...]
    min_positives: int
    segments: tuple[Segment, ...]

    @property
    def too_small(self) -> list[Segment]:
        return [s for s in self.segments if not s.judged]


def resolve_slice_features(spec: FeatureSpec, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The features to slice by: the requested ones (checked), else every categorical feature.

    Raises:
        ValueError: a requested name is not a feature of the spec, or is numeric (booleans and
            categoricals have segments; a numeric feature has no natural ones).
    """
    if requested is None:
        return tuple(f.name for f in spec.categorical_features)
    known = {f.name: f for f in spec.features}
    for name in requested:
        if name not in known:
            raise ValueError(
                f"slice_features: {name!r} is not a feature of spec {spec.name!r} "
                f"(its categorical features: {[f.name for f in spec.categorical_features]})"
            )
        if known[name].kind not in (FeatureKind.CATEGORICAL, FeatureKind.BOOLEAN):
            raise ValueError(
                f"slice_features: {name!r} is {known[name].kind.value}; only categorical and "
                "boolean features have segments"
            )
    return tuple(dict.fromkeys(requested))


def _segment_values(column: pd.Series) -> np.ndarray:
    values = column.astype(object).where(column.notna(), MISSING_SEGMENT)
    return values.map(str).to_numpy()


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = np.sum(y & pred)
    return float(f1_from_counts(tp, np.sum(~y & pred), np.sum(y & ~pred)))


def slice_report(
    holdout: pd.DataFrame,
    features: tuple[str, ...],
    y_true: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray | None,
    min_positives: int,
) -> SliceReport:
    """F1 per segment of each feature in ``features`` (decisions are 0/1 per holdout row)."""
    y = np.asarray(y_true).astype(bool)
    cand = np.asarray(candidate).astype(bool)
    champ = None if champion is None else np.asarray(champion).astype(bool)
    if not (len(y) == len(cand) == len(holdout)) or (champ is not None and len(champ) != len(y)):
        raise ValueError("slice_report: labels, decisions and holdout rows must have one length")
    segments = []
    for feature in features:
        if feature not in holdout.columns:
            raise ValueError(f"slice_features: column {feature!r} is missing from the holdout")
        values = _segment_values(holdout[feature])
        for value in sorted(set(values)):
            mask = values == value
            positives = int(y[mask].sum())
            segments.append(
                Segment(
                    feature=feature,
                    value=value,
                    rows=int(mask.sum()),
                    positives=positives,
                    candidate_f1=_f1(y[mask], cand[mask]),
                    champion_f1=None if champ is None else _f1(y[mask], champ[mask]),
                    judged=positives >= min_positives,
                )
            )
    return SliceReport(features=features, min_positives=min_positives, segments=tuple(segments))


def slice_check(report: SliceReport, max_drop: float) -> tuple[bool, str]:
    """Whether no judged segment is more than ``max_drop`` F1 below the champion, and the detail."""
    compared = [s for s in report.segments if s.judged and s.drop is not None]
    labels = [s.label for s in report.too_small]
    small = ", ".join(labels[:10]) + (f" and {len(labels) - 10} more" if len(labels) > 10 else "")
    small_text = (
        f"; too small to judge (< {report.min_positives} positives): {small}" if small else ""
    )
    if not any(s.champion_f1 is not None for s in report.segments):
        return True, "no champion to compare segments with" + small_text
    failed = [s for s in compared if s.drop is not None and s.drop > max_drop]
    if failed:
        ranked = sorted(failed, key=lambda s: -(s.drop or 0))
        worst = "; ".join(
            f"{s.label} F1 {s.candidate_f1:.4f} vs champion {s.champion_f1:.4f} "
            f"(drop {s.drop:.4f}, {s.positives} positives)"
            for s in ranked[:10]  # the reasons go to tags and descriptions: bounded
        )
        if len(ranked) > 10:
            worst += f"; and {len(ranked) - 10} more segments"
        return False, f"worse than the champion by more than {max_drop:.4f} on {worst}" + small_text
    return True, (
        f"{len(compared)} segments judged, none more than {max_drop:.4f} below the champion"
        + small_text
    )


def _metric_part(text: str) -> str:
    part = _METRIC_UNSAFE.sub("_", text).strip() or "_"
    return "_" if set(part) == {"."} else part


def slice_metrics(report: SliceReport) -> dict[str, float]:
    """MLflow metrics ``slice/<feature>/<value>/{f1,champion_f1,rows,positives}``.

    MLflow metric names allow letters, digits, ``_ - . /`` and spaces: other characters of a
    category become ``_``; two values that sanitise alike get the suffix ``_2``, ``_3``, ...
    """
    metrics: dict[str, float] = {}
    seen: dict[str, int] = {}
    for s in report.segments:
        base = f"slice/{_metric_part(s.feature)}/{_metric_part(s.value)}"
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            base = f"{base}_{seen[base]}"
        metrics[f"{base}/f1"] = s.candidate_f1
        metrics[f"{base}/rows"] = float(s.rows)
        metrics[f"{base}/positives"] = float(s.positives)
        if s.champion_f1 is not None:
            metrics[f"{base}/champion_f1"] = s.champion_f1
    return metrics
