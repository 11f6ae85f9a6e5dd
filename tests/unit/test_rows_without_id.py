"""Tables without an id column: optional ``id_column``, content-derived row ids, and a release."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from bento.request_model import build_request_model
from data_contracts.schemas import LABEL_INT, validate_frame
from data_contracts.spec import DERIVED_ID_COLUMN, FeatureSpec, load_spec, parse_spec
from flows.training.data_checks import check_training_data
from flows.training.release import train_candidate
from flows.training.reporting import split_table
from flows.training.splitting import SplitPolicy, apply_split
from flows.training.train import TrainParams

EXAMPLES = Path(__file__).resolve().parents[2] / "data_contracts" / "examples"


def without_id(spec: FeatureSpec) -> FeatureSpec:
    data = spec.model_dump(mode="json")
    data.pop("id_column")
    return parse_spec(data)


@pytest.fixture(scope="module")
def id_less(spec) -> FeatureSpec:
    return without_id(spec)


@pytest.fixture(scope="module")
def id_less_data(small_data) -> pd.DataFrame:
    return small_data.drop(columns="transaction_id").head(6000)


def test_a_spec_with_an_id_keeps_its_hash(spec):
    # the hash the shipped spec was registered with before id_column became optional
    assert spec.spec_hash() == "dc27af42b0acb75f"
    assert '"id_column":"transaction_id"' in spec.canonical_json()


def test_a_spec_without_an_id_leaves_the_key_out_of_its_hash(spec, id_less):
    assert id_less.id_column is None
    assert "id_column" not in id_less.canonical_json()
    assert id_less.spec_hash() != spec.spec_hash()
    assert id_less.row_id_column == DERIVED_ID_COLUMN
    assert spec.row_id_column == "transaction_id"


def test_the_derived_id_name_is_reserved(spec):
    data = spec.model_dump(mode="json")
    data["id_column"] = DERIVED_ID_COLUMN
    with pytest.raises(ValidationError, match="reserved for the derived row id"):
        parse_spec(data)


def test_id_less_rows_get_unique_ids_and_nothing_is_quarantined_as_duplicate(id_less, id_less_data):
    repeated = pd.concat([id_less_data, id_less_data.head(3)], ignore_index=True)
    result = validate_frame(repeated, id_less)
    assert result.fatal_errors == [] and result.quarantined_rows == 0
    ids = result.valid[DERIVED_ID_COLUMN]
    assert ids.is_unique
    # the three repeats share the content hash of the rows they repeat, one occurrence later
    first, again = ids.iloc[:3].tolist(), ids.iloc[-3:].tolist()
    assert [i.rsplit("-", 1)[0] for i in first] == [i.rsplit("-", 1)[0] for i in again]
    assert [i.rsplit("-", 1)[1] for i in again] == ["1", "1", "1"]


def test_ids_follow_the_content_not_the_order_or_the_file_format(id_less, id_less_data):
    ids = validate_frame(id_less_data, id_less).valid[DERIVED_ID_COLUMN]
    shuffled = id_less_data.sample(frac=1.0, random_state=3)
    again = validate_frame(shuffled.reset_index(drop=True), id_less).valid[DERIVED_ID_COLUMN]
    assert set(ids) == set(again)
    # a CSV round trip (integers written as 3, times as text) gives the same ids
    text = io.StringIO()
    id_less_data.to_csv(text, index=False)
    text.seek(0)
    from_csv = validate_frame(pd.read_csv(text), id_less).valid[DERIVED_ID_COLUMN]
    assert from_csv.tolist() == ids.tolist()


def test_changing_a_value_changes_the_id(id_less, id_less_data):
    changed = id_less_data.copy()
    changed.loc[0, "amount"] = changed.loc[0, "amount"] + 0.01
    a = validate_frame(id_less_data, id_less).valid[DERIVED_ID_COLUMN]
    b = validate_frame(changed, id_less).valid[DERIVED_ID_COLUMN]
    assert a.iloc[0] != b.iloc[0] and a.iloc[1:].tolist() == b.iloc[1:].tolist()


def test_quarantine_report_names_rows_by_source_row_and_derived_id(id_less, id_less_data):
    broken = id_less_data.copy()
    broken.loc[5, "amount"] = -1.0
    result = validate_frame(broken, id_less)
    q = result.quarantine
    assert q["_source_row"].tolist() == [5]
    assert q[DERIVED_ID_COLUMN].str.fullmatch(r"[0-9a-f]{16}-\d+").all()
    assert "amount" in q["_quarantine_reason"].iloc[0]


def test_an_id_column_in_the_data_is_ignored_without_an_id_in_the_spec(id_less, small_data):
    result = validate_frame(small_data.head(500), id_less)
    assert result.fatal_errors == []
    assert "transaction_id" in result.dropped_columns
    assert "transaction_id" not in result.valid.columns


def test_the_hash_split_is_frozen_by_the_derived_id(id_less, id_less_data):
    valid = validate_frame(id_less_data, id_less).valid
    policy = SplitPolicy(kind="hash")
    a = apply_split(valid, id_less, policy).holdout[DERIVED_ID_COLUMN]
    shuffled = valid.sample(frac=1.0, random_state=1).reset_index(drop=True)
    b = apply_split(shuffled, id_less, policy).holdout[DERIVED_ID_COLUMN]
    assert set(a) == set(b) and len(a) == pytest.approx(0.2 * len(valid), abs=2)


def test_an_id_less_table_releases():
    """The shipped example without an id column: contract, split, checks, fit, holdout."""
    spec = load_spec(EXAMPLES / "credit_risk_no_id.yaml")
    raw = pd.read_csv(EXAMPLES / "credit_risk_no_id.csv")
    assert spec.id_column is None and "application_id" not in raw.columns
    result = validate_frame(raw, spec)
    assert result.fatal_errors == [] and result.quarantined_rows == 0
    splits = apply_split(result.valid, spec, SplitPolicy())
    assert splits.kind == "hash"  # no event time: auto falls back to the id hash
    report = check_training_data(splits, spec)
    assert report.leaky == ()
    candidate = train_candidate(splits, spec, TrainParams(max_iter=50))
    assert candidate.metrics.rows == len(splits.holdout)
    assert candidate.metrics.roc_auc > 0.6
    y = splits.holdout[LABEL_INT].to_numpy()
    assert candidate.metrics.positives == int(np.sum(y))
    table = "\n".join(split_table(splits))
    assert "| hash split | rows | positives |\n" in table and "first event" not in table
    assert f"| holdout | {len(splits.holdout):,} | {int(np.sum(y)):,} |" in table


def test_a_request_without_an_id_is_served_by_an_id_less_spec(id_less, small_data):
    model = build_request_model(id_less)
    row = small_data.drop(columns=["transaction_id", "event_time", "is_fraud"]).iloc[0]
    body = json.loads(row.to_json())
    parsed = model.model_validate_json(json.dumps(body))
    assert parsed.transaction_id is None
    with_id = model.model_validate_json(json.dumps(body | {"transaction_id": "x-1"}))
    assert with_id.transaction_id == "x-1"


def test_a_late_label_does_not_change_a_row_id(id_less, id_less_data):
    before = validate_frame(id_less_data, id_less).valid
    flipped = id_less_data.copy()
    label = id_less.label.name
    first_legit = int(np.flatnonzero((before[LABEL_INT] == 0).to_numpy())[0])
    flipped.loc[flipped.index[first_legit], label] = id_less.label.positive  # a chargeback
    after = validate_frame(flipped, id_less).valid
    assert after[LABEL_INT].iloc[first_legit] == 1
    assert after[DERIVED_ID_COLUMN].tolist() == before[DERIVED_ID_COLUMN].tolist()


def test_identical_rows_land_in_the_same_part(id_less, id_less_data):
    repeated = pd.concat([id_less_data, id_less_data.head(300)], ignore_index=True)
    valid = validate_frame(repeated, id_less).valid
    splits = apply_split(valid, id_less, SplitPolicy(kind="hash"))
    part_of = {}
    for part in ("train", "validation", "holdout"):
        for row_id in getattr(splits, part)[DERIVED_ID_COLUMN]:
            part_of[row_id] = part
    twins = [rid for rid in part_of if rid.endswith("-1")]
    assert len(twins) == 300
    assert all(part_of[t] == part_of[t[:-2] + "-0"] for t in twins)
