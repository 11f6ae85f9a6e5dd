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
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import numpy as np
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.applications import Starlette
from starlette.routing import Route

from bento.config import ServingConfig
from bento.inference_log import InferenceLogWriter
from bento.memory import MemoryReleaser
from bento.metrics import ServiceMetrics
from bento.request_model import (
    MAX_ID_LENGTH,
    MAX_JSON_DEPTH,
    MAX_UNKNOWN_KEYS,
    REQUEST_ID,
    TRANSACTION_ID,
    BatchPrediction,
    ErrorBudget,
    ErrorResponse,
    FieldError,
    Prediction,
    RecordChecker,
    build_batch_model,
    build_request_model,
    describe_errors,
    shown_name,
)
from bento.runtime import ModelRuntime
from data_contracts.artifacts import (
    DECISION_FIELD,
    PREDICTIONS_FIELD,
    RECORDS_FIELD,
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


def _caller_request_id(raw: Any) -> str | None:
    """The ``request_id`` of a parsed body that failed validation, when it has a usable one."""
    value = raw.get(REQUEST_ID) if isinstance(raw, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH else None


def parse_body(body: bytes) -> tuple[Any, FieldError | None]:
    """The body parsed by pydantic-core's JSON parser (the one validation uses: the same
    duplicate-key and number rules), or the reason it is not JSON. Never raises."""
    try:
        return from_json(body), None
    except ValueError as err:
        reason = str(err)
    except Exception as err:  # whatever the parser raises is the caller's 422
        reason = f"{type(err).__name__}: {err}"
    if "recursion limit" in reason:
        reason = f"JSON nested deeper than {MAX_JSON_DEPTH} levels ({reason})"
    return None, FieldError(field="body", problem="invalid JSON", message=reason[:300])


def _envelope_errors(raw: Any, max_records: int) -> list[FieldError]:
    """What is wrong with a batch body around its records (bounded: unknown top-level keys
    are listed up to MAX_UNKNOWN_KEYS, with their number)."""
    if not isinstance(raw, dict):
        kind = "null" if raw is None else type(raw).__name__
        return [FieldError(field="body", problem="wrong type", message=f"expected an object with "
                           f"'records', not {kind}")]  # fmt: skip
    errors: list[FieldError] = []
    unknown = [k for k in raw if k not in (RECORDS_FIELD, REQUEST_ID)]
    for key in unknown[:MAX_UNKNOWN_KEYS]:
        errors.append(
            FieldError(
                field=shown_name(key),
                problem="unknown field",
                message="Extra inputs are not permitted",
            )
        )
    if len(unknown) > MAX_UNKNOWN_KEYS:
        more = len(unknown) - MAX_UNKNOWN_KEYS
        errors.append(
            FieldError(field="body", problem="too many problems", message=f"{more} more unknown "
                       "top-level keys are not listed")
        )  # fmt: skip
    records = raw.get(RECORDS_FIELD)
    if RECORDS_FIELD not in raw:
        errors.append(FieldError(field=RECORDS_FIELD, problem="missing", message="Field required"))
    elif not isinstance(records, list):
        errors.append(
            FieldError(field=RECORDS_FIELD, problem="wrong type", message="Input should be a list")
        )
    elif not records:
        errors.append(
            FieldError(
                field=RECORDS_FIELD,
                problem="no records",
                message="List should have at least 1 item",
            )
        )
    elif len(records) > max_records:
        errors.append(
            FieldError(
                field=RECORDS_FIELD,
                problem="too many records",
                message=f"List should have at most {max_records} items, not {len(records)}",
            )
        )
    request_id = raw.get(REQUEST_ID)
    if request_id is not None and not isinstance(request_id, str):
        errors.append(
            FieldError(field=REQUEST_ID, problem="wrong type", message="Input should be a string")
        )
    elif request_id is not None and len(request_id) > MAX_ID_LENGTH:
        errors.append(
            FieldError(
                field=REQUEST_ID,
                problem="too long",
                message=f"String should have at most {MAX_ID_LENGTH} characters",
            )
        )
    return errors


@dataclass
class _CheckedBatch:
    """A batch body parsed and checked: the valid records and where they were, or a refusal
    (``records`` None) with its ``detail``; the error entries are in ``budget``."""

    request_id: str
    budget: ErrorBudget
    detail: str = ""
    records: list[BaseModel] | None = None
    positions: list[int] = field(default_factory=list)
    total: int = 0


def _check_batch(state: _State, body: bytes, header_id: str | None) -> _CheckedBatch:
    """Parse a batch body once and check it with bounded work (no I/O: may run in a thread)."""
    budget = ErrorBudget()
    raw, parse_error = parse_body(body)
    if parse_error is not None:
        budget.add([parse_error])
        return _CheckedBatch(header_id or _new_request_id(), budget, "invalid batch")
    request_id = _caller_request_id(raw) or header_id or _new_request_id()
    envelope = _envelope_errors(raw, state.config.max_batch_records)
    if envelope:
        budget.add(envelope)
        return _CheckedBatch(request_id, budget, "invalid batch")
    records_raw: list[Any] = raw[RECORDS_FIELD]
    total = len(records_raw)
    checker = state.checker
    fast = checker.check_all(records_raw)
    if fast is not None:
        return _CheckedBatch(request_id, budget, "", fast, list(range(total)), total)
    records: list[BaseModel] = []
    positions: list[int] = []
    for i, item in enumerate(records_raw):
        checked = checker.check(item, i, describe=not budget.full)
        if checked.model is None:
            budget.add(checked.errors, checked.problems)
            checker.categories.count_raw(item)
        else:
            records.append(checked.model)
            positions.append(i)
    return _CheckedBatch(request_id, budget, "", records, positions, total)


class ServingApp:
    """The mounted ASGI app; :meth:`bind` gives it a loaded model (it answers 503 until then)."""

    def __init__(self, lifespan: Callable[[Any], Any] | None = None) -> None:
        self._state: _State | None = None
        self._score_limiter: anyio.CapacityLimiter | None = None
        self._check_limiter: anyio.CapacityLimiter | None = None
        self._openapi_source: Callable[[], dict[str, Any]] | None = None
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
            checker=RecordChecker(record_model, runtime.spec),
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
        scope[BODY_BYTES] = len(body)
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
                request_id = values[REQUEST_ID] or header_id or _new_request_id()
                await self._refuse(send, 422, request_id, "invalid transaction", policy_errors)
            return
        request_id = values[REQUEST_ID] or header_id or _new_request_id()
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
            await self._refuse(send, 503, _new_request_id(), "the model is not loaded yet", [])
            return
        body, header_id = await self._body(scope, receive, send, state.config.max_body_bytes)
        if body is None:
            return
        if len(body) >= THREAD_BODY_BYTES:
            # large bodies are parsed and checked off the event loop: /readyz and single
            # predictions keep being answered meanwhile (one such thread at a time)
            if self._check_limiter is None:
                self._check_limiter = anyio.CapacityLimiter(1)
            checked = await anyio.to_thread.run_sync(
                _check_batch, state, body, header_id, limiter=self._check_limiter
            )
        else:
            checked = _check_batch(state, body, header_id)
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
        request_id = _caller_request_id(raw) or header_id or _new_request_id()
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
            request_id = _new_request_id()
            logger.exception("prediction failed", extra={"request_id": request_id})
            payload = ErrorResponse(request_id=request_id, detail="internal error")
            await _send_json(send, 500, payload.model_dump_json().encode(), request_id)
        # the handler's buffers are gone: give their pages back after a large request
        await self.memory.after(scope.get(BODY_BYTES, 0))


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
                    "431": {"description": "Request headers too large (no JSON body)"},
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
