"""A batch body's records parsed in slices give exactly what one parse of the whole body gives,
or nothing (the caller then parses the whole body and words its error)."""

from __future__ import annotations

import json
import random

import pytest
from pydantic_core import from_json

from bento.json_slices import SLICE_BYTES, parse_in_slices, parse_records

TRICKY_STRINGS = [
    "},{",
    '"},{"',
    "]}",
    "], [",
    '\\"},{\\"',
    "a\\",  # a string ending in a backslash, then the record's closing brace
    '{"records": [',
    "\u00e9\u20ac\U0001f600",
    "",
    " \t\n ",
]


def records(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "amount": rng.random() * 1000,
            "merchant_category": rng.choice(TRICKY_STRINGS),
            "card_present": rng.random() < 0.5,
            "txn_count_1h": rng.randint(0, 9),
            "transaction_id": f"tx-{i}" + rng.choice(TRICKY_STRINGS),
            "note": None,
        }
        for i in range(n)
    ]


def same_as_whole(body: bytes, size: int) -> dict | None:
    """The sliced parse, checked against one parse of the whole body."""
    out = parse_in_slices(body, size)
    try:
        whole = from_json(body)
    except ValueError:
        assert out is None, "a body the parser refuses must not parse in slices"
        return None
    assert out is None or out == whole
    return out


@pytest.mark.parametrize("size", [1, 40, 333, SLICE_BYTES])
@pytest.mark.parametrize(
    "dump",
    [
        lambda v: json.dumps(v),
        lambda v: json.dumps(v, separators=(",", ":")),
        lambda v: json.dumps(v, indent=2),
        lambda v: json.dumps(v, indent="\t", ensure_ascii=False),
    ],
    ids=["spaces", "compact", "indented", "tabs-utf8"],
)
def test_records_split_at_any_size_parse_as_the_whole_body(size, dump):
    body = dump({"records": records(300)}).encode()
    assert same_as_whole(body, size) is not None  # the sliced path was taken


def test_false_cuts_inside_strings_are_passed_over():
    # every record holds a string with "},{" in it: the first candidate cut of a slice is false
    items = [{"a": '"},{"', "b": i} for i in range(100)]
    body = json.dumps(items)[1:-1].encode()
    assert parse_records(body, 0, len(body), 1) == items


def test_too_many_false_cuts_in_a_row_give_up():
    items = [{"a": "},{},{},{},{},{", "b": i} for i in range(20)]
    body = json.dumps(items, separators=(",", ":"))[1:-1].encode()
    assert parse_records(body, 0, len(body), 1) is None
    assert parse_records(body, 0, len(body), len(body)) == items


@pytest.mark.parametrize(
    "body",
    [
        {"records": []},
        {"records": [], "request_id": "r-1"},
        {"request_id": "r-1", "records": records(3)},
        {"records": records(3), "request_id": "r-2"},
        {"records": [{"a": 1}]},
        {"records": [{}]},
        {"records": [1, "x", None, [], {}]},
    ],
)
def test_envelopes_of_the_plain_shape(body):
    assert same_as_whole(json.dumps(body).encode(), 8) == body


def test_a_duplicated_request_id_keeps_the_last_as_the_parser_does():
    body = b'{"request_id": "first", "records": [{"a": 1}], "request_id": "last"}'
    assert same_as_whole(body, 1) == {"records": [{"a": 1}], "request_id": "last"}


def test_a_huge_single_record_is_one_slice():
    record = {f"k{i}": "v" * 100 for i in range(5000)}
    body = json.dumps({"records": [record]}).encode()
    assert len(body) > 2 * SLICE_BYTES
    assert same_as_whole(body, SLICE_BYTES) == {"records": [record]}


def test_nested_objects_parse_or_fall_back_never_differ():
    nested = [{"a": [{"x": 1}, {"y": [2, {"z": "},{"}]}], "b": {"c": {"d": []}}} for _ in range(40)]
    body = json.dumps({"records": nested}).encode()
    for size in (1, 7, 50, 10_000):
        assert same_as_whole(body, size) in (None, {"records": nested})
    assert same_as_whole(body, 10_000) == {"records": nested}


@pytest.mark.parametrize(
    "body",
    [
        b'{"records": [{"a": 1}], [{"b": 2}]}',  # closes the array early, opens another
        b'{"records": [{"a": "x},{"b": 2}]}',  # a cut inside an unterminated string
        b'{"records": [{"a": 1},{"b": 2},]}',  # trailing comma
        b'{"records": [{"a": 1},,{"b": 2}]}',
        b'{"records": [{"a": 1},{"b": 2]}',
        b'{"records": [{"a": 1}]} trailing',
        b'{"records": [{"a": 1}\x0c]}',  # form feed is not JSON whitespace
        b'{"records": [{"a": "\xff"},{"b": 2}]}',  # not UTF-8
        b'{"records": [{"a": "\x01"},{"b": 2}]}',  # a raw control character in a string
        b'{"records": [{"a": 1},{"b": 2}], "request_id": "\x01"}',
        b'{"records": [{"a": 1},{"b": 2}]',
        b'{"records": [{"a": 1}},{"b": 2}]}',
    ],
)
def test_invalid_bodies_never_parse_in_slices(body):
    for size in (1, 5, 1000):
        assert parse_in_slices(body, size) is None
    with pytest.raises(ValueError):
        from_json(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"rec\\u006frds": [{"a": 1}]}',  # an escaped key: the whole parse decides
        b'{"records": [{"a": 1}], "other": 1}',
        b'{"records": [{"a": 1}], "x": [{"b": 2}]}',
        b'{"records": [{"a": 1}], "records": [{"b": 2}]}',
        b'{"other": 1, "records": [{"a": 1}]}',
        b'[{"a": 1}]',
        b'{"records": {"a": 1}}',
        b'{"request_id": "a\\"b", "records": [{"a": 1}]}',
        b"",
    ],
)
def test_other_shapes_fall_back_to_the_whole_parse(body):
    assert parse_in_slices(body, 1) is None


def test_nan_and_numbers_are_the_parsers():
    body = b'{"records": [{"a": NaN, "b": 1e400, "c": -0.0, "d": 12345678901234567890}, {"e": 1}]}'
    out = parse_in_slices(body, 1)
    assert out is not None and repr(out) == repr(from_json(body))  # NaN != NaN, repr is equal


@pytest.mark.parametrize("depth", [190, 196, 197, 198, 199, 200, 260])
def test_the_depth_limit_counts_as_in_the_whole_body(depth):
    deep = b"[" * depth + b"1" + b"]" * depth
    body = b'{"records": [{"a": 1}, {"x": ' + deep + b"}]}"
    same_as_whole(body, 1)
