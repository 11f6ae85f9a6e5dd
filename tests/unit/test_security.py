"""Security properties of the serving path: self-contained ONNX only, no body bypasses validation.

The HTTP checks run against the mounted prediction app (:class:`bento.http_app.ServingApp`)
bound to a tiny real model; the same refusals are checked against a real ``bentoml serve`` in
``tests/integration/test_fuzz.py``.
"""

from __future__ import annotations

import ast
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import (
    _get_all_tensors,
    convert_model_to_external_data,
    set_external_data,
    uses_external_data,
)
from starlette.testclient import TestClient

from bento.config import ServingConfig
from bento.http_app import ServingApp
from bento.runtime import (
    ModelLoadError,
    check_self_contained,
    external_data_tensors,
    load_runtime,
    verify_files,
)
from data_contracts.artifacts import ONNX_FILE as MODEL_FILE
from data_contracts.artifacts import SPEC_FILE
from tests.support.serving import TinyModel, train_tiny_model

BENTO_DIR = Path(__file__).resolve().parents[2] / "bento"
MAX_BATCH = 20
MAX_RECORD_BYTES = 4096
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("security") / "bentoml")


# --------------------------------------------------------------------------- ONNX external data


def _matmul_model(
    constant: bool = False, subgraph: bool = False, sparse: bool = False
) -> onnx.ModelProto:
    """A small valid graph whose tensors sit in an initializer, a Constant node, a subgraph
    (``If`` branch) or a sparse initializer."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    weights = np.arange(8, dtype=np.float32).reshape(4, 2)
    nodes, initializers, sparse_inits = [], [], []
    if constant:
        nodes.append(
            helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weights, "W"))
        )
    elif sparse:
        values = numpy_helper.from_array(weights.reshape(-1)[1:], "W_values")
        indices = numpy_helper.from_array(np.arange(1, 8, dtype=np.int64), "W_indices")
        sparse_inits.append(helper.make_sparse_tensor(values, indices, [4, 2]))
    else:
        initializers.append(numpy_helper.from_array(weights, "W"))
    nodes.append(helper.make_node("MatMul", ["x", "W"], ["y"]))
    graph = helper.make_graph(nodes, "g", [x], [y], initializers, sparse_initializer=sparse_inits)
    if subgraph:
        cond = numpy_helper.from_array(np.array(True), "cond")
        branch = helper.make_graph(nodes, "branch", [], [y], initializers)
        other = helper.make_graph(nodes, "other", [], [y], initializers)
        graph = helper.make_graph(
            [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)],
            "outer",
            [x],
            [y],
            [cond],
        )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _external(model: onnx.ModelProto, tmp_path: Path) -> bytes:
    """The model saved with every tensor (attributes too) in a side file next to it."""
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0,
        convert_attribute=True,
    )  # fmt: skip
    path = tmp_path / "external.onnx"
    onnx.save_model(model, path)
    return path.read_bytes()


def _oracle(model_bytes: bytes) -> list[str]:
    """What the ``onnx`` package itself says uses external data (the scan must agree)."""
    model = onnx.load_from_string(model_bytes)
    return [t.name for t in _get_all_tensors(model) if uses_external_data(t)]


@pytest.mark.parametrize("kind", ["initializer", "constant", "subgraph", "sparse"], ids=lambda k: k)
def test_external_data_is_found_wherever_the_tensor_sits(kind, tmp_path):
    model = _matmul_model(
        constant=kind == "constant", subgraph=kind == "subgraph", sparse=kind == "sparse"
    )
    inline = model.SerializeToString()
    assert external_data_tensors(inline) == []
    check_self_contained(inline, tag="t")
    if kind == "sparse":  # onnx's converter leaves sparse tensors inline: point one outside
        values = model.graph.sparse_initializer[0].values
        set_external_data(values, "weights.bin")
        values.data_location = TensorProto.EXTERNAL
        values.ClearField("raw_data")
        values.ClearField("float_data")
    data = _external(model, tmp_path)
    found = external_data_tensors(data)
    if kind == "sparse":  # onnx's own helper does not look into sparse initializers
        assert found == ["W_values"]
    else:
        assert found and sorted(found) == sorted(_oracle(data))
    with pytest.raises(ModelLoadError, match="external data") as err:
        check_self_contained(data, tag="fraud-detector:v3")
    assert "fraud-detector:v3" in str(err.value)
    assert repr(found[0]) in str(err.value)


def test_the_trained_model_is_self_contained(tiny):
    assert external_data_tensors(tiny.model_bytes) == []
    assert _oracle(tiny.model_bytes) == []


def test_truncated_protobuf_is_refused(tiny):
    with pytest.raises(ModelLoadError, match="cannot load"):
        check_self_contained(tiny.model_bytes[: len(tiny.model_bytes) // 2], tag="t")


def _model_dir(root: Path, model_bytes: bytes, tiny: TinyModel) -> tuple[Path, dict[str, Any]]:
    import hashlib

    root.mkdir()
    (root / MODEL_FILE).write_bytes(model_bytes)
    (root / SPEC_FILE).write_text(json.dumps(tiny.spec.model_dump(mode="json")))
    meta = {
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "spec_hash": tiny.spec.spec_hash(),
        "threshold": 0.5,
        "model_version": "3",
    }
    return root, meta


def test_start_up_refuses_a_model_with_external_data(tiny, tmp_path):
    """Even with a matching sha256 and the side file present, the service will not load it."""
    model = onnx.load_from_string(tiny.model_bytes)
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(4, np.float32), "unused"))
    data = _external(model, tmp_path)
    assert (tmp_path / "weights.bin").is_file()
    d, meta = _model_dir(tmp_path / "stored", data, tiny)
    (d / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes())
    for check in (verify_files, load_runtime):
        with pytest.raises(ModelLoadError, match=r"model\.onnx stores tensors as ONNX external"):
            check(d, meta, tag="fraud-detector:v3")


def test_start_up_accepts_the_self_contained_model(tiny, tmp_path):
    d, meta = _model_dir(tmp_path / "stored", tiny.model_bytes, tiny)
    assert load_runtime(d, meta, tag="fraud-detector:v3").model_version == "3"


def test_serving_code_never_deserialises_pickles():
    """No module of the service imports a pickle-based loader."""
    banned = {"pickle", "cloudpickle", "joblib", "dill", "marshal", "shelve", "skops"}
    for path in sorted(BENTO_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


# --------------------------------------------------------------------------- HTTP bodies


@pytest.fixture(scope="module")
def client(tiny, tmp_path_factory) -> Iterator[TestClient]:
    d, meta = _model_dir(tmp_path_factory.mktemp("app") / "model", tiny.model_bytes, tiny)
    runtime = load_runtime(d, meta, tag="fraud-detector:v3")
    config = ServingConfig(
        max_batch_records=MAX_BATCH,
        max_body_bytes=MAX_BODY_BYTES,
        max_record_bytes=MAX_RECORD_BYTES,
        inference_log_enabled=False,
    )
    serving = ServingApp()
    serving.bind(runtime, config, None, None)
    with TestClient(serving.app) as c:
        yield c


@pytest.fixture(scope="module")
def record(tiny) -> dict[str, Any]:
    return tiny.records(1)[0]


class _Payload:
    """An object whose unpickling would run code: it must never reach ``pickle.loads``."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("unpickled",))


