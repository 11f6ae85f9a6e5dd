"""Issue 14's reproductions against a real ``bentoml serve`` on one worker, over real sockets.

Each case asserts the status, a generous time bound and the size of the answer, while a thread
probes ``/readyz`` on fresh connections. Speed and memory targets are measured by
``make bench-hostile``, not here: these bounds only catch a return of the unbounded behaviour
(seconds of work, megabytes of answer, 5xx).

``/readyz`` bound: the issue asks for 100 ms, which ``make bench-hostile`` measures. Large batch
bodies are parsed and checked in a worker thread, but that thread holds the GIL in slices, and
the suite runs on two processes on two cores, beside training and image builds of the other
process: a single probe can wait a few hundred milliseconds for a core. So the probe's median is
asserted under 100 ms and its slowest answer under :data:`READYZ_BOUND_S` (1 s), far from the
frozen event loop this catches (8.1 s before the fix).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import socket
import statistics
import string
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.hostile import (
    deep_array,
    deep_field_record,
    deep_record_batch,
    empty_records_at_cap,
    empty_records_batch,
    key_flood_batch,
    nested_lists_in_a_field,
)
from tests.support.serving import BentoServer, TinyModel, model_env, running_bento, train_tiny_model

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
READYZ_BOUND_S = 1.0
TIME_BOUND_S = 3.0  # the reproductions took 2-14 s before; about 0.1-0.3 s now
ANSWER_BOUND = 100_000  # bytes; the answers were 15-58 MB before


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("hostile") / "bentoml")


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory) -> Iterator[BentoServer]:
    home = tmp_path_factory.mktemp("hostile-home")
    with running_bento(
        model_env(home, tiny, FRAUD_HEADER_TIMEOUT_S="2", FRAUD_IDLE_TIMEOUT_S="2"),
        home / "serve.log",
    ) as srv:
        yield srv
    assert "Traceback" not in srv.text(), srv.text()[-3000:]


def port_of(server: BentoServer) -> int:
    return int(server.base.rsplit(":", 1)[1])


class Reply:
    def __init__(self, status: int, seconds: float, body: bytes) -> None:
        self.status, self.seconds, self.body = status, seconds, body

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60
) -> Reply:
    """One request on its own connection (status 0 when the connection failed)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, time.perf_counter() - t0, data)
    except OSError:
        return Reply(0, time.perf_counter() - t0, b"")
    finally:
        conn.close()


def while_probing(port: int, action: Callable[[], Reply]) -> tuple[Reply, list[float]]:
    """Run ``action`` while /readyz is probed every 20 ms; the reply and probe latencies."""
    latencies: list[float] = []
    statuses: list[int] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            r = request(port, "GET", "/readyz", timeout=30)
            statuses.append(r.status)
            latencies.append(r.seconds)
            done.wait(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.1)
    try:
        reply = action()
    finally:
        time.sleep(0.1)
        done.set()
        thread.join()
    # asserted here: an assertion inside the probe thread would not fail the test
    assert set(statuses) == {200}, f"/readyz answered {sorted(set(statuses))} meanwhile"
    return reply, latencies


def assert_bounded(reply: Reply, latencies: list[float], status: int) -> None:
    assert reply.status == status, reply.body[:300]
    assert reply.seconds < TIME_BOUND_S
    assert len(reply.body) < ANSWER_BOUND
    assert latencies, "the /readyz probe never answered"
    assert max(latencies) < READYZ_BOUND_S, sorted(latencies)[-5:]
    assert statistics.median(latencies) < 0.1


