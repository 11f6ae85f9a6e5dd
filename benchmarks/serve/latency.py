"""What a single client sees while load runs: paced probes, a batch sender, stall figures.

wrk gives throughput and percentiles of all requests together; a stall (the interpreter lock
held by a log flush, a collection, a large batch) shows better in what one paced client sees
second by second. :class:`Probe` sends one single-row ``POST /predict`` every few milliseconds
on one keep-alive connection and keeps each latency with its start time; :func:`stall_figures`
turns them into p50/p99/p99.9/max and the worst one-second window. :class:`BatchSender` posts
large valid batches back to back on its own connection (the neighbour a single-row request
must not wait behind); :class:`Scraper` reads ``/metrics`` like a (very eager) Prometheus.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass

HOST = "127.0.0.1"
JSON_TYPE = "application/json"


class _Client(threading.Thread):
    """A thread that sends requests on one keep-alive connection until stopped."""

    def __init__(self, port: int, timeout: float = 30, content_type: str = JSON_TYPE) -> None:
        super().__init__(daemon=True)
        self.port, self.timeout = port, timeout
        self.headers = {"Content-Type": content_type}
        self._done = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self.failures = 0

    def exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """One request; reconnects after a connection error (status 0)."""
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            self._conn.request(method, path, body=body, headers=self.headers if body else {})
            resp = self._conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return 0, b""

    def stop(self) -> None:
        self._done.set()
        self.join()
        if self._conn is not None:
            self._conn.close()


class Probe(_Client):
    """One single-row ``/predict`` every ``interval`` seconds: (start, seconds, status)."""

    def __init__(self, port: int, bodies: list[bytes], interval: float = 0.005) -> None:
        super().__init__(port)
        self.bodies, self.interval = bodies, interval
        self.samples: list[tuple[float, float, int]] = []

    def run(self) -> None:
        i = 0
        while not self._done.is_set():
            t0 = time.perf_counter()
            status, _ = self.exchange("POST", "/predict", self.bodies[i % len(self.bodies)])
            took = time.perf_counter() - t0
            self.samples.append((t0, took, status))
            self.failures += status != 200
            i += 1
            self._done.wait(max(0.0, self.interval - took))

    @property
    def scored(self) -> int:
        return sum(1 for *_, s in self.samples if s == 200)


class BatchSender(_Client):
    """Posts ``body`` (a valid batch of ``records`` records, JSON unless ``content_type``
    says otherwise) back to back."""

    def __init__(self, port: int, body: bytes, records: int, content_type: str = JSON_TYPE) -> None:
        super().__init__(port, timeout=120, content_type=content_type)
        self.body, self.records = body, records
        self.latencies: list[float] = []

    def run(self) -> None:
        while not self._done.is_set():
            t0 = time.perf_counter()
            status, _ = self.exchange("POST", "/predict_batch", self.body)
            if status == 200:
                self.latencies.append(time.perf_counter() - t0)
            else:
                self.failures += 1

    @property
    def scored(self) -> int:
        return len(self.latencies) * self.records


class Scraper(_Client):
    """``GET /metrics`` every ``interval`` seconds; keeps the scrape times."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        super().__init__(port)
        self.interval = interval
        self.latencies: list[float] = []

    def run(self) -> None:
        while not self._done.wait(self.interval):
            t0 = time.perf_counter()
            status, _ = self.exchange("GET", "/metrics", None)
            self.latencies.append(time.perf_counter() - t0)
            self.failures += status != 200


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by rank; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Stalls:
    """A probe's latencies (ms): percentiles, maximum and the worst one-second window."""

    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    worst_1s_p99_ms: float  # the highest p99 of any whole second of the run
    worst_1s_max_ms: float


def stall_figures(samples: list[tuple[float, float, int]]) -> Stalls:
    """Percentiles of all samples and of the worst second (samples grouped by start time)."""
    ok = [s for _, s, status in samples if status == 200]
    seconds: dict[int, list[float]] = {}
    start = samples[0][0] if samples else 0.0
    for t0, took, status in samples:
        if status == 200:
            seconds.setdefault(int(t0 - start), []).append(took)
    whole = [v for v in seconds.values() if len(v) >= 10]  # a cut-off last second says little
    ms = 1000.0
    return Stalls(
        requests=len(samples),
        failures=len(samples) - len(ok),
        p50_ms=round(percentile(ok, 0.50) * ms, 2),
        p99_ms=round(percentile(ok, 0.99) * ms, 2),
        p999_ms=round(percentile(ok, 0.999) * ms, 2),
        max_ms=round(max(ok, default=float("nan")) * ms, 2),
        worst_1s_p99_ms=round(max((percentile(v, 0.99) for v in whole), default=0.0) * ms, 2),
        worst_1s_max_ms=round(max((max(v) for v in whole), default=0.0) * ms, 2),
    )
