"""Every reach into BentoML's and uvicorn's internals, in one module.

BentoML 1.4 exposes neither limits on the serving port (bounded request heads with a read
timeout), nor HTTP metrics labelled by route instead of by raw path, nor a model or bento store
at a path of our choosing. :func:`install` is called when the service module is imported, before
the worker builds its ASGI app and its uvicorn server (both happen after the import, in the
same process); :func:`use_model_store` and :func:`model_store_path` serve the checkout's own
store; :func:`model_store_at` and :func:`bento_store_at` are how the flows import models and
list bentos. An upgrade of BentoML or uvicorn re-runs ``tests/integration/test_hostile.py``,
``tests/integration/test_serve.py`` and ``tests/unit/test_delivery_steps.py``, which exercise
every function here.

**Request heads.** ``bentoml serve`` runs uvicorn with its httptools protocol, which has no
limit on the request line and headers (a 100 MB header was read, taking seconds of CPU) and no
timeout for reading them. uvicorn's ``h11_max_incomplete_event_size`` applies to its h11
protocol only, and BentoML passes neither it nor a protocol choice to uvicorn. So
:class:`BoundedHeadProtocol` (httptools, as before) answers **431** and closes the connection
once a request head passes ``FRAUD_MAX_HEADER_BYTES`` (16 KiB), and **408** when a started
head is not complete within ``FRAUD_HEADER_TIMEOUT_S`` (10 s). A connection on which no request
begins within ``FRAUD_IDLE_TIMEOUT_S`` (10 s, HAProxy's ``timeout http-request``) of being
opened is closed: uvicorn arms its keep-alive timer only after a response, so a connection that
never sent a byte was held until the worker ran out of files. It is installed as uvicorn's
``auto`` and ``httptools`` protocols.

**Refusals in a pipeline.** uvicorn answered a malformed request (400), and this module a 431
or 408, by writing and closing at once, while requests pipelined before it on the same
connection were still queued or running: they were scored and logged but never answered, and
their answers hit the closed transport (five log lines and tracebacks per connection). The
refusal now waits until every request before it has been answered, then goes out and the
connection closes; nothing after it is read. Each refusal is one log line (``request
refused: ...``); uvicorn's own "Invalid HTTP request received." line is dropped. The
protocol writes through :class:`bento.socket_writes.CoalescingTransport`, so an answer's head
and body leave in one ``send``.

**Metrics.** BentoML's ``RunnerTrafficMetricsMiddleware`` labels its request series with
``scope["path"]``: every distinct URL a client sends became new series on ``/metrics``.
:class:`RouteLabelledMetrics` gives that middleware the matching route's template instead
(``/predict``, ``/static_content/{path}``), or ``unmatched``, and hands the real path on to the
app.
"""

from __future__ import annotations

import asyncio
import logging
import os
from http import HTTPStatus
from pathlib import Path
from typing import Any

from starlette.routing import BaseRoute, Match, Mount

from bento.socket_writes import CoalescingTransport

UNMATCHED = "unmatched"
REAL_PATH = "fraud.real_path"  # scope key carrying the request's path past the metrics
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 10.0  # like the fleet's HAProxy (timeout http-request 10s)
UVICORN_INVALID_REQUEST = "Invalid HTTP request received."  # logged by us as a refusal instead
logger = logging.getLogger("fraud.serving")


# --------------------------------------------------------------------------- metrics labels


def route_label(routes: list[BaseRoute], scope: dict[str, Any]) -> str:
    """The template of the route ``scope`` matches (method aside), or ``unmatched``.

    Mounted apps are searched too; a mount at ``/`` adds nothing to its routes' templates.
    """
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        if isinstance(route, Mount):
            inner = getattr(route.app, "routes", None)
            prefix = route.path
            if inner:
                label = route_label(inner, {**scope, **child})
                if label != UNMATCHED:
                    return prefix + label if prefix not in ("", "/") else label
                continue
            return f"{prefix}/{{path}}"
        return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


def _restore_path(app: Any) -> Any:
    """The app behind the metrics middleware, given back the request's real path."""

    async def restored(scope: dict[str, Any], receive: Any, send: Any) -> None:
        real = scope.pop(REAL_PATH, None)
        if real is not None:
            scope["path"] = real
        await app(scope, receive, send)

    return restored


