"""API keys on the prediction endpoints: ``/predict`` and ``/predict_batch`` need a key when one
is configured (:mod:`data_contracts.api_keys` says where keys come from).

:class:`ApiKeyGate` runs before routing (the hook in :class:`bento.asgi.LeanStarlette`), so a
refused request costs no body read and no validation. A key is sent as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and compared with every configured key by
:func:`hmac.compare_digest`, all of them every time: the answer's timing does not say which key
came close. A refusal is ``401`` with the same body whatever was wrong, and is counted in
``fraud_auth_refused{reason}`` (``missing``: no key header; ``malformed``: an ``Authorization``
that is not Bearer, or an empty key; ``unknown_key``: a key that matches none).

Other paths (``/livez``, ``/readyz``, ``/metrics``, ``/model``, the pages) stay open: the
orchestrator probes and Prometheus scrapes each replica on its own port, and none of them
carries a record, an id or a key (docs/security.md says why ``/metrics`` has no key).

A key file is re-read when it changed (checked at most once per second, on a request: one
``stat`` per second, no thread); a file that became unreadable, empty or open to others keeps
the previous keys, with a warning, so a half-done rotation never locks every caller out.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from bento.asgi import Scope, Send
from bento.request_body import new_request_id
from bento.request_model import ErrorResponse
from data_contracts.api_keys import ApiKeyError, KeySource, key_source, read_keys

logger = logging.getLogger("fraud.serving")
PROTECTED = frozenset({"/predict", "/predict_batch"})
REASONS = ("missing", "malformed", "unknown_key")
RELOAD_S = 1.0
_BEARER = b"bearer "
_DETAIL = "unauthorized: send a valid API key (Authorization: Bearer <key>, or X-API-Key)"


def _file_id(path: Any) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ApiKeyGate:
    """Refuses requests to the protected paths without a configured key (see the module)."""

    def __init__(
        self,
        source: KeySource,
        on_refused: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload_s: float = RELOAD_S,
    ) -> None:
        if not source.enabled:
            raise ValueError("an API key gate needs configured keys")
        self.source = source
        self._on_refused = on_refused
        self._clock = clock
        self._reload_s = reload_s
        self._file = _file_id(source.path) if source.path is not None else None
        self.keys = read_keys(source)  # a bad setting stops start-up here
        self._next_check = clock() + reload_s

    def check(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """None when the request carries a configured key, else the reason it is refused."""
        presented: bytes | None = None
        reason = "missing"
        for name, value in headers:
            if name == b"authorization":
                if value[:7].lower() == _BEARER:
                    presented = value[7:].strip()
                else:
                    reason = "malformed"
            elif name == b"x-api-key":
                presented = value.strip()
        if presented is None:
            return reason
        if not presented:
            return "malformed"
        matched = False
        for key in self.keys:  # every key, every time: no early exit
            matched |= hmac.compare_digest(key, presented)
        return None if matched else "unknown_key"

    def reload_if_changed(self) -> bool:
        """Re-read the key file when it changed; True when new keys were taken."""
        path = self.source.path
        if path is None:
            return False
        seen = _file_id(path)
        if seen == self._file:
            return False
        try:
            keys = read_keys(self.source)
        except ApiKeyError as err:
            # keep serving with the keys we have: a rotation half done must not lock callers out
            logger.warning("API keys not reloaded, previous keys kept: %s", err)
            self._file = seen  # warn once per change, not once per second
            return False
        self.keys, self._file = keys, seen
        logger.info("API keys reloaded", extra={"api_keys": len(keys), "path": str(path)})
        return True

    async def __call__(self, scope: Scope, send: Send) -> bool:
        """True when the request may go on; False after answering it with 401."""
        if scope.get("path") not in PROTECTED:
            return True
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._reload_s
            self.reload_if_changed()
        reason = self.check(scope["headers"])
        if reason is None:
            return True
        if self._on_refused is not None:
            self._on_refused(reason)
        request_id = new_request_id()
        payload = ErrorResponse(request_id=request_id, detail=_DETAIL).model_dump_json().encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"www-authenticate", b"Bearer"),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return False


@functools.cache
def refused_counter() -> Callable[[str], None]:
    """``fraud_auth_refused{reason}``, created in the service's start-up (multiprocess mode)."""
    from prometheus_client import Counter

    counter = Counter(
        "fraud_auth_refused",
        "Requests to /predict or /predict_batch refused with 401, by reason (missing, "
        "malformed, unknown_key).",
        ["reason"],
    )
    children = {reason: counter.labels(reason=reason) for reason in REASONS}
    return lambda reason: children[reason].inc()


def api_key_gate(environ: Any = None) -> ApiKeyGate | None:
    """The gate of the configured keys, or None when no key is configured (keys off)."""
    source = key_source(environ)
    if not source.enabled:
        return None
    return ApiKeyGate(source, on_refused=refused_counter())
