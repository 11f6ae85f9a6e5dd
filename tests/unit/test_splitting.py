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
    rows_learned_from,
    split,
    split_tags,
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


def learned(tags, frame, spec):
    return rows_learned_from(tags, frame, id_column=spec.row_id_column,
                             event_time_column=spec.event_time_column)  # fmt: skip


def test_a_hash_version_is_known_to_have_learned_from_its_train_and_validation_only(spec, valid):
    old = apply_split(valid, spec, SplitPolicy(kind="hash"))
    tags = split_tags(old)
    assert learned(tags, old.holdout, spec).count == 0
    for part in (old.train, old.validation):
        overlap = learned(tags, part, spec)
        assert overlap.seen.all() and "outside it" in overlap.basis


def test_a_hash_version_stays_unseen_on_its_holdout_rows_when_the_data_grows(spec, small_data):
    first = validate_frame(small_data.head(8_000), spec).valid
    grown = validate_frame(small_data.head(12_000), spec).valid
    old = apply_split(first, spec, SplitPolicy(kind="hash"))
    new = apply_split(grown, spec, SplitPolicy(kind="hash"))
    overlap = learned(split_tags(old), new.holdout, spec)
    old_holdout = set(old.holdout["transaction_id"])
    seen_ids = set(new.holdout["transaction_id"][overlap.seen])
    # the rows both holdouts share were never learned from; rows the old version did learn
    # from (its train and validation) are flagged whenever they reach the new holdout
    assert not seen_ids & old_holdout
    old_learned = set(old.train["transaction_id"]) | set(old.validation["transaction_id"])
    assert old_learned & set(new.holdout["transaction_id"]) <= seen_ids


def test_a_hash_champion_learned_from_most_of_a_time_holdout(spec, valid):
    champion = apply_split(valid, spec, SplitPolicy(kind="hash"))
    candidate = apply_split(valid, spec, SplitPolicy(kind="time"))
    overlap = learned(split_tags(champion), candidate.holdout, spec)
    ids = candidate.holdout["transaction_id"]
    assert set(ids[~overlap.seen]) == set(ids) & set(champion.holdout["transaction_id"])
    assert 0.7 < overlap.seen.mean() < 0.9  # about the 80% outside a 20% hash holdout


def test_a_time_version_learned_from_everything_before_its_holdout(spec, valid):
    champion = apply_split(valid, spec, SplitPolicy(kind="time", holdout_fraction=0.2))
    same = learned(split_tags(champion), champion.holdout, spec)
    assert same.count == 0 and "began at" in same.basis
    wider = apply_split(valid, spec, SplitPolicy(kind="time", holdout_fraction=0.4))
    overlap = learned(split_tags(champion), wider.holdout, spec)
    assert overlap.count == len(wider.holdout) - len(champion.holdout)


def test_a_version_without_split_records_cannot_tell(spec, valid):
    splits = apply_split(valid, spec, SplitPolicy(kind="hash"))
    for tags, says in (
        ({}, "no split kind"),
        ({"split.kind": "hash"}, "predates the recorded holdout ranks"),
        ({"split.kind": "time"}, "no holdout start"),
    ):
        overlap = learned(tags, splits.holdout, spec)
        assert overlap.seen is None and overlap.count == 0
        assert says in overlap.basis
    other_ids = rows_learned_from(split_tags(splits), splits.holdout, id_column="_row_id",
                                  event_time_column=None)  # fmt: skip
    assert other_ids.seen is None and "'_row_id'" in other_ids.basis
