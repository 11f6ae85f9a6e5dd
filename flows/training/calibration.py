"""Calibrated probabilities: what makes ``fraud_probability`` a probability.

The models are fitted with balanced class weights, which inflates every score (on the synthetic
card data the trees' mean score is 2.6 times the fraud rate; on a generated 3%-fraud table a
balanced logistic regression's is 17 times). A release therefore maps the model's
score through a calibrator learnt on rows the model did not learn from, and serves the mapped
score, inside the same ONNX graph (:func:`flows.training.onnx_export.export_onnx`).

**Where the calibrator learns: cross-fitted on the training rows.** The training rows are split
into stratified folds; a copy of the chosen configuration is fitted on the other folds and
scores each fold, so every training row gets a score from a model that did not see it. The
calibrator learns from those scores, and the model fitted on all training rows (the one served)
is mapped through it. Not the validation part, because (1) the training rows are four times as
many (64% of the table against 16%): on a 10,000-row table with 3% fraud the calibrator sees
about 180 frauds instead of 45, and isotonic regression on 45 is a coarse staircase (on the two
generated tables of ``benchmarks/calibration.py``, scored on 20,000 fresh rows, the validation
fit's ECE was 0.0094 and 0.0264 against 0.0018 and 0.0129 cross-fitted); (2) the validation
part stays untouched for what it is for: the threshold, now tuned on the calibrated scale.

The fold models learn from fewer rows than the served one, and a model that overfits (the
trees' 200 rounds on a few thousand rows) scores more confidently the fewer rows it had: with 3
folds the calibrator then maps the served model's scores too high (10,000-row table: ECE 0.0066,
mean score 0.036 for a fraud rate of 0.031, against 0.0018 with 10 folds, whose models see 90%
of the rows). So the number of folds follows the table (:func:`auto_folds`): as many as fit in
:data:`FOLD_ROW_BUDGET` rows of fitting, between 3 and 10: 10 on small tables, 3 from about
100,000 training rows on, where the fold models' scale is the served one's (200,000 synthetic
rows: holdout ECE 0.0017 with 3). The price is that many extra fits of the chosen configuration
(20 s on 128,000 training rows of a loaded 2-core machine, as much as scikit-learn's
``CalibratedClassifierCV``).

**How it maps: centred isotonic regression on the log-odds.** Pool-adjacent-violators on the
logit of the cross-fitted scores gives blocks with one observed fraud rate each (monotone in the
score); the calibrator interpolates linearly between the blocks' centroids (Oron and Flournoy's
centred isotonic regression), so it is continuous and strictly increasing between the first and
the last centroid (no plateaus that would tie many rows at one score) and flat beyond them
(and beyond log-odds :data:`Z_MAX`, where float32 cannot tell raw scores apart finely enough).
Adjacent blocks are pooled further until no segment is steeper than :data:`MAX_SLOPE` (0.5
probability per unit of log-odds; a logistic curve is at most 0.25 steep): ONNX computes the
graph in float32, and a bounded slope keeps its scores within 1e-4 of scikit-learn's. Log-odds
rather than probabilities because a class weight shifts the log-odds by about a constant, so the
mapping there is smooth and gently sloped.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from data_contracts.schemas import model_frame
from data_contracts.spec import FeatureSpec
from flows.training.train import TrainParams, build_pipeline, fit_threads, training_labels

Method = Literal["isotonic", "none"]
# rows fitted across the calibration's folds (folds - 1 times the training rows) when the
# number of folds is automatic
FOLD_ROW_BUDGET = 200_000
# probability per unit of log-odds: the steepest segment the calibrator may have
MAX_SLOPE = 0.5
# scores are clipped to [EPS, 1 - EPS] before the logit (ONNX clips the log-odds to the knots)
EPS = 1e-12
# log-odds above this (a raw score above 0.99966) count as this: float32, in which ONNX holds the
# score, rounds 1 - p by up to 3e-8, so beyond it the log-odds it computes are too coarse
Z_MAX = 8.0


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1 and capped at :data:`Z_MAX`."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.minimum(np.log(q) - np.log1p(-q), Z_MAX)


class Calibrator(BaseModel):
    """A monotone map from the model's score to a probability: knots in log-odds and values.

    ``rows`` and ``positives`` are the cross-fitted rows it learnt from, ``folds`` how many
    folds scored them.
    """

    model_config = ConfigDict(frozen=True)

    method: Method = "isotonic"
    knots: tuple[float, ...]
    values: tuple[float, ...]
    rows: int
    positives: int
    folds: int

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for raw scores (piecewise linear in the log-odds)."""
        z = logit(scores)
        return np.interp(z, np.asarray(self.knots), np.asarray(self.values))

    def slopes(self) -> np.ndarray:
        """Probability per unit of log-odds on each segment between knots."""
        x, y = np.asarray(self.knots), np.asarray(self.values)
        return np.diff(y) / np.diff(x)

    def describe(self) -> str:
        """One line: how the scores were calibrated, and on how many rows."""
        return (
            f"{self.method} (centred, on log-odds), cross-fitted on {self.rows:,} training rows "
            f"({self.positives:,} positives, {self.folds} folds); {len(self.knots)} knots"
        )


