"""What the prediction endpoints answer, as JSON bytes, and what each answer records.

A scored record or batch is appended to the inference log, counted in the metrics and answered
with its scores; a refusal is counted, logged and answered with its bounded field errors. The
functions take the :class:`ServingState` a request runs on and return the answer's bytes: no
ASGI, no waiting. Kept apart from :mod:`bento.http_app`, which reads, validates and decides, so
that an endpoint's flow reads in a few lines and what an answer records reads in one place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from bento.config import ServingConfig
from bento.inference_log import InferenceLogWriter
from bento.metrics import ServiceMetrics
from bento.record_checker import RecordChecker
from bento.request_body import CheckedBatch
from bento.request_model import REQUEST_ID, TRANSACTION_ID, ErrorResponse, FieldError
from bento.runtime import ModelRuntime
from data_contracts.artifacts import (
    DECISION_FIELD,
    PREDICTIONS_FIELD,
    SCORE_FIELD,
    THRESHOLD_FIELD,
    VERSION_FIELD,
)

logger = logging.getLogger("fraud.serving")


@dataclass
class ServingState:
    """What a bound app serves with: the model, its request models, log writer and metrics."""

    runtime: ModelRuntime
    record_model: type[BaseModel]
    batch_model: type[BaseModel]
    checker: RecordChecker
    writer: InferenceLogWriter | None
    metrics: ServiceMetrics | None
    config: ServingConfig
    in_flight: int = 0  # requests running on this state (only the event loop changes it)


def refusal(
    state: ServingState | None,
    status: int,
    request_id: str,
    detail: str,
    errors: list[FieldError],
    omitted: int = 0,
) -> bytes:
    """Count and log a refusal; its answer. ``errors`` is already bounded, ``omitted`` problems
    are not listed; ``state`` (None before a model is bound) holds the metrics to count in."""
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
    return payload.model_dump_json(exclude_none=True).encode()


def scored_record(state: ServingState, values: dict[str, Any], request_id: str) -> bytes:
    """Score one valid ``/predict`` record, log and count it; its answer."""
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
    return json.dumps(payload).encode()


# predictions encoded per json.dumps call: each call holds the interpreter lock, so a 10,000
# record answer is built in short steps that let the event loop in between
ENCODE_SLICE = 1000


def score_batch(state: ServingState, checked: CheckedBatch) -> bytes:
    """Encode, score, log and count a checked batch's valid records; the answer's bytes.

    Pure Python and numpy on the batch alone (no ASGI, no event loop), so the endpoint runs
    it in its scoring thread: the records are transposed, scored, their ids hashed for the
    inference log and the answer encoded there, not on the event loop.
    """
    runtime = state.runtime
    columns = checked.columns
    if columns is None:
        columns = state.checker.transpose(checked.records or [])
    scores = runtime.score_feed(runtime.encoder.encode_columns(columns))
    return scored_batch(state, checked, columns, scores)


def scored_batch(
    state: ServingState,
    checked: CheckedBatch,
    columns: Mapping[str, Sequence[Any]],
    scores: np.ndarray,
) -> bytes:
    """Log and count the scores of a batch's valid records (their feature and transaction id
    ``columns``); the answer, with null predictions and the error entries of the others."""
    request_id, budget, errors = checked.request_id, checked.budget, checked.budget.errors
    positions, total = checked.positions, checked.total
    scored = len(positions)
    runtime = state.runtime
    decisions = scores >= runtime.threshold
    scores_list = scores.tolist()
    if state.writer is not None:
        tx_ids = columns[TRANSACTION_ID]
        state.writer.append_batch(
            columns, scores_list, decisions.astype(np.int8).tolist(), request_id, tx_ids
        )
    rejected = total - scored
    if state.metrics is not None:
        n_fraud = int(decisions.sum())
        state.metrics.count_predictions("predict_batch", n_fraud, scored - n_fraud, rejected)
        state.metrics.observe_scores(scores)
        if errors:
            state.metrics.count_field_errors((e.field, e.problem) for e in errors)
            state.metrics.count_omitted_errors(budget.omitted)
        near = state.checker.categories.take()
        if near:
            state.metrics.count_near_misses(near)
    predictions: list[dict[str, Any] | None] = [None] * total
    for pos, score, fraud in zip(positions, scores_list, decisions.tolist(), strict=True):
        predictions[pos] = {SCORE_FIELD: score, DECISION_FIELD: fraud}
    if errors:
        logger.info(
            "batch partly refused",
            extra={"request_id": request_id, "rejected": rejected, "scored": scored},
        )
    head = {
        REQUEST_ID: request_id,
        VERSION_FIELD: runtime.model_version,
        THRESHOLD_FIELD: runtime.threshold,
        "scored": scored,
        "rejected": rejected,
    }
    slices = (
        json.dumps(predictions[i : i + ENCODE_SLICE])[1:-1]
        for i in range(0, len(predictions), ENCODE_SLICE)
    )
    # the same JSON as json.dumps of the whole answer (keys in this order), in short steps
    return "".join(
        (
            json.dumps(head)[:-1],
            f', "{PREDICTIONS_FIELD}": [',
            ", ".join(slices),
            '], "errors": ',
            json.dumps([e.model_dump() for e in errors]),
            f', "errors_omitted": {json.dumps(budget.omitted)}}}',
        )
    ).encode()
