"""The request model is generated from whatever spec it is given, and its errors are readable."""

from __future__ import annotations

import json
import typing

import pytest
from pydantic import ValidationError

from bento.field_errors import describe_errors
from bento.request_model import build_batch_model, build_request_model
from data_contracts.spec import parse_spec

TOY = {
    "name": "toy-model",
    "id_column": "id",
    "label": {"name": "y", "positive": 1, "negative": 0},
    "features": [
        {"name": "price", "kind": "numeric", "min": 0, "max": 10},
        {"name": "units", "kind": "integer", "min": 1, "max": 5, "nullable": True},
        {"name": "promo", "kind": "boolean"},
        {"name": "colour", "kind": "categorical", "categories": ["red", "blue"]},
        {
            "name": "shop",
            "kind": "categorical",
            "categories": ["a"],
            "allow_unknown_categories": True,
        },
    ],
}


@pytest.fixture
def model():
    return build_request_model(parse_spec(TOY))


def errors(model, body: dict) -> set[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(json.dumps(body))
    return {(e.field, e.problem) for e in describe_errors(info.value)}


GOOD = {"price": 2.5, "units": 2, "promo": False, "colour": "red", "shop": "zzz"}


def test_fields_follow_the_spec(model):
    assert list(model.model_fields)[:5] == ["price", "units", "promo", "colour", "shop"]
    assert {"transaction_id", "request_id"} <= set(model.model_fields)
    schema = model.model_json_schema()
    assert set(schema["required"]) == {"price", "units", "promo", "colour", "shop"}
    assert schema["properties"]["price"]["minimum"] == 0
    assert schema["properties"]["price"]["maximum"] == 10
    assert schema["properties"]["colour"]["enum"] == ["red", "blue"]
    assert model.model_config["extra"] == "forbid"


def test_generated_for_the_shipped_spec(spec):
    model = build_request_model(spec)
    for feature in spec.features:
        field = model.model_fields[feature.name]
        assert field.is_required()
        allows_none = type(None) in typing.get_args(field.annotation)
        assert allows_none == feature.nullable, feature.name


def test_valid_and_nullable(model):
    assert model.model_validate_json(json.dumps(GOOD)).price == 2.5
    assert model.model_validate_json(json.dumps({**GOOD, "units": None})).units is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"price": 11}, ("price", "out of range")),
        ({"price": "2"}, ("price", "wrong type")),
        ({"price": None}, ("price", "null not allowed")),
        ({"units": 1.5}, ("units", "not a whole number")),
        # inside pydantic's multiple_of tolerance, still not whole (found by the schema fuzzer)
        ({"units": 1 + 1e-10}, ("units", "not a whole number")),
        ({"units": 0}, ("units", "out of range")),
        ({"promo": "no"}, ("promo", "wrong type")),
        ({"colour": "green"}, ("colour", "unknown category")),
        ({"colour": 1}, ("colour", "wrong type")),
        ({"other": 1}, ("other", "unknown field")),
    ],
)
def test_each_problem(model, change, expected):
    assert expected in errors(model, {**GOOD, **change})


def test_missing_is_reported_per_field(model):
    assert errors(model, {"price": 1.0}) == {
        ("units", "missing"),
        ("promo", "missing"),
        ("colour", "missing"),
        ("shop", "missing"),
    }


def test_reserved_names_are_refused():
    spec = dict(TOY, features=[*TOY["features"], {"name": "request_id", "kind": "numeric"}])
    with pytest.raises(ValueError, match="reserved"):
        build_request_model(parse_spec(spec))


def test_batch_errors_carry_the_index(model):
    batch = build_batch_model(model, max_records=3)
    body = {"records": [GOOD, {**GOOD, "price": -1}, {**GOOD, "colour": "x"}]}
    with pytest.raises(ValidationError) as info:
        batch.model_validate_json(json.dumps(body))
    found = {(e.index, e.field, e.problem) for e in describe_errors(info.value, batch=True)}
    assert found == {(1, "price", "out of range"), (2, "colour", "unknown category")}
    with pytest.raises(ValidationError) as info:
        batch.model_validate_json(json.dumps({"records": [GOOD] * 4}))
    assert [(e.index, e.field, e.problem) for e in describe_errors(info.value, batch=True)] == [
        (None, "records", "too many records")
    ]