def route_labelled(base: type) -> type:
    """A subclass of BentoML's traffic metrics middleware that labels by route template."""

    class RouteLabelledMetrics(base):  # type: ignore[misc, valid-type]
        """BentoML's traffic metrics, labelled by route template or ``unmatched``."""

        def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(_restore_path(app), *args, **kwargs)

        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket") and scope["path"] != "/metrics":
                routes = getattr(scope.get("app"), "routes", None) or []
                label = route_label(routes, scope)
                if label != scope["path"]:
                    scope = {**scope, "path": label, REAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    return RouteLabelledMetrics


# --------------------------------------------------------------------------- request heads


def _limits(
    environ: dict[str, str] | os._Environ[str] | None = None,
) -> tuple[int, float, float]:
    """``FRAUD_MAX_HEADER_BYTES``, ``FRAUD_HEADER_TIMEOUT_S`` and ``FRAUD_IDLE_TIMEOUT_S``."""
    env = os.environ if environ is None else environ
    size = int(env.get("FRAUD_MAX_HEADER_BYTES") or DEFAULT_MAX_HEADER_BYTES)
    timeout = float(env.get("FRAUD_HEADER_TIMEOUT_S") or DEFAULT_HEADER_TIMEOUT_S)
    idle = float(env.get("FRAUD_IDLE_TIMEOUT_S") or DEFAULT_IDLE_TIMEOUT_S)
    if size < 1024 or not timeout > 0 or not idle > 0:
        raise ValueError(
            "FRAUD_MAX_HEADER_BYTES must be >= 1024, FRAUD_HEADER_TIMEOUT_S and "
            "FRAUD_IDLE_TIMEOUT_S > 0"
        )
    return size, timeout, idle


class _DropInvalidRequestLine(logging.Filter):
    """Drops uvicorn's "Invalid HTTP request received." (the refusal logs its own line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != UVICORN_INVALID_REQUEST


def bounded_head_protocol() -> type:
    """uvicorn's httptools protocol with a bounded request head, a head read timeout, an idle
    timeout from the connection's start, and refusals answered after the requests before
    them (see the module docstring)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    max_bytes, timeout, idle = _limits()

    class HeadTooLarge(Exception):
        pass

    class BoundedHeadProtocol(HttpToolsProtocol):  # type: ignore[misc]
        """Answers 431 to a request head over the limit, 408 to one read too slowly, closes a
        connection idle from its start, and answers a refusal after the requests before it."""

        max_head_bytes = max_bytes
        head_timeout_s = timeout
        idle_timeout_s = idle

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.transport = CoalescingTransport(transport, self.loop)  # one write per answer
            self._head_bytes = 0  # bytes read since the head began
            self._head_seen = 0  # bytes of request line and headers parsed
            self._too_large = False
            self._in_head = False
            self._began_in_read = False  # a head began during the current read
            self._head_timer: asyncio.TimerHandle | None = None
            self._refusal: bytes | None = None  # waits for the answers before it
            self._idle_timer: asyncio.TimerHandle | None = self.loop.call_later(
                self.idle_timeout_s, self._idle_timed_out
            )

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            self._stop_idle_timer()
            super().connection_lost(exc)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _stop_idle_timer(self) -> None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None

        def _idle_timed_out(self) -> None:
            # no request began since the connection opened: nothing to answer, just close
            self._idle_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing() or self._refusal is not None:
                return  # nothing after a refused request is read
            self._began_in_read = False
            super().data_received(data)
            # a head arriving in many reads: counted as it comes, before it is complete; in the
            # read where it began, only what the parser took as head (the read may also hold
            # the previous pipelined request's body)
            if self._in_head and not self.transport.is_closing():
                self._head_bytes = (
                    self._head_seen if self._began_in_read else self._head_bytes + len(data)
                )
                if self._head_bytes > self.max_head_bytes:
                    self._refuse(431, "Request header fields too large")

        def send_400_response(self, msg: str) -> None:
            # HeadTooLarge from a parser callback reaches uvicorn as a parser error
            if self._too_large:
                self._refuse(431, "Request header fields too large")
            else:
                self._refuse(400, "Invalid HTTP request")

        def on_message_begin(self) -> None:
            self._stop_idle_timer()
            super().on_message_begin()
            self._in_head = True
            self._began_in_read = True
            self._head_bytes = self._head_seen = 0
            self._too_large = False
            self._stop_head_timer()
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._check_size(len(url))

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._check_size(len(name) + len(value) + 4)

        def _check_size(self, n: int) -> None:
            # a head arriving in one read: counted by the parser's callbacks
            self._head_seen += n
            if self._head_seen > self.max_head_bytes:
                self._too_large = True
                raise HeadTooLarge  # httptools turns it into a parser error: send_400_response

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._stop_head_timer()
            super().on_headers_complete()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self._refuse(408, "Request header read timeout")

        def _answering(self) -> bool:
            """Whether a request parsed before now is still waiting for its answer (the last
            parsed one completes last: pipelined requests are answered in order)."""
            return self.cycle is not None and not self.cycle.response_complete

        def _refuse(self, status: int, reason: str) -> None:
            """Refuse the request being read: answer once those before it are answered."""
            self._in_head = False
            self._stop_head_timer()
            if self.transport.is_closing() or self._refusal is not None:
                return
            body = reason.encode()
            self._refusal = (
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, HTTPStatus(status).phrase.encode(), len(body), body)
            )
            waiting = len(self.pipeline) + int(self._answering())
            client = f"{self.client[0]}:{self.client[1]}" if self.client else None
            logger.info(
                "request refused: %s",
                reason,
                extra={"status": status, "client": client, "answered_before": waiting},
            )
            if not self._answering():
                self._send_refusal()

        def _send_refusal(self) -> None:
            self._unset_keepalive_if_required()
            if self._refusal is not None and not self.transport.is_closing():
                self.transport.write(self._refusal)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._refusal is not None and not self.pipeline and not self._answering():
                self._send_refusal()

    return BoundedHeadProtocol


