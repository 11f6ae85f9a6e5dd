"""A request body parsed once, a batch checked and a refused record described: no I/O, no ASGI.

Parsing uses pydantic-core's JSON parser (the one validation uses: the same duplicate-key and
number rules); whatever it refuses, nesting deeper than ``MAX_JSON_DEPTH`` levels included, is a
field error for a 422, never an exception. :func:`check_batch` may run in a worker thread;
:func:`describe_refused_record` words the refusal of a ``/predict`` body with bounded work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from bento import json_slices
from bento.field_errors import ErrorBudget, describe_errors, shown_name
from bento.record_checker import RecordChecker
from bento.request_model import (
    MAX_ID_LENGTH,
    MAX_JSON_DEPTH,
    MAX_UNKNOWN_KEYS,
    REQUEST_ID,
    REQUEST_ID_CHARS,
    FieldError,
    is_safe_request_id,
)
from data_contracts.artifacts import RECORDS_FIELD


def new_request_id() -> str:
    return os.urandom(16).hex()


def caller_request_id(raw: Any) -> str | None:
    """The ``request_id`` of a parsed body that failed validation, when it has a usable one."""
    value = raw.get(REQUEST_ID) if isinstance(raw, dict) else None
    usable = isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH
    return value if usable and is_safe_request_id(value) else None


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


def envelope_errors(raw: Any, max_records: int) -> list[FieldError]:
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
    elif request_id is not None and not is_safe_request_id(request_id):
        errors.append(
            FieldError(
                field=REQUEST_ID,
                problem="invalid characters",
                message=f"A request id may hold only {REQUEST_ID_CHARS}",
            )
        )
    return errors


@dataclass
class CheckedBatch:
    """A batch body parsed and checked: the valid records and where they were, or a refusal
    (``records`` None) with its ``detail``; the error entries are in ``budget``."""

    request_id: str
    budget: ErrorBudget
    detail: str = ""
    records: list[BaseModel] | None = None  # empty when an Arrow batch gave its columns whole
    positions: list[int] = field(default_factory=list)  # where the scored records were
    total: int = 0
    columns: dict[str, Sequence[Any]] | None = None  # the records' features, when at hand


# JSON values a batch body may hold, per record and field, before it is parsed at all (see
# :func:`value_limit`); the slack keeps any honest batch far below it
VALUE_SLACK = 4


def value_limit(max_records: int, fields: int) -> int:
    """The most JSON values (separators and containers) a batch body may hold.

    A valid batch holds about ``records x (fields + 1)`` commas plus one object per record.
    Parsing allocates a Python object per value, so without this bound the body cap alone let
    a 16 MB body of empty records (``{},{},...``: 5.5 million objects) take about 380 MB. The
    count is of raw bytes (a comma inside a string counts too), hence the generous slack:
    at 10,000 records of 21 fields, 1 million values, about 70 MB of objects at most.
    """
    return VALUE_SLACK * max_records * (fields + 2) + 1024


def count_values(body: bytes) -> int:
    """An upper bound of the JSON values in ``body``: its commas, objects and arrays (C speed)."""
    return body.count(b",") + body.count(b"{") + body.count(b"[")


def check_batch(
    checker: RecordChecker, max_records: int, body: bytes, header_id: str | None
) -> CheckedBatch:
    """Parse a batch body once and check it with bounded work (no I/O: may run in a thread)."""
    budget = ErrorBudget()
    limit = value_limit(max_records, len(checker.allowed))
    if len(body) > limit and count_values(body) > limit:
        budget.add(
            [
                FieldError(
                    field="body",
                    problem="too many values",
                    message=f"more than {limit:,} JSON values; a batch holds at most "
                    f"{max_records:,} flat records",
                )
            ]
        )
        return CheckedBatch(header_id or new_request_id(), budget, "invalid batch")
    # a large body's records are parsed a slice at a time (the lock is let go in between);
    # a body of any other shape, or one a slice of which does not parse, is parsed whole
    size = json_slices.SLICE_BYTES
    raw = json_slices.parse_in_slices(body, size) if len(body) > size else None
    if raw is None:
        raw, parse_error = parse_body(body)
        if parse_error is not None:
            budget.add([parse_error])
            return CheckedBatch(header_id or new_request_id(), budget, "invalid batch")
    request_id = caller_request_id(raw) or header_id or new_request_id()
    envelope = envelope_errors(raw, max_records)
    if envelope:
        budget.add(envelope)
        return CheckedBatch(request_id, budget, "invalid batch")
    return check_records(checker, raw[RECORDS_FIELD], request_id, budget)


def check_records(
    checker: RecordChecker, records_raw: list[Any], request_id: str, budget: ErrorBudget
) -> CheckedBatch:
    """Check a batch's parsed records (JSON or Arrow rows): the whole batch at once when every
    record is valid, else record by record, each refusal naming its record and field."""
    total = len(records_raw)
    fast = checker.check_all(records_raw)
    if fast is not None:
        models, columns = fast
        return CheckedBatch(request_id, budget, "", models, list(range(total)), total, columns)
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
    return CheckedBatch(request_id, budget, "", records, positions, total)


def describe_refused_record(
    checker: RecordChecker, body: bytes, header_id: str | None, rejection: ValidationError
) -> tuple[str, ErrorBudget]:
    """The request id and the bounded error entries of a refused ``/predict`` body: parsed
    once more (it is at most ``max_record_bytes``) and described with bounded work."""
    raw, parse_error = parse_body(body)
    request_id = caller_request_id(raw) or header_id or new_request_id()
    budget = ErrorBudget()
    if parse_error is not None:
        budget.add([parse_error])
    else:
        checked = checker.check(raw)
        if checked.model is None:
            budget.add(checked.errors, checked.problems)
            checker.categories.count_raw(raw)
        else:  # JSON mode refused what Python mode accepts: its own words, bounded
            budget.add(describe_errors(rejection), rejection.error_count())
    return request_id, budget
