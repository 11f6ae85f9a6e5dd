"""A parsed record checked with bounded work, and category values folded to their spelling.

:class:`RecordChecker` looks at an already parsed record, counts its unknown keys without
validating them (a record with more than :data:`MAX_UNKNOWN_KEYS` is refused without further
validation), validates only the known keys and lists at most :data:`MAX_ERRORS_PER_RECORD`
problems per record; :class:`CategoryPolicy` counts (and, where the spec says so, normalises)
category values that differ from a known one only by case and outer spaces. Separate from the
generated models (:mod:`bento.request_model`): this is the per-record work of a batch and of the
description of a refused ``/predict`` body.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError

from bento.field_errors import describe_errors, shown_name
from bento.request_model import (
    MAX_ERRORS_PER_RECORD,
    MAX_UNKNOWN_KEYS,
    TRANSACTION_ID,
    FieldError,
    build_request_model,
)
from data_contracts.spec import FeatureKind, FeatureSpec, fold_category


@dataclass(frozen=True)
class Checked:
    """One record checked: the validated model (None when invalid), its listed problems and
    how many it has in all."""

    model: BaseModel | None
    errors: list[FieldError]
    problems: int


_EXTRA = "Extra inputs are not permitted"
# records validated (and transposed) per call in a batch's fast path: each call holds the
# interpreter lock, about 1.5 ms per 500 records on an idle core
VALIDATE_SLICE = 500


def _error(index: int | None, name: str, problem: str, message: str) -> FieldError:
    return FieldError(index=index, field=name, problem=problem, message=message)


class RecordChecker:
    """Validates one parsed record with bounded work and a bounded description.

    Unknown keys are counted without being validated (the known keys are looked up, so the
    cost does not grow with their number); a record with more than :data:`MAX_UNKNOWN_KEYS`
    of them is refused right away. Only the known keys are validated by the record model, in
    pydantic's strict Python mode, which agrees with its JSON mode on every value a JSON parser
    produces (``tests/unit/test_hostile_checks.py`` checks it).
    """

    def __init__(self, record_model: type[BaseModel], spec: FeatureSpec) -> None:
        self.model = record_model
        self.allowed = tuple(record_model.model_fields)
        self.max_lengths = {f.name: spec.max_length(f) for f in spec.categorical_features}
        self.categories = CategoryPolicy(spec)
        # the same record model ignoring unknown keys, for the fast path of a whole batch:
        # pydantic-core makes an error object per unknown key, about 6 us each; integers are
        # checked for whole numbers a column at a time (a Python validator per value was a
        # quarter of a batch's validation)
        lenient = build_request_model(spec, extra="ignore", whole=False)
        self.batch_adapter: TypeAdapter[list[BaseModel]] = TypeAdapter(list[lenient])  # type: ignore[valid-type]
        self.integers = [f.name for f in spec.features if f.kind == FeatureKind.INTEGER]
        self.columns = (*spec.feature_names, TRANSACTION_ID)
        self._row = itemgetter(*self.columns)

    def transpose(self, models: Sequence[BaseModel]) -> dict[str, Sequence[Any]]:
        """Feature (and transaction id) columns of validated records, built a slice of
        records at a time (one ``zip`` of 10,000 rows held the interpreter lock for 8 ms)."""
        columns: dict[str, list[Any]] = {name: [] for name in self.columns}
        for i in range(0, len(models), VALIDATE_SLICE):
            rows = [self._row(m.__dict__) for m in models[i : i + VALIDATE_SLICE]]
            for name, column in zip(self.columns, zip(*rows, strict=True), strict=True):
                columns[name] += column
        return columns  # type: ignore[return-value]

    def check_all(
        self, records: list[Any]
    ) -> tuple[list[BaseModel], dict[str, Sequence[Any]]] | None:
        """Every record of a batch validated, with its columns, or None when any record is not
        valid (unknown keys included: each model knows which of its fields were sent)."""
        if not records or not all(type(r) is dict for r in records):
            return None
        models: list[BaseModel] = []
        try:
            # in slices: one validation call holds the interpreter lock for its whole list
            for i in range(0, len(records), VALIDATE_SLICE):
                models += self.batch_adapter.validate_python(records[i : i + VALIDATE_SLICE])
        except ValidationError:
            return None
        for model, raw in zip(models, records, strict=True):
            if len(raw) != len(model.model_fields_set):
                return None
        columns = self.transpose(models)
        for name in self.integers:
            values = np.array(columns[name], dtype=np.float64)  # None: NaN
            if np.any((values != np.trunc(values)) & ~np.isnan(values)):
                return None
        if self.categories.features and not self.categories.all_known(columns):
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
            columns = self.transpose(models)
        return models, columns

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

    def all_known(self, columns: dict[str, Sequence[Any]]) -> bool:
        """True when every value of every categorical column is a known category or null:
        nothing to count or normalise (one set operation per column)."""
        for name, known, *_ in self.features:
            seen = set(columns[name])
            seen.discard(None)
            if not seen <= known:
                return False
        return True

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
