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
5xx. The work and the answer for a refused body are bounded (see :mod:`bento.request_model`):
at most 20 entries per record and 200 per answer, with ``errors_omitted`` saying how many more
problems were found; a record with more than 20 unknown keys is refused without validation.

Parsing and batch checks are in :mod:`bento.request_body`, the OpenAPI document in
:mod:`bento.openapi`. This module stays above the project's 400-line guide on purpose: the two
endpoints share one refusal, metrics and logging path in :class:`ServingApp`, and the hot path
reads best in one place.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.routing import Route

from bento import internals
from bento.config import ServingConfig
from bento.inference_log import InferenceLogWriter
from bento.memory import MemoryReleaser
from bento.metrics import ServiceMetrics
from bento.model_page import describe_runtime, loading_page, render_page
from bento.openapi import add_prediction_paths
from bento.request_body import (
    caller_request_id,
    check_batch,
    new_request_id,
    parse_body,
)
from bento.request_model import (
    MAX_ID_LENGTH,
    REQUEST_ID,
    TRANSACTION_ID,
    ErrorBudget,
    ErrorResponse,
    FieldError,
    RecordChecker,
    build_batch_model,
    build_request_model,
    describe_errors,
)
from bento.runtime import ModelRuntime
from data_contracts.artifacts import (
    DECISION_FIELD,
    PREDICTIONS_FIELD,
    SCORE_FIELD,
    THRESHOLD_FIELD,
    VERSION_FIELD,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("fraud.serving")
THREAD_BATCH_ROWS = 256  # batches at least this long are scored off the event loop
BODY_BYTES = "fraud.body_bytes"  # scope key: size of the body an endpoint read
THREAD_BODY_BYTES = 16 * 1024  # batch bodies at least this large are checked off the event loop


class _TooLarge(Exception):
    pass


@dataclass
class _State:
    """What a bound app serves with: the model, its request models, log writer and metrics."""

    runtime: ModelRuntime
    record_model: type[BaseModel]
    batch_model: type[BaseModel]
    checker: RecordChecker
    writer: InferenceLogWriter | None
    metrics: ServiceMetrics | None
    config: ServingConfig
    in_flight: int = 0  # requests running on this state (only the event loop changes it)


def _is_json(content_type: bytes | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def _header_value(request_id: str) -> bytes:
    """The request id as an ``X-Request-ID`` value: visible ASCII as is, anything else
    %-escaped, so a caller's id can neither break the response nor add headers to it."""
    if request_id.isascii() and request_id.isprintable() and " " not in request_id:
        return request_id.encode()
    return urllib.parse.quote(request_id, safe=_HEADER_SAFE).encode()


async def _send_json(send: Send, status: int, payload: bytes, request_id: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", _header_value(request_id)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class ServingApp:
    """The mounted ASGI app; :meth:`bind` gives it a loaded model (it answers 503 until then)."""

    def __init__(self, lifespan: Callable[[Any], Any] | None = None) -> None:
        self._state: _State | None = None
        self._score_limiter: anyio.CapacityLimiter | None = None
        self._check_limiter: anyio.CapacityLimiter | None = None
        self._openapi_source: Callable[[], dict[str, Any]] | None = None
        self._model_source: Callable[[], dict[str, Any]] | None = None
        self.memory = MemoryReleaser()
        self.app = _LeanStarlette(
            lifespan=lifespan,
            routes=[
                Route("/predict", _Endpoint(self._predict, self.memory), methods=["POST"]),
                Route(
                    "/predict_batch",
                    _Endpoint(self._predict_batch, self.memory),
                    methods=["POST"],
                ),
                Route("/docs.json", _Endpoint(self._openapi, self.memory), methods=["GET"]),
                Route("/model", _Endpoint(self._model, self.memory), methods=["GET"]),
                Route("/", _Endpoint(self._model_page, self.memory), methods=["GET"]),
                Route("/docs", _Endpoint(self._docs_page, self.memory), methods=["GET"]),
            ],
        )

    # -- wiring ---------------------------------------------------------------------------
    def bind(
        self,
        runtime: ModelRuntime,
        config: ServingConfig,
        writer: InferenceLogWriter | None,
        metrics: ServiceMetrics | None,
    ) -> _State | None:
        """Serve ``runtime`` from the next request on; return what was served before (or None).

        The request models are generated from its spec here, then one assignment swaps the
        state: a request reads the state once, so it finishes on the model it started with.
        """
        record_model = build_request_model(runtime.spec)
        state = _State(
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
    def drain(previous: _State, timeout_s: float, grace_s: float = 0.5) -> int:
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
        state = self._state
        if state is not None and state.metrics is not None:
            if status == 422:
                state.metrics.count_field_errors((e.field, e.problem) for e in errors)
                state.metrics.count_omitted_errors(omitted)
                state.metrics.count_near_misses(state.checker.categories.take())
            else:
                state.metrics.rejected_requests.labels(status=str(status)).inc()
        logger.info(
            "request refused: %s",
            detail,
            extra={
                REQUEST_ID: request_id,
                "status": status,
                "errors": [e.model_dump(exclude_none=True) for e in errors[:20]],
                "error_count": len(errors) + omitted,
            },
        )
        payload = ErrorResponse(
            request_id=request_id, detail=detail, errors=errors, errors_omitted=omitted
        )
        await _send_json(
            send, status, payload.model_dump_json(exclude_none=True).encode(), request_id
        )

    async def _body(
        self, scope: Scope, receive: Receive, send: Send, limit: int
    ) -> tuple[bytes | None, str | None]:
        """The request body and the caller's X-Request-ID; None after answering an error."""
        content_type = length = header_id = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = value
            elif key == b"x-request-id":
                header_id = value.decode("latin-1")[:MAX_ID_LENGTH]
        request_id = header_id or new_request_id()
        if not _is_json(content_type):
            shown = content_type.decode("latin-1") if content_type else "none"
            await self._refuse(
                send,
                415,
                request_id,
                f"unsupported media type {shown!r}: send the transaction as application/json",
                [],
            )
            return None, None
        try:
            if length is not None and int(length) > limit:
                raise _TooLarge
            body = await _read_body(receive, limit)
        except _TooLarge:
            await self._refuse(send, 413, request_id, f"request body exceeds {limit} bytes", [])
            return None, None
        except ValueError:
            await self._refuse(send, 400, request_id, "invalid Content-Length header", [])
            return None, None
        scope[BODY_BYTES] = len(body)
        return body, header_id

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

    async def _predict_on(self, state: _State, scope: Scope, receive: Receive, send: Send) -> None:
        body, header_id = await self._body(scope, receive, send, state.config.max_record_bytes)
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
        runtime = state.runtime
        score = runtime.score_one(values)
        fraud = score >= runtime.threshold
        if state.writer is not None:
            state.writer.append_row(values, score, int(fraud), request_id, values[TRANSACTION_ID])
        if state.metrics is not None:
            state.metrics.count_one(fraud, score)
            near = state.checker.categories.take()
            if near:
                state.metrics.count_near_misses(near)
        if state.config.log_requests:
            logger.debug(
                "scored",
                extra={"request_id": request_id, "score": score, DECISION_FIELD: fraud},
            )
        payload = {
            REQUEST_ID: request_id,
            TRANSACTION_ID: values[TRANSACTION_ID],
            SCORE_FIELD: score,
            DECISION_FIELD: fraud,
            THRESHOLD_FIELD: runtime.threshold,
            VERSION_FIELD: runtime.model_version,
        }
        await _send_json(send, 200, json.dumps(payload).encode(), request_id)

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
        self, state: _State, scope: Scope, receive: Receive, send: Send
    ) -> None:
        body, header_id = await self._body(scope, receive, send, state.config.max_body_bytes)
        if body is None:
            return
        if len(body) >= THREAD_BODY_BYTES:
            # large bodies are parsed and checked off the event loop: /readyz and single
            # predictions keep being answered meanwhile (one such thread at a time)
            if self._check_limiter is None:
                self._check_limiter = anyio.CapacityLimiter(1)
            checked = await anyio.to_thread.run_sync(
                check_batch,
                state.checker,
                state.config.max_batch_records,
                body,
                header_id,
                limiter=self._check_limiter,
            )
        else:
            checked = check_batch(state.checker, state.config.max_batch_records, body, header_id)
        del body
        request_id, budget, errors = checked.request_id, checked.budget, checked.budget.errors
        if checked.records is None:
            await self._refuse(send, 422, request_id, checked.detail, errors, budget.omitted)
            return
        records, positions, total = checked.records, checked.positions, checked.total
        checker = state.checker
        if not records:
            if state.metrics is not None:
                state.metrics.count_predictions("predict_batch", 0, 0, total)
            await self._refuse(
                send, 422, request_id, "invalid batch: no record was scored", errors, budget.omitted
            )
            return
        runtime = state.runtime
        dicts = [r.__dict__ for r in records]
        columns = {name: [d[name] for d in dicts] for name in runtime.spec.feature_names}
        feed = runtime.encoder.encode_columns(columns)
        if len(dicts) >= THREAD_BATCH_ROWS:
            # one scoring thread: the event loop validates the next batch while this one scores
            if self._score_limiter is None:
                self._score_limiter = anyio.CapacityLimiter(1)
            scores = await anyio.to_thread.run_sync(
                runtime.score_feed, feed, limiter=self._score_limiter
            )
        else:
            scores = runtime.score_feed(feed)
        decisions = scores >= runtime.threshold
        scores_list = scores.tolist()
        if state.writer is not None:
            tx_ids = [d[TRANSACTION_ID] for d in dicts]
            state.writer.append_batch(
                columns, scores_list, decisions.astype(np.int8).tolist(), request_id, tx_ids
            )
        rejected = total - len(records)
        if state.metrics is not None:
            n_fraud = int(decisions.sum())
            state.metrics.count_predictions(
                "predict_batch", n_fraud, len(records) - n_fraud, rejected
            )
            state.metrics.observe_scores(scores)
            if errors:
                state.metrics.count_field_errors((e.field, e.problem) for e in errors)
                state.metrics.count_omitted_errors(budget.omitted)
            near = checker.categories.take()
            if near:
                state.metrics.count_near_misses(near)
        predictions: list[dict[str, Any] | None] = [None] * total
        for pos, score, fraud in zip(positions, scores_list, decisions.tolist(), strict=True):
            predictions[pos] = {SCORE_FIELD: score, DECISION_FIELD: fraud}
        if errors:
            logger.info(
                "batch partly refused",
                extra={"request_id": request_id, "rejected": rejected, "scored": len(records)},
            )
        payload = {
            REQUEST_ID: request_id,
            VERSION_FIELD: runtime.model_version,
            THRESHOLD_FIELD: runtime.threshold,
            "scored": len(records),
            "rejected": rejected,
            PREDICTIONS_FIELD: predictions,
            "errors": [e.model_dump() for e in errors],
            "errors_omitted": budget.omitted,
        }
        await _send_json(send, 200, json.dumps(payload).encode(), request_id)

    async def _refuse_record(
        self,
        send: Send,
        state: _State,
        body: bytes,
        header_id: str | None,
        rejection: ValidationError,
    ) -> None:
        """Answer a refused ``/predict`` body: parsed once more (it is at most
        ``max_record_bytes``) and described with bounded work."""
        raw, parse_error = parse_body(body)
        request_id = caller_request_id(raw) or header_id or new_request_id()
        budget = ErrorBudget()
        if parse_error is not None:
            budget.add([parse_error])
        else:
            checked = state.checker.check(raw)
            if checked.model is None:
                budget.add(checked.errors, checked.problems)
                state.checker.categories.count_raw(raw)
            else:  # JSON mode refused what Python mode accepts: its own words, bounded
                budget.add(describe_errors(rejection), rejection.error_count())
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
        await _send_json(send, 200, payload, new_request_id())

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
        await _send_json(send, 200, json.dumps(card).encode(), new_request_id())

    async def _model_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        card = self._describe()
        status, page = (503, loading_page()) if card is None else (200, render_page(card))
        await _send_html(send, status, page.encode())

    async def _docs_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_html(send, 200, internals.openapi_page().read_bytes())


async def _send_html(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _LeanStarlette(Starlette):
    """Starlette routing without a second error-middleware stack.

    BentoML's app around it already has one, and every endpoint answers its own errors.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        scope["app"] = self
        await self.router(scope, receive, send)


class _Endpoint:
    """An ASGI endpoint object (Starlette routes call objects like this without wrapping)."""

    def __init__(
        self,
        handler: Callable[[Scope, Receive, Send], Awaitable[None]],
        memory: MemoryReleaser,
    ) -> None:
        self.handler = handler
        self.memory = memory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handler(scope, receive, send)
        except Exception:
            request_id = new_request_id()
            logger.exception("prediction failed", extra={"request_id": request_id})
            payload = ErrorResponse(request_id=request_id, detail="internal error")
            await _send_json(send, 500, payload.model_dump_json().encode(), request_id)
        # the handler's buffers are gone: give their pages back after a large request
        await self.memory.after(scope.get(BODY_BYTES, 0))
