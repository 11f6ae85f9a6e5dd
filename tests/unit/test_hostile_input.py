"""Hostile bodies against the prediction app, without a server (issue 14).

Bounded error reports (per record and per answer, with the number left out), unknown-key floods
refused early, nesting depth, names escaped and cut, spec lengths, category near misses, and the
agreement of the two validation modes the endpoints use. The same reproductions run against a
real ``bentoml serve`` in ``tests/integration/test_hostile.py``.

Kept as one module (about 410 lines): every case runs against the same in-process app.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from pydantic_core import from_json
from starlette.testclient import TestClient

from bento.config import ServingConfig
from bento.http_app import ServingApp
from bento.internals import UNMATCHED, route_label
from bento.memory import MemoryReleaser, trim, tune_allocator
from bento.request_body import check_batch, count_values, parse_body, value_limit
from bento.request_model import (
    MAX_ERRORS_PER_RECORD,
    MAX_ERRORS_PER_REQUEST,
    MAX_NAME_SHOWN,
    CategoryPolicy,
    ErrorBudget,
    FieldError,
    RecordChecker,
    build_request_model,
    shown_name,
)
from bento.runtime import load_runtime
from data_contracts.spec import DEFAULT_MAX_STRING_LENGTH, FeatureSpec, parse_spec
from tests.support.hostile import (
    deep_array,
    deep_field_record,
    deep_record_batch,
    empty_records_batch,
    key_flood_batch,
    unknown_keys,
)
from tests.support.serving import TinyModel, train_tiny_model

JSON = {"content-type": "application/json"}
N_FIELDS = 23  # 21 features + transaction_id + request_id


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("hostile") / "bentoml")


@pytest.fixture(scope="module")
def client(tiny) -> Iterator[TestClient]:
    name, _, version = tiny.tag.partition(":")
    model_dir = Path(tiny.bentoml_home) / "models" / name / version
    meta = yaml.safe_load((model_dir / "model.yaml").read_text())["metadata"]
    serving = ServingApp()
    serving.bind(
        load_runtime(model_dir, meta, tag=tiny.tag),
        ServingConfig(inference_log_enabled=False),
        None,
        None,
    )
    with TestClient(serving.app) as c:
        yield c


@pytest.fixture(scope="module")
def record(tiny) -> dict[str, Any]:
    return tiny.records(1)[0]


def post(client: TestClient, path: str, body: bytes | Any) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers=JSON)


# --------------------------------------------------------------------------- bounded answers


def test_unknown_key_flood_is_refused_with_a_bounded_answer(client):
    r = post(client, "/predict_batch", key_flood_batch(150))
    assert r.status_code == 422, r.text[:300]
    body = r.json()
    assert len(r.content) < 64_000  # the unbounded answer was 15 MB
    assert len(body["errors"]) == MAX_ERRORS_PER_REQUEST
    # every record: 1,000 unknown keys, counted, none of them validated; the first ten records
    # are listed (20 entries each, the last saying how many more), the other 140 only counted
    assert body["errors_omitted"] == 140 * 1000
    first = [e for e in body["errors"] if e["index"] == 0]
    assert len(first) == MAX_ERRORS_PER_RECORD
    assert first[-1]["problem"] == "too many problems"
    assert "981 more problems" in first[-1]["message"]


def test_ten_thousand_empty_records_give_at_most_200_entries(client):
    r = post(client, "/predict_batch", empty_records_batch(10_000))
    assert r.status_code == 422
    body = r.json()
    assert len(body["errors"]) == MAX_ERRORS_PER_REQUEST
    assert body["errors_omitted"] == (10_000 - 10) * 21  # every feature missing
    assert body["errors"][-1]["message"] == "2 more problems in this record are not listed"
    assert len(r.content) < 64_000  # was 18 MB


def test_a_flooded_record_does_not_stop_the_others(client, tiny):
    records: list[Any] = tiny.records(5)
    records[2] = {**records[2], **unknown_keys(2000)}
    records[3] = {**records[3], "surprise": 1}
    r = post(client, "/predict_batch", {"records": records})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert (body["scored"], body["rejected"]) == (3, 2)
    assert [p is None for p in body["predictions"]] == [False, False, True, True, False]
    by_index: dict[int, list[dict[str, Any]]] = {}
    for e in body["errors"]:
        by_index.setdefault(e["index"], []).append(e)
    assert len(by_index[2]) == MAX_ERRORS_PER_RECORD
    assert "1981 more problems" in by_index[2][-1]["message"]
    assert [(e["field"], e["problem"]) for e in by_index[3]] == [("surprise", "unknown field")]
    assert body["errors_omitted"] == 0


def test_batch_scores_line_up_bit_for_bit_with_predict(client, tiny):
    records: list[Any] = tiny.records(8)
    records[1] = {**records[1], "amount": -1.0}
    records[5] = {**records[5], **unknown_keys(50)}
    batch = post(client, "/predict_batch", {"records": records}).json()
    for i, rec in enumerate(records):
        single = post(client, "/predict", rec)
        if batch["predictions"][i] is None:
            assert single.status_code == 422
        else:
            assert (
                single.json()["fraud_probability"] == batch["predictions"][i]["fraud_probability"]
            )


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
    ("path", "body"),
    [
        ("/predict", deep_array(1000)),
        ("/predict_batch", deep_array(1000)),
        ("/predict", b'{"a": ' * 5000),
        ("/predict_batch", b'{"records": ' + b"[" * 100_000),
    ],
    ids=["predict", "batch", "objects", "open-batch"],
)
def test_deep_bodies_are_422_naming_the_depth(client, path, body):
    r = post(client, path, body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "body"
    assert "nested deeper than 200" in r.json()["errors"][0]["message"]


def test_deep_field_and_deep_record_are_422(client, record):
    r = post(client, "/predict", deep_field_record(record, "amount", 5000))
    assert r.status_code == 422 and "nested deeper" in r.text
    r = post(client, "/predict_batch", deep_record_batch(record, 5000))
    assert r.status_code == 422 and "nested deeper" in r.text
    # within the parser's depth it is simply the wrong type, for that field
    r = post(client, "/predict", deep_field_record(record, "amount", 150))
    assert r.status_code == 422
    assert {(e["field"], e["problem"]) for e in r.json()["errors"]} == {("amount", "wrong type")}


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff\xfe", b'{"a": "\\ud800"}', b"1" * 5000, b"[" * 200 + b"]" * 200, b"\x00"],
    ids=["empty", "bad-utf8", "lone-surrogate", "huge-int", "depth-200", "nul"],
)
def test_parse_body_never_raises(body):
    raw, error = parse_body(body)
    assert (raw is None) != (error is None) or body == b"[" * 200 + b"]" * 200


def test_duplicate_keys_resolve_the_same_way_on_both_endpoints(client, record):
    text = json.dumps(record)
    body = text.replace('"amount": ', '"amount": -1.0, "amount": ', 1)
    single = post(client, "/predict", body.encode())
    batch = post(client, "/predict_batch", ('{"records": [' + body + "]}").encode())
    assert single.status_code == 200 and batch.status_code == 200  # the last value wins
    assert single.json()["fraud_probability"] == batch.json()["predictions"][0]["fraud_probability"]


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


# --------------------------------------------------------------------------- names and logs


def test_unknown_key_names_are_escaped_and_cut(client, record, caplog):
    hostile = "\x1b[31m\u202e" + "k" * 50_000
    with caplog.at_level(logging.INFO, logger="fraud.serving"):
        r = post(client, "/predict", {**record, hostile: 1})
    assert r.status_code == 422
    (entry,) = r.json()["errors"]
    assert entry["problem"] == "unknown field"
    assert entry["field"].startswith("\\x1b[31m\\u202e")
    assert len(entry["field"]) < MAX_NAME_SHOWN + 40
    assert len(r.content) < 2_000
    logged = [rec for rec in caplog.records if rec.getMessage().startswith("request refused")]
    assert logged and len(json.dumps(logged[-1].errors)) < 2_000  # type: ignore[attr-defined]


def test_shown_name_keeps_plain_names():
    assert shown_name("surprise") == "surprise"
    assert shown_name("é") == "\\xe9"
    assert shown_name("x" * 1000).endswith(f"(+{1000 - MAX_NAME_SHOWN} characters)")


def test_top_level_key_flood_is_bounded(client, record):
    body = {"records": [record], **{f"k{i}": 0 for i in range(50_000)}}
    r = post(client, "/predict_batch", body)
    assert r.status_code == 422
    assert len(r.json()["errors"]) <= 25 and len(r.content) < 8_000
    assert "49980 more unknown top-level keys" in r.text


# --------------------------------------------------------------------------- spec lengths


def test_categorical_and_id_lengths_default_from_the_spec(client, record):
    limit = DEFAULT_MAX_STRING_LENGTH
    assert post(client, "/predict", {**record, "merchant_category": "m" * limit}).status_code == 200
    for name in ("merchant_category", "channel", "transaction_id"):
        r = post(client, "/predict", {**record, name: "m" * (limit + 1)})
        assert r.status_code == 422, name
        assert (name, "too long") in {(e["field"], e["problem"]) for e in r.json()["errors"]}
    r = post(client, "/predict_batch", {"records": [record, {**record, "channel": "c" * 10**6}]})
    assert r.status_code == 200
    assert r.json()["errors"][0]["field"] == "channel"
    assert r.json()["errors"][0]["problem"] == "too long"


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
    assert model.model_fields["transaction_id"].metadata[0].max_length == 16
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


def test_closed_category_near_miss_is_refused_and_counted(client, spec, record):
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


# --------------------------------------------------------------------------- metrics labels


def test_metrics_label_is_the_route_template_or_unmatched(client):
    """BentoML's app holds its own routes, static files and our app mounted at "/"."""
    from _bentoml_impl.server.mount import PassiveMount
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def ok(_: Any) -> None:  # never called
        return None

    routes = [
        Route("/readyz", ok),
        Route("/metrics", ok),
        Mount("/static_content", StaticFiles(directory=str(Path(__file__).parent))),
        PassiveMount("/", client.app),  # the prediction app
    ]

    def label(path: str, method: str = "GET") -> str:
        scope = {"type": "http", "path": path, "method": method, "root_path": ""}
        return route_label(routes, scope)

    assert label("/readyz") == "/readyz"
    assert label("/predict", "POST") == "/predict"
    assert label("/predict") == "/predict"  # wrong method: still the route's series (405)
    assert label("/predict_batch", "POST") == "/predict_batch"
    assert label("/static_content/app.js") == "/static_content/{path}"
    for path in ("/", "/x", "/predict/../../etc", "/" + "p" * 60_000, "/%00"):
        assert label(path) in (UNMATCHED, "/"), path


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
