"""The feature spec: the single declaration of names, order, dtypes, ranges and categories.

Everything else (pandera schemas, ONNX input names, the bento request model, the Evidently
column mapping) is derived from a :class:`FeatureSpec`. The spec is plain data, loadable from
YAML or JSON, and identified everywhere by :meth:`FeatureSpec.spec_hash`.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Categorical features are fed to ONNX as strings, which cannot be null: a missing category is
# replaced by this token in both training and serving (see ``model_frame``).
MISSING_CATEGORY = "__missing__"
# Longest categorical value or transaction id a serving request may carry, unless the spec says
# otherwise (``max_string_length``, or ``max_length`` on one feature).
DEFAULT_MAX_STRING_LENGTH = 128
# The row id of a spec without ``id_column``: derived from the row's content during validation
# (see ``data_contracts.row_ids.content_ids``). The leading underscore keeps it apart from any
# declared column (a spec may not declare a column of that name).
DERIVED_ID_COLUMN = "_row_id"
# Options added after specs were first hashed: left out of the canonical JSON while unset, so a
# spec that does not use them keeps the hash it was registered with. ``id_column`` became
# optional later: a spec that names one keeps its hash, one without it leaves the key out.
_OPTIONAL_SPEC_KEYS = ("max_string_length", "id_column")
_OPTIONAL_FEATURE_KEYS = ("max_length", "normalize_categories")


def fold_category(value: str) -> str:
    """The form in which two categories count as the same: Unicode NFKC (fullwidth and other
    compatibility forms become their plain letters: ``ｇｒｏｃｅｒｙ`` is ``grocery``),
    case-folded, outer spaces removed."""
    if value.isascii():  # the usual case: NFKC leaves ASCII as it is
        return value.strip().casefold()
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
    return folded.strip()


class FeatureKind(StrEnum):
    """How a feature is encoded; decides its pandas dtype and its ONNX input type."""

    NUMERIC = "numeric"  # float
    INTEGER = "integer"  # whole number, fed to the model as float
    BOOLEAN = "boolean"  # true/false, fed to the model as 0.0/1.0
    CATEGORICAL = "categorical"  # string from an allowed set


class Feature(BaseModel):
    """One model input: its name, kind, allowed values and whether it may be null."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: FeatureKind
    description: str = ""
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] | None = None
    allow_unknown_categories: bool = False
    # categorical only: longest value accepted when serving (None: the spec's max_string_length)
    max_length: int | None = Field(None, ge=1)
    # categorical only: map a value that differs from a known category only by case or outer
    # whitespace onto that category when serving (None/false: such values are only counted)
    normalize_categories: bool | None = None

    @model_validator(mode="after")
    def _check_kind_fields(self) -> Feature:
        if self.kind == FeatureKind.CATEGORICAL:
            if not self.categories:
                raise ValueError(f"feature {self.name!r}: a categorical feature needs categories")
            if MISSING_CATEGORY in self.categories:
                raise ValueError(f"feature {self.name!r}: {MISSING_CATEGORY!r} is reserved")
            if self.min is not None or self.max is not None:
                raise ValueError(f"feature {self.name!r}: min/max apply to numbers only")
            if self.max_length is not None:
                longest = max(self.categories, key=len)
                if len(longest) > self.max_length:
                    raise ValueError(
                        f"feature {self.name!r}: category {longest!r} is longer than "
                        f"max_length {self.max_length}"
                    )
            if self.normalize_categories:
                folded = [fold_category(c) for c in self.categories]
                if len(set(folded)) != len(folded):
                    raise ValueError(
                        f"feature {self.name!r}: normalize_categories needs categories that "
                        "differ by more than case or outer whitespace"
                    )
        else:
            if self.categories is not None:
                raise ValueError(f"feature {self.name!r}: categories apply to categorical only")
            if self.max_length is not None or self.normalize_categories is not None:
                raise ValueError(
                    f"feature {self.name!r}: max_length and normalize_categories apply to "
                    "categorical features only"
                )
            if self.kind == FeatureKind.BOOLEAN and (self.min is not None or self.max is not None):
                raise ValueError(f"feature {self.name!r}: min/max do not apply to booleans")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
            for bound in (self.min, self.max):
                if bound is not None and not math.isfinite(bound):
                    raise ValueError(f"feature {self.name!r}: bounds must be finite numbers")
        return self

    @property
    def is_numeric(self) -> bool:
        """True for every kind fed to the model as a float tensor."""
        return self.kind != FeatureKind.CATEGORICAL


