"""The prediction endpoints as a lean ASGI app, mounted into the BentoML service.

``POST /predict`` and ``POST /predict_batch`` are plain ASGI callables: they read the body with
a size cap, check the media type, validate the body with the model generated from the spec
(pydantic-core, straight from bytes), score in the event loop (single rows take microseconds;
batches run in a worker thread) and answer with pre-serialised JSON. Everything else
(``/healthz``, ``/readyz``, ``/metrics``, the OpenAPI page, lifecycle) is BentoML's.

Batch policy: **partial scoring**. Valid records are scored; invalid ones are listed in
``errors`` by index with their field problems, and their ``predictions`` entry is null. A batch
whose structure is wrong (not an object, no ``records``, too many records, unknown top-level
keys) or in which no record is valid is refused with 422.

Hostile bodies (issue 14): a body is parsed once, by pydantic-core's JSON parser (``/predict``
validates straight from the bytes and parses again only to describe a refusal); whatever the
parser refuses, nesting deeper than 200 levels included, is a 422 naming the problem, never a
5xx. The work and the answer for a refused body are bounded (see :mod:`bento.record_checker`):
at most 20 entries per record and 200 per answer, with ``errors_omitted`` saying how many more
problems were found; a record with more than 20 unknown keys is refused without validation.

``/predict_batch`` also takes an Arrow IPC stream (``application/vnd.apache.arrow.stream``),
read and checked in the same thread with the same limits (:mod:`bento.arrow_body`).

This module holds the flow of each endpoint in :class:`ServingApp` (read, validate, score or
refuse) and the swap of the served model. Parsing and batch checks are in
:mod:`bento.request_body`, what an answer records and says in :mod:`bento.answers`, the ASGI
plumbing in :mod:`bento.asgi`, the OpenAPI document in :mod:`bento.openapi`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from starlette.routing import Route

from bento import internals
from bento.answers import ServingState, refusal, score_batch, scored_record
from bento.arrow_body import ARROW_STREAM, check_arrow_batch, is_arrow_stream
from bento.asgi import (
    BODY_BYTES,
    BodyTooLarge,
    Endpoint,
    LeanStarlette,
    Receive,
    Scope,
    Send,
    is_json,
    read_body,
    send_html,
    send_json,
)
from bento.config import ServingConfig
from bento.inference_log import InferenceLogWriter
from bento.memory import CollectorPause, MemoryReleaser
from bento.metrics import ServiceMetrics
from bento.model_page import describe_runtime, loading_page, render_page
from bento.openapi import add_prediction_paths
from bento.record_checker import RecordChecker
from bento.request_body import CheckedBatch, check_batch, describe_refused_record, new_request_id
from bento.request_model import (
    MAX_ID_LENGTH,
    REQUEST_ID,
    REQUEST_ID_CHARS,
    FieldError,
    build_batch_model,
    build_request_model,
    is_safe_request_id,
)
from bento.runtime import ModelRuntime

THREAD_BATCH_ROWS = 256  # batches at least this long are scored off the event loop
THREAD_BODY_BYTES = 16 * 1024  # batch bodies at least this large are checked off the event loop


class ServingApp:
    """The mounted ASGI app; :meth:`bind` gives it a loaded model (it answers 503 until then)."""

    def __init__(self, lifespan: Callable[[Any], Any] | None = None) -> None:
        self._state: ServingState | None = None
        self._score_limiter: anyio.CapacityLimiter | None = None
        self._check_limiter: anyio.CapacityLimiter | None = None
        self._openapi_source: Callable[[], dict[str, Any]] | None = None
        self._model_source: Callable[[], dict[str, Any]] | None = None
        self.memory = MemoryReleaser()
        self.collector_pause = CollectorPause()
        self.app = LeanStarlette(
            lifespan=lifespan,
            routes=[
                Route("/predict", Endpoint(self._predict, self.memory), methods=["POST"]),
                Route(
                    "/predict_batch",
                    Endpoint(self._predict_batch, self.memory),
                    methods=["POST"],
                ),
                Route("/docs.json", Endpoint(self._openapi, self.memory), methods=["GET"]),
                Route("/model", Endpoint(self._model, self.memory), methods=["GET"]),
                Route("/", Endpoint(self._model_page, self.memory), methods=["GET"]),
                Route("/docs", Endpoint(self._docs_page, self.memory), methods=["GET"]),
            ],
        )

    # -- wiring ---------------------------------------------------------------------------
    def bind(
        self,
        runtime: ModelRuntime,
        config: ServingConfig,
        writer: InferenceLogWriter | None,
        metrics: ServiceMetrics | None,
    ) -> ServingState | None:
        """Serve ``runtime`` from the next request on; return what was served before (or None).

        The request models are generated from its spec here, then one assignment swaps the
        state: a request reads the state once, so it finishes on the model it started with.
        """
        record_model = build_request_model(runtime.spec)
        state = ServingState(
            runtime=runtime,
            record_model=record_model,
            batch_model=build_batch_model(record_model, config.max_batch_records),
            checker=RecordChecker(record_model, runtime.spec),
            writer=writer,
            metrics=metrics,
            config=config,
        )
        previous, self._state = self._state, state
        return previous

    @staticmethod
    def drain(previous: ServingState, timeout_s: float, grace_s: float = 0.5) -> int:
        """Wait (on a thread, not the event loop) until no request runs on ``previous``.

        ``grace_s`` first covers a request that had read the old state just before the swap.
        Returns how many requests still ran on it after ``timeout_s``.
        """
        time.sleep(grace_s)
        deadline = time.monotonic() + timeout_s
        while previous.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return previous.in_flight

    @property
    def runtime(self) -> ModelRuntime | None:
        """The model that answers the next request, or None before :meth:`bind`."""
        state = self._state
        return None if state is None else state.runtime

    def unbind(self) -> None:
        self._state = None

    @property
    def bound(self) -> bool:
        """True while a model is bound."""
        return self._state is not None

    def set_model_source(self, source: Callable[[], dict[str, Any]]) -> None:
        """Where ``GET /model`` and the page at ``/`` get the served model's description."""
        self._model_source = source

    def set_openapi_source(self, source: Callable[[], dict[str, Any]]) -> None:
        """Where the service's own OpenAPI document comes from (BentoML's generator)."""
        self._openapi_source = source

    # -- shared checks --------------------------------------------------------------------
    async def _refuse(
        self,
        send: Send,
        status: int,
        request_id: str,
        detail: str,
        errors: list[FieldError],
        omitted: int = 0,
    ) -> None:
        """Answer an error; ``errors`` is already bounded, ``omitted`` problems not listed."""
        payload = refusal(self._state, status, request_id, detail, errors, omitted)
        await send_json(send, status, payload, request_id)

    async def _body(
        self, scope: Scope, receive: Receive, send: Send, limit: int, arrow: bool = False
    ) -> tuple[bytes | None, str | None, bool]:
        """The request body, the caller's X-Request-ID and whether the body is an Arrow IPC
        stream (accepted only where ``arrow``); None after answering an error."""
        content_type = length = header_id = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = value
            elif key == b"x-request-id":
                header_id = value.decode("latin-1")[:MAX_ID_LENGTH]
        if header_id is not None and not is_safe_request_id(header_id):
            message = f"A request id may hold only {REQUEST_ID_CHARS}"
            error = FieldError(field="X-Request-ID", problem="invalid characters", message=message)
            await self._refuse(send, 422, new_request_id(), "invalid X-Request-ID header", [error])
            return None, None, False
        request_id = header_id or new_request_id()
        is_stream = arrow and is_arrow_stream(content_type)
        if not (is_stream or is_json(content_type)):
            shown = content_type.decode("latin-1") if content_type else "none"
            media = f"application/json or {ARROW_STREAM.decode()}" if arrow else "application/json"
            await self._refuse(
                send, 415, request_id, f"unsupported media type {shown!r}: send {media}", []
            )
            return None, None, False
        try:
            if length is not None and int(length) > limit:
                raise BodyTooLarge
            body = await read_body(receive, limit)
        except BodyTooLarge:
            await self._refuse(send, 413, request_id, f"request body exceeds {limit} bytes", [])
            return None, None, False
        except ValueError:
            await self._refuse(send, 400, request_id, "invalid Content-Length header", [])
            return None, None, False
        scope[BODY_BYTES] = len(body)
        return body, header_id, is_stream

    # -- endpoints ------------------------------------------------------------------------
    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        if state is None:
            await self._refuse(send, 503, new_request_id(), "the model is not loaded yet", [])
            return
        state.in_flight += 1  # the request runs to its end on this state's model and log
        try:
            await self._predict_on(state, scope, receive, send)
        finally:
            state.in_flight -= 1

    async def _predict_on(
        self, state: ServingState, scope: Scope, receive: Receive, send: Send
    ) -> None:
        body, header_id, _ = await self._body(scope, receive, send, state.config.max_record_bytes)
        if body is None:
            return
        rejection: ValidationError | None
        try:
            values = state.record_model.model_validate_json(body).__dict__
            policy_errors = state.checker.categories.apply(values)
        except ValidationError as err:
            policy_errors, rejection = [], err
        else:
            rejection = None
        if rejection is not None or policy_errors:
            if state.metrics is not None:
                state.metrics.count_predictions("predict", 0, 0, 1)
            if rejection is not None:
                await self._refuse_record(send, state, body, header_id, rejection)
            else:  # valid, but a normalised category is still unknown
                request_id = values[REQUEST_ID] or header_id or new_request_id()
                await self._refuse(send, 422, request_id, "invalid transaction", policy_errors)
            return
        request_id = values[REQUEST_ID] or header_id or new_request_id()
        await send_json(send, 200, scored_record(state, values, request_id), request_id)

    async def _predict_batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        if state is None:
            await self._refuse(send, 503, new_request_id(), "the model is not loaded yet", [])
            return
        state.in_flight += 1
        try:
            await self._predict_batch_on(state, scope, receive, send)
        finally:
            state.in_flight -= 1

    async def _predict_batch_on(
        self, state: ServingState, scope: Scope, receive: Receive, send: Send
    ) -> None:
        config = state.config
        body, header_id, arrow = await self._body(
            scope, receive, send, config.max_body_bytes, arrow=True
        )
        if body is None:
            return
        if arrow or len(body) >= THREAD_BODY_BYTES:  # no collection walks its objects
            with self.collector_pause:
                await self._answer_batch(state, send, body, header_id, arrow, offload=True)
        else:
            await self._answer_batch(state, send, body, header_id, arrow, offload=False)

    async def _answer_batch(
        self,
        state: ServingState,
        send: Send,
        body: bytes,
        header_id: str | None,
        arrow: bool,
        offload: bool,
    ) -> None:
        """Check, score and answer a batch body; ``offload`` checks it in a worker thread."""
        config = state.config
        check: Callable[[], CheckedBatch] = (
            partial(check_arrow_batch, state.checker, state.runtime.spec, config.max_batch_records,
                    body, header_id)
            if arrow
            else partial(check_batch, state.checker, config.max_batch_records, body, header_id)
        )  # fmt: skip
        if offload:
            # large bodies (and every Arrow stream) are parsed and checked off the event loop:
            # /readyz and single predictions keep being answered meanwhile (one such thread)
            if self._check_limiter is None:
                self._check_limiter = anyio.CapacityLimiter(1)
            checked = await anyio.to_thread.run_sync(check, limiter=self._check_limiter)
        else:
            checked = check()
        del body
        request_id, budget, errors = checked.request_id, checked.budget, checked.budget.errors
        if checked.records is None:
            await self._refuse(send, 422, request_id, checked.detail, errors, budget.omitted)
            return
        scored, total = len(checked.positions), checked.total
        if not scored:
            if state.metrics is not None:
                state.metrics.count_predictions("predict_batch", 0, 0, total)
            await self._refuse(
                send, 422, request_id, "invalid batch: no record was scored", errors, budget.omitted
            )
            return
        if scored >= THREAD_BATCH_ROWS:
            # one scoring thread: the event loop validates the next batch while this one is
            # transposed, scored, logged and encoded there
            if self._score_limiter is None:
                self._score_limiter = anyio.CapacityLimiter(1)
            payload = await anyio.to_thread.run_sync(
                score_batch, state, checked, limiter=self._score_limiter
            )
        else:
            payload = score_batch(state, checked)
        await send_json(send, 200, payload, request_id)

    async def _refuse_record(
        self,
        send: Send,
        state: ServingState,
        body: bytes,
        header_id: str | None,
        rejection: ValidationError,
    ) -> None:
        """Answer a refused ``/predict`` body, described with bounded work."""
        request_id, budget = describe_refused_record(state.checker, body, header_id, rejection)
        await self._refuse(
            send, 422, request_id, "invalid transaction", budget.errors, budget.omitted
        )

    # -- OpenAPI --------------------------------------------------------------------------
    async def _openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = self._openapi_source() if self._openapi_source else {"openapi": "3.0.2"}
        if self._state is not None:
            state = self._state
            spec = add_prediction_paths(
                spec, state.record_model, state.batch_model, state.config.max_batch_records
            )
        payload = json.dumps(spec).encode()
        await send_json(send, 200, payload, new_request_id())

    # -- the served model -----------------------------------------------------------------
    def _describe(self) -> dict[str, Any] | None:
        if self._state is None:
            return None
        if self._model_source is not None:
            return self._model_source()
        return describe_runtime(self._state.runtime)

    async def _model(self, scope: Scope, receive: Receive, send: Send) -> None:
        card = self._describe()
        if card is None:
            await self._refuse(send, 503, new_request_id(), "the model is not loaded yet", [])
            return
        await send_json(send, 200, json.dumps(card).encode(), new_request_id())

    async def _model_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        card = self._describe()
        status, page = (503, loading_page()) if card is None else (200, render_page(card))
        await send_html(send, status, page.encode())

    async def _docs_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_html(send, 200, internals.openapi_page().read_bytes())
