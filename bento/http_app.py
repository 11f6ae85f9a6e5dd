"""The prediction endpoints as a lean ASGI app, mounted into the BentoML service.

``POST /predict`` and ``POST /predict_batch`` are plain ASGI callables: they read the body with
a size cap, check the media type, validate the body with the model generated from the spec
(pydantic-core, straight from bytes), score in the event loop (single rows take microseconds;
batches run in a worker thread) and answer with pre-serialised JSON. Everything else
(``/healthz``, ``/readyz``, ``/metrics``, the OpenAPI page, lifecycle) is BentoML's.

Batch policy: **partial scoring**. Valid records are scored; invalid ones are listed in
``errors`` by index with every field problem, and their ``predictions`` entry is null. A batch
whose structure is wrong (not an object, no ``records``, too many records, unknown top-level
keys) or in which no record is valid is refused with 422 and every error listed.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.routing import Route

from bento.config import ServingConfig
from bento.inference_log import InferenceLogWriter
from bento.metrics import ServiceMetrics
from bento.request_model import (
    MAX_ID_LENGTH,
    REQUEST_ID,
    TRANSACTION_ID,
    BatchPrediction,
    ErrorResponse,
    FieldError,
    Prediction,
    build_batch_model,
    build_request_model,
    describe_errors,
)
from bento.runtime import ModelRuntime

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("fraud.serving")
THREAD_BATCH_ROWS = 256  # batches at least this long are scored off the event loop


class _TooLarge(Exception):
    pass


@dataclass
class _State:
    """What a bound app serves with: the model, its request models, log writer and metrics."""

    runtime: ModelRuntime
    record_model: type[BaseModel]
    batch_model: type[BaseModel]
    writer: InferenceLogWriter | None
    metrics: ServiceMetrics | None
    config: ServingConfig


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


def _new_request_id() -> str:
    return os.urandom(16).hex()


def _caller_request_id(body: bytes) -> str | None:
    """The ``request_id`` of a body that failed validation, when it has a usable one."""
    try:
        value = json.loads(body).get(REQUEST_ID)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH else None


class ServingApp:
    """The mounted ASGI app; :meth:`bind` gives it a loaded model (it answers 503 until then)."""

    def __init__(self, lifespan: Callable[[Any], Any] | None = None) -> None:
        self._state: _State | None = None
        self._score_limiter: anyio.CapacityLimiter | None = None
        self._openapi_source: Callable[[], dict[str, Any]] | None = None
        self.app = _LeanStarlette(
            lifespan=lifespan,
            routes=[
                Route("/predict", _Endpoint(self._predict), methods=["POST"]),
                Route("/predict_batch", _Endpoint(self._predict_batch), methods=["POST"]),
                Route("/docs.json", _Endpoint(self._openapi), methods=["GET"]),
            ],
        )

    # -- wiring ---------------------------------------------------------------------------
    def bind(
        self,
        runtime: ModelRuntime,
        config: ServingConfig,
        writer: InferenceLogWriter | None,
        metrics: ServiceMetrics | None,
    ) -> None:
        """Serve ``runtime``; the request models are generated from its spec here."""
        record_model = build_request_model(runtime.spec)
        self._state = _State(
            runtime=runtime,
            record_model=record_model,
            batch_model=build_batch_model(record_model, config.max_batch_records),
            writer=writer,
            metrics=metrics,
            config=config,
        )

    def unbind(self) -> None:
        self._state = None

    @property
    def bound(self) -> bool:
        """True while a model is bound."""
        return self._state is not None

    def set_openapi_source(self, source: Callable[[], dict[str, Any]]) -> None:
        """Where the service's own OpenAPI document comes from (BentoML's generator)."""
        self._openapi_source = source

    # -- shared checks --------------------------------------------------------------------
    async def _refuse(
        self, send: Send, status: int, request_id: str, detail: str, errors: list[FieldError]
    ) -> None:
        state = self._state
        if state is not None and state.metrics is not None:
            if status == 422:
                state.metrics.count_field_errors((e.field, e.problem) for e in errors)
            else:
                state.metrics.rejected_requests.labels(status=str(status)).inc()
        logger.info(
            "request refused: %s",
            detail,
            extra={
                "request_id": request_id,
                "status": status,
                "errors": [e.model_dump(exclude_none=True) for e in errors[:20]],
                "error_count": len(errors),
            },
        )
        payload = ErrorResponse(request_id=request_id, detail=detail, errors=errors)
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
        request_id = header_id or _new_request_id()
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
        return body, header_id

    # -- endpoints ------------------------------------------------------------------------
    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        if state is None:
            await self._refuse(send, 503, _new_request_id(), "the model is not loaded yet", [])
            return
        body, header_id = await self._body(scope, receive, send, state.config.max_record_bytes)
        if body is None:
            return
        try:
            record = state.record_model.model_validate_json(body)
        except ValidationError as err:
            errors = describe_errors(err)
            if state.metrics is not None:
                state.metrics.count_predictions("predict", 0, 0, 1)
            request_id = _caller_request_id(body) or header_id or _new_request_id()
            await self._refuse(send, 422, request_id, "invalid transaction", errors)
            return
        values = record.__dict__
        request_id = values[REQUEST_ID] or header_id or _new_request_id()
        runtime = state.runtime
        score = runtime.score_one(values)
        fraud = score >= runtime.threshold
        if state.writer is not None:
            state.writer.append_row(values, score, int(fraud), request_id, values[TRANSACTION_ID])
        if state.metrics is not None:
            state.metrics.count_one(fraud, score)
        if state.config.log_requests:
            logger.debug(
                "scored",
                extra={"request_id": request_id, "score": score, "is_fraud": fraud},
            )
        payload = {
            "request_id": request_id,
            "transaction_id": values[TRANSACTION_ID],
            "fraud_probability": score,
            "is_fraud": fraud,
            "threshold": runtime.threshold,
            "model_version": runtime.model_version,
        }
        await _send_json(send, 200, json.dumps(payload).encode(), request_id)

    async def _predict_batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        if state is None:
            await self._refuse(send, 503, _new_request_id(), "the model is not loaded yet", [])
            return
        body, header_id = await self._body(scope, receive, send, state.config.max_body_bytes)
        if body is None:
            return
        errors: list[FieldError] = []
        try:
            batch = state.batch_model.model_validate_json(body)
            records = batch.records  # type: ignore[attr-defined]
            request_id = batch.request_id or header_id or _new_request_id()  # type: ignore[attr-defined]
            positions = list(range(len(records)))
            total = len(records)
        except ValidationError as err:
            errors = describe_errors(err, batch=True)
            request_id = _caller_request_id(body) or header_id or _new_request_id()
            parsed = self._valid_records(state, body, errors)
            if parsed is None:
                if state.metrics is not None:
                    bad = len({e.index for e in errors if e.index is not None})
                    state.metrics.count_predictions("predict_batch", 0, 0, bad)
                await self._refuse(
                    send, 422, request_id, "invalid batch: no record was scored", errors
                )
                return
            records, positions, total, request_id = parsed
            request_id = request_id or header_id or _new_request_id()
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
        predictions: list[dict[str, Any] | None] = [None] * total
        for pos, score, fraud in zip(positions, scores_list, decisions.tolist(), strict=True):
            predictions[pos] = {"fraud_probability": score, "is_fraud": fraud}
        if errors:
            logger.info(
                "batch partly refused",
                extra={"request_id": request_id, "rejected": rejected, "scored": len(records)},
            )
        payload = {
            "request_id": request_id,
            "model_version": runtime.model_version,
            "threshold": runtime.threshold,
            "scored": len(records),
            "rejected": rejected,
            "predictions": predictions,
            "errors": [e.model_dump() for e in errors],
        }
        await _send_json(send, 200, json.dumps(payload).encode(), request_id)

    @staticmethod
    def _valid_records(
        state: _State, body: bytes, errors: list[FieldError]
    ) -> tuple[list[BaseModel], list[int], int, str | None] | None:
        """The records that passed when only some failed; None when nothing can be scored."""
        if not errors or any(e.index is None for e in errors):
            return None  # the batch itself is malformed
        raw = json.loads(body)
        records_raw = raw["records"]
        bad = {e.index for e in errors}
        positions = [i for i in range(len(records_raw)) if i not in bad]
        if not positions:
            return None
        # re-validate the good records from JSON, with exactly the same rules
        subset = json.dumps([records_raw[i] for i in positions]).encode()
        good = state.batch_model.model_validate_json(b'{"records":' + subset + b"}").records  # type: ignore[attr-defined]
        request_id = raw.get("request_id")
        return good, positions, len(records_raw), request_id

    # -- OpenAPI --------------------------------------------------------------------------
    async def _openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = self._openapi_source() if self._openapi_source else {"openapi": "3.0.2"}
        if self._state is not None:
            spec = add_prediction_paths(spec, self._state)
        payload = json.dumps(spec).encode()
        await _send_json(send, 200, payload, _new_request_id())


class _LeanStarlette(Starlette):
    """Starlette routing without a second error-middleware stack.

    BentoML's app around it already has one, and every endpoint answers its own errors.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        scope["app"] = self
        await self.router(scope, receive, send)


