"""Request and response models generated from the feature spec, and the limits of a request.

The request model is built from a :class:`FeatureSpec` at start-up, never written by hand: one
required field per feature (JSON types are strict: numbers are numbers, booleans are booleans),
ranges from ``min``/``max``, closed category sets as literals, ``null`` only where the spec
says ``nullable``; unknown keys are refused; categorical values and the transaction id are no
longer than the spec allows and hold no control or formatting character (issue 31: NUL, CR/LF,
bidi overrides such as U+202E and zero-width joiners were scored and stored as sent); request
ids are made of :data:`REQUEST_ID_CHARS` only. Validation runs in pydantic-core (Rust).

Bounded work (issue 14): the limits below bound the work and the answer for a refused request.
:mod:`bento.record_checker` describes a refused record within them and
:mod:`bento.field_errors` words its problems and caps the entries of one answer.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

# fields a caller may add besides the features
from data_contracts.artifacts import REQUEST_ID, TRANSACTION_ID
from data_contracts.spec import Feature, FeatureKind, FeatureSpec

MAX_ID_LENGTH = 200  # request ids (body or X-Request-ID header)
# bounds of the work and the answer for one refused request
MAX_UNKNOWN_KEYS = 20  # a record with more unknown keys is refused without validating it
MAX_ERRORS_PER_RECORD = 20
MAX_ERRORS_PER_REQUEST = 200
MAX_NAME_SHOWN = 40  # characters of an unknown key name shown in answers, logs and metrics
# pydantic-core's JSON parser refuses nesting deeper than this (a valid body nests 3 deep)
MAX_JSON_DEPTH = 200


# request ids (body, batch or X-Request-ID header) go into answers, headers, logs and the
# inference log: visible ASCII without quotes, spaces, backslashes or angle brackets
REQUEST_ID_CHARS = "letters, digits and . _ ~ : / + = @ # , ; { } -"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._~:/+=@#,;{}-]*$"
_SAFE_ID = re.compile(REQUEST_ID_PATTERN)
# Unicode categories refused in categorical values and transaction ids: controls (NUL, CR, LF,
# tab), formatting characters (bidi overrides such as U+202E, zero-width joiners, BOM), line
# and paragraph separators
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def unsafe_character(value: str) -> str | None:
    """The first control or formatting character of ``value`` (in the Basic Multilingual
    Plane, as :func:`no_control_pattern`) described: code point, name, position; None when it
    has none. Printable ASCII is checked in one C call."""
    if value.isascii() and value.isprintable():
        return None
    for i, ch in enumerate(value):
        if ch <= "\uffff" and unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            return f"U+{ord(ch):04X} {unicodedata.name(ch, 'control')} at position {i}"
    return None


@functools.cache
def no_control_pattern() -> str:
    """A regex of strings without a character of :data:`_UNSAFE_CATEGORIES`, built once from
    ``unicodedata`` (16 spans in Unicode 14). It is a field ``pattern``: checked in
    pydantic-core's Rust regex engine (about 40 ns a value) and published in the OpenAPI
    document, so the schema says exactly what is refused. The class holds the characters
    themselves, which the Rust and Python engines and JSON Schema validators all read
    literally. It covers the Basic Multilingual Plane, where every control, bidi and
    zero-width character is; the 120 formatting characters beyond it (tag characters
    U+E0020-E007F among them) are not refused: the schema fuzzer's generator cannot read
    a class holding them (see docs/serving.md)."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x10000):
        if unicodedata.category(chr(cp)) in _UNSAFE_CATEGORIES:
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    spans = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)
    return f"^[^{spans}]*$"


def is_safe_request_id(value: str) -> bool:
    """Whether ``value`` is made of :data:`REQUEST_ID_CHARS` only."""
    return _SAFE_ID.match(value) is not None


def _whole(value: float) -> float:
    """Refuse what pydantic's ``multiple_of`` lets through: it compares with a tolerance, so
    1e-10 passed as a multiple of 1 (found by the schema fuzzer). 3.0 stays a whole number."""
    if not value.is_integer():
        raise PydanticCustomError(
            "multiple_of", "Input should be a multiple of {multiple_of}", {"multiple_of": 1}
        )
    return value


