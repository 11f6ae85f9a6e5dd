"""The service's HTTP contract through its ASGI app (``Service.to_asgi()`` + TestClient).

The service is imported once, serving a tiny model from a temporary BentoML store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from bento.inference_log import hash_transaction_id
from tests.support.serving import TinyModel, train_tiny_model

MAX_BATCH = 50


@pytest.fixture(scope="module")
def served(
    spec, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, TinyModel, Path]]:
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    root = tmp_path_factory.mktemp("serving")
    model = train_tiny_model(spec, root / "bentoml")
    log_dir = root / "inference_log"
    previous_store = BentoMLContainer.model_store.get()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(root / "bentoml"))
        mp.setenv("FRAUD_HOME", str(root))
        mp.setenv("FRAUD_MODEL_TAG", model.tag)
        mp.setenv("FRAUD_INFERENCE_LOG_DIR", str(log_dir))
        mp.setenv("FRAUD_INFERENCE_LOG_FLUSH_S", "0.2")
        mp.setenv("FRAUD_MAX_BATCH_RECORDS", str(MAX_BATCH))
        mp.setenv("FRAUD_MAX_RECORD_BYTES", "4096")
        BentoMLContainer.model_store.set(ModelStore(str(root / "bentoml" / "models")))
        try:
            from bento.service import FraudDetector

            with TestClient(FraudDetector.to_asgi()) as client:
                yield client, model, log_dir
        finally:
            BentoMLContainer.model_store.set(previous_store)


@pytest.fixture
def client(served) -> TestClient:
    return served[0]


@pytest.fixture
def model(served) -> TinyModel:
    return served[1]


@pytest.fixture
def record(model) -> dict[str, Any]:
    return model.records(1)[0]


def post(client: TestClient, path: str, body: Any) -> Any:
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def problems(response) -> set[tuple[str, str]]:
    return {(e["field"], e["problem"]) for e in response.json()["errors"]}


# --------------------------------------------------------------------------- /predict


def test_scores_like_offline_onnx(client, model):
    records = model.records(20)
    offline = model.offline_scores(20)
    for rec, expected in zip(records, offline, strict=True):
        r = post(client, "/predict", rec)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["fraud_probability"] == pytest.approx(float(expected), abs=1e-6)
        assert body["is_fraud"] == (body["fraud_probability"] >= model.threshold)
        assert body["threshold"] == model.threshold
        assert body["model_version"] == "1"


def test_feature_order_is_irrelevant(client, record):
    shuffled = dict(reversed(list(record.items())))
    a, b = post(client, "/predict", record).json(), post(client, "/predict", shuffled).json()
    assert a["fraud_probability"] == b["fraud_probability"]


def test_request_id_generated_or_echoed(client, record):
    generated = post(client, "/predict", record)
    assert len(generated.json()["request_id"]) == 32
    assert generated.headers["x-request-id"] == generated.json()["request_id"]
    mine = post(client, "/predict", {**record, "request_id": "req-1", "transaction_id": "tx-9"})
    assert mine.json()["request_id"] == "req-1"
    assert mine.json()["transaction_id"] == "tx-9"
    header = client.post(
        "/predict",
        content=json.dumps(record),
        headers={"content-type": "application/json", "x-request-id": "hdr-7"},
    )
    assert header.json()["request_id"] == "hdr-7"


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (lambda r: r.pop("amount"), "amount", "missing"),
        (lambda r: r.update(surprise=1), "surprise", "unknown field"),
        (lambda r: r.update(amount="12.5"), "amount", "wrong type"),
        (lambda r: r.update(card_present=1), "card_present", "wrong type"),
        (lambda r: r.update(card_present="true"), "card_present", "wrong type"),
        (lambda r: r.update(channel=3), "channel", "wrong type"),
        (lambda r: r.update(amount=-1.0), "amount", "out of range"),
        (lambda r: r.update(hour_of_day=24), "hour_of_day", "out of range"),
        (lambda r: r.update(customer_age=17), "customer_age", "out of range"),
        (lambda r: r.update(hour_of_day=3.5), "hour_of_day", "not a whole number"),
        (lambda r: r.update(channel="teleport"), "channel", "unknown category"),
        (lambda r: r.update(device_type="watch"), "device_type", "unknown category"),
        (lambda r: r.update(amount=None), "amount", "null not allowed"),
        (lambda r: r.update(channel=None), "channel", "null not allowed"),
        (lambda r: r.update(transaction_id=7), "transaction_id", "wrong type"),
    ],
)
def test_bad_field_is_named(client, record, change, field, problem):
    bad = dict(record)
    change(bad)
    r = post(client, "/predict", bad)
    assert r.status_code == 422, r.text
    assert (field, problem) in problems(r)
    assert r.json()["request_id"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(client, record, literal):
    body = json.dumps({**record, "amount_sum_24h": 1.0}).replace(
        '"amount_sum_24h": 1.0', f'"amount_sum_24h": {literal}'
    )
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert ("amount_sum_24h", "NaN or infinite") in problems(r)


def test_every_problem_is_listed(client, record):
    bad = {**record, "amount": -5.0, "channel": "x", "extra": True}
    del bad["customer_age"]
    r = post(client, "/predict", bad)
    assert problems(r) == {
        ("amount", "out of range"),
        ("channel", "unknown category"),
        ("extra", "unknown field"),
        ("customer_age", "missing"),
    }


def test_nullable_features_accept_null(client, record):
    r = post(client, "/predict", {**record, "device_type": None, "avg_amount_30d": None})
    assert r.status_code == 200, r.text


def test_whole_float_for_integer_and_open_category(client, record):
    r = post(client, "/predict", {**record, "hour_of_day": 3.0, "merchant_category": "new_kind"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"amount=1", "text/plain", 415),
        (b"\x80\x04\x95\x00", "application/python-pickle", 415),
        (b"\x80\x04\x95\x00", "application/octet-stream", 415),
        (b"{}", None, 415),
        (b"{not json", "application/json", 422),
        (b"[1, 2]", "application/json", 422),
    ],
)
def test_wrong_media_or_body_is_refused(client, content, content_type, status):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/predict", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_body_size_cap(client, record):
    big = {**record, "transaction_id": "x" * 5000}
    r = post(client, "/predict", big)
    assert r.status_code == 413
    assert "4096" in r.json()["detail"]


# --------------------------------------------------------------------------- /predict_batch


def test_batch_scores_like_offline_onnx(client, model):
    r = post(client, "/predict_batch", {"records": model.records(MAX_BATCH)})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([p["fraud_probability"] for p in body["predictions"]])
    np.testing.assert_allclose(got, model.offline_scores(MAX_BATCH), atol=1e-6)
    assert [p["is_fraud"] for p in body["predictions"]] == list(got >= model.threshold)
    assert (body["scored"], body["rejected"], body["errors"]) == (MAX_BATCH, 0, [])


def test_batch_partial_scoring(client, model):
    records = model.records(6)
    records[1]["amount"] = -1.0
    records[4]["channel"] = "teleport"
    del records[4]["customer_age"]
    r = post(client, "/predict_batch", {"records": records, "request_id": "batch-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "batch-1"
    assert (body["scored"], body["rejected"]) == (4, 2)
    assert [p is None for p in body["predictions"]] == [False, True, False, False, True, False]
    errors = {(e["index"], e["field"], e["problem"]) for e in body["errors"]}
    assert errors == {
        (1, "amount", "out of range"),
        (4, "channel", "unknown category"),
        (4, "customer_age", "missing"),
    }
    offline = model.offline_scores(6)
    for i in (0, 2, 3, 5):
        assert body["predictions"][i]["fraud_probability"] == pytest.approx(offline[i], abs=1e-6)


def test_batch_with_no_valid_record_is_refused(client, model):
    records = model.records(2)
    for rec in records:
        rec["amount"] = "lots"
    r = post(client, "/predict_batch", {"records": records})
    assert r.status_code == 422
    assert {(e["index"], e["field"]) for e in r.json()["errors"]} == {(0, "amount"), (1, "amount")}


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({"records": []}, "records", "no records"),
        ({"rows": []}, "records", "missing"),
        ({"records": [], "x": 1}, "x", "unknown field"),
    ],
)
def test_malformed_batch_is_refused(client, body, field, problem):
    r = post(client, "/predict_batch", body)
    assert r.status_code == 422
    assert (field, problem) in problems(r)


def test_batch_over_the_limit_is_refused(client, model):
    records = model.records(1) * (MAX_BATCH + 1)
    r = post(client, "/predict_batch", {"records": records})
    assert r.status_code == 422
    assert ("records", "too many records") in problems(r)


def test_batch_must_be_json(client):
    r = client.post("/predict_batch", content=b"a,b\n1,2", headers={"content-type": "text/csv"})
    assert r.status_code == 415


# --------------------------------------------------------------------------- infrastructure


def test_health_and_readiness(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_metrics(client, record):
    """Our metrics as exported (BentoML's /metrics route itself is checked over HTTP in the
    integration test: under TestClient it never answers, even for a bare BentoML service)."""
    from prometheus_client import REGISTRY, generate_latest

    post(client, "/predict", record)
    post(client, "/predict", {**record, "channel": "teleport"})
    post(client, "/predict_batch", {"records": [record, {**record, "amount": -1.0}]})
    text = generate_latest(REGISTRY).decode()
    assert 'fraud_predictions_total{endpoint="predict",outcome="legit"}' in text or (
        'fraud_predictions_total{endpoint="predict",outcome="fraud"}' in text
    )
    assert 'fraud_predictions_total{endpoint="predict_batch",outcome="invalid"}' in text
    assert 'fraud_validation_errors_total{field="channel",problem="unknown category"}' in text
    assert "fraud_score_bucket" in text
    assert "fraud_inference_log_records_lost_total" in text
    assert 'fraud_model_info{model_version="1"' in text


def test_openapi_lists_the_generated_model(client, spec):
    doc = client.get("/docs.json").json()
    assert {"/predict", "/predict_batch", "/readyz", "/metrics"} <= set(doc["paths"])
    ref = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    name = ref["schema"]["$ref"].rsplit("/", 1)[1]
    schema = doc["components"]["schemas"][name]
    assert set(spec.feature_names) <= set(schema["properties"])
    assert set(schema["required"]) == set(spec.feature_names)


def test_inference_log_is_written_off_the_request_path(served, record):
    client, _, log_dir = served
    r = post(client, "/predict", {**record, "transaction_id": "tx-log-1", "request_id": "log-1"})
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    found = pd.DataFrame()
    while time.monotonic() < deadline and found.empty:
        files = sorted(log_dir.glob("date=*/part-*.parquet"))
        if files:
            frame = pd.concat([pd.read_parquet(f) for f in files])
            found = frame[frame["request_id"] == "log-1"]
        time.sleep(0.1)
    assert len(found) == 1, "the record did not reach the inference log"
    row = found.iloc[0]
    assert row["transaction_id_hash"] == hash_transaction_id("tx-log-1")
    assert row["score"] == pytest.approx(r.json()["fraud_probability"])
    assert row["amount"] == record["amount"]
    assert str(row["timestamp"].tz) == "UTC"


def test_a_batch_scored_in_slices_off_the_loop_answers_and_logs_the_same(
    served, model, monkeypatch
):
    """Validation and the answer's encoding in slices, scoring in the worker thread: the same
    predictions and errors, the answer byte for byte what json.dumps makes, every id logged."""
    import bento.answers
    import bento.http_app
    import bento.record_checker

    client, _, log_dir = served
    monkeypatch.setattr(bento.record_checker, "VALIDATE_SLICE", 4)
    monkeypatch.setattr(bento.answers, "ENCODE_SLICE", 3)
    monkeypatch.setattr(bento.http_app, "THREAD_BATCH_ROWS", 2)
    records = model.records(11)
    for i, rec in enumerate(records):
        rec["transaction_id"] = f"tx-slice-{i}"
    whole = post(client, "/predict_batch", {"records": records, "request_id": "slices-1"})
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert whole.content == json.dumps(body).encode()
    got = [p["fraud_probability"] for p in body["predictions"]]
    np.testing.assert_allclose(got, model.offline_scores(11), atol=1e-6)
    records[9]["amount"] = -1.0  # invalid in the third validation slice: record by record
    part = post(client, "/predict_batch", {"records": records, "request_id": "slices-2"})
    assert part.status_code == 200, part.text
    body = part.json()
    assert part.content == json.dumps(body).encode()
    assert (body["scored"], body["rejected"]) == (10, 1)
    assert [p is None for p in body["predictions"]] == [i == 9 for i in range(11)]
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(9, "amount")]
    deadline = time.monotonic() + 10
    found = pd.DataFrame()
    while time.monotonic() < deadline and len(found) < 21:
        files = sorted(log_dir.glob("date=*/part-*.parquet"))
        frame = pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame()
        found = frame[frame["request_id"].isin(["slices-1", "slices-2"])] if files else frame
        time.sleep(0.1)
    assert len(found) == 21
    hashes = set(found["transaction_id_hash"])
    assert hashes == {hash_transaction_id(f"tx-slice-{i}") for i in range(11)}


def test_a_large_batch_is_parsed_in_slices_with_the_collector_paused(served, model, monkeypatch):
    import gc

    import bento.http_app
    import bento.json_slices

    client = served[0]
    monkeypatch.setattr(bento.json_slices, "SLICE_BYTES", 200)
    monkeypatch.setattr(bento.http_app, "THREAD_BODY_BYTES", 100)
    seen: list[tuple[bool, bool]] = []  # (sliced parse succeeded, collector on) per body
    real = bento.json_slices.parse_records
    monkeypatch.setattr(
        bento.json_slices,
        "parse_records",
        lambda *a: seen.append((real(*a) is not None, gc.isenabled())) or real(*a),
    )
    answer = post(client, "/predict_batch", {"records": model.records(20)})
    assert answer.status_code == 200, answer.text
    got = [p["fraud_probability"] for p in answer.json()["predictions"]]
    np.testing.assert_allclose(got, model.offline_scores(20), atol=1e-6)
    assert seen == [(True, False)] and gc.isenabled()
