"""Arrow IPC stream bodies of ``/predict_batch``: read, bounded and checked like JSON batches.

The reading and the checks one by one (no model), then the in-process app: an Arrow batch
scores exactly as the same JSON batch, and every refused stream is a 4xx naming the problem.
The same through a real ``bentoml serve`` is in ``tests/integration/test_serve.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from starlette.testclient import TestClient

from bento.arrow_body import check_arrow_batch, fast_columns, is_arrow_stream, table_records
from bento.config import ServingConfig
from bento.field_errors import ErrorBudget
from bento.http_app import ServingApp
from bento.record_checker import RecordChecker
from bento.request_body import check_records
from bento.request_model import build_request_model
from bento.runtime import load_runtime
from data_contracts.schemas import validate_frame
from data_contracts.synthetic import GeneratorConfig, generate
from tests.support.serving import TinyModel, to_request, train_tiny_model

ARROW = {"content-type": "application/vnd.apache.arrow.stream"}


def stream(table: pa.Table | list[dict[str, Any]]) -> bytes:
    """An Arrow IPC stream of ``table`` (or of records, one column per key)."""
    if isinstance(table, list):
        table = pa.Table.from_pylist(table)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=64)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def records(spec) -> list[dict[str, Any]]:
    valid = validate_frame(generate(GeneratorConfig(rows=4000, seed=5)), spec).valid
    rows = valid[spec.feature_names].head(50).to_dict("records")
    return [to_request(r, spec) | {"transaction_id": f"t{i}"} for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def checker(spec) -> RecordChecker:
    return RecordChecker(build_request_model(spec), spec)


def problems(checked) -> list[tuple[int | None, str, str]]:
    return [(e.index, e.field, e.problem) for e in checked.budget.errors]


def test_the_media_type_is_recognised_with_parameters():
    assert is_arrow_stream(b"application/vnd.apache.arrow.stream")
    assert is_arrow_stream(b"Application/VND.Apache.Arrow.Stream; charset=binary")
    assert not is_arrow_stream(b"application/vnd.apache.arrow.file")
    assert not is_arrow_stream(None)


def test_a_valid_stream_gives_the_columns_a_json_batch_gives(spec, checker, records):
    checked = check_arrow_batch(checker, spec, 100, stream(records), "rid-1")
    assert checked.request_id == "rid-1" and checked.budget.errors == []
    assert checked.positions == list(range(50)) and checked.columns is not None
    for name in (*spec.feature_names, "transaction_id"):
        assert list(checked.columns[name]) == [r[name] for r in records]


def test_the_column_checks_give_what_the_record_checks_give(spec, checker, records):
    """A valid stream is checked a column at a time, with the record path's very columns."""
    table = pa.Table.from_pylist(records)
    fast = check_arrow_batch(checker, spec, 100, stream(table), None)
    assert fast.records == [] and fast.positions == list(range(50))  # no model per record
    slow = check_records(checker, table_records(table), "r", ErrorBudget())
    assert slow.records and slow.columns is not None and fast.columns is not None
    assert {k: list(v) for k, v in fast.columns.items()} == {
        k: list(v) for k, v in slow.columns.items()
    }


def _spoil(spec, kind: str) -> tuple[str, Any]:
    """A feature name and a value the record checks refuse, of one kind of problem."""
    numeric = next(f for f in spec.features if f.kind.value == "numeric" and f.max is not None)
    integer = next(f for f in spec.features if f.kind.value == "integer")
    closed = next(f for f in spec.categorical_features if not f.allow_unknown_categories)
    required = next(f for f in spec.features if not f.nullable and f.kind.value == "numeric")
    return {
        "nan": (numeric.name, float("nan")),
        "inf": (numeric.name, float("-inf")),
        "above": (numeric.name, numeric.max * 2),
        "fraction": (integer.name, 2.5),
        "category": (closed.name, "Teleport"),
        "null": (required.name, None),
        "id control": ("transaction_id", "tx\u202e1"),
        "id length": ("transaction_id", "t" * (spec.id_max_length + 1)),
    }[kind]


