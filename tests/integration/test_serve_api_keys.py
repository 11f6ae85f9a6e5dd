"""API keys on a real ``bentoml serve``: refusals, both headers, open probes, rotation."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Iterator

import pytest

from data_contracts.api_keys import new_key, write_key_file
from tests.support.serving import BentoServer, TinyModel, model_env, running_bento, train_tiny_model

pytestmark = pytest.mark.integration
OLD, NEW = new_key(), new_key()


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("keys") / "bentoml")


@pytest.fixture(scope="module")
def keyed(tiny, tmp_path_factory) -> Iterator[tuple[BentoServer, object]]:
    home = tmp_path_factory.mktemp("home")
    key_file = home / "secrets" / "api" / "keys"
    write_key_file(key_file, [OLD])
    env = model_env(home, tiny, FRAUD_API_KEYS_FILE=str(key_file))
    with running_bento(env, home / "serve.log") as srv:
        yield srv, key_file


def post(
    conn: http.client.HTTPConnection, path: str, body: object, headers: dict[str, str]
) -> tuple[int, dict]:
    conn.request(
        "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
    )
    reply = conn.getresponse()
    return reply.status, json.loads(reply.read() or b"null")


def connect(server: BentoServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)


def test_prediction_endpoints_need_a_key_probes_do_not(keyed, tiny):
    server, _ = keyed
    record = tiny.records(1)[0]
    conn = connect(server)
    refusals = []
    for path, body in (("/predict", record), ("/predict_batch", {"records": [record]})):
        for headers in (
            {},
            {"Authorization": f"Bearer {NEW}"},
            {"X-API-Key": OLD[:-2]},
            {"Authorization": f"Basic {OLD}"},
        ):
            status, reply = post(conn, path, body, headers)
            assert status == 401, (path, headers, reply)
            refusals.append(reply["detail"])
        for headers in ({"Authorization": f"Bearer {OLD}"}, {"X-API-Key": OLD}):
            status, reply = post(conn, path, body, headers)
            assert status == 200, (path, headers, reply)
    assert len(set(refusals)) == 1  # never says which part was wrong
    for path in ("/livez", "/readyz", "/metrics"):
        conn.request("GET", path)
        reply = conn.getresponse()
        text = reply.read().decode()
        assert reply.status == 200, path
    pattern = r'fraud_auth_refused_total\{reason="(\w+)"\} (\S+)'
    counts = {m[0]: float(m[1]) for m in re.findall(pattern, text)}
    assert counts == {"missing": 2.0, "malformed": 2.0, "unknown_key": 4.0}
    conn.close()
    log = server.text()
    assert OLD not in log and NEW not in log
    assert "FRAUD_API_KEYS_FILE=" in log  # the start-up line says keys are on, and where from


def test_rotation_under_load_fails_no_request_with_the_current_key(keyed, tiny):
    server, key_file = keyed
    records = tiny.records(20)
    current = [OLD]
    stop = threading.Event()
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def load() -> None:
        conn = connect(server)
        i = 0
        while not stop.is_set():
            key = current[0]
            status, _ = post(conn, "/predict", records[i % 20], {"X-API-Key": key})
            with lock:
                results.append((status, "new" if key == NEW else "old"))
            i += 1
        conn.close()

    def accepted(key: str, want: bool, timeout_s: float = 10) -> None:
        conn = connect(server)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (post(conn, "/predict", records[0], {"X-API-Key": key})[0] == 200) == want:
                conn.close()
                return
            time.sleep(0.1)
        pytest.fail(f"key change not taken within {timeout_s} s")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        write_key_file(key_file, [NEW, OLD])  # step 1: both valid
        accepted(NEW, True)
        current[0] = NEW  # callers move to the new key
        time.sleep(1.0)
        write_key_file(key_file, [NEW])  # step 2: the old one removed
        accepted(OLD, False)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    failed = [r for r in results if r[0] != 200]
    by_key = {k: sum(1 for r in results if r[1] == k) for k in ("old", "new")}
    assert by_key["old"] > 50 and by_key["new"] > 50, by_key
    assert failed == [], f"{len(failed)} of {len(results)} failed: {failed[:5]}"
    log = server.text()
    assert "API keys reloaded" in log and OLD not in log and NEW not in log
