"""What the model relies on: permutation importance of the spec's features on unseen rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from data_contracts.schemas import LABEL_INT, model_frame
from data_contracts.spec import FeatureSpec
from flows.training.train import fit_threads


def feature_importance(
    pipeline: Pipeline,
    rows: pd.DataFrame,
    spec: FeatureSpec,
    *,
    max_rows: int = 5_000,
    repeats: int = 3,
    seed: int = 0,
) -> pd.DataFrame | None:
    """Drop in average precision when each feature is shuffled, most important first.

    Measured on at most ``max_rows`` of ``rows`` (the holdout: rows the model never saw), every
    positive kept up to half of them (a rare class would otherwise vanish from the sample),
    ``repeats`` shuffles per feature, so its cost is bounded by ``features * repeats``
    predictions of ``max_rows`` rows whatever the table's size. Columns: ``feature``, ``mean``,
    ``std``; None when the rows hold a single class (nothing to rank by; the gate says why).
    """
    labels = rows[LABEL_INT].to_numpy()
    positives, negatives = rows[labels == 1], rows[labels == 0]
    if positives.empty or negatives.empty:
        return None
    if len(rows) > max_rows:
        keep = min(len(positives), max_rows // 2)
        positives = positives.sample(n=keep, random_state=seed)
        negatives = negatives.sample(n=min(len(negatives), max_rows - keep), random_state=seed)
    sample = pd.concat([positives, negatives])
    y = sample[LABEL_INT].to_numpy(dtype=np.int64)
    with fit_threads(len(sample)):
        result = permutation_importance(
            pipeline,
            model_frame(sample, spec),
            y,
            scoring="average_precision",
            n_repeats=repeats,
            random_state=seed,
        )
    table = pd.DataFrame(
        {
            "feature": spec.feature_names,
            "mean": result.importances_mean,
            "std": result.importances_std,
        }
    )
    return table.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)
