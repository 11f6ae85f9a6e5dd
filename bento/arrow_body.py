"""A ``/predict_batch`` body sent as an Arrow IPC stream, checked like a JSON batch.

A client that holds its records in columns (pandas, polars, Arrow) sends them as
``application/vnd.apache.arrow.stream``: one column per feature, an optional ``transaction_id``
(and ``request_id``) column, one row per record. The body is bounded like a JSON one (size cap
before reading, at most ``max_records`` rows, counted batch by batch while the stream is read);
the schema is checked before any value is read: a missing, unknown, duplicated or mistyped
column is refused naming the column. The rows then go through the very checks of a JSON batch
(:func:`bento.request_body.check_records`): a NaN, an infinite or out-of-range value, an unknown
category or a null where the spec allows none is listed with its record index, and the valid
records are scored (partial scoring, as for JSON). A stream with compressed buffers is
refused before anything is decoded (it could decode to far more than the body cap); whatever
pyarrow refuses (garbage, a truncated stream) is a 422 naming the problem, never a 5xx.

No I/O and no ASGI: :func:`check_arrow_batch` runs in the scoring check thread (pyarrow reads
IPC without the interpreter lock).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bento.field_errors import ErrorBudget, shown_name
from bento.record_checker import RecordChecker
from bento.request_body import CheckedBatch, check_records, new_request_id
from bento.request_model import MAX_UNKNOWN_KEYS, REQUEST_ID, TRANSACTION_ID, FieldError
from data_contracts.artifacts import RECORDS_FIELD
from data_contracts.spec import Feature, FeatureKind, FeatureSpec

ARROW_STREAM = b"application/vnd.apache.arrow.stream"
# decoded column bytes allowed per body byte: an honest stream is about as large decoded as
# sent; a compressed one that decodes far larger is refused
DECODED_PER_BODY_BYTE = 8
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3  # MessageHeader union members of Arrow's Message.fbs


def is_arrow_stream(content_type: bytes | None) -> bool:
    """True for ``application/vnd.apache.arrow.stream`` (parameters ignored)."""
    if not content_type:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == ARROW_STREAM


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _is_number(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))


def _expected(spec: FeatureSpec) -> dict[str, tuple[str, Any]]:
    """Column name -> (what the answer says is expected, the check of an Arrow type)."""
    out: dict[str, tuple[str, Any]] = {}
    for f in spec.features:
        if f.kind == FeatureKind.CATEGORICAL:
            out[f.name] = ("a string (utf8) column", _is_text)
        elif f.kind == FeatureKind.BOOLEAN:
            out[f.name] = ("a boolean column", pa.types.is_boolean)
        else:
            out[f.name] = ("an integer or floating-point column", _is_number)
    out[TRANSACTION_ID] = ("a string (utf8) column", _is_text)
    out[REQUEST_ID] = ("a string (utf8) column", _is_text)
    return out


def schema_errors(schema: pa.Schema, spec: FeatureSpec) -> list[FieldError]:
    """What is wrong with a stream's columns: duplicated, unknown (at most
    :data:`MAX_UNKNOWN_KEYS` listed), missing or of a type the feature cannot take."""
    expected = _expected(spec)
    errors: list[FieldError] = []
    names = schema.names
    seen: set[str] = set()
    unknown = 0
    for name, column in zip(names, schema, strict=True):
        if name in seen:
            errors.append(FieldError(field=shown_name(name), problem="duplicate column",
                                     message="a column may appear once"))  # fmt: skip
            continue
        seen.add(name)
        if name not in expected:
            unknown += 1
            if unknown <= MAX_UNKNOWN_KEYS:
                errors.append(FieldError(field=shown_name(name), problem="unknown field",
                                         message="Extra inputs are not permitted"))  # fmt: skip
            continue
        wanted, fits = expected[name]
        if not (pa.types.is_null(column.type) or fits(column.type)):
            message = f"Arrow type {column.type} sent; expected {wanted}"
            errors.append(FieldError(field=name, problem="wrong type", message=message))
    if unknown > MAX_UNKNOWN_KEYS:
        errors.append(FieldError(field="body", problem="too many problems",
                                 message=f"{unknown - MAX_UNKNOWN_KEYS} more unknown columns "
                                 "are not listed"))  # fmt: skip
    for name in spec.feature_names:
        if name not in seen:
            errors.append(FieldError(field=name, problem="missing", message="Field required"))
    return errors


def _table_fields(meta: bytes, pos: int) -> Callable[[int], int]:
    """The field offsets of the flatbuffer table at ``pos`` (0 for an absent field)."""
    vtable = pos - struct.unpack_from("<i", meta, pos)[0]
    size = struct.unpack_from("<H", meta, vtable)[0]

    def offset(i: int) -> int:
        at = 4 + 2 * i
        return struct.unpack_from("<H", meta, vtable + at)[0] if at < size else 0

    return offset


def _child(meta: bytes, pos: int, offset: int) -> int:
    return pos + offset + struct.unpack_from("<I", meta, pos + offset)[0]


def is_compressed(meta: bytes) -> bool:
    """Whether an IPC message's metadata (Arrow's ``Message.fbs``) declares buffer compression.

    Read from the flatbuffer itself, before the body is decoded: a compressed (LZ4 or ZSTD)
    batch of a 16 MB body may decode to hundreds of gigabytes, so it is refused unread.
    """
    root = struct.unpack_from("<I", meta, 0)[0]
    message = _table_fields(meta, root)
    kind_at, header_at = message(1), message(2)
    if not (kind_at and header_at):
        return False
    kind, header = meta[root + kind_at], _child(meta, root, header_at)
    if kind == _DICTIONARY_BATCH:
        data_at = _table_fields(meta, header)(1)
        if not data_at:
            return False
        header, kind = _child(meta, header, data_at), _RECORD_BATCH
    return kind == _RECORD_BATCH and _table_fields(meta, header)(3) != 0


def _invalid(problem: str, message: str) -> FieldError:
    return FieldError(field="body", problem=problem, message=message[:300])


def read_table(
    body: bytes, spec: FeatureSpec, max_records: int
) -> tuple[pa.Table | None, list[FieldError]]:
    """The stream's rows as one table, or the problems that refuse it (never raises)."""
    try:
        for message in pa.ipc.MessageReader.open_stream(pa.BufferReader(body)):
            if is_compressed(message.metadata.to_pybytes()):
                text = "buffer compression (LZ4/ZSTD) is not accepted: send an uncompressed stream"
                return None, [_invalid("compressed stream", text)]
        reader = pa.ipc.open_stream(pa.BufferReader(body))
        errors = schema_errors(reader.schema, spec)
        if errors:
            return None, errors
        batches: list[pa.RecordBatch] = []
        rows = decoded = 0
        limit = DECODED_PER_BODY_BYTE * max(len(body), 1024)
        for batch in reader:
            rows += batch.num_rows
            decoded += batch.nbytes
            if rows > max_records:
                message = f"List should have at most {max_records} items, not {rows} or more"
                return None, [FieldError(field=RECORDS_FIELD, problem="too many records",
                                         message=message)]  # fmt: skip
            if decoded > limit:
                message = f"the stream decodes to more than {limit:,} bytes"
                return None, [_invalid("too large decoded", message)]
            batches.append(batch)
    except Exception as err:  # whatever pyarrow refuses is the caller's 422
        return None, [_invalid("invalid Arrow stream", f"{type(err).__name__}: {err}")]
    if rows == 0:
        message = "List should have at least 1 item"
        return None, [FieldError(field=RECORDS_FIELD, problem="no records", message=message)]
    return pa.Table.from_batches(batches, schema=reader.schema), []