@pytest.mark.parametrize(
    ("path", "make_body", "status"),
    [
        ("/predict_batch", lambda rec: key_flood_batch(150), 422),
        ("/predict_batch", lambda rec: key_flood_batch(600), 422),
        ("/predict_batch", lambda rec: empty_records_batch(10_000), 422),
        ("/predict_batch", lambda rec: empty_records_at_cap(), 422),
        ("/predict_batch", nested_lists_in_a_field, 422),
        ("/predict", lambda rec: deep_array(1000), 422),
        ("/predict", lambda rec: deep_field_record(rec, "amount", 5000), 422),
        ("/predict_batch", lambda rec: deep_record_batch(rec, 5000), 422),
        (
            "/predict_batch",
            lambda rec: json.dumps(
                {"records": [rec, {**rec, "merchant_category": "m" * 10_000_000}]}
            ).encode(),
            200,
        ),
        (
            "/predict",
            lambda rec: json.dumps({**rec, "merchant_category": "m" * 60_000}).encode(),
            422,
        ),
    ],
    ids=[
        "flood-150",
        "flood-600",
        "empty-10000",
        "empty-at-cap",
        "lists-at-cap",
        "deep-body",
        "deep-field",
        "deep-record",
        "10MB-category",
        "60KB-category",
    ],
)
def test_hostile_body_is_bounded(server, tiny, path, make_body, status):
    record = tiny.records(1)[0]
    body = make_body(record)
    port = port_of(server)
    reply, latencies = while_probing(port, lambda: request(port, "POST", path, body))
    assert_bounded(reply, latencies, status)
    answer = reply.json()
    assert answer["errors"], answer
    assert all(e["problem"] for e in answer["errors"])
    if status == 200:  # the long category is refused, the good record scored
        assert answer["scored"] == 1 and answer["errors"][0]["problem"] == "too long"


def test_no_5xx_and_the_log_line_is_bounded(server, tiny):
    port = port_of(server)
    hostile = "k" * 30_000
    r = request(port, "POST", "/predict", json.dumps({**tiny.records(1)[0], hostile: 1}).encode())
    assert r.status == 422 and len(r.body) < 2000
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [ln for ln in server.log.read_text().splitlines() if "request refused" in ln]
        if lines and "kkkkkkkk...(+" in lines[-1]:
            break
        time.sleep(0.1)
    assert max(len(ln) for ln in lines) < 10_000  # one 13 MB line before


def test_metrics_do_not_grow_with_random_paths(server):
    port = port_of(server)
    rng = random.Random(14)
    for _ in range(20):  # warm up the series of the unmatched label and 404
        request(port, "GET", "/" + "".join(rng.choices(string.ascii_lowercase, k=12)))
    before = request(port, "GET", "/metrics").body
    statuses = set()
    for _ in range(1000):
        path = "/" + "".join(rng.choices(string.ascii_lowercase + string.digits, k=24))
        statuses.add(request(port, "GET", path).status)
    statuses.add(request(port, "GET", "/" + "p" * 60_000).status)
    after = request(port, "GET", "/metrics").body
    assert statuses <= {404, 431}
    assert abs(len(after) - len(before)) < 200  # counters tick; no series are added
    text = after.decode()
    assert 'endpoint="unmatched"' in text
    assert "pppppppp" not in text
    assert 'endpoint="/readyz"' in text  # matched routes keep their own label


def raw_exchange(
    port: int, head: bytes, chunks: int = 0, timeout: float = 30
) -> tuple[bytes, float]:
    """Send ``head`` then ``chunks`` x 64 KB of header bytes; the server's first answer."""
    t0 = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            for _ in range(chunks):
                sock.sendall(b"a" * 65536)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # cut off by the server: its answer is already on the wire
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
    return data, time.perf_counter() - t0


def test_oversized_header_gets_431(server):
    port = port_of(server)
    head = f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\nX-Big: ".encode()

    def attack() -> Reply:
        data, secs = raw_exchange(port, head, chunks=1600)  # 100 MB
        return Reply(int(data.split()[1]) if data.startswith(b"HTTP/1.1") else 0, secs, data)

    reply, latencies = while_probing(port, attack)
    assert_bounded(reply, latencies, 431)
    # one read holding a whole 40 KB head is refused too
    data, _ = raw_exchange(port, head + b"b" * 40_000)
    assert data.startswith(b"HTTP/1.1 431")
    # an ordinary head still works, and so does the next request
    assert request(port, "GET", "/readyz").status == 200


