"""The checks behind the hostile-input answers, one by one, without the app (issue 14).

The error budget, the body parser, the agreement of the two validation modes the endpoints use,
shown key names, spec lengths, category near misses, the value limit of a batch and the
allocator tuning. Hostile bodies sent through the in-process app are in
``tests/unit/test_hostile_input.py``; this module needs no trained model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_core import from_json

from bento.field_errors import ErrorBudget, shown_name
from bento.memory import MemoryReleaser, trim, tune_allocator
from bento.record_checker import CategoryPolicy, RecordChecker
from bento.request_body import check_batch, count_values, parse_body, value_limit
from bento.request_model import MAX_NAME_SHOWN, FieldError, build_request_model
from data_contracts.schemas import validate_frame
from data_contracts.spec import FeatureSpec, parse_spec
from data_contracts.synthetic import GeneratorConfig, generate
from tests.support.serving import to_request


@pytest.fixture(scope="module")
def record(spec) -> dict[str, Any]:
    """The first generated row as a request body: the record of the app tests, no model."""
    valid = validate_frame(generate(GeneratorConfig(rows=4000, seed=5)), spec).valid
    return to_request(valid[spec.feature_names].head(1).to_dict("records")[0], spec)


def test_error_budget_counts_what_it_leaves_out():
    budget = ErrorBudget(limit=3)
    entry = FieldError(field="x", problem="missing", message="m")
    budget.add([entry, entry], problems=2)
    budget.add([entry, entry], problems=40)
    assert len(budget.errors) == 3 and budget.full
    assert budget.omitted == 39  # the second record: one entry kept, 39 problems behind the rest
    budget.add([], problems=7)  # not described at all
    assert budget.omitted == 46


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff\xfe", b'{"a": "\\ud800"}', b"1" * 5000, b"[" * 200 + b"]" * 200, b"\x00"],
    ids=["empty", "bad-utf8", "lone-surrogate", "huge-int", "depth-200", "nul"],
)
def test_parse_body_never_raises(body):
    raw, error = parse_body(body)
    assert (raw is None) != (error is None) or body == b"[" * 200 + b"]" * 200


TRICKY = ["1", "1.0", "true", "null", '"1"', "1e309", "-1e309", "NaN", "Infinity", "1" + "0" * 400,
          "12.0000000000000001", "3.5", "0", "-0.0", "1E2", "[]", "{}", '"pos"', '"POS"', "2e1",
          "9007199254740993", "1e-400", '"\\u0070os"', '"x"']  # fmt: skip


@pytest.mark.parametrize(
    "name", ["amount", "hour_of_day", "card_present", "channel", "device_type", "transaction_id"]
)
def test_json_and_python_validation_agree(spec, record, name):
    """/predict validates the bytes (JSON mode); batches validate the parsed records (Python
    mode): on every value a JSON parser can produce they accept and refuse the same."""
    model = build_request_model(spec)
    checker = RecordChecker(model, spec)
    for literal in TRICKY:
        body = json.dumps({**record, name: "__X__"}).replace('"__X__"', literal).encode()
        try:
            expected: Any = model.model_validate_json(body).__dict__
        except ValidationError as err:
            expected = {(".".join(map(str, e["loc"][:1])), e["type"]) for e in err.errors()}
        checked = checker.check(from_json(body))
        if isinstance(expected, dict):
            assert checked.model is not None, (name, literal, checked.errors)
            got = checked.model.__dict__
            assert json.dumps(got) == json.dumps(expected), (name, literal)
            assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
        else:
            assert checked.model is None, (name, literal)
            assert {e.field for e in checked.errors} == {f for f, _ in expected}, (name, literal)


# --------------------------------------------------------------------------- names


def test_shown_name_keeps_plain_names():
    assert shown_name("surprise") == "surprise"
    assert shown_name("é") == "\\xe9"
    assert shown_name("x" * 1000).endswith(f"(+{1000 - MAX_NAME_SHOWN} characters)")


# --------------------------------------------------------------------------- spec lengths


def _spec_with(spec: FeatureSpec, **changes: Any) -> FeatureSpec:
    data = spec.model_dump(mode="json")
    features = changes.pop("features", {})
    for f in data["features"]:
        f.update(features.get(f["name"], {}))
    return parse_spec({**data, **changes})


def test_spec_lengths_are_overridable_and_hash_neutral_when_unset(spec):
    assert _spec_with(spec).spec_hash() == spec.spec_hash()
    custom = _spec_with(
        spec, max_string_length=16, features={"merchant_category": {"max_length": 20}}
    )
    assert custom.spec_hash() != spec.spec_hash()
    model = build_request_model(custom)
    assert model.model_fields["merchant_category"].metadata[0].max_length == 20
    transaction = model.model_json_schema()["properties"]["transaction_id"]["anyOf"]
    assert [t["maxLength"] for t in transaction if t.get("type") == "string"] == [16]
    with pytest.raises(ValueError, match="longer than max_length"):
        _spec_with(spec, features={"channel": {"max_length": 2}})
    with pytest.raises(ValueError, match="longer than max_string_length"):
        _spec_with(spec, max_string_length=4)
    with pytest.raises(ValueError, match="categorical features only"):
        _spec_with(spec, features={"amount": {"max_length": 4}})


# --------------------------------------------------------------------------- categories


def test_near_miss_categories_are_counted_or_normalised(spec, record):
    plain = CategoryPolicy(spec)
    values = {**record, "merchant_category": " Grocery ", "channel": "pos"}
    assert plain.apply(values) == []
    assert values["merchant_category"] == " Grocery "  # kept as sent (the spec does not fold)
    assert plain.take() == {("merchant_category", False): 1}

    folding = _spec_with(spec, features={"channel": {"normalize_categories": True}})
    checker = RecordChecker(build_request_model(folding), folding)
    checked = checker.check({**record, "channel": "  POS"})
    assert checked.model is not None and checked.model.channel == "pos"  # type: ignore[attr-defined]
    assert checker.categories.take() == {("channel", True): 1}
    refused = checker.check({**record, "channel": "teleport"})
    assert refused.model is None
    assert [(e.field, e.problem) for e in refused.errors] == [("channel", "unknown category")]
    with pytest.raises(ValueError, match="differ by more than case"):
        _spec_with(
            spec, features={"channel": {"categories": ["pos", "POS"], "normalize_categories": True}}
        )


def test_closed_category_near_miss_is_refused_and_counted(spec, record):
    checker = RecordChecker(build_request_model(spec), spec)
    raw = {**record, "channel": "POS"}
    assert checker.check(raw).model is None
    checker.categories.count_raw(raw)
    assert checker.categories.take() == {("channel", False): 1}
    # a refused record's raw values can be any JSON (found by the schemathesis fuzz: a 500)
    checker.categories.count_raw({**record, "device_type": [{"a": 1}], "channel": {"x": []}})
    assert checker.categories.take() == {}


# --------------------------------------------------------------------------- memory


def test_allocator_is_tuned_and_trimmed_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert tune_allocator()
    trim()  # returns whether pages went back; it must simply work
    releaser = MemoryReleaser(threshold=1000, interval=60)
    assert releaser.due(1000) and not releaser.due(999)


# --------------------------------------------------------------------------- value limit


def test_a_batch_of_too_many_values_is_refused_before_parsing(spec, record):
    checker = RecordChecker(build_request_model(spec), spec)
    limit = value_limit(100, len(checker.allowed))
    flood = b'{"records": [' + b",".join([b"{}"] * (limit + 1)) + b"]}"
    assert count_values(flood) > limit
    checked = check_batch(checker, 100, flood, "req-1")
    assert checked.records is None
    assert checked.request_id == "req-1"
    (error,) = checked.budget.errors
    assert (error.field, error.problem) == ("body", "too many values")
    assert f"{limit:,}" in error.message


def test_an_honest_full_batch_stays_far_below_the_value_limit(spec, record):
    checker = RecordChecker(build_request_model(spec), spec)
    full = json.dumps({"records": [record] * 100, "request_id": "r"}).encode()
    assert count_values(full) * 3 < value_limit(100, len(checker.allowed))
    checked = check_batch(checker, 100, full, None)
    assert checked.records is not None and len(checked.records) == 100


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("grocery", None),
        ("épicerie", None),
        ("grocery\u0301", None),  # a combining accent is a letter's part, not hidden
        ("grocery\x00", "U+0000"),
        ("\u202eyrecorg", "U+202E RIGHT-TO-LEFT OVERRIDE at position 0"),
        ("gro\u200dcery", "U+200D ZERO WIDTH JOINER at position 3"),
        ("a\tb", "U+0009"),
        ("a\u2028b", "U+2028 LINE SEPARATOR"),
    ],
)
def test_control_and_formatting_characters_are_found(value, found):
    from bento.request_model import unsafe_character

    where = unsafe_character(value)
    assert (where is None) if found is None else (found in where)


def test_hidden_characters_and_unsafe_request_ids_are_refused_naming_the_field(spec, record):
    checker = RecordChecker(build_request_model(spec), spec)
    cases = [
        ("merchant_category", "grocery\x00", "control character"),  # open set
        ("channel", "pos\u202e", "control character"),  # closed set
        ("transaction_id", "tx\r\n1", "control character"),
        ("request_id", "abc\r\nX-Forged: 1", "invalid characters"),
        ("request_id", "<b>", "invalid characters"),
    ]
    for field, value, problem in cases:
        checked = checker.check({**record, field: value})
        assert checked.model is None
        assert [(e.field, e.problem) for e in checked.errors] == [(field, problem)], checked.errors
    ok = checker.check({**record, "request_id": "req-1:a/b+c=d@e#f,g;h{i}~j_k.l"})
    assert ok.model is not None


def test_normalized_categories_fold_compatibility_forms(spec):
    normalizing = _spec_with(spec, features={"merchant_category": {"normalize_categories": True}})
    policy = CategoryPolicy(normalizing)
    values = {"merchant_category": "ｇｒｏｃｅｒｙ", "channel": "pos", "device_type": None}
    assert policy.apply(values) == [] and values["merchant_category"] == "grocery"
    assert policy.take() == {("merchant_category", True): 1}
    kept = {"merchant_category": "ＧＡＳ", "channel": "pos", "device_type": None}
    assert CategoryPolicy(spec).apply(kept) == [] and kept["merchant_category"] == "ＧＡＳ"


def test_an_answer_that_fails_half_way_is_one_line_not_a_second_answer(caplog):
    """Issue 31: a failure after the answer began (a transport the server had closed) sent a
    second ``http.response.start`` and logged two tracebacks."""
    import asyncio

    from bento.asgi import Endpoint

    sent: list[dict] = []

    async def send(message: dict) -> None:
        if sent:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        sent.append(message)

    async def handler(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    endpoint = Endpoint(handler, MemoryReleaser())
    with caplog.at_level("INFO", logger="fraud.serving"):
        asyncio.run(endpoint({"type": "http", "path": "/predict"}, None, send))
    assert [m["type"] for m in sent] == ["http.response.start"]
    (line,) = caplog.records
    assert "answer not completed: RuntimeError" in line.getMessage() and not line.exc_info


def test_the_idle_timeout_has_a_default_and_refuses_nonsense():
    from bento import internals

    assert internals._limits({}) == (16 * 1024, 10.0, 10.0)
    assert internals._limits({"FRAUD_IDLE_TIMEOUT_S": "2.5"})[2] == 2.5
    with pytest.raises(ValueError, match="FRAUD_IDLE_TIMEOUT_S > 0"):
        internals._limits({"FRAUD_IDLE_TIMEOUT_S": "0"})


# --------------------------------------------------------------------------- batch fast path


def _batch(records: list[dict[str, Any]]) -> bytes:
    return json.dumps({"records": records}).encode()


@pytest.mark.parametrize("value", [3.5, 1e-10, 7.000001])
def test_a_batch_checks_whole_numbers_a_column_at_a_time_and_names_the_field(spec, record, value):
    """The fast path checks integers column-wise; a non-whole one sends the batch through the
    record-by-record check, which names the record and field as before."""
    checker = RecordChecker(build_request_model(spec), spec)
    name = next(f.name for f in spec.features if f.kind.value == "integer")
    records = [dict(record) for _ in range(6)]
    records[1][name] = 3.0  # a whole float is an integer
    records[4][name] = value
    checked = check_batch(checker, 100, _batch(records), None)
    assert checked.positions == [0, 1, 2, 3, 5] and checked.columns is None
    assert [(e.index, e.field, e.problem) for e in checked.budget.errors] == [
        (4, name, "not a whole number")
    ]
    records[4][name] = 2.0
    fast = check_batch(checker, 100, _batch(records), None)
    assert fast.positions == list(range(6)) and fast.columns is not None
    assert list(fast.columns[name]) == [r[name] for r in records]


def test_a_batch_with_near_miss_categories_counts_and_normalises_them_in_its_columns(spec, record):
    folding = _spec_with(spec, features={"channel": {"normalize_categories": True}})
    checker = RecordChecker(build_request_model(folding), folding)
    records = [dict(record, channel="pos"), dict(record, channel="  POS"), dict(record)]
    checked = check_batch(checker, 100, _batch(records), None)
    assert checked.columns is not None and checked.positions == [0, 1, 2]
    assert list(checked.columns["channel"]) == ["pos", "pos", record["channel"]]
    assert checker.categories.take() == {("channel", True): 1}
    plain = check_batch(checker, 100, _batch([dict(record)] * 3), None)
    assert plain.columns is not None and checker.categories.take() == {}
