"""Schema-driven fuzzing of a real ``bentoml serve`` from its own OpenAPI document (schemathesis).

Positive cases (bodies that follow the documented request schema) and negative cases (bodies
that break it) are sent to ``/predict`` and ``/predict_batch``, and every other documented
operation is called too. Every reply must be a documented status with a body matching the
documented response schema, and no reply may be a 5xx. Non-JSON and pickled bodies are checked
against the same server.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.serving import (
    BentoServer,
    TinyModel,
    model_env,
    start_bento,
    train_tiny_model,
    wait_ready,
)

pytestmark = pytest.mark.integration

MAX_BATCH = 25  # small batches keep generated bodies (and the run) short
# generated requests per (operation, mode): 4 x 260 = 1,040 on the prediction endpoints
EXAMPLES = 260
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Served:
    """The fuzzed server and a session that talks to it on loopback only."""

    server: BentoServer
    session: requests.Session

    @property
    def base(self) -> str:
        return self.server.base


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("fuzz") / "bentoml")


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("fuzz-home")
    env = model_env(home, tiny, FRAUD_MAX_BATCH_RECORDS=str(MAX_BATCH))
    server = start_bento(env, home / "serve.log")
    session = requests.Session()
    session.trust_env = False  # loopback only, never through a proxy
    try:
        wait_ready(server)
        yield Served(server, session)
    finally:
        code = server.stop()
        session.close()
        assert code == 0, f"bentoml serve exited {code}:\n{server.text()[-3000:]}"
    assert "Traceback" not in server.text(), server.text()[-3000:]


@pytest.fixture(scope="module")
def schema(served) -> schemathesis.BaseSchema:
    document = served.session.get(f"{served.base}/docs.json", timeout=10)
    assert document.status_code == 200, document.text
    loaded = schemathesis.openapi.from_dict(document.json())
    loaded.config.update(base_url=served.base)
    return loaded


def _fuzz(served: Served, strategy, checks, examples: int) -> int:
    """Send ``examples`` generated cases; return how many requests were made."""
    sent = 0

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(session=served.session, checks=checks, timeout=30)

    run()
    return sent


def partial_scoring(ctx, response, case) -> None:
    """A schema-violating batch is refused, or scored partially with the bad records refused.

    Partial scoring is the documented batch policy: a batch with some invalid records answers
    200, lists those records in ``errors`` and scores only the others.
    """
    if response.status_code != 200:
        return  # refused: the status and body are checked against the document elsewhere
    reply = response.json()
    total = len(case.body["records"])
    assert reply["rejected"] >= 1, f"a schema-violating batch was scored whole: {reply}"
    assert reply["scored"] + reply["rejected"] == total, reply
    refused = {e["index"] for e in reply["errors"]}
    assert len(refused) == reply["rejected"], reply
    for i, prediction in enumerate(reply["predictions"]):
        assert (prediction is None) == (i in refused), (i, reply)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
def test_generated_requests_get_documented_answers(served, schema, path, mode):
    operation = schema[path]["POST"]
    if mode.is_positive:
        extra = positive_data_acceptance
    else:
        extra = partial_scoring if path == "/predict_batch" else negative_data_rejection
    sent = _fuzz(served, operation.as_strategy(generation_mode=mode), [*CHECKS, extra], EXAMPLES)
    print(f"{path} {mode.value}: {sent} generated requests, all answered as documented")
    assert sent >= EXAMPLES


def test_every_other_documented_operation(served, schema):
    called = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in {"/predict", "/predict_batch"}:
            continue
        sent = _fuzz(served, operation.as_strategy(), CHECKS, 5)
        called.append((operation.method.upper(), operation.path, sent))
    print("other operations:", called)
    assert {p for _, p, _ in called} >= {"/healthz", "/livez", "/readyz", "/metrics"}


@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
def test_non_json_and_pickled_bodies_are_refused(served, tiny, path):
    record = tiny.records(1)[0]
    bodies = [pickle.dumps(record), pickle.dumps({"records": [record]}), b"amount=1"]
    for content_type in (
        "text/plain",
        "application/octet-stream",
        "application/python-pickle",
        "application/x-python-serialize",
    ):
        for body in bodies:
            r = served.session.post(
                served.base + path, data=body, headers={"Content-Type": content_type}, timeout=10
            )
            assert r.status_code == 415, (content_type, r.text)
            assert "application/json" in r.json()["detail"]
    for body in bodies[:2]:
        r = served.session.post(
            served.base + path, data=body, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert r.status_code == 422, r.text
    ok = served.session.post(served.base + "/predict", data=json.dumps(record), timeout=10,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert ok.status_code == 200, ok.text
