"""``bentoml serve`` as a real process on 127.0.0.1, answering over HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
import pytest

from flows.core.http import free_port
from tests.support.serving import (
    BENTOML,
    ROOT,
    BentoServer,
    TinyModel,
    call,
    model_env,
    running_bento,
    train_tiny_model,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("serve") / "bentoml")


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory) -> Iterator[BentoServer]:
    home = tmp_path_factory.mktemp("home")
    # records can only reach disk by the shutdown flush
    env = model_env(home, tiny, FRAUD_INFERENCE_LOG_FLUSH_S="3600")
    with running_bento(env, home / "serve.log") as srv:
        yield srv


def test_predict_matches_offline_onnx(server, tiny):
    expected = tiny.offline_scores(10)
    for record, p in zip(tiny.records(10), expected, strict=True):
        status, body = call(f"{server.base}/predict", record)
        assert status == 200, body
        assert body["fraud_probability"] == pytest.approx(float(p), abs=1e-6)
        assert body["is_fraud"] == (body["fraud_probability"] >= tiny.threshold)
        assert body["model_version"] == "1"


def test_refusals_over_http(server, tiny):
    record = tiny.records(1)[0]
    status, body = call(f"{server.base}/predict", {**record, "channel": "teleport", "x": 1})
    assert status == 422
    assert {(e["field"], e["problem"]) for e in body["errors"]} == {
        ("channel", "unknown category"),
        ("x", "unknown field"),
    }
    assert call(f"{server.base}/predict", b"amount=3", "text/plain")[0] == 415
    big = json.dumps({**record, "transaction_id": "x" * 100_000}).encode()
    assert call(f"{server.base}/predict", big)[0] == 413


def test_batch_over_http(server, tiny):
    records = tiny.records(200)
    records[7]["amount"] = float("inf")  # json.dumps writes Infinity
    status, body = call(f"{server.base}/predict_batch", {"records": records})
    assert status == 200, body
    assert (body["scored"], body["rejected"]) == (199, 1)
    assert body["predictions"][7] is None
    assert body["errors"][0]["index"] == 7


def arrow_stream(records: list[dict]) -> bytes:
    table = pa.Table.from_pylist(records)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=50)
    return sink.getvalue().to_pybytes()


ARROW = "application/vnd.apache.arrow.stream"
ARROW_IDS: list[str] = []  # request ids of scored Arrow batches, looked up in the log at the end


def test_arrow_batch_scores_as_the_json_batch(server, tiny):
    records = [dict(r, transaction_id=f"arrow-{i}") for i, r in enumerate(tiny.records(120))]
    records[11]["amount"] = float("nan")
    json_status, by_json = call(f"{server.base}/predict_batch", {"records": records})
    status, by_arrow = call(f"{server.base}/predict_batch", arrow_stream(records), ARROW)
    assert json_status == status == 200, by_arrow
    assert (by_arrow["scored"], by_arrow["rejected"]) == (119, 1)
    assert by_arrow["predictions"] == by_json["predictions"]
    assert [(e["index"], e["field"]) for e in by_arrow["errors"]] == [(11, "amount")]
    ARROW_IDS.append(by_arrow["request_id"])
    bad = pa.Table.from_pylist(records).drop_columns(["amount"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, bad.schema) as writer:
        writer.write_table(bad)
    status, refused = call(f"{server.base}/predict_batch", sink.getvalue().to_pybytes(), ARROW)
    assert status == 422
    assert [(e["field"], e["problem"]) for e in refused["errors"]] == [("amount", "missing")]
    status, garbage = call(f"{server.base}/predict_batch", b"ARROW1\x00\x00garbage", ARROW)
    assert status == 422 and garbage["errors"][0]["problem"] == "invalid Arrow stream"


def test_metrics_health_and_openapi(server):
    assert call(f"{server.base}/healthz")[0] == 200
    status, text = call(f"{server.base}/metrics")
    assert status == 200
    assert "bentoml_service_request_total" in text  # BentoML's own
    assert 'fraud_predictions_total{endpoint="predict",outcome=' in text
    assert "fraud_score_bucket" in text
    assert 'fraud_validation_errors_total{field="channel",problem="unknown category"}' in text
    status, doc = call(f"{server.base}/docs.json")
    assert status == 200 and "/predict" in doc["paths"]
    assert call(f"{server.base}/")[0] == 200  # the OpenAPI page


def test_logs_are_json_with_request_ids(server, tiny):
    record = tiny.records(1)[0]
    call(f"{server.base}/predict", {**record, "amount": -1.0, "request_id": "find-me-42"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [ln for ln in server.log.read_text().splitlines() if ln.startswith("{")]
        found = [json.loads(ln) for ln in lines if "find-me-42" in ln]
        if found:
            break
        time.sleep(0.1)
    assert found, "no JSON log line for the refused request"
    assert found[0]["level"] == "INFO"
    assert found[0]["status"] == 422


def test_inference_log_flushed_on_shutdown(server, tiny):
    record = tiny.records(1)[0]
    status, _ = call(f"{server.base}/predict", {**record, "request_id": "last-one"})
    assert status == 200
    assert server.stop() == 0
    frame = pd.concat(
        pd.read_parquet(p) for p in sorted(server.inference_log.glob("date=*/part-*.parquet"))
    )
    assert "last-one" in set(frame["request_id"])
    assert len(frame) >= 10 + 199 + 2 * 119 + 1
    (arrow_id,) = ARROW_IDS  # every scored record of the Arrow batch, as for JSON
    arrow_rows = frame[frame["request_id"] == arrow_id]
    assert len(arrow_rows) == 119
    assert arrow_rows["transaction_id_hash"].notna().all()
    assert arrow_rows["transaction_id_hash"].nunique() == 119


def test_corrupt_model_stops_start_up(tiny, tmp_path):
    home = tmp_path / "bentoml"
    shutil.copytree(tiny.bentoml_home / "models", home / "models")
    name, _, version = tiny.tag.partition(":")
    with (home / "models" / name / version / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    env = model_env(tmp_path, tiny, BENTOML_HOME=str(home))
    proc = subprocess.run(
        [*BENTOML, "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "model.onnx is corrupt" in proc.stderr + proc.stdout
