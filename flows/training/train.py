"""Splitting, training, threshold tuning and evaluation: plain functions, no Prefect, no MLflow."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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

from data_contracts.schemas import LABEL_INT, model_frame
from data_contracts.spec import FeatureSpec


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


@dataclass(frozen=True)
class Splits:
    """Train, validation (threshold tuning) and frozen holdout (gates) frames."""

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame


def _hash_rank(ids: pd.Series, salt: str) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per id: the same id always lands the same way."""
    digest = [
        int.from_bytes(hashlib.blake2b(f"{salt}:{v}".encode(), digest_size=8).digest(), "big")
        for v in ids.astype(str)
    ]
    return np.asarray(digest, dtype=np.float64) / 2.0**64


def stratified_hash_split(
    df: pd.DataFrame, id_column: str, fraction: float, salt: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off ``fraction`` of each class, chosen by a hash of the id.

    The choice depends only on the ids, so a transaction stays in the holdout when the data set
    grows or is re-read: the holdout is frozen and exactly stratified.
    """
    rank = _hash_rank(df[id_column], salt)
    take = np.zeros(len(df), dtype=bool)
    labels = df[LABEL_INT].to_numpy()
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        k = round(len(idx) * fraction)
        take[idx[np.argsort(rank[idx], kind="stable")[:k]]] = True
    return df[~take].reset_index(drop=True), df[take].reset_index(drop=True)


class SingleClassError(ValueError):
    """The labelled data has only one class: nothing to learn."""


def check_label_classes(df: pd.DataFrame, spec: FeatureSpec, min_per_class: int = 10) -> None:
    """Stop before training when the label has one class, or too few rows of a class."""
    counts = df[LABEL_INT].value_counts().to_dict()
    pos, neg = int(counts.get(1, 0)), int(counts.get(0, 0))
    if pos == 0 or neg == 0:
        present = spec.label.positive if pos else spec.label.negative
        raise SingleClassError(
            f"label {spec.label.name!r} has a single class ({present!r}, {pos + neg} rows): "
            f"need both {spec.label.positive!r} and {spec.label.negative!r} to train"
        )
    if min(pos, neg) < min_per_class:
        raise SingleClassError(
            f"label {spec.label.name!r}: {pos} positive and {neg} negative rows; at least "
            f"{min_per_class} of each are needed to train, tune and gate"
        )


def split(
    df: pd.DataFrame, spec: FeatureSpec, holdout_fraction: float, validation_fraction: float
) -> Splits:
    """Frozen stratified holdout first, then a stratified validation split of the rest."""
    rest, holdout = stratified_hash_split(df, spec.id_column, holdout_fraction, "holdout")
    train, validation = stratified_hash_split(rest, spec.id_column, validation_fraction, "valid")
    return Splits(train=train, validation=validation, holdout=holdout)


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


def fit(train: pd.DataFrame, spec: FeatureSpec, params: TrainParams) -> Pipeline:
    """Fit the pipeline on the model frame of ``train``."""
    y = train[LABEL_INT].to_numpy(dtype=np.int64)
    if params.cripple:
        y = np.random.default_rng(params.random_state).permutation(y)
    pipeline = build_pipeline(spec, params)
    pipeline.fit(model_frame(train, spec), y)
    return pipeline


def predict_proba(pipeline: Pipeline, df: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Positive-class probability for each row of ``df``."""
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
