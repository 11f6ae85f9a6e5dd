"""Hostile bodies against the prediction app, without a server (issue 14).

Bounded error reports (per record and per answer, with the number left out), unknown-key floods
refused early, nesting depth, names escaped and cut, spec lengths and metrics labels, all
through the in-process app. The same reproductions run against a real ``bentoml serve`` in
``tests/integration/test_hostile.py``; the pieces the app is built from (the error budget, the
parser, the two validation modes, category near misses, the value limit) are tested one by one
in ``tests/unit/test_hostile_checks.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from bento.config import ServingConfig
from bento.http_app import ServingApp
from bento.internals import UNMATCHED, route_label
from bento.request_model import MAX_ERRORS_PER_RECORD, MAX_ERRORS_PER_REQUEST, MAX_NAME_SHOWN
from bento.runtime import load_runtime
from data_contracts.spec import DEFAULT_MAX_STRING_LENGTH
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


def test_duplicate_keys_resolve_the_same_way_on_both_endpoints(client, record):
    text = json.dumps(record)
    body = text.replace('"amount": ', '"amount": -1.0, "amount": ', 1)
    single = post(client, "/predict", body.encode())
    batch = post(client, "/predict_batch", ('{"records": [' + body + "]}").encode())
    assert single.status_code == 200 and batch.status_code == 200  # the last value wins
    assert single.json()["fraud_probability"] == batch.json()["predictions"][0]["fraud_probability"]


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