class LabelSpec(BaseModel):
    """The target column and which of its values is the positive (fraud) class."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    positive: str | int | bool
    negative: str | int | bool

    @model_validator(mode="after")
    def _distinct(self) -> LabelSpec:
        if str(self.positive) == str(self.negative):
            raise ValueError("label: positive and negative values must differ")
        return self


class FeatureSpec(BaseModel):
    """A data contract for one binary-classification table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="Model name: the MLflow registered model, the bento and the image.",
    )
    version: int = 1
    description: str = ""
    id_column: str | None = Field(
        None,
        description="Unique row id; without it each row gets an id derived from its content.",
    )
    event_time_column: str | None = None
    label: LabelSpec
    features: tuple[Feature, ...]
    # longest categorical value and transaction id accepted when serving (None: the default)
    max_string_length: int | None = Field(None, ge=1)

    @field_validator("features")
    @classmethod
    def _non_empty(cls, value: tuple[Feature, ...]) -> tuple[Feature, ...]:
        if not value:
            raise ValueError("features: at least one feature is required")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> FeatureSpec:
        names = [f.name for f in self.features]
        others = [self.label.name]
        if self.id_column:
            others.append(self.id_column)
        if self.event_time_column:
            others.append(self.event_time_column)
        seen: set[str] = set()
        for name in names + others:
            if name == DERIVED_ID_COLUMN:
                raise ValueError(f"column {name!r} is reserved for the derived row id")
            if name in seen:
                raise ValueError(f"column {name!r} is declared twice")
            seen.add(name)
        return self

    @model_validator(mode="after")
    def _categories_fit(self) -> FeatureSpec:
        if self.max_string_length is None:
            return self  # the default never refuses a declared category (see max_length)
        for f in self.categorical_features:
            if f.max_length is None and f.categories:
                longest = max(f.categories, key=len)
                if len(longest) > self.max_string_length:
                    raise ValueError(
                        f"feature {f.name!r}: category {longest!r} is longer than "
                        f"max_string_length {self.id_max_length}"
                    )
        return self

    @property
    def row_id_column(self) -> str:
        """The column that identifies a training row: ``id_column``, or the derived
        :data:`DERIVED_ID_COLUMN` (hash of the row's content and its occurrence) without one."""
        return self.id_column or DERIVED_ID_COLUMN

    @property
    def id_max_length(self) -> int:
        """Longest transaction id (and default longest category) a request may carry."""
        return self.max_string_length or DEFAULT_MAX_STRING_LENGTH

    def max_length(self, feature: Feature) -> int:
        """Longest value of a categorical feature a request may carry (the default grows to
        fit the feature's longest category)."""
        if feature.max_length is not None:
            return feature.max_length
        if self.max_string_length is not None:
            return self.max_string_length
        return max([DEFAULT_MAX_STRING_LENGTH, *(len(c) for c in feature.categories or ())])

    @property
    def feature_names(self) -> list[str]:
        """Feature names in the pinned order: the ONNX input order and the serving order."""
        return [f.name for f in self.features]

    @property
    def numeric_features(self) -> list[Feature]:
        return [f for f in self.features if f.is_numeric]

    @property
    def categorical_features(self) -> list[Feature]:
        return [f for f in self.features if not f.is_numeric]

    def feature(self, name: str) -> Feature:
        """The feature called ``name``; KeyError names the unknown feature."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"unknown feature {name!r}")

    def canonical_json(self) -> str:
        """The spec as canonical JSON: sorted keys, no whitespace; the input of the hash."""
        data = self.model_dump(mode="json")
        # options added later stay out while unset: older specs keep their hash
        for key in _OPTIONAL_SPEC_KEYS:
            if data.get(key) is None:
                data.pop(key, None)
        for feature in data["features"]:
            for key in _OPTIONAL_FEATURE_KEYS:
                if feature.get(key) is None:
                    feature.pop(key, None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def spec_hash(self) -> str:
        """A stable sha256 of the spec's content (first 16 hex digits), used as its identity."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def label_to_int(self, value: Any) -> int:
        """Map a raw label value to 1 (positive) or 0 (negative); ValueError otherwise."""
        if _same(value, self.label.positive):
            return 1
        if _same(value, self.label.negative):
            return 0
        raise ValueError(
            f"label {self.label.name!r}: {value!r} is neither the positive value "
            f"{self.label.positive!r} nor the negative value {self.label.negative!r}"
        )


def _same(value: Any, expected: str | int | bool) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return str(value).lower() == str(expected).lower()
    return str(value) == str(expected)


def parse_spec(data: dict[str, Any]) -> FeatureSpec:
    """Build a spec from a plain dict (the content of a YAML or JSON spec file)."""
    return FeatureSpec.model_validate(data)


def load_spec(path: str | Path) -> FeatureSpec:
    """Load a spec from a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    elif path.suffix.lower() in {".yaml", ".yml"}:
        data = yaml.safe_load(text)
    else:
        raise ValueError(f"spec file {path}: expected .yaml, .yml or .json, got {path.suffix!r}")
    if not isinstance(data, dict):
        raise ValueError(f"spec file {path}: expected a mapping at the top level")
    return parse_spec(data)


DEFAULT_SPEC_PATH = Path(__file__).with_name("fraud_spec.yaml")


def default_spec() -> FeatureSpec:
    """The card-fraud spec shipped with the project (the embedded default)."""
    return load_spec(DEFAULT_SPEC_PATH)