class _Endpoint:
    """An ASGI endpoint object (Starlette routes call objects like this without wrapping)."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handler(scope, receive, send)
        except Exception:
            request_id = _new_request_id()
            logger.exception("prediction failed", extra={"request_id": request_id})
            payload = ErrorResponse(request_id=request_id, detail="internal error")
            await _send_json(send, 500, payload.model_dump_json().encode(), request_id)


def add_prediction_paths(spec: dict[str, Any], state: _State) -> dict[str, Any]:
    """BentoML's OpenAPI document plus the two prediction paths, schemas from the spec."""
    ref = "#/components/schemas/{model}"
    components: dict[str, Any] = dict(spec.get("components") or {})
    schemas: dict[str, Any] = dict(components.get("schemas") or {})
    for model in (
        state.record_model,
        state.batch_model,
        Prediction,
        BatchPrediction,
        ErrorResponse,
    ):
        schema = model.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    components["schemas"] = schemas

    def op(summary: str, request: str, response: str) -> dict[str, Any]:
        def content(name: str) -> dict[str, Any]:
            return {"application/json": {"schema": {"$ref": ref.format(model=name)}}}

        return {
            "post": {
                "tags": ["Service APIs"],
                "summary": summary,
                "requestBody": {"required": True, "content": content(request)},
                "responses": {
                    "200": {"description": "Scored", "content": content(response)},
                    "400": {
                        "description": "Invalid Content-Length header",
                        "content": content("ErrorResponse"),
                    },
                    "413": {"description": "Body too large", "content": content("ErrorResponse")},
                    "415": {"description": "Not JSON", "content": content("ErrorResponse")},
                    "422": {"description": "Invalid input", "content": content("ErrorResponse")},
                    "503": {
                        "description": "The model is not loaded yet (starting or stopping)",
                        "content": content("ErrorResponse"),
                    },
                },
            }
        }

    paths = dict(spec.get("paths") or {})
    paths["/predict"] = op(
        "Score one transaction (JSON object keyed by feature name)",
        state.record_model.__name__,
        "Prediction",
    )
    paths["/predict_batch"] = op(
        f"Score up to {state.config.max_batch_records} transactions; invalid records are "
        "reported by index, valid ones scored",
        state.batch_model.__name__,
        "BatchPrediction",
    )
    return {**spec, "paths": paths, "components": components}
