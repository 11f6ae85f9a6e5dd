"""Request and response models generated from the feature spec, and the limits of a request.

The request model is built from a :class:`FeatureSpec` at start-up, never written by hand: one
required field per feature (JSON types are strict: numbers are numbers, booleans are booleans),
ranges from ``min``/``max``, closed category sets as literals, ``null`` only where the spec
says ``nullable``; unknown keys are refused; categorical values and the transaction id are no
longer than the spec allows. Validation runs in pydantic-core (Rust).

Bounded work (issue 14): the limits below bound the work and the answer for a refused request.
:mod:`bento.record_checker` describes a refused record within them and
:mod:`bento.field_errors` words its problems and caps the entries of one answer.
"""

from __future__ import annotations

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


def _whole(value: float) -> float:
    """Refuse what pydantic's ``multiple_of`` lets through: it compares with a tolerance, so
    1e-10 passed as a multiple of 1 (found by the schema fuzzer). 3.0 stays a whole number."""
    if not value.is_integer():
        raise PydanticCustomError(
            "multiple_of", "Input should be a multiple of {multiple_of}", {"multiple_of": 1}
        )
    return value


def _feature_type(feature: Feature, spec: FeatureSpec) -> Any:
    """The annotated type of one feature's field."""
    limits: dict[str, Any] = {"description": feature.description or None}
    if feature.kind == FeatureKind.CATEGORICAL:
        cats = tuple(feature.categories or ())
        # normalised categories are checked after folding (see CategoryPolicy), so a str here
        open_set = feature.allow_unknown_categories or bool(feature.normalize_categories)
        base: Any = str if open_set else Literal[cats]  # type: ignore[valid-type]
        if open_set:
            limits["max_length"] = spec.max_length(feature)
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
    if feature.kind == FeatureKind.INTEGER:
        annotated = Annotated[annotated, AfterValidator(_whole)]  # type: ignore[valid-type]
    return annotated | None if feature.nullable else annotated


def build_request_model(spec: FeatureSpec, extra: str = "forbid") -> type[BaseModel]:
    """The ``/predict`` body model: the spec's features plus optional transaction/request ids.

    ``extra="ignore"`` gives the twin that skips unknown keys (their count is checked apart).
    """
    fields: dict[str, Any] = {f.name: (_feature_type(f, spec), ...) for f in spec.features}
    for name, limit in ((TRANSACTION_ID, spec.id_max_length), (REQUEST_ID, MAX_ID_LENGTH)):
        if name in fields:
            raise ValueError(f"feature name {name!r} is reserved by the serving API")
        fields[name] = (str | None, Field(None, max_length=limit))
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
    errors_omitted: int = Field(0, description="problems found but not listed in errors")


class ErrorResponse(BaseModel):
    """A refused request: what is wrong, field by field (at most 200 entries)."""

    request_id: str
    detail: str
    errors: list[FieldError] = []
    errors_omitted: int = Field(0, description="problems found but not listed in errors")
