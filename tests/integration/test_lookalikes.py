"""Look-alike and hidden characters in served values, against a real ``bentoml serve`` (issue 31).

Cyrillic letters, fullwidth forms, zero-width joiners, U+202E, NUL and combining accents in an
open categorical feature all got 200 and reached the inference log as they came
(``'\\u202eyrecorg'``, ``'grocery\\x00'``); a request id with CR/LF/NUL was stored too. Here the
served model's spec sets ``normalize_categories`` on ``merchant_category``: fullwidth and other
compatibility forms fold (NFKC, case, outer spaces) onto the category; control and formatting
characters are a 422 naming the field; request ids keep to a safe set of characters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd
import pytest

from data_contracts.spec import FeatureSpec, parse_spec
from tests.support.serving import (
    BentoServer,
    TinyModel,
    call,
    model_env,
    running_bento,
    train_tiny_model,
)

pytestmark = pytest.mark.integration

# value sent for merchant_category -> what the log must hold (None: refused with 422)
FOLDED = {
    "ｇｒｏｃｅｒｙ": "grocery",  # fullwidth
    " GROCERY ": "grocery",
    "Ｇａｓ": "gas",
}
HIDDEN = [
    "grocery\x00",  # NUL
    "\u202eyrecorg",  # right-to-left override
    "gro\u200dcery",  # zero-width joiner
    "grocery\r\nX-Forged: 1",
    "\ufeffgrocery",  # byte-order mark
]


def _normalizing(spec: FeatureSpec) -> FeatureSpec:
    data = spec.model_dump(mode="json")
    for f in data["features"]:
        if f["name"] == "merchant_category":
            f["normalize_categories"] = True
    return parse_spec(data)


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(_normalizing(spec), tmp_path_factory.mktemp("lookalike") / "bentoml")


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory) -> Iterator[BentoServer]:
    home = tmp_path_factory.mktemp("lookalike-home")
    with running_bento(model_env(home, tiny), home / "serve.log") as server:
        yield server


def _post(server: BentoServer, body: dict, headers: dict[str, bytes] | None = None):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/predict",
            json.dumps(body),
            {"Content-Type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_lookalikes_fold_hidden_characters_are_refused_and_nothing_unsafe_is_stored(served, tiny):
    record = tiny.records(1)[0]
    refused = 0
    for i, (sent, _) in enumerate(FOLDED.items()):
        status, body = _post(served, {**record, "merchant_category": sent, "request_id": f"f-{i}"})
        assert status == 200, body
    for value in HIDDEN:
        status, body = _post(served, {**record, "merchant_category": value})
        assert status == 422, (value, body)
        (error,) = body["errors"]
        assert error["field"] == "merchant_category" and error["problem"] == "control character"
        refused += 1
    # a closed feature says the same, and a transaction id may not hide characters either
    for field, value in (("channel", "pos\u202e"), ("transaction_id", "tx\x00-1")):
        status, body = _post(served, {**record, field: value})
        assert status == 422 and body["errors"][0]["field"] == field, body
        assert body["errors"][0]["problem"] == "control character", body
        refused += 1
    for rid in ("abc\r\nX-Forged: 1", "a\x00b", "<script>", "tx 1"):
        status, body = _post(served, {**record, "request_id": rid})
        assert status == 422 and body["errors"][0]["field"] == "request_id", body
        assert body["errors"][0]["problem"] == "invalid characters" and body["request_id"] != rid
        refused += 1
    status, body = _post(served, record, {"X-Request-ID": "h\xe9llo".encode("latin-1")})
    assert status == 422 and body["errors"][0]["field"] == "X-Request-ID", body
    refused += 1
    # a batch refuses only the record that hides characters
    batch = {"records": [record, {**record, "merchant_category": "\u202eyrecorg"}]}
    status, body = call(f"{served.base}/predict_batch", batch)
    assert status == 200 and body["scored"] == 1, body
    assert body["errors"][0]["index"] == 1 and body["errors"][0]["problem"] == "control character"
    lines = [ln for ln in served.text().splitlines() if "request refused" in ln]
    assert len(lines) == refused and "Traceback" not in served.text()

    assert served.stop() == 0  # flushes the inference log
    files = sorted(served.inference_log.glob("date=*/part-*.parquet"))
    log = pd.concat(pd.read_parquet(f) for f in files)
    folded = log[log["request_id"].str.startswith("f-")].sort_values("request_id")
    assert folded["merchant_category"].tolist() == list(FOLDED.values())
    stored = [*log["merchant_category"].dropna(), *log["request_id"]]
    assert not [v for v in stored if not v.isprintable() or not v.isascii()], stored
