"""Training-data faults stop with a clear reason; a leaky feature is reported (and can block)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_contracts.schemas import LABEL_INT, validate_frame
from data_contracts.spec import FeatureSpec, parse_spec
from flows.registry.tracking import data_check_tags, split_params
from flows.training.data_checks import (
    DataCheckReport,
    LeakageSuspected,
    SingleClassError,
    check_label_varies,
    check_split_classes,
    check_training_data,
    enforce_leakage,
    single_feature_auc,
)
from flows.training.gate import GatePolicy
from flows.training.reporting import release_markdown
from flows.training.splitting import SplitPolicy, Splits, apply_split, split_tags


@pytest.fixture(scope="module")
def valid(spec, small_data) -> pd.DataFrame:
    return validate_frame(small_data.head(12_000), spec).valid


@pytest.fixture(scope="module")
def leaky_spec(spec) -> FeatureSpec:
    """The default spec plus ``chargeback_filed``: written after the fact, it is the label."""
    data = spec.model_dump(mode="json")
    data["features"] = [*data["features"], {"name": "chargeback_filed", "kind": "boolean"}]
    return parse_spec(data)


@pytest.fixture(scope="module")
def leaky_splits(leaky_spec, small_data) -> Splits:
    raw = small_data.head(12_000).copy()
    flip = np.random.default_rng(0).random(len(raw)) < 0.001  # a few filed by mistake
    raw["chargeback_filed"] = (raw["is_fraud"].to_numpy() == 1) ^ flip
    return apply_split(validate_frame(raw, leaky_spec).valid, leaky_spec, SplitPolicy())


@pytest.fixture(scope="module")
def leaky_report(leaky_spec, leaky_splits) -> DataCheckReport:
    return check_training_data(leaky_splits, leaky_spec)


def test_a_constant_label_stops_with_the_reason(spec, valid):
    only_legit = valid[valid[LABEL_INT] == 0]
    with pytest.raises(SingleClassError, match=r"is constant: all [\d,]+ valid rows are 0"):
        check_label_varies(only_legit, spec)
    check_label_varies(valid, spec)  # both classes: passes


def test_a_holdout_period_without_fraud_names_the_part_and_its_period(spec, valid):
    splits = apply_split(valid, spec, SplitPolicy())
    no_fraud = Splits(
        train=splits.train,
        validation=splits.validation,
        holdout=splits.holdout[splits.holdout[LABEL_INT] == 0],
        kind="time",
        boundaries=splits.boundaries,
    )
    with pytest.raises(SingleClassError) as info:
        check_split_classes(no_fraud, spec)
    message = str(info.value)
    assert "the holdout (" in message and splits.boundaries["holdout_min"] in message
    assert "no 1 row" in message and "split.holdout_after" in message


def test_too_few_positives_to_train_stops(spec, valid):
    splits = apply_split(valid, spec, SplitPolicy(kind="hash"))
    train = splits.train
    thin = pd.concat([train[train[LABEL_INT] == 0], train[train[LABEL_INT] == 1].head(4)])
    with pytest.raises(SingleClassError, match=r"4 positive .* in the train"):
        check_split_classes(
            Splits(train=thin, validation=splits.validation, holdout=splits.holdout), spec
        )


def test_a_leaky_feature_is_reported(leaky_report):
    report = leaky_report
    assert report.leaky == ("chargeback_filed",)
    assert report.separation["chargeback_filed"] >= 0.99
    # real signals separate, but nowhere near perfectly
    honest = {k: v for k, v in report.separation.items() if k != "chargeback_filed"}
    assert 0.6 < max(honest.values()) < 0.99
    assert "feature 'chargeback_filed' alone separates the classes" in report.warnings[0]


def test_the_shipped_data_has_no_leak(spec, valid):
    report = check_training_data(apply_split(valid, spec, SplitPolicy()), spec)
    assert report.leaky == () and report.warnings == []


def test_leakage_blocks_only_when_the_policy_says_so(leaky_report):
    report = leaky_report
    enforce_leakage(report, GatePolicy().block_on_leakage)  # default: warn only
    with pytest.raises(LeakageSuspected, match="chargeback_filed"):
        enforce_leakage(report, GatePolicy(block_on_leakage=True).block_on_leakage)


def test_categories_that_are_pure_per_class_count_as_separating():
    spec = parse_spec(
        {
            "name": "toy",
            "label": {"name": "y", "positive": 1, "negative": 0},
            "features": [
                {"name": "status", "kind": "categorical", "categories": ["open", "disputed"]},
                {"name": "noise", "kind": "numeric", "nullable": True},
            ],
        }
    )
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.2
    frame = pd.DataFrame(
        {
            LABEL_INT: y.astype(int),
            "status": np.where(y, "disputed", "open").astype(object),
            "noise": np.where(rng.random(400) < 0.1, np.nan, rng.normal(size=400)),
        }
    )
    auc = single_feature_auc(frame, spec)
    assert auc["status"] == pytest.approx(1.0)
    assert 0.5 <= auc["noise"] < 0.65


def test_the_release_artifact_shows_the_split_and_the_warnings(leaky_splits, leaky_report):
    report = leaky_report
    text = release_markdown(
        model_name="m", decision=None, metrics=None, champion=None, facts={},
        splits=leaky_splits, warnings=report.warnings,
    )  # fmt: skip
    assert "**WARNING: likely leakage: feature 'chargeback_filed'" in text
    assert "| time split | rows | positives | first event | last event |" in text
    b = leaky_splits.boundaries
    assert f"| holdout | {len(leaky_splits.holdout):,} |" in text
    assert f"{b['holdout_min']} | {b['holdout_max']} |" in text


def test_mlflow_records_the_policy_the_split_used_and_the_leaks(leaky_splits, leaky_report):
    params = split_params(SplitPolicy(holdout_fraction=0.25))
    assert params["split.kind"] == "auto" and params["split.holdout_fraction"] == "0.25"
    assert params["split.holdout_after"] == "none"
    tags = split_tags(leaky_splits) | data_check_tags(leaky_report)
    assert tags["split.kind"] == "time"
    assert tags["split.holdout_min"] == leaky_splits.boundaries["holdout_min"]
    assert tags["data_checks.likely_leaks"] == "chargeback_filed"
    assert split_params(None) == {}
    assert data_check_tags(None) == {}
