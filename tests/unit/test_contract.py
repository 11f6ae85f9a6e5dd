"""Each kind of contract violation is caught, reported with its row, and quarantined."""

import numpy as np
import pandas as pd
import pytest

from data_contracts.schemas import (
    LABEL_INT,
    REASON_COLUMN,
    ROW_COLUMN,
    model_frame,
    serving_schema,
    training_schema,
    validate_frame,
)
from data_contracts.spec import MISSING_CATEGORY


@pytest.fixture
def clean(small_data):
    return small_data.head(200).copy()


def test_valid_data_passes_untouched(spec, clean):
    result = validate_frame(clean, spec)
    assert result.fatal_errors == []
    assert result.quarantined_rows == 0
    assert len(result.valid) == len(clean)
    assert result.valid[LABEL_INT].tolist() == clean["is_fraud"].tolist()


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("amount", "twelve", "amount: 'twelve' is not a number"),
        ("amount", -5.0, "amount: greater_than_or_equal_to(0.0)"),
        ("hour_of_day", 24, "hour_of_day: less_than_or_equal_to(23.0)"),
        ("hour_of_day", 3.5, "hour_of_day: whole number"),
        ("channel", "fax", "channel: isin"),
        ("credit_limit", None, "credit_limit: not_nullable"),
        ("amount_to_avg_ratio", np.inf, "amount_to_avg_ratio: finite number"),
        ("amount", np.nan, "amount: not_nullable"),
        ("card_present", "sometimes", "card_present: 'sometimes' is not a boolean"),
        ("is_fraud", "maybe", "is_fraud: 'maybe' is not a label value"),
        ("event_time", "yesterday-ish", "event_time: 'yesterday-ish' is not a time"),
    ],
)
def test_each_violation_kind_is_quarantined_with_its_row(spec, clean, column, value, reason):
    bad = clean.copy()
    bad[column] = bad[column].astype(object)
    bad.loc[7, column] = value
    result = validate_frame(bad, spec)
    assert result.fatal_errors == []
    assert result.quarantine[ROW_COLUMN].tolist() == [7]
    assert reason in result.quarantine[REASON_COLUMN].iloc[0]
    assert len(result.valid) == len(clean) - 1
    assert sum(result.failures_by_check.values()) == 1


def test_duplicate_id_keeps_the_first_and_quarantines_the_rest(spec, clean):
    bad = clean.copy()
    bad.loc[[5, 9], "transaction_id"] = bad.loc[3, "transaction_id"]
    result = validate_frame(bad, spec)
    assert result.quarantine[ROW_COLUMN].tolist() == [5, 9]
    assert all("field_uniqueness" in r for r in result.quarantine[REASON_COLUMN])


def test_unknown_category_is_allowed_where_the_spec_says_so(spec, clean):
    data = clean.copy()
    data.loc[4, "merchant_category"] = "casino"  # allow_unknown_categories: true
    assert validate_frame(data, spec).quarantined_rows == 0


def test_nullable_feature_accepts_null(spec, clean):
    data = clean.copy()
    data.loc[4, "device_type"] = None
    data.loc[5, "distance_from_home_km"] = np.nan
    assert validate_frame(data, spec).quarantined_rows == 0


def test_every_failing_row_and_column_is_reported_lazily(spec, clean):
    bad = clean.copy()
    bad.loc[1, "amount"] = -1.0
    bad.loc[2, "hour_of_day"] = 99
    bad.loc[2, "channel"] = "fax"
    result = validate_frame(bad, spec)
    assert result.quarantine[ROW_COLUMN].tolist() == [1, 2]
    row2 = result.quarantine[REASON_COLUMN].iloc[1]
    assert "hour_of_day" in row2 and "channel" in row2


def test_missing_column_is_fatal(spec, clean):
    result = validate_frame(clean.drop(columns=["amount"]), spec)
    assert result.fatal_errors == ["column 'amount': missing from the data"]
    assert len(result.valid) == 0


def test_wrong_column_type_is_fatal(spec, clean):
    bad = clean.copy()
    bad["account_age_days"] = "recently"
    result = validate_frame(bad, spec)
    assert any("'account_age_days': no value is a number" in e for e in result.fatal_errors)


def test_quarantine_keeps_raw_values_as_text(spec, clean):
    bad = clean.copy()
    bad["amount"] = bad["amount"].astype(object)
    bad.loc[3, "amount"] = "12,50 EUR"
    q = validate_frame(bad, spec).quarantine
    assert q["amount"].iloc[0] == "12,50 EUR"
    assert q["transaction_id"].iloc[0] == clean.loc[3, "transaction_id"]


def test_extra_columns_are_reported_not_silently_used(spec, clean):
    data = clean.assign(internal_score=1.0)
    result = validate_frame(data, spec)
    assert result.dropped_columns == ["internal_score"]
    assert "internal_score" not in result.valid.columns
    assert "internal_score" in result.summary()


def test_string_labels_with_a_named_positive_class(spec, clean):
    data = spec.model_dump(mode="json")
    data["label"] = {"name": "outcome", "positive": "bad", "negative": "good"}
    from data_contracts.spec import parse_spec

    other = parse_spec(data)
    frame = clean.drop(columns=["is_fraud"]).assign(
        outcome=np.where(clean["is_fraud"] == 1, "bad", "good")
    )
    frame.loc[0, "outcome"] = " Bad "
    result = validate_frame(frame, other)
    assert result.quarantined_rows == 0
    assert result.valid[LABEL_INT].iloc[0] == 1


def test_schemas_are_derived_from_the_spec(spec):
    assert list(serving_schema(spec).columns) == spec.feature_names
    training = training_schema(spec)
    assert set(spec.feature_names) <= set(training.columns)
    assert spec.id_column in training.columns


def test_model_frame_pins_order_and_types(spec, clean):
    data = clean.copy()
    data.loc[0, "device_type"] = None
    valid = validate_frame(data, spec).valid
    frame = model_frame(valid.iloc[:, ::-1], spec)
    assert list(frame.columns) == spec.feature_names
    assert frame["device_type"].iloc[0] == MISSING_CATEGORY
    assert all(frame[f.name].dtype == np.float32 for f in spec.numeric_features)
    assert isinstance(frame["channel"].iloc[0], str)


def test_quarantine_share(spec, clean):
    bad = clean.copy()
    bad.loc[:19, "amount"] = -1.0
    result = validate_frame(bad, spec)
    assert result.quarantined_share == pytest.approx(20 / len(clean))
    assert "20 quarantined" in result.summary()
    assert isinstance(result.quarantine, pd.DataFrame)
