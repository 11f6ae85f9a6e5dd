"""The hostile benchmark's HTTP exchanges: one request, raw-socket header attacks, probes.

Every exchange is timed and sized as a :class:`Reply` (status 0: no answer), each on a fresh
connection; :class:`ReadyzProbe` polls ``/readyz`` the way a readiness probe does. Kept apart
from :mod:`benchmarks.serve.hostile`, which decides what to send and when, so that the
benchmark reads as its phases.
"""

from __future__ import annotations

import http.client
import random
import socket
import string
import threading
import time
from dataclasses import dataclass

from benchmarks.serve.harness import tree_rss_mb

HOST = "127.0.0.1"


@dataclass
class Reply:
    """One HTTP exchange: status (0: no answer), seconds and answer size."""

    status: int
    seconds: float
    size: int
    note: str = ""


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> Reply:
    """One request on a fresh connection; connection errors are a status of 0."""
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs |= headers or {}
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, time.perf_counter() - t0, len(data))
    except (OSError, http.client.HTTPException) as err:
        return Reply(0, time.perf_counter() - t0, 0, type(err).__name__)
    finally:
        conn.close()


def raw_header_attack(port: int, header_bytes: int, timeout: float = 120) -> Reply:
    """Send a request whose one header value is ``header_bytes`` long; read the answer."""
    t0 = time.perf_counter()
    sock = socket.create_connection((HOST, port), timeout=timeout)
    note = ""
    try:
        sock.sendall(f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\nX-Big: ".encode())
        chunk = b"a" * 65536
        sent = 0
        try:
            while sent < header_bytes:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError as err:
            note = f"server closed after {sent:,} bytes ({type(err).__name__})"
        try:
            data = sock.recv(65536)
        except OSError as err:
            data = b""
            note = note or type(err).__name__
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return Reply(status, time.perf_counter() - t0, len(data), note)


def held_headers(port: int, connections: int, header_bytes: int, pid: int) -> Reply:
    """``connections`` sockets each sending an unfinished ``header_bytes`` header, held open;
    the note gives the worker's RSS growth while they are held."""
    before = tree_rss_mb(pid).get("worker", 0.0)
    t0 = time.perf_counter()
    socks, cut = [], 0
    for _ in range(connections):
        s = socket.create_connection((HOST, port), timeout=30)
        s.sendall(f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\nX-Big: ".encode())
        socks.append(s)
    chunk = b"a" * 65536
    for s in socks:
        try:
            for _ in range(header_bytes // len(chunk)):
                s.sendall(chunk)
        except OSError:
            cut += 1
    time.sleep(1.0)
    held = tree_rss_mb(pid).get("worker", 0.0)
    for s in socks:
        s.close()
    note = f"RSS +{held - before:.0f} MB while held; {cut}/{connections} cut off by the server"
    return Reply(0, time.perf_counter() - t0, 0, note)


class ReadyzProbe(threading.Thread):
    """Polls ``/readyz`` every ``interval`` seconds on a new connection; keeps latencies."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.latencies: list[float] = []
        self.failures = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            r = request(self.port, "GET", "/readyz", timeout=60)
            if r.status != 200:
                self.failures += 1
            self.latencies.append(r.seconds)
            self._done.wait(self.interval)

    def take(self) -> list[float]:
        """The latencies so far, and start afresh."""
        out, self.latencies = self.latencies, []
        return out

    def stop(self) -> None:
        self._done.set()
        self.join()


def random_path(rng: random.Random, length: int = 24) -> str:
    """A path no route matches: ``length`` random lowercase letters and digits."""
    return "/" + "".join(rng.choices(string.ascii_lowercase + string.digits, k=length))


def metrics_size(port: int) -> tuple[int, float]:
    """``/metrics`` size in bytes and scrape time in seconds."""
    r = request(port, "GET", "/metrics")
    return r.size, r.seconds