def test_slow_header_gets_408(server):
    """FRAUD_HEADER_TIMEOUT_S is 2 s for this server (10 s by default)."""
    port = port_of(server)
    with socket.create_connection((HOST, port), timeout=30) as sock:
        t0 = time.perf_counter()
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        data = b""
        for _ in range(40):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            time.sleep(0.25)
        with contextlib.suppress(OSError):
            data = sock.recv(4096)
        elapsed = time.perf_counter() - t0
    assert data.startswith(b"HTTP/1.1 408"), data[:100]
    assert 1.5 < elapsed < 9


def test_keep_alive_and_pipelining_still_work(server, tiny):
    port = port_of(server)
    body = json.dumps(tiny.records(1)[0]).encode()
    one = (
        f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(one * 3)
        data = b""
        deadline = time.monotonic() + 10
        while data.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
            data += sock.recv(65536)
    assert data.count(b"HTTP/1.1 200") == 3


def test_pipelined_large_batches_are_not_taken_for_large_heads(server, tiny):
    """A read holding one large body and the start of the next head is no 431 (the head
    limit counts only what the parser took as head in the read where the head began)."""
    port = port_of(server)
    body = json.dumps({"records": tiny.records(1) * 150}).encode()  # about 60 KB
    assert len(body) > 40_000
    head = (
        f"POST /predict_batch HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    half = len(head) // 2
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(head)
        time.sleep(0.3)  # the first head is read on its own
        sock.sendall(body + head[:half])  # one read: a whole body and half of the next head
        time.sleep(0.3)
        sock.sendall(head[half:] + body)
        data = b""
        deadline = time.monotonic() + 30
        while data.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2, data.split(b"\r\n", 1)[0]


def test_idle_connections_are_closed_from_their_start(server):
    """Issue 31: connections that never send a byte were held for ever (2,000 still open after
    76 s). FRAUD_IDLE_TIMEOUT_S is 2 s for this server (10 s by default, like HAProxy's)."""
    port = port_of(server)
    socks = [socket.create_connection((HOST, port), timeout=10) for _ in range(200)]
    opened = time.monotonic()
    closed_after: list[float | None] = []
    try:
        for sock in socks:
            sock.settimeout(max(0.1, 8 - (time.monotonic() - opened)))
            try:
                data = sock.recv(1)  # b"" once the server closes it
            except TimeoutError:
                data = None
            closed_after.append(time.monotonic() - opened if data == b"" else None)
    finally:
        for sock in socks:
            sock.close()
    assert None not in closed_after, f"{closed_after.count(None)} of 200 still open after 8 s"
    assert min(closed_after) > 1.5 and max(closed_after) < 6, (min(closed_after), max(closed_after))
    assert request(port, "GET", "/readyz").status == 200  # a connection that asks is served


def _pipelined(port: int, data: bytes) -> list[bytes]:
    """Send ``data`` in one write; the status of every answer until the server closes."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return re.findall(rb"HTTP/1.1 (\d{3}) ", received)


def test_a_refused_request_in_a_pipeline_is_answered_after_the_ones_before_it(server, tiny):
    """Issue 31: 10 valid requests then a malformed one, in one write, got one 400 and nothing
    else (request 1 scored and logged, never answered), and five log lines with tracebacks."""
    port = port_of(server)
    body = json.dumps(tiny.records(1)[0]).encode()
    one = (
        f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    malformed = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
    too_large = f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {'b' * 40_000}\r\n\r\n"
    before = server.log.stat().st_size
    for _ in range(3):
        assert _pipelined(port, one * 10 + malformed + one) == [b"200"] * 10 + [b"400"]
    assert _pipelined(port, one * 3 + too_large.encode()) == [b"200"] * 3 + [b"431"]
    time.sleep(0.5)
    grown = server.log.read_bytes()[before:].decode()
    lines = grown.splitlines()
    assert len(lines) == 4 and all("request refused: " in line for line in lines), grown[-3000:]
    assert [json.loads(line)["status"] for line in lines] == [400, 400, 400, 431]
