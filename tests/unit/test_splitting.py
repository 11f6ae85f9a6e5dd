"""The split policy: id hash or the most recent period, with its kind and period boundaries."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
from pydantic import ValidationError

from data_contracts.schemas import LABEL_INT, validate_frame
from data_contracts.spec import FeatureSpec, parse_spec
from flows.training.splitting import (
    SplitError,
    SplitPolicy,
    apply_split,
    describe,
    resolve_kind,
    split,
)


@pytest.fixture(scope="module")
def valid(spec, small_data) -> pd.DataFrame:
    return validate_frame(small_data.head(10_000), spec).valid


def no_time(spec: FeatureSpec) -> FeatureSpec:
    return parse_spec(spec.model_dump(mode="json") | {"event_time_column": None})


def test_auto_means_time_with_an_event_time_and_hash_without(spec):
    assert resolve_kind(SplitPolicy(), spec) == "time"
    assert resolve_kind(SplitPolicy(), no_time(spec)) == "hash"
    assert resolve_kind(SplitPolicy(kind="hash"), spec) == "hash"


def test_time_without_an_event_time_column_is_refused_by_name(spec):
    with pytest.raises(SplitError, match="needs an event_time_column"):
        resolve_kind(SplitPolicy(kind="time"), no_time(spec))
    with pytest.raises(SplitError, match="holdout_after"):
        resolve_kind(SplitPolicy(holdout_after=datetime(2026, 1, 20)), no_time(spec))


def test_policy_settings_are_checked():
    with pytest.raises(ValidationError, match="holdout_after"):
        SplitPolicy(kind="hash", holdout_after="2026-01-20")
    with pytest.raises(ValidationError, match="holdout_fraction"):
        SplitPolicy(holdout_fraction=1.0)
    # a date without a zone is UTC
    assert SplitPolicy(holdout_after="2026-01-20").holdout_after == datetime(
        2026, 1, 20, tzinfo=UTC
    )


def test_time_split_holds_out_the_most_recent_period(spec, valid):
    splits = apply_split(valid, spec, SplitPolicy())
    t = spec.event_time_column
    assert splits.kind == "time"
    assert splits.train[t].max() < splits.validation[t].min()
    assert splits.validation[t].max() < splits.holdout[t].min()
    assert len(splits.holdout) == pytest.approx(0.2 * len(valid), abs=5)
    assert len(splits.validation) == pytest.approx(0.2 * 0.8 * len(valid), abs=5)
    assert sum(len(p) for p in (splits.train, splits.validation, splits.holdout)) == len(valid)
    assert splits.boundaries["holdout_min"] == splits.holdout[t].min().isoformat()
    assert splits.boundaries["train_max"] == splits.train[t].max().isoformat()
    assert splits.holdout[t].is_monotonic_increasing
    assert "time split: train" in describe(splits)


def test_time_split_does_not_depend_on_row_order(spec, valid):
    a = apply_split(valid, spec, SplitPolicy()).holdout
    shuffled = valid.sample(frac=1.0, random_state=2).reset_index(drop=True)
    b = apply_split(shuffled, spec, SplitPolicy()).holdout
    assert a["transaction_id"].tolist() == b["transaction_id"].tolist()


def test_rows_at_the_same_instant_stay_in_one_part(spec, valid):
    t = spec.event_time_column
    clumped = valid.copy()
    clumped[t] = clumped[t].dt.floor("D")  # whole days: many rows share a boundary instant
    splits = apply_split(clumped, spec, SplitPolicy())
    assert splits.validation[t].max() < splits.holdout[t].min()
    assert splits.train[t].max() < splits.validation[t].min()


def test_a_cut_off_date_sets_the_holdout(spec, valid):
    cut = "2026-01-25T00:00:00Z"
    splits = apply_split(valid, spec, SplitPolicy(holdout_after=cut))
    t = spec.event_time_column
    assert (splits.holdout[t] >= pd.Timestamp(cut)).all()
    assert (pd.concat([splits.train, splits.validation])[t] < pd.Timestamp(cut)).all()
    assert len(splits.holdout) == int((valid[t] >= pd.Timestamp(cut)).sum())


def test_a_cut_off_after_the_data_says_the_holdout_would_be_empty(spec, valid):
    with pytest.raises(SplitError, match=r"holdout_after.*the holdout would be empty"):
        apply_split(valid, spec, SplitPolicy(holdout_after="2027-01-01"))
    with pytest.raises(SplitError, match="nothing is left before the holdout"):
        apply_split(valid, spec, SplitPolicy(holdout_after="2025-01-01"))


def test_hash_policy_is_the_frozen_stratified_split(spec, valid):
    splits = apply_split(valid, spec, SplitPolicy(kind="hash"))
    assert splits.kind == "hash"
    legacy = split(valid, spec, 0.2, 0.2)
    assert splits.holdout["transaction_id"].tolist() == legacy.holdout["transaction_id"].tolist()
    rates = [p[LABEL_INT].mean() for p in (splits.train, splits.validation, splits.holdout)]
    assert max(rates) - min(rates) < 0.003
    # the periods are recorded for a hash split too (they overlap: the split is not by time)
    assert splits.boundaries["holdout_min"] < splits.boundaries["train_max"]


def test_a_spec_without_event_time_records_no_boundaries(spec, valid):
    splits = apply_split(valid.drop(columns=spec.event_time_column), no_time(spec), SplitPolicy())
    assert splits.kind == "hash" and splits.boundaries == {}
