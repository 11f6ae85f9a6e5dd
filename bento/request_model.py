"""Request and response models generated from the feature spec, and readable validation errors.

The request model is built from a :class:`FeatureSpec` at start-up, never written by hand: one
required field per feature (JSON types are strict: numbers are numbers, booleans are booleans),
ranges from ``min``/``max``, closed category sets as literals, ``null`` only where the spec
says ``nullable``; unknown keys are refused; categorical values and the transaction id are no
longer than the spec allows. Validation runs in pydantic-core (Rust).

Bounded work (issue 14): a refused request is described by :class:`RecordChecker`, which looks
at an already parsed record, counts its unknown keys without validating them (a record with more
than :data:`MAX_UNKNOWN_KEYS` is refused without further validation), validates only the known
keys, and lists at most :data:`MAX_ERRORS_PER_RECORD` problems per record;
:class:`ErrorBudget` caps the entries of one answer at :data:`MAX_ERRORS_PER_REQUEST` and says
how many were left out. Unknown key names are escaped and cut to :data:`MAX_NAME_SHOWN`
characters before they reach an answer, a log line or a metric.

A little over the project's 400-line guide: the models, the checker and the error budget
decide together what a refusal says, and the unit tests compare them side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticCustomError

# fields a caller may add besides the features
from data_contracts.artifacts import REQUEST_ID, TRANSACTION_ID
from data_contracts.spec import Feature, FeatureKind, FeatureSpec, fold_category

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


def describe_errors(
    err: ValidationError,
    *,
    batch: bool = False,
    index: int | None = None,
    max_lengths: Mapping[str, int] | None = None,
) -> list[FieldError]:
    """Readable field errors from a pydantic error; for a batch the record index is split off.

    ``index`` is the record's position when ``err`` is about one record of a batch;
    ``max_lengths`` (field -> limit) turns an over-long value of a closed category into
    "too long" rather than "unknown category".
    """
    out: list[FieldError] = []
    for e in err.errors(include_url=False, include_context=False):
        loc = list(e["loc"])
        at = index
        if batch and len(loc) >= 2 and loc[0] == "records" and isinstance(loc[1], int):
            at = loc[1]
            loc = loc[2:]
        # a failed member of "X | None" adds the member's type name to the location
        loc = [p for p in loc if not (isinstance(p, str) and p in _TYPE_TAGS)]
        kind = e["type"]
        value = e.get("input", 0)
        name = ".".join(str(p) for p in loc) or "body"
        message = e["msg"]
        if kind in _KEY_PROBLEMS:
            problem = _PROBLEMS[kind]
            if kind == "extra_forbidden":
                name = shown_name(name)
        elif value is None:
            problem = "null not allowed"
        elif kind == "literal_error" and not isinstance(value, str):
            problem = "wrong type"
        elif kind == "literal_error" and max_lengths and len(value) > max_lengths.get(name, 1e9):
            problem = "too long"
            message = f"String should have at most {max_lengths[name]} characters"
        elif kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
            # an integer too large for a float: what the JSON parser reports as infinite
            problem = "NaN or infinite"
        else:
            problem = _PROBLEMS.get(kind, "wrong type")
        out.append(FieldError(index=at, field=name, problem=problem, message=message))
    return _dedupe(out)


def shown_name(name: str) -> str:
    """A caller's key name as it may appear in an answer, a log line or a metric label:
    non-printable and non-ASCII characters escaped, cut to :data:`MAX_NAME_SHOWN` characters."""
    escaped = name if name.isascii() and name.isprintable() else ascii(name)[1:-1]
    if len(escaped) <= MAX_NAME_SHOWN:
        return escaped
    return f"{escaped[:MAX_NAME_SHOWN]}...(+{len(escaped) - MAX_NAME_SHOWN} characters)"


@dataclass
class ErrorBudget:
    """The error entries of one answer: at most ``limit``, and a count of those left out."""

    limit: int = MAX_ERRORS_PER_REQUEST
    errors: list[FieldError] = field(default_factory=list)
    omitted: int = 0

    @property
    def full(self) -> bool:
        return len(self.errors) >= self.limit

    def add(self, errors: list[FieldError], problems: int | None = None) -> None:
        """Keep what fits of one record's (or one request's) entries.

        ``problems`` (default ``len(errors)``) is how many were found; entries kept in full
        speak for all of them (a record's last entry states how many it does not list), so only
        the problems behind entries that did not fit are added to :attr:`omitted`.
        """
        found = len(errors) if problems is None else problems
        kept = errors[: max(0, self.limit - len(self.errors))]
        self.errors.extend(kept)
        represented = found if errors and len(kept) == len(errors) else len(kept)
        self.omitted += max(0, found - represented)


@dataclass(frozen=True)
class Checked:
    """One record checked: the validated model (None when invalid), its listed problems and
    how many it has in all."""

    model: BaseModel | None
    errors: list[FieldError]
    problems: int


_EXTRA = "Extra inputs are not permitted"


def _error(index: int | None, name: str, problem: str, message: str) -> FieldError:
    return FieldError(index=index, field=name, problem=problem, message=message)


class RecordChecker:
    """Validates one parsed record with bounded work and a bounded description.

    Unknown keys are counted without being validated (the known keys are looked up, so the
    cost does not grow with their number); a record with more than :data:`MAX_UNKNOWN_KEYS`
    of them is refused right away. Only the known keys are validated by the record model, in
    pydantic's strict Python mode, which agrees with its JSON mode on every value a JSON parser
    produces (``tests/unit/test_hostile_input.py`` checks it).
    """

    def __init__(self, record_model: type[BaseModel], spec: FeatureSpec) -> None:
        self.model = record_model
        self.allowed = tuple(record_model.model_fields)
        self.max_lengths = {f.name: spec.max_length(f) for f in spec.categorical_features}
        self.categories = CategoryPolicy(spec)
        # the same record model ignoring unknown keys, for the fast path of a whole batch:
        # pydantic-core makes an error object per unknown key, about 6 us each
        lenient = build_request_model(spec, extra="ignore")
        self.batch_adapter: TypeAdapter[list[BaseModel]] = TypeAdapter(list[lenient])  # type: ignore[valid-type]

    def check_all(self, records: list[Any]) -> list[BaseModel] | None:
        """Every record of a batch validated in one call, or None when any record is not
        valid (unknown keys included: each model knows which of its fields were sent)."""
        if not all(type(r) is dict for r in records):
            return None
        try:
            models = self.batch_adapter.validate_python(records)
        except ValidationError:
            return None
        for model, raw in zip(models, records, strict=True):
            if len(raw) != len(model.model_fields_set):
                return None
        if self.categories.features:
            policy = self.categories
            # apply to copies: a refused batch is checked again record by record
            values = [dict(model.__dict__) for model in models]
            counted = policy.take()
            for v in values:
                if policy.apply(v):
                    policy.take()
                    policy.restore(counted)
                    return None
            for model, v in zip(models, values, strict=True):
                model.__dict__.update(v)
            policy.restore(counted)
        return models

    def check(self, raw: Any, index: int | None = None, *, describe: bool = True) -> Checked:
        """Validate ``raw`` (a record as parsed from JSON); ``describe=False`` skips building
        the error entries (the record's validity and problem count are still exact)."""
        if not isinstance(raw, dict):
            kind = "null" if raw is None else type(raw).__name__
            msg = f"a record must be a JSON object, not {kind}"
            return Checked(None, [_error(index, "record", "wrong type", msg)], 1)
        known = {k: raw[k] for k in self.allowed if k in raw}
        unknown = len(raw) - len(known)
        errors: list[FieldError] = []
        if unknown and describe:
            for key in raw:
                if key not in known:
                    errors.append(_error(index, shown_name(key), "unknown field", _EXTRA))
                    if len(errors) >= MAX_ERRORS_PER_RECORD:
                        break
        if unknown > MAX_UNKNOWN_KEYS:
            return Checked(None, self._cap(errors, index, unknown), unknown)
        try:
            model = self.model.model_validate(known)
        except ValidationError as err:
            if describe:
                errors += describe_errors(err, index=index, max_lengths=self.max_lengths)
            problems = unknown + err.error_count()
            return Checked(None, self._cap(errors, index, problems), problems)
        policy = self.categories.apply(model.__dict__, index)
        if unknown or policy:
            problems = unknown + len(policy)
            return Checked(None, self._cap(errors + policy, index, problems), problems)
        return Checked(model, [], 0)

    @staticmethod
    def _cap(errors: list[FieldError], index: int | None, problems: int) -> list[FieldError]:
        """At most MAX_ERRORS_PER_RECORD entries; the last one says how many were left out."""
        if not errors or problems <= MAX_ERRORS_PER_RECORD:
            return errors[:MAX_ERRORS_PER_RECORD]
        kept = errors[: MAX_ERRORS_PER_RECORD - 1]
        left = problems - len(kept)
        msg = f"{left} more problems in this record are not listed"
        return [*kept, _error(index, "record", "too many problems", msg)]


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


class CategoryPolicy:
    """Values that match a known category only after folding case and outer whitespace.

    Such a value is counted in ``near_misses`` (feature -> count, read and reset by the
    endpoint for its metric); where the spec sets ``normalize_categories`` it is replaced by
    the category, and any other value of a closed normalised feature is an unknown category.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.features = [
            (
                f.name,
                frozenset(f.categories or ()),
                {fold_category(c): c for c in f.categories or ()},
                bool(f.normalize_categories),
                not f.allow_unknown_categories,
            )
            for f in spec.categorical_features
        ]
        self.near_misses: dict[tuple[str, bool], int] = {}
        self._lock = threading.Lock()  # batches may be checked in a worker thread

    def apply(self, values: dict[str, Any], index: int | None = None) -> list[FieldError]:
        """Normalise ``values`` in place where the spec says so; the problems left."""
        errors: list[FieldError] = []
        for name, known, folded, normalize, closed in self.features:
            value = values.get(name)
            if not isinstance(value, str) or value in known:  # raw values may be any JSON
                continue
            canonical = folded.get(fold_category(value))
            if canonical is not None:
                key = (name, normalize)
                with self._lock:
                    self.near_misses[key] = self.near_misses.get(key, 0) + 1
                if normalize:
                    values[name] = canonical
                    continue
            if normalize and closed:
                msg = f"Input should be one of {sorted(known)} (case and outer spaces ignored)"
                errors.append(_error(index, name, "unknown category", msg))
        return errors

    def count_raw(self, raw: Any) -> None:
        """Count near misses in a refused record (closed features refuse them unnormalised)."""
        if isinstance(raw, dict):
            probe = {name: raw.get(name) for name, *_ in self.features}
            self.apply(probe)

    def restore(self, counts: dict[tuple[str, bool], int]) -> None:
        """Add ``counts`` (from :meth:`take`) back."""
        with self._lock:
            for key, n in counts.items():
                self.near_misses[key] = self.near_misses.get(key, 0) + n

    def take(self) -> dict[tuple[str, bool], int]:
        """The near misses counted since the last call."""
        if not self.near_misses:
            return {}
        with self._lock:
            out, self.near_misses = self.near_misses, {}
        return out
