"""Sliced evaluation: which features, per-segment F1 with sizes, MLflow-safe metric names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.utils.validation import _validate_metric_name

from data_contracts.spec import load_spec
from flows.training.slices import (
    MISSING_SEGMENT,
    resolve_slice_features,
    slice_check,
    slice_metrics,
    slice_report,
)

EXAMPLES = "data_contracts/examples/credit_risk.yaml"


def test_default_features_are_the_categorical_ones(spec):
    assert resolve_slice_features(spec, None) == tuple(f.name for f in spec.categorical_features)
    assert resolve_slice_features(spec, ("channel", "channel")) == ("channel",)


def test_a_numeric_slice_feature_is_refused_with_its_kind(spec):
    numeric = spec.numeric_features[0]
    with pytest.raises(ValueError, match=f"slice_features: '{numeric.name}' is "):
        resolve_slice_features(spec, (numeric.name,))


def test_segments_count_rows_and_positives_and_missing_values():
    holdout = pd.DataFrame({"housing": ["own", "own", "rent", None, "rent", "own"]})
    y = np.array([1, 0, 1, 1, 0, 1])
    cand = np.array([1, 0, 0, 1, 0, 1])
    champ = np.array([1, 1, 1, 0, 0, 0])
    report = slice_report(holdout, ("housing",), y, cand, champ, min_positives=2)
    by_value = {s.value: s for s in report.segments}
    assert set(by_value) == {"own", "rent", MISSING_SEGMENT}
    own = by_value["own"]
    assert (own.rows, own.positives, own.candidate_f1, own.judged) == (3, 2, 1.0, True)
    assert own.champion_f1 == 0.5  # one caught, one false alarm, one missed
    assert not by_value["rent"].judged and by_value["rent"].candidate_f1 == 0.0


def test_metric_names_are_valid_for_mlflow_and_distinct():
    spec = load_spec(EXAMPLES)
    values = ["<0", "0<=X<200", ">=200", "radio/tv", ".", "a:b", "a;b"]
    holdout = pd.DataFrame({"checking_status": values})
    y = np.ones(len(values), dtype=np.int64)
    report = slice_report(holdout, ("checking_status",), y, y, y, min_positives=1)
    metrics = slice_metrics(report)
    assert len(metrics) == 4 * len(values)  # f1, champion_f1, rows, positives: none collide
    for name in metrics:
        _validate_metric_name(name)
    assert "slice/checking_status/0__X_200/f1" in metrics
    assert resolve_slice_features(spec, None)[0] == "checking_status"


def test_a_long_list_of_small_segments_is_cut_short():
    values = [f"v{i:02d}" for i in range(12)]
    holdout = pd.DataFrame({"merchant": values})
    y = np.ones(12, dtype=np.int64)
    report = slice_report(holdout, ("merchant",), y, y, y, min_positives=5)
    passed, detail = slice_check(report, 0.1)
    assert passed and detail.endswith("merchant=v09 and 2 more")
    assert detail.startswith("0 segments judged")
