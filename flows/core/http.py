"""Loopback HTTP helpers: a free port, and one JSON request that bypasses any proxy."""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from data_contracts.api_keys import auth_headers

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PREDICTION_PATHS = ("/predict", "/predict_batch")
TLS_CA_ENV = "FRAUD_TLS_CA"  # the CA bundle callers trust for the serving port's certificate


def tls_context() -> ssl.SSLContext:
    """Certificate-checking TLS for ``https`` URLs: ``FRAUD_TLS_CA`` when set, else the system's."""
    return ssl.create_default_context(cafile=os.environ.get(TLS_CA_ENV) or None)


def _tls_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls_context())
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(
    method: str, url: str, body: Any | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """One HTTP request to a local server (no proxy); returns the status and the decoded JSON.

    A request to a prediction endpoint carries the configured API key (``FRAUD_API_KEYS`` or
    ``FRAUD_API_KEYS_FILE``; none when neither is set).
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if urllib.parse.urlsplit(url).path.endswith(PREDICTION_PATHS):
        for name, value in auth_headers().items():
            request.add_header(name, value)
    try:
        opener = _tls_opener() if url.startswith("https:") else _NO_PROXY
        with opener.open(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")
