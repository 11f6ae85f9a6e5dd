"""Request and response models generated from the feature spec, and readable validation errors.

The request model is built from a :class:`FeatureSpec` at start-up, never written by hand: one
required field per feature (JSON types are strict: numbers are numbers, booleans are booleans),
ranges from ``min``/``max``, closed category sets as literals, ``null`` only where the spec
says ``nullable``; unknown keys are refused. Validation runs in pydantic-core (Rust), directly
on the request body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

# fields a caller may add besides the features
from data_contracts.artifacts import REQUEST_ID, TRANSACTION_ID
from data_contracts.spec import Feature, FeatureKind, FeatureSpec

MAX_ID_LENGTH = 200


def _feature_type(feature: Feature) -> Any:
    """The annotated type of one feature's field."""
    limits: dict[str, Any] = {"description": feature.description or None}
    if feature.kind == FeatureKind.CATEGORICAL:
        cats = tuple(feature.categories or ())
        base: Any = str if feature.allow_unknown_categories else Literal[cats]  # type: ignore[valid-type]
        if feature.allow_unknown_categories:
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
    return annotated | None if feature.nullable else annotated


def build_request_model(spec: FeatureSpec) -> type[BaseModel]:
    """The ``/predict`` body model: the spec's features plus optional transaction/request ids."""
    fields: dict[str, Any] = {f.name: (_feature_type(f), ...) for f in spec.features}
    for name in (TRANSACTION_ID, REQUEST_ID):
        if name in fields:
            raise ValueError(f"feature name {name!r} is reserved by the serving API")
        fields[name] = (str | None, Field(None, max_length=MAX_ID_LENGTH))
    title = "".join(part.capitalize() for part in spec.name.split("-")) + "Transaction"
    return create_model(  # type: ignore[call-overload, no-any-return]
        title,
        __config__=ConfigDict(extra="forbid", strict=True, title=title),
        __doc__=f"One transaction for {spec.name} (spec {spec.spec_hash()}).",
        **fields,
    )


def build_batch_model(record_model: type[BaseModel], max_records: int) -> type[BaseModel]:
    """The ``/predict_batch`` body model: ``{"records": [...], "request_id": ...}``."""
    return create_model(  # type: ignore[call-overload, no-any-return]
        "BatchRequest",
        __config__=ConfigDict(extra="forbid", strict=True),
        records=(list[record_model], Field(..., min_length=1, max_length=max_records)),  # type: ignore[valid-type]
        request_id=(str | None, Field(None, max_length=MAX_ID_LENGTH)),
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


class ErrorResponse(BaseModel):
    """A refused request: what is wrong, field by field."""

    request_id: str
    detail: str
    errors: list[FieldError] = []


# pydantic error type -> the problem reported to the caller
_PROBLEMS = {
    "missing": "missing",
    "extra_forbidden": "unknown field",
    "finite_number": "NaN or infinite",
    "greater_than_equal": "out of range",
    "less_than_equal": "out of range",
    "greater_than": "out of range",
    "less_than": "out of range",
    "literal_error": "unknown category",
    "multiple_of": "not a whole number",
    "string_too_long": "too long",
    "too_long": "too many records",
    "too_short": "no records",
    "json_invalid": "invalid JSON",
    "json_type": "invalid JSON",
}


def describe_errors(err: ValidationError, *, batch: bool = False) -> list[FieldError]:
    """Readable field errors from a pydantic error; for a batch the record index is split off."""
    out: list[FieldError] = []
    for e in err.errors(include_url=False, include_context=False):
        loc = list(e["loc"])
        index = None
        if batch and len(loc) >= 2 and loc[0] == "records" and isinstance(loc[1], int):
            index = loc[1]
            loc = loc[2:]
        # a failed member of "X | None" adds the member's type name to the location
        loc = [p for p in loc if not (isinstance(p, str) and p in _TYPE_TAGS)]
        kind = e["type"]
        value = e.get("input", 0)
        if kind in _KEY_PROBLEMS:
            problem = _PROBLEMS[kind]
        elif value is None:
            problem = "null not allowed"
        elif kind == "literal_error" and not isinstance(value, str):
            problem = "wrong type"
        else:
            problem = _PROBLEMS.get(kind, "wrong type")
        field = ".".join(str(p) for p in loc) or "body"
        out.append(FieldError(index=index, field=field, problem=problem, message=e["msg"]))
    return _dedupe(out)


_KEY_PROBLEMS = {"missing", "extra_forbidden", "json_invalid", "json_type"}
_TYPE_TAGS = {"float", "str", "bool", "int", "constrained-float", "function-after", "literal"}


def _dedupe(errors: list[FieldError]) -> list[FieldError]:
    seen: set[tuple[int | None, str, str]] = set()
    out = []
    for e in errors:
        key = (e.index, e.field, e.problem)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out