@pytest.mark.parametrize(
    "kind", ["nan", "inf", "above", "fraction", "category", "null", "id control", "id length"]
)
def test_any_doubtful_value_sends_the_batch_to_the_record_checks(spec, checker, records, kind):
    name, value = _spoil(spec, kind)
    rows = [dict(r) for r in records]
    rows[4][name] = value
    table = pa.Table.from_pylist(rows)
    assert fast_columns(table, spec) is None
    checked = check_arrow_batch(checker, spec, 100, stream(table), None)
    assert [(e.index, e.field) for e in checked.budget.errors] == [(4, name)]
    assert checked.positions == [i for i in range(50) if i != 4]


def test_missing_unknown_and_mistyped_columns_are_refused_naming_them(spec, checker, records):
    name = spec.feature_names[0]
    numeric = next(
        f.name for f in spec.features if f.kind.value in ("numeric", "integer") and f.name != name
    )
    category = next(f.name for f in spec.categorical_features if f.name != name)
    table = pa.Table.from_pylist(records).drop_columns([name])
    table = table.append_column("surprise", pa.array([1] * len(records)))
    table = table.set_column(
        table.schema.get_field_index(numeric), numeric, pa.array(["1.5"] * len(records))
    )
    table = table.set_column(
        table.schema.get_field_index(category), category, pa.array([3] * len(records))
    )
    checked = check_arrow_batch(checker, spec, 100, stream(table), None)
    assert checked.records is None and checked.detail == "invalid batch"
    found = set(problems(checked))
    assert (None, name, "missing") in found
    assert (None, "surprise", "unknown field") in found
    assert (None, numeric, "wrong type") in found
    assert (None, category, "wrong type") in found
    wrong = next(e for e in checked.budget.errors if e.field == numeric)
    assert "string" in wrong.message and "floating-point" in wrong.message


def test_bad_values_are_listed_with_their_record_index_and_the_rest_scored(spec, checker, records):
    numeric = next(f for f in spec.features if f.kind.value == "numeric" and f.max is not None)
    closed = next(f for f in spec.categorical_features if not f.allow_unknown_categories)
    rows = [dict(r) for r in records]
    rows[3][numeric.name] = float("nan")
    rows[5][numeric.name] = float("inf")
    rows[8][numeric.name] = numeric.max + 1
    rows[9][closed.name] = "teleport"
    checked = check_arrow_batch(checker, spec, 100, stream(rows), None)
    assert problems(checked) == [
        (3, numeric.name, "NaN or infinite"),
        (5, numeric.name, "NaN or infinite"),
        (8, numeric.name, "out of range"),
        (9, closed.name, "unknown category"),
    ]
    assert checked.positions == [i for i in range(50) if i not in (3, 5, 8, 9)]


def test_a_null_where_the_spec_allows_none_names_the_record(spec, checker, records):
    name = next(f.name for f in spec.features if not f.nullable)
    rows = [dict(r) for r in records]
    rows[2][name] = None
    checked = check_arrow_batch(checker, spec, 100, stream(rows), None)
    assert problems(checked) == [(2, name, "null not allowed")]


def test_too_many_rows_are_refused_before_all_are_read(spec, checker, records):
    checked = check_arrow_batch(checker, spec, 49, stream(records), None)
    assert problems(checked) == [(None, "records", "too many records")]
    assert "at most 49" in checked.budget.errors[0].message


def test_rows_that_cost_no_bytes_are_still_counted_against_the_limit(spec, checker):
    """Null-typed columns carry no buffers: a tiny body may declare millions of rows."""
    table = pa.table({name: pa.nulls(2_000_000) for name in spec.feature_names})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)  # one batch of 2,000,000 rows
    body = sink.getvalue().to_pybytes()
    assert len(body) < 10_000
    checked = check_arrow_batch(checker, spec, 10_000, body, None)
    assert problems(checked) == [(None, "records", "too many records")]


