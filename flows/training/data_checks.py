"""Faults in labelled training data that make a model meaningless, found before training.

Stops (exceptions with the reason and the numbers):

* the label is constant in the whole data set (nothing to learn);
* a part of the split has one class only (e.g. a time holdout without any fraud);
* the training part has too few rows of a class to train, tune and gate.

Warns (and stops only when the policy says so): a feature that alone separates the classes
almost perfectly on the training rows. Real fraud signals are never that clean; such a feature
usually leaks the label (a chargeback flag, a status written after the fact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from data_contracts.schemas import LABEL_INT
from data_contracts.spec import FeatureSpec
from flows.training.splitting import PARTS, Splits

# Single-feature ROC-AUC (either direction) from which a feature counts as a likely leak.
LEAKAGE_AUC = 0.99
# The leakage check scores at most this many training rows (a stratified sample): enough for
# a stable AUC, cheap on a million rows.
LEAKAGE_SAMPLE_ROWS = 100_000
MIN_PER_CLASS = 10


class TrainingDataError(ValueError):
    """The labelled data cannot give a meaningful model; the message says why."""


class SingleClassError(TrainingDataError):
    """The labelled data (or a part of it) has only one class, or too few of one."""


class LeakageSuspected(TrainingDataError):
    """A feature alone separates the classes almost perfectly and the policy blocks on it."""


def _label_name(spec: FeatureSpec, value: int) -> str:
    return repr(spec.label.positive if value == 1 else spec.label.negative)


def check_label_classes(
    df: pd.DataFrame,
    spec: FeatureSpec,
    min_per_class: int = MIN_PER_CLASS,
    where: str = "the training data",
) -> None:
    """Stop before training when ``df`` has one class, or fewer than ``min_per_class`` rows of
    a class; ``where`` names the rows in the message (e.g. "the holdout")."""
    counts = df[LABEL_INT].value_counts().to_dict()
    pos, neg = int(counts.get(1, 0)), int(counts.get(0, 0))
    if pos == 0 or neg == 0:
        present = spec.label.positive if pos else spec.label.negative
        raise SingleClassError(
            f"label {spec.label.name!r} has a single class in {where} ({present!r}, "
            f"{pos + neg} rows): need both {spec.label.positive!r} and "
            f"{spec.label.negative!r} to train"
        )
    if min(pos, neg) < min_per_class:
        raise SingleClassError(
            f"label {spec.label.name!r}: {pos} positive and {neg} negative rows in {where}; at "
            f"least {min_per_class} of each are needed to train, tune and gate"
        )


def check_label_varies(df: pd.DataFrame, spec: FeatureSpec) -> None:
    """Stop when the label has the same value in every valid row: nothing to learn from."""
    values = df[LABEL_INT].unique()
    if len(df) and len(values) == 1:
        raise SingleClassError(
            f"label {spec.label.name!r} is constant: all {len(df):,} valid rows are "
            f"{_label_name(spec, int(values[0]))}; the data set holds no "
            f"{_label_name(spec, 1 - int(values[0]))} row, so there is nothing to learn "
            "(check the export's filter and the label column)"
        )


def _period(splits: Splits, part: str) -> str:
    if f"{part}_min" not in splits.boundaries:
        return f"the {part}"
    b = splits.boundaries
    return f"the {part} ({b[f'{part}_min']} .. {b[f'{part}_max']})"


def check_split_classes(
    splits: Splits, spec: FeatureSpec, min_per_class: int = MIN_PER_CLASS
) -> None:
    """Stop when the training part is too thin, or a validation or holdout part has one class.

    A time split can leave the most recent period without a single fraud; the message names
    the part and its period so the user can move the cut-off.
    """
    check_label_classes(splits.train, spec, min_per_class, _period(splits, "train"))
    for part in PARTS[1:]:
        frame = getattr(splits, part)
        present = frame[LABEL_INT].unique()
        if len(present) < 2:
            missing = 1 if (len(present) == 0 or present[0] == 0) else 0
            hint = (
                "; move split.holdout_after or raise the fraction" if splits.kind == "time" else ""
            )
            raise SingleClassError(
                f"label {spec.label.name!r}: {_period(splits, part)} has {len(frame):,} rows "
                f"and no {_label_name(spec, missing)} row, so it cannot "
                f"{'tune a threshold' if part == 'validation' else 'judge the model'}{hint}"
            )


def _stratified_sample(df: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    if len(df) <= rows:
        return df
    return (
        df.groupby(LABEL_INT, group_keys=False)
        .sample(frac=rows / len(df), random_state=seed)
        .reset_index(drop=True)
    )


def single_feature_auc(
    df: pd.DataFrame, spec: FeatureSpec, max_rows: int = LEAKAGE_SAMPLE_ROWS, seed: int = 0
) -> dict[str, float]:
    """ROC-AUC of each feature alone, in its better direction (0.5: useless, 1.0: perfect).

    Numbers score by their value (missing values as one lowest bucket); categories and
    booleans by their class's positive rate on the same rows. Computed on a stratified sample
    of at most ``max_rows`` rows. NaN when the rows hold one class only.
    """
    sample = _stratified_sample(df, max_rows, seed)
    y = sample[LABEL_INT].to_numpy(dtype=np.int64)
    out: dict[str, float] = {}
    for feature in spec.features:
        if len(np.unique(y)) < 2:
            out[feature.name] = float("nan")
            continue
        column = sample[feature.name]
        if feature.is_numeric:
            x = column.to_numpy(dtype=np.float64)
            missing = np.isnan(x)
            low = np.nanmin(x) - 1.0 if (~missing).any() else 0.0
            score = np.where(missing, low, x)
        else:
            keys = column.astype(object).where(column.notna(), "\0missing")
            rate = pd.Series(y, index=sample.index).groupby(keys.to_numpy()).mean()
            score = keys.map(rate).to_numpy(dtype=np.float64)
        auc = float(roc_auc_score(y, score))
        out[feature.name] = max(auc, 1.0 - auc)
    return out


@dataclass(frozen=True)
class DataCheckReport:
    """What the checks found in the training part: single-feature separation and likely leaks."""

    separation: dict[str, float]
    leaky: tuple[str, ...] = ()
    threshold: float = LEAKAGE_AUC
    rows_checked: int = 0

    @property
    def warnings(self) -> list[str]:
        """One readable line per likely leak (empty when none)."""
        return [
            f"likely leakage: feature {name!r} alone separates the classes with ROC-AUC "
            f"{self.separation[name]:.4f} (>= {self.threshold:.2f}) on "
            f"{self.rows_checked:,} training rows"
            for name in self.leaky
        ]


def check_training_data(
    splits: Splits,
    spec: FeatureSpec,
    *,
    leakage_auc: float = LEAKAGE_AUC,
    min_per_class: int = MIN_PER_CLASS,
) -> DataCheckReport:
    """Stop on class faults (:class:`SingleClassError`), then report features that leak.

    The leakage check runs on the training rows only: the model learns from them, and the
    holdout stays untouched for the gates.
    """
    check_split_classes(splits, spec, min_per_class)
    separation = single_feature_auc(splits.train, spec)
    leaky = tuple(
        name for name, auc in sorted(separation.items(), key=lambda kv: -kv[1])
        if auc >= leakage_auc
    )  # fmt: skip
    rows = min(len(splits.train), LEAKAGE_SAMPLE_ROWS)
    return DataCheckReport(separation=separation, leaky=leaky, threshold=leakage_auc,
                           rows_checked=rows)  # fmt: skip


def enforce_leakage(report: DataCheckReport, block: bool) -> None:
    """Raise :class:`LeakageSuspected` when a feature leaks and the policy blocks on it."""
    if block and report.leaky:
        raise LeakageSuspected(
            "the release is blocked on suspected leakage (policy.block_on_leakage):\n- "
            + "\n- ".join(report.warnings)
            + "\nDrop the feature from the spec, or set block_on_leakage false to release with "
            "a warning."
        )