def _blocks(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool-adjacent-violators on distinct scores: per block its rows, positives, sum of z."""
    values, inverse = np.unique(z, return_inverse=True)
    rows = np.bincount(inverse).astype(np.float64)
    pos = np.bincount(inverse, weights=y.astype(np.float64))
    zsum = values * rows
    out_w: list[float] = []
    out_p: list[float] = []
    out_z: list[float] = []
    for w, p, s in zip(rows, pos, zsum, strict=True):
        out_w.append(w)
        out_p.append(p)
        out_z.append(s)
        # pool while the previous block's rate is not below the new one's
        while len(out_w) > 1 and out_p[-2] * out_w[-1] >= out_p[-1] * out_w[-2]:
            w_, p_, s_ = out_w.pop(), out_p.pop(), out_z.pop()
            out_w[-1] += w_
            out_p[-1] += p_
            out_z[-1] += s_
    return np.array(out_w), np.array(out_p), np.array(out_z)


def _cap_slopes(
    w: np.ndarray, p: np.ndarray, s: np.ndarray, max_slope: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool the steepest adjacent pair of blocks until no segment is steeper than the cap."""
    w, p, s = w.copy(), p.copy(), s.copy()
    while len(w) > 1:
        slope = np.diff(p / w) / np.diff(s / w)
        worst = int(np.argmax(slope))
        if slope[worst] <= max_slope:
            break
        w[worst] += w[worst + 1]
        p[worst] += p[worst + 1]
        s[worst] += s[worst + 1]
        w, p, s = (np.delete(a, worst + 1) for a in (w, p, s))
    return w, p, s


def fit_calibrator(
    scores: np.ndarray, y: np.ndarray, *, folds: int, max_slope: float = MAX_SLOPE
) -> Calibrator:
    """Centred isotonic regression of ``y`` on the log-odds of out-of-fold ``scores``."""
    z = logit(scores)
    y = np.asarray(y, dtype=np.int64)
    w, p, s = _cap_slopes(*_blocks(z, y), max_slope)
    knots, values = s / w, p / w
    if len(knots) == 1:  # one block: a constant (two knots keep the graph's shapes simple)
        knots, values = np.array([knots[0], knots[0] + 1.0]), np.repeat(values, 2)
    return Calibrator(
        knots=tuple(float(v) for v in knots),
        values=tuple(float(v) for v in values),
        rows=len(y),
        positives=int(y.sum()),
        folds=folds,
    )


def auto_folds(rows: int, asked: int | None = None) -> int:
    """Folds of the cross-fitting: ``asked``, else as many as :data:`FOLD_ROW_BUDGET` affords
    (``(folds - 1) * rows``), between 3 and 10."""
    if asked is not None:
        return asked
    return int(np.clip(1 + FOLD_ROW_BUDGET // max(rows, 1), 3, 10))


def cross_fitted_scores(
    train: pd.DataFrame, spec: FeatureSpec, params: TrainParams, folds: int
) -> np.ndarray:
    """Each training row's score from a copy of the configuration fitted on the other folds."""
    y = training_labels(train, params)
    x = model_frame(train, spec)
    k = int(min(folds, y.sum(), len(y) - y.sum()))
    if k < 2:
        raise ValueError(f"calibration: {int(y.sum())} positive rows cannot fill {folds} folds")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=params.random_state)
    out = np.full(len(y), np.nan)
    base = build_pipeline(spec, params.model_copy(update={"calibration": "none"}))
    for fit_idx, score_idx in splitter.split(np.zeros(len(y)), y):
        model = clone(base)
        with fit_threads(len(fit_idx)):
            model.fit(x.iloc[fit_idx], y[fit_idx])
            out[score_idx] = model.predict_proba(x.iloc[score_idx])[:, 1]
    return out


class CalibratedModel(ClassifierMixin, BaseEstimator):
    """The fitted pipeline followed by its calibrator: ``predict_proba`` is calibrated.

    ``named_steps`` and ``steps`` are the pipeline's (the classifier stays reachable).
    """

    def __init__(self, pipeline: Pipeline, calibrator: Calibrator) -> None:
        self.pipeline = pipeline
        self.calibrator = calibrator

    @property
    def classes_(self) -> np.ndarray:
        return self.pipeline.classes_

    @property
    def named_steps(self) -> Any:
        return self.pipeline.named_steps

    @property
    def steps(self) -> list[tuple[str, Any]]:
        return self.pipeline.steps

    def fit(self, x: pd.DataFrame, y: np.ndarray) -> CalibratedModel:
        """Not refitted here: :func:`calibrate` builds it from fitted parts."""
        raise NotImplementedError("a CalibratedModel is built by calibrate(), not fitted")

    def raw_proba(self, x: pd.DataFrame) -> np.ndarray:
        """The pipeline's own (uncalibrated) positive-class scores."""
        return self.pipeline.predict_proba(x)[:, 1]

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        """Calibrated class probabilities, (n, 2)."""
        q = self.calibrator.apply(self.raw_proba(x))
        return np.column_stack([1 - q, q])

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return self.classes_[(self.predict_proba(x)[:, 1] >= 0.5).astype(int)]


def calibrate(
    pipeline: Pipeline, train: pd.DataFrame, spec: FeatureSpec, params: TrainParams
) -> Pipeline | CalibratedModel:
    """The fitted ``pipeline`` with a calibrator cross-fitted on ``train`` (``params``' method
    and folds, :func:`auto_folds`); the pipeline itself when ``params.calibration`` is
    ``none``."""
    if params.calibration == "none":
        return pipeline
    folds = auto_folds(len(train), params.calibration_folds)
    scores = cross_fitted_scores(train, spec, params, folds)
    y = training_labels(train, params)
    calibrator = fit_calibrator(scores, y, folds=folds)
    return CalibratedModel(pipeline, calibrator)


def calibrator_of(model: Any) -> Calibrator | None:
    """The model's calibrator, None for a plain (uncalibrated) pipeline."""
    return model.calibrator if isinstance(model, CalibratedModel) else None


def calibrated(model: Any, scores: np.ndarray) -> np.ndarray:
    """Raw scores of the model's pipeline mapped to its calibrated scale (unchanged without)."""
    calibrator = calibrator_of(model)
    return np.asarray(scores, dtype=np.float64) if calibrator is None else calibrator.apply(scores)