@pytest.mark.parametrize(
    ("cut", "problem"),
    [
        (lambda b: b[: len(b) // 2], "invalid Arrow stream"),
        (lambda b: b[:7], "invalid Arrow stream"),
        (lambda b: b"\x00garbage" * 40, "invalid Arrow stream"),
        (lambda b: b"", "invalid Arrow stream"),
        (lambda b: json.dumps({"records": []}).encode(), "invalid Arrow stream"),
    ],
)
def test_truncated_or_garbage_streams_are_refused_with_a_reason(
    spec, checker, records, cut, problem
):
    checked = check_arrow_batch(checker, spec, 100, cut(stream(records)), None)
    assert checked.records is None
    (error,) = checked.budget.errors
    assert (error.field, error.problem) == ("body", problem) and error.message


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_streams_are_refused_before_decoding(spec, checker, records, codec):
    """A compressed batch may decode to far more than the body cap: refused unread."""
    table = pa.Table.from_pylist(records)
    category = spec.categorical_features[0].name
    index = table.schema.get_field_index(category)
    table = table.set_column(index, category, table[category].dictionary_encode())
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=codec)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    checked = check_arrow_batch(checker, spec, 100, sink.getvalue().to_pybytes(), None)
    assert problems(checked) == [(None, "body", "compressed stream")]
    dictionary = check_arrow_batch(checker, spec, 100, stream(table), None)
    assert dictionary.positions == list(range(50))  # dictionary-encoded strings are fine
    assert list(dictionary.columns[category]) == [r[category] for r in records]


def test_a_stream_without_rows_is_refused(spec, checker, records):
    empty = pa.Table.from_pylist(records).slice(0, 0)
    checked = check_arrow_batch(checker, spec, 100, stream(empty), None)
    assert problems(checked) == [(None, "records", "no records")]


# --------------------------------------------------------------------------- through the app


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("arrow") / "bentoml")


@pytest.fixture(scope="module")
def client(tiny) -> Iterator[TestClient]:
    name, _, version = tiny.tag.partition(":")
    model_dir = Path(tiny.bentoml_home) / "models" / name / version
    meta = yaml.safe_load((model_dir / "model.yaml").read_text())["metadata"]
    serving = ServingApp()
    config = ServingConfig(inference_log_enabled=False, max_batch_records=300)
    serving.bind(load_runtime(model_dir, meta, tag=tiny.tag), config, None, None)
    with TestClient(serving.app) as c:
        yield c


def test_an_arrow_batch_scores_as_the_same_json_batch(client, tiny):
    rows = tiny.records(300)
    rows[7]["amount"] = float("nan")
    by_json = client.post("/predict_batch", content=json.dumps({"records": rows}).encode(),
                          headers={"content-type": "application/json"})  # fmt: skip
    by_arrow = client.post("/predict_batch", content=stream(rows), headers=ARROW)
    assert by_json.status_code == by_arrow.status_code == 200, by_arrow.text[:300]
    a, j = by_arrow.json(), by_json.json()
    assert (a["scored"], a["rejected"]) == (j["scored"], j["rejected"]) == (299, 1)
    assert a["predictions"] == j["predictions"] and a["predictions"][7] is None
    assert [(e["index"], e["field"], e["problem"]) for e in a["errors"]] == [
        (7, "amount", "NaN or infinite")
    ]


def test_refused_streams_are_4xx_never_5xx(client, tiny):
    good = stream(tiny.records(20))
    too_many = stream(tiny.records(301))
    for body, status in ((good[:100], 422), (b"garbage", 422), (too_many, 422)):
        r = client.post("/predict_batch", content=body, headers=ARROW)
        assert r.status_code == status, r.text[:300]
        assert r.json()["errors"][0]["field"] in ("body", "records")
    single = client.post("/predict", content=good, headers=ARROW)
    assert single.status_code == 415 and "application/json" in single.json()["detail"]
