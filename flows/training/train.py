"""Training, threshold tuning and evaluation: plain functions, no Prefect, no MLflow.

The split is in :mod:`flows.training.splitting`, the data checks in
:mod:`flows.training.data_checks`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from data_contracts.schemas import LABEL_INT, model_frame
from data_contracts.spec import FeatureSpec

# The split and the class checks live in their own modules; re-exported for existing callers.
from flows.training.data_checks import SingleClassError as SingleClassError
from flows.training.data_checks import check_label_classes as check_label_classes
from flows.training.splitting import Splits as Splits
from flows.training.splitting import split as split
from flows.training.splitting import stratified_hash_split as stratified_hash_split


class TrainParams(BaseModel):
    """Hyper-parameters of the classifier; ``cripple`` deliberately ruins it (gate tests, demos)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_iter: int = Field(200, ge=1)
    learning_rate: float = Field(0.1, gt=0, le=1)
    max_leaf_nodes: int = Field(31, ge=2)
    min_samples_leaf: int = Field(40, ge=1)
    l2_regularization: float = Field(1.0, ge=0)
    classifier: Literal["hgb", "logistic"] = Field(
        "hgb", description="hgb: gradient-boosted trees; logistic: scaled logistic regression"
    )
    class_weight: str | None = Field("balanced", description="'balanced' or none")
    C: float = Field(1.0, gt=0, description="Inverse regularisation of the logistic model.")
    random_state: int = 42
    cripple: bool = Field(
        False, description="Train on shuffled labels: a candidate that must be blocked."
    )
    calibration: Literal["isotonic", "none"] = Field(
        "isotonic",
        description="isotonic: serve calibrated probabilities (centred isotonic regression "
        "cross-fitted on the training rows, flows.training.calibration); none: the class-"
        "weighted scores as they are (what releases served before)",
    )
    calibration_folds: int | None = Field(
        None,
        ge=2,
        le=10,
        description="Folds of the calibration's cross-fitting; None: as many as the training "
        "rows afford, 3 to 10 (flows.training.calibration.auto_folds)",
    )


def build_pipeline(spec: FeatureSpec, params: TrainParams) -> Pipeline:
    """Imputation (+ scaling for the linear model) and one-hot encoding, then the classifier.

    Unknown categories are ignored by the one-hot encoder; imbalance is handled by class
    weights. Trees get no scaler: they are scale-invariant, and ONNX computes a scaler as
    ``(x - mean) * (1 / scale)`` in float32, whose last-bit differences flip tree splits and
    break parity. Every step converts to ONNX with skl2onnx.
    """
    numeric = [f.name for f in spec.numeric_features]
    categorical = [f.name for f in spec.categorical_features]
    numeric_steps: list[tuple[str, object]] = [("impute", SimpleImputer(strategy="median"))]
    if params.classifier == "logistic":
        numeric_steps.append(("scale", StandardScaler()))
    transformers = []
    if numeric:
        transformers.append(("num", Pipeline(numeric_steps), numeric))
    if categorical:
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
        transformers.append(("cat", encoder, categorical))
    classifier: HistGradientBoostingClassifier | LogisticRegression
    if params.classifier == "logistic":
        classifier = LogisticRegression(C=params.C, class_weight=params.class_weight, max_iter=1000)
    else:
        classifier = HistGradientBoostingClassifier(
            max_iter=params.max_iter,
            learning_rate=params.learning_rate,
            max_leaf_nodes=params.max_leaf_nodes,
            min_samples_leaf=params.min_samples_leaf,
            l2_regularization=params.l2_regularization,
            class_weight=params.class_weight,
            early_stopping=False,
            random_state=params.random_state,
        )
    return Pipeline(
        [("features", ColumnTransformer(transformers, sparse_threshold=0)), ("model", classifier)]
    )


THREADS_ENV = "FRAUD_TRAIN_THREADS"
# below this many rows the trees fit and score on one OpenMP thread (see ``openmp_threads``)
ONE_THREAD_BELOW_ROWS = 200_000


def openmp_threads(rows: int) -> int | None:
    """OpenMP threads for fitting or scoring ``rows`` rows; None: the library's default (all).

    ``FRAUD_TRAIN_THREADS`` sets the number. Otherwise tables under 200,000 rows use one thread:
    the trees synchronise their threads every round, which on small tables costs more than it
    gains and on a busy machine far more (a 25,600-row fit took 6.6 s on one thread and 20.5 s on
    two of a loaded 2-core machine; two such fits at once took over 6 minutes).
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            threads = int(raw)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads >= 1")
        return threads
    return 1 if rows < ONE_THREAD_BELOW_ROWS else None


@contextmanager
def fit_threads(rows: int) -> Iterator[None]:
    """Limit OpenMP (the trees' thread pool) to :func:`openmp_threads` for ``rows`` rows."""
    threads = openmp_threads(rows)
    if threads is None:
        yield
        return
    with threadpool_limits(threads, user_api="openmp"):
        yield


def training_labels(train: pd.DataFrame, params: TrainParams) -> np.ndarray:
    """The labels a model learns from: ``train``'s, shuffled when ``params.cripple``."""
    y = train[LABEL_INT].to_numpy(dtype=np.int64)
    if params.cripple:
        y = np.random.default_rng(params.random_state).permutation(y)
    return y


def fit(train: pd.DataFrame, spec: FeatureSpec, params: TrainParams) -> Pipeline:
    """Fit the (uncalibrated) pipeline on the model frame of ``train``."""
    y = training_labels(train, params)
    pipeline = build_pipeline(spec, params)
    with fit_threads(len(train)):
        pipeline.fit(model_frame(train, spec), y)
    return pipeline


def predict_proba(pipeline: Pipeline, df: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Positive-class probability for each row of ``df``."""
    with fit_threads(len(df)):
        return pipeline.predict_proba(model_frame(df, spec))[:, 1]


def tune_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises F1 on validation data."""
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    f1 = np.where(
        precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0
    )[:-1]
    if len(thresholds) == 0:
        return 0.5
    return float(thresholds[int(np.argmax(f1))])


class Metrics(BaseModel):
    """Scores of one model on one data set at one threshold."""

    model_config = ConfigDict(frozen=True)

    f1: float
    precision: float
    recall: float
    pr_auc: float
    roc_auc: float
    threshold: float
    rows: int
    positives: int
    tn: int
    fp: int
    fn: int
    tp: int


def evaluate(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> Metrics:
    """F1, precision, recall at ``threshold`` plus threshold-free PR-AUC and ROC-AUC."""
    y_pred = (scores >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    return Metrics(
        f1=float(f1_score(y_true, y_pred, zero_division=0)),
        precision=float(precision_score(y_true, y_pred, zero_division=0)),
        recall=float(recall_score(y_true, y_pred, zero_division=0)),
        pr_auc=float(average_precision_score(y_true, scores)) if both else float("nan"),
        roc_auc=float(roc_auc_score(y_true, scores)) if both else float("nan"),
        threshold=float(threshold),
        rows=len(y_true),
        positives=int(np.sum(y_true)),
        tn=int(tn),
        fp=int(fp),
        fn=int(fn),
        tp=int(tp),
    )