def _bodies(record: dict[str, Any]) -> dict[str, bytes]:
    return {
        "pickled record": pickle.dumps(record),
        "pickled batch": pickle.dumps({"records": [record]}),
        "pickled object": pickle.dumps(_Payload()),
        "json text": json.dumps(record).encode(),
        "form": b"amount=1&channel=pos",
    }


NON_JSON_TYPES = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/octet-stream",
    "application/python-pickle",
    "application/x-python-serialize",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "json",
    "",
]


@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
@pytest.mark.parametrize("content_type", NON_JSON_TYPES)
def test_non_json_media_types_are_refused(client, record, path, content_type):
    for name, body in _bodies(record).items():
        r = client.post(path, content=body, headers={"content-type": content_type})
        assert r.status_code == 415, (name, r.text)
        detail = r.json()["detail"]
        assert "unsupported media type" in detail and "application/json" in detail


@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
def test_no_content_type_is_refused(client, record, path):
    r = client.post(path, content=pickle.dumps(record))
    assert r.status_code == 415, r.text


@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
@pytest.mark.parametrize(
    "content_type", ["application/json", "application/python-pickle+json", "APPLICATION/JSON"]
)
def test_pickles_labelled_as_json_are_invalid_json(client, record, path, content_type, capsys):
    for name in ("pickled record", "pickled batch", "pickled object"):
        r = client.post(path, content=_bodies(record)[name], headers={"content-type": content_type})
        assert r.status_code == 422, (name, r.text)
        assert r.json()["errors"], name
    assert "unpickled" not in capsys.readouterr().out