BoundedHeadProtocol: type | None = None


# --------------------------------------------------------------------------- install


def install() -> None:
    """Make this process's uvicorn use :class:`BoundedHeadProtocol` and BentoML's metrics
    middleware label by route. Idempotent; called on import of the service module."""
    global BoundedHeadProtocol
    import uvicorn.config
    from bentoml._internal.server.http import instruments

    if BoundedHeadProtocol is None:
        BoundedHeadProtocol = bounded_head_protocol()
        logging.getLogger("uvicorn.error").addFilter(_DropInvalidRequestLine())
    target = f"{__name__}:BoundedHeadProtocol"
    uvicorn.config.HTTP_PROTOCOLS["auto"] = target
    uvicorn.config.HTTP_PROTOCOLS["httptools"] = target
    base = instruments.RunnerTrafficMetricsMiddleware
    if not getattr(base, "_fraud_route_labelled", False):
        labelled = route_labelled(base)
        labelled._fraud_route_labelled = True  # type: ignore[attr-defined]
        instruments.RunnerTrafficMetricsMiddleware = labelled  # type: ignore[misc]


# --------------------------------------------------------------------------- model store


_MODEL_STORE: Path | None = None  # the store use_model_store set, if any


def use_model_store(path: Path) -> None:
    """Make ``bentoml.models.get`` read the model store at ``path`` (the checkout's own store).

    BentoML reads its store from ``BENTOML_HOME`` only; a checkout's ``bentoml serve`` serves the
    project's store under ``FRAUD_HOME`` without asking the user to set it.
    """
    global _MODEL_STORE
    from bentoml._internal.configuration.containers import BentoMLContainer

    BentoMLContainer.model_store.set(model_store_at(path))
    _MODEL_STORE = Path(path)


def model_store_path() -> str:
    """The folder of the model store ``bentoml.models.get`` reads (for error messages).

    The one :func:`use_model_store` set, else BentoML's configured ``model_store_dir``
    (``$BENTOML_HOME/models``): no private attribute of the store object is read (BentoML
    1.4.40 removed the ``_fs`` this used, and a missing model was reported as an
    AttributeError).
    """
    if _MODEL_STORE is not None:
        return str(_MODEL_STORE)
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.model_store_dir.get())


def model_store_at(folder: Path) -> Any:
    """A BentoML model store object for ``folder`` (the flows import and list models with it).

    BentoML has no public API for a store at a path other than ``BENTOML_HOME``, and one
    process of the flows may work on several homes.
    """
    from bentoml._internal.models.model import ModelStore

    return ModelStore(folder)


def bento_store_at(folder: Path) -> Any:
    """A BentoML bento store object for ``folder``."""
    from bentoml._internal.bento.bento import BentoStore

    return BentoStore(folder)


# --------------------------------------------------------------------------- API docs page


def openapi_page() -> Path:
    """BentoML's Swagger UI page (its own index), served at ``/docs``: ``/`` is the model page.

    The page loads ``./static_content/...`` and ``./docs.json``, both at the root, so it works
    from ``/docs`` unchanged.
    """
    import _bentoml_impl.server

    return Path(_bentoml_impl.server.__file__).parent / "main-openapi.html"