def table_records(table: pa.Table) -> list[dict[str, Any]]:
    """The table's rows as records (dictionary-encoded strings decoded, nulls as None)."""
    names = table.column_names
    columns = [column.to_pylist() for column in table.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _numbers_fit(column: pa.ChunkedArray, feature: Feature) -> bool:
    """No NaN, infinite, out-of-range or (for integers) fractional value in ``column``."""
    if pa.types.is_floating(column.type):
        if pc.any(pc.is_nan(column)).as_py() or pc.any(pc.is_inf(column)).as_py():
            return False
        fractional = pc.any(pc.not_equal(column, pc.trunc(column))).as_py()
        if feature.kind == FeatureKind.INTEGER and fractional:
            return False
    low, high = pc.min_max(column).values()
    if low.as_py() is None:  # every value null
        return True
    above = feature.min is None or float(low.as_py()) >= feature.min
    return above and (feature.max is None or float(high.as_py()) <= feature.max)


def _texts_fit(column: pa.ChunkedArray, known: pa.Array | None, max_length: int) -> bool:
    """Every value a known category (``known``), or short printable ASCII (ids)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if known is not None:
        return int(pc.sum(pc.is_in(column, value_set=known)).as_py() or 0) == (
            len(column) - column.null_count
        )
    valid = column.drop_null()
    if not len(valid):
        return True
    return bool(
        pc.all(pc.string_is_ascii(valid)).as_py()
        and pc.all(pc.utf8_is_printable(valid)).as_py()
        and pc.max(pc.utf8_length(valid)).as_py() <= max_length
    )


def fast_columns(table: pa.Table, spec: FeatureSpec) -> dict[str, Any] | None:
    """The table's feature and transaction id columns when every value passes the checks a
    record would (types, nulls, finite, range, whole numbers, known categories, safe ids),
    checked a column at a time in Arrow's compute kernels; None when any value might not, and
    the batch is checked record by record instead (which names each problem)."""
    if REQUEST_ID in table.column_names:
        return None
    try:
        for f in spec.features:
            column = table[f.name]
            if column.null_count and not f.nullable:
                return None
            if pa.types.is_null(column.type):
                continue
            if f.kind in (FeatureKind.NUMERIC, FeatureKind.INTEGER):
                fits = _numbers_fit(column, f)
            elif f.kind == FeatureKind.CATEGORICAL:
                fits = _texts_fit(column, pa.array(list(f.categories or ()), pa.string()), 0)
            else:
                fits = True
            if not fits:
                return None
        if TRANSACTION_ID in table.column_names:
            ids = table[TRANSACTION_ID]
            if not pa.types.is_null(ids.type) and not _texts_fit(ids, None, spec.id_max_length):
                return None
    except (pa.ArrowException, TypeError, ValueError):  # a kernel that does not fit: records
        return None
    numbers = {
        f.name for f in spec.features if f.kind in (FeatureKind.NUMERIC, FeatureKind.INTEGER)
    }
    columns: dict[str, Any] = {  # numbers without nulls as arrays (the encoder makes arrays)
        name: (
            table[name].to_numpy()
            if name in numbers and not table[name].null_count
            else table[name].to_pylist()
        )
        for name in spec.feature_names
    }
    ids = table[TRANSACTION_ID].to_pylist() if TRANSACTION_ID in table.column_names else None
    columns[TRANSACTION_ID] = ids if ids is not None else [None] * table.num_rows
    return columns


def check_arrow_batch(
    checker: RecordChecker, spec: FeatureSpec, max_records: int, body: bytes, header_id: str | None
) -> CheckedBatch:
    """Read an Arrow IPC stream body and check its records like a JSON batch's (no I/O)."""
    request_id = header_id or new_request_id()
    table, errors = read_table(body, spec, max_records)
    if table is None:
        budget = ErrorBudget()
        budget.add(errors)
        return CheckedBatch(request_id, budget, "invalid batch")
    columns = fast_columns(table, spec)
    if columns is not None:  # every record valid: no per-record model (positions say how many)
        n = table.num_rows
        return CheckedBatch(request_id, ErrorBudget(), "", [], list(range(n)), n, columns)
    return check_records(checker, table_records(table), request_id, ErrorBudget())