@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
def test_json_in_other_shapes_is_invalid(client, record, path):
    for body in (b"null", b"42", b'"text"', json.dumps([record]).encode(), b"{" * 5000):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code in (413, 422), (body[:20], r.text)


def test_record_size_cap_holds_without_content_length(client, record):
    """A chunked body (no Content-Length) over the cap is cut off while it is read."""
    padding = json.dumps({**record, "transaction_id": "x" * MAX_RECORD_BYTES}).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(padding), 512):
            yield padding[i : i + 512]

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert str(MAX_RECORD_BYTES) in r.json()["detail"]


def test_declared_length_over_the_cap_is_refused_unread(client):
    r = client.post(
        "/predict_batch",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": str(MAX_BODY_BYTES + 1)},
    )
    assert r.status_code == 413, r.text


def test_batch_body_cap(client, record):
    records = [{**record, "transaction_id": "x" * 150} for _ in range(MAX_BATCH)] * 20
    r = client.post(
        "/predict_batch",
        content=json.dumps({"records": records}).encode(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert str(MAX_BODY_BYTES) in r.json()["detail"]


def test_batch_length_cap(client, record):
    r = client.post(
        "/predict_batch",
        content=json.dumps({"records": [record] * (MAX_BATCH + 1)}).encode(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert ("records", "too many records") in {
        (e["field"], e["problem"]) for e in r.json()["errors"]
    }
    ok = client.post(
        "/predict_batch",
        content=json.dumps({"records": [record] * MAX_BATCH}).encode(),
        headers={"content-type": "application/json"},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["scored"] == MAX_BATCH


@pytest.mark.parametrize(
    "request_id", ["\x1f", "a\r\nSet-Cookie: session=1", " padded ", "café-7", "tab\there", "50%"]
)
@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
def test_caller_request_id_cannot_break_or_add_headers(client, record, path, request_id):
    """Issue 31: such ids were answered and stored as sent (CR/LF/NUL in the inference log);
    now a request id keeps to a safe set of characters, or the request is refused naming it."""
    body = (
        {**record, "request_id": request_id}
        if path == "/predict"
        else {"records": [record], "request_id": request_id}
    )
    r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert ("request_id", "invalid characters") in {
        (e["field"], e["problem"]) for e in r.json()["errors"]
    }
    assert r.json()["request_id"] != request_id  # never echoed: a generated one
    header = r.headers["x-request-id"]
    assert header.isascii() and header.isprintable() and " " not in header
    assert "set-cookie" not in r.headers


def test_every_refusal_status_is_documented(client):
    doc = client.get("/docs.json").json()
    for path in ("/predict", "/predict_batch"):
        responses = doc["paths"][path]["post"]["responses"]
        assert {"200", "400", "413", "415", "422", "503"} <= set(responses), path
        for status in ("400", "413", "415", "422", "503"):
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith("/ErrorResponse"), (path, status)
