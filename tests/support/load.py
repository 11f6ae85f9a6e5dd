"""A small closed-loop load generator for the fleet tests: threads scoring records through the
balancer on keep-alive connections, counting every answer by version and every failure.

A failed request is never retried here: what the client sees is what is counted.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from data_contracts.api_keys import auth_headers


@dataclass
class LoadResult:
    """What the clients saw: answers per model version, failures with their first reasons."""

    ok: int = 0
    failed: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    replicas: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)  # monotonic time of each failure
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (time, version) of each ok


class Load:
    """``threads`` clients POSTing ``records`` to ``127.0.0.1:port/predict`` until stopped."""

    def __init__(
        self,
        port: int,
        records: list[dict[str, Any]],
        threads: int = 4,
        *,
        tls: ssl.SSLContext | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``tls``: speak HTTPS with that context; ``environ``: where the API key is configured
        (default: this process's environment)."""
        self.port, self.records, self.threads, self.tls = port, records, threads, tls
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        # the configured API key (none in the embedded default), as every caller sends it
        self._headers = {"Content-Type": "application/json", **auth_headers(environ)}

    def _connect(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=self.tls)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def _client(self, offset: int) -> None:
        conn = self._connect()
        i = offset
        while not self._stop.is_set():
            body = json.dumps(self.records[i % len(self.records)])
            i += 1
            try:
                conn.request("POST", "/predict", body, self._headers)
                response = conn.getresponse()
                raw = response.read()
                status = response.status
                replica = response.getheader("X-Fraud-Replica") or "?"
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                self._record(False, f"{type(err).__name__}: {err}")
                continue
            if status != 200:
                self._record(False, f"HTTP {status}: {raw[:200]!r}")
                continue
            version = str(json.loads(raw).get("model_version"))
            self._record(True, version, replica)
        conn.close()

    def _record(self, ok: bool, detail: str, replica: str = "") -> None:
        with self._lock:
            if ok:
                self.result.ok += 1
                self.result.versions[detail] += 1
                self.result.replicas[replica] += 1
                self.result.timeline.append((time.monotonic(), detail))
            else:
                self.result.failed += 1
                self.result.failed_at.append(time.monotonic())
                if len(self.result.errors) < 20:
                    self.result.errors.append(detail)

    def __enter__(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._client, args=(n * 7,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)

    def snapshot(self) -> tuple[int, int]:
        """(ok, failed) so far."""
        with self._lock:
            return self.result.ok, self.result.failed