def _feature_type(feature: Feature, spec: FeatureSpec, whole: bool = True) -> Any:
    """The annotated type of one feature's field; ``whole=False`` leaves out the exact
    whole-number check of integers (a batch checks a whole column at once instead)."""
    limits: dict[str, Any] = {"description": feature.description or None}
    if feature.kind == FeatureKind.CATEGORICAL:
        cats = tuple(feature.categories or ())
        # normalised categories are checked after folding (see CategoryPolicy), so a str here
        open_set = feature.allow_unknown_categories or bool(feature.normalize_categories)
        base: Any = str if open_set else Literal[cats]  # type: ignore[valid-type]
        if open_set:
            limits["max_length"] = spec.max_length(feature)
            limits["pattern"] = no_control_pattern()
            limits["json_schema_extra"] = {"examples": list(cats)}
    elif feature.kind == FeatureKind.BOOLEAN:
        base = bool
    else:
        base = float
        limits["allow_inf_nan"] = False
        if feature.min is not None:
            limits["ge"] = feature.min
        if feature.max is not None:
            limits["le"] = feature.max
        if feature.kind == FeatureKind.INTEGER:
            # whole numbers; 3.0 is accepted as 3, like the training data contract
            limits["multiple_of"] = 1
    annotated = Annotated[base, Field(**limits)]  # type: ignore[valid-type]
    if feature.kind == FeatureKind.INTEGER and whole:
        annotated = Annotated[annotated, AfterValidator(_whole)]  # type: ignore[valid-type]
    return annotated | None if feature.nullable else annotated


RequestId = Annotated[str, Field(max_length=MAX_ID_LENGTH, pattern=REQUEST_ID_PATTERN)]


def build_request_model(
    spec: FeatureSpec, extra: str = "forbid", whole: bool = True
) -> type[BaseModel]:
    """The ``/predict`` body model: the spec's features plus optional transaction/request ids.

    ``extra="ignore"`` gives the twin that skips unknown keys (their count is checked apart);
    ``whole=False`` the one whose integers are checked for whole numbers by the caller.
    """
    fields: dict[str, Any] = {f.name: (_feature_type(f, spec, whole), ...) for f in spec.features}
    for name in (TRANSACTION_ID, REQUEST_ID):
        if name in fields:
            raise ValueError(f"feature name {name!r} is reserved by the serving API")
    transaction = Annotated[str, Field(max_length=spec.id_max_length, pattern=no_control_pattern())]
    fields[TRANSACTION_ID] = (transaction | None, None)
    fields[REQUEST_ID] = (RequestId | None, None)
    title = "".join(part.capitalize() for part in spec.name.split("-")) + "Transaction"
    return create_model(  # type: ignore[call-overload, no-any-return]
        title,
        __config__=ConfigDict(extra=extra, strict=True, title=title),  # type: ignore[typeddict-item]
        __doc__=f"One transaction for {spec.name} (spec {spec.spec_hash()}).",
        **fields,
    )


def build_batch_model(record_model: type[BaseModel], max_records: int) -> type[BaseModel]:
    """The ``/predict_batch`` body model: ``{"records": [...], "request_id": ...}``."""
    return create_model(  # type: ignore[call-overload, no-any-return]
        "BatchRequest",
        __config__=ConfigDict(extra="forbid", strict=True),
        records=(list[record_model], Field(..., min_length=1, max_length=max_records)),  # type: ignore[valid-type]
        request_id=(RequestId | None, None),
    )


class Prediction(BaseModel):
    """The answer for one transaction."""

    request_id: str
    transaction_id: str | None = None
    fraud_probability: float = Field(ge=0, le=1)
    is_fraud: bool = Field(description="fraud_probability >= threshold")
    threshold: float
    model_version: str


class BatchItem(BaseModel):
    """The score of one valid record of a batch."""

    fraud_probability: float = Field(ge=0, le=1)
    is_fraud: bool


class FieldError(BaseModel):
    """One problem with one field (``index`` is the record's position in a batch)."""

    index: int | None = None
    field: str
    problem: str
    message: str


class BatchPrediction(BaseModel):
    """Scores of a batch: ``predictions[i]`` is null where record ``i`` was invalid."""

    request_id: str
    model_version: str
    threshold: float
    scored: int
    rejected: int
    predictions: list[BatchItem | None]
    errors: list[FieldError]
    errors_omitted: int = Field(0, description="problems found but not listed in errors")


class ErrorResponse(BaseModel):
    """A refused request: what is wrong, field by field (at most 200 entries)."""

    request_id: str
    detail: str
    errors: list[FieldError] = []
    errors_omitted: int = Field(0, description="problems found but not listed in errors")
