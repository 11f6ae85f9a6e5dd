"""pandera schemas derived from a :class:`FeatureSpec`, and contract validation with quarantine.

Validation runs in two passes, both lazy (every failing row and column is reported):

1. *typing*: each column is parsed into its declared kind. A missing column, or a column in which
   no value parses, is a fatal column error; single values that do not parse fail their row.
   A labelled table without an id column gets content-derived row ids
   (:func:`data_contracts.row_ids.content_ids`).
2. *contract*: the pandera schema (nullability, ranges, finiteness, categories, unique ids, the
   label set) runs on the typed frame.

Failing rows are returned in a quarantine frame with the reason per row; nothing is dropped
without being reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from data_contracts.row_ids import content_ids
from data_contracts.spec import (
    DERIVED_ID_COLUMN,
    MISSING_CATEGORY,
    Feature,
    FeatureKind,
    FeatureSpec,
)

REASON_COLUMN = "_quarantine_reason"
ROW_COLUMN = "_source_row"
LABEL_INT = "_label"

_TRUE = {"true", "1", "1.0", "yes", "y", "t"}
_FALSE = {"false", "0", "0.0", "no", "n", "f"}


def _finite(series: pd.Series) -> pd.Series:
    return pd.Series(np.isfinite(series.to_numpy(dtype="float64")), index=series.index)


def _whole(series: pd.Series) -> pd.Series:
    values = series.to_numpy(dtype="float64")
    return pd.Series(np.isfinite(values) & (np.floor(values) == values), index=series.index)


def feature_column(feature: Feature, *, serving: bool = False) -> pa.Column:
    """The pandera column for one feature, on data already typed by :func:`type_frame`."""
    checks: list[pa.Check] = []
    if feature.is_numeric and feature.kind != FeatureKind.BOOLEAN:
        checks.append(pa.Check(_finite, error="finite number (not NaN or infinite)"))
        if feature.min is not None:
            checks.append(pa.Check.ge(feature.min))
        if feature.max is not None:
            checks.append(pa.Check.le(feature.max))
        if feature.kind == FeatureKind.INTEGER:
            checks.append(pa.Check(_whole, error="whole number"))
        dtype = "float64"
    elif feature.kind == FeatureKind.BOOLEAN:
        dtype = "float64"
        checks.append(pa.Check.isin([0.0, 1.0]))
    else:
        dtype = "object"
        if not feature.allow_unknown_categories:
            checks.append(pa.Check.isin(list(feature.categories or ())))
    return pa.Column(dtype, checks=checks, nullable=feature.nullable, required=True)


def label_as_int(series: pd.Series, spec: FeatureSpec) -> pd.Series:
    """Map raw label values to 1/0 (vectorised); values outside the label set become <NA>."""
    text = series.astype("string").str.strip().str.lower()
    # 1.0 and 1 must both match a label declared as 1
    as_num = pd.to_numeric(series, errors="coerce")
    out = pd.Series(pd.NA, index=series.index, dtype="Int8")
    for value, code in ((spec.label.positive, 1), (spec.label.negative, 0)):
        hit = text == str(value).lower()
        if isinstance(value, int | float) and not isinstance(value, bool):
            hit = hit | (as_num == value)
        out[hit.fillna(False).to_numpy(dtype=bool)] = code
    return out


def training_schema(spec: FeatureSpec) -> pa.DataFrameSchema:
    """Schema of labelled training data after typing: id, event time, label and features."""
    columns: dict[str, pa.Column] = {
        spec.row_id_column: pa.Column(
            "object", nullable=False, unique=True, report_duplicates="exclude_first"
        ),
        LABEL_INT: pa.Column(
            "Int8",
            nullable=False,
            checks=pa.Check.isin([0, 1]),
            title=f"label {spec.label.name!r} in "
            f"{{{spec.label.positive!r}, {spec.label.negative!r}}}",
        ),
    }
    if spec.event_time_column:
        columns[spec.event_time_column] = pa.Column("datetime64[ns, UTC]", nullable=False)
    for feature in spec.features:
        columns[feature.name] = feature_column(feature)
    return pa.DataFrameSchema(columns, strict="filter", name=f"{spec.name} training data")


def serving_schema(spec: FeatureSpec) -> pa.DataFrameSchema:
    """Schema of unlabelled serving input after typing: the features only, in pinned order."""
    columns = {f.name: feature_column(f, serving=True) for f in spec.features}
    return pa.DataFrameSchema(columns, strict="filter", ordered=False, name=f"{spec.name} input")


@dataclass
class ValidationResult:
    """Outcome of validating a frame against the contract."""

    valid: pd.DataFrame
    quarantine: pd.DataFrame
    total_rows: int
    fatal_errors: list[str] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)
    failures_by_check: dict[str, int] = field(default_factory=dict)

    @property
    def quarantined_rows(self) -> int:
        return len(self.quarantine)

    @property
    def quarantined_share(self) -> float:
        return self.quarantined_rows / self.total_rows if self.total_rows else 0.0

    def summary(self) -> str:
        """A readable multi-line report: fatal errors, then failing checks by count."""
        lines = [
            f"{self.total_rows} rows checked, {len(self.valid)} valid, "
            f"{self.quarantined_rows} quarantined ({self.quarantined_share:.2%})"
        ]
        lines += [f"FATAL: {e}" for e in self.fatal_errors]
        for check, count in sorted(self.failures_by_check.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:>8} rows: {check}")
        if self.dropped_columns:
            lines.append(f"columns not in the contract, ignored: {', '.join(self.dropped_columns)}")
        return "\n".join(lines)


def _parse_bool(series: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64")
    text = series.astype("string").str.strip().str.lower()
    out = pd.Series(np.nan, index=series.index, dtype="float64")
    out[text.isin(_TRUE).fillna(False).to_numpy(dtype=bool)] = 1.0
    out[text.isin(_FALSE).fillna(False).to_numpy(dtype=bool)] = 0.0
    return out


def type_frame(
    df: pd.DataFrame, spec: FeatureSpec, *, labelled: bool
) -> tuple[pd.DataFrame, dict[int, list[str]], list[str]]:
    """Parse each contract column into its kind.

    Returns the typed frame, per-row parse failures (positional row -> reasons) and fatal
    column errors (missing columns, columns in which no value parses).
    """
    fatal: list[str] = []
    row_reasons: dict[int, list[str]] = {}
    required = [f.name for f in spec.features]
    if labelled:
        required = (
            ([spec.id_column] if spec.id_column else [])
            + [spec.label.name]
            + ([spec.event_time_column] if spec.event_time_column else [])
            + required
        )
    missing = [c for c in required if c not in df.columns]
    fatal += [f"column {c!r}: missing from the data" for c in missing]
    typed = pd.DataFrame(index=pd.RangeIndex(len(df)))

    def fail(mask: np.ndarray, column: str, what: str, raw: pd.Series) -> None:
        bad = np.flatnonzero(mask)
        if len(bad) and len(bad) == int(raw.notna().sum()):
            fatal.append(f"column {column!r}: no value is {what} (e.g. {raw.iloc[bad[0]]!r})")
        for i in bad:
            row_reasons.setdefault(int(i), []).append(f"{column}: {raw.iloc[i]!r} is not {what}")

    for feature in spec.features:
        if feature.name not in df.columns:
            continue
        raw = df[feature.name].reset_index(drop=True)
        if feature.kind == FeatureKind.CATEGORICAL:
            typed[feature.name] = raw.astype(object).where(raw.notna(), None)
            typed[feature.name] = typed[feature.name].map(
                lambda v: v if v is None or isinstance(v, str) else str(v)
            )
        elif feature.kind == FeatureKind.BOOLEAN:
            parsed = _parse_bool(raw)
            fail((raw.notna() & parsed.isna()).to_numpy(), feature.name, "a boolean", raw)
            typed[feature.name] = parsed
        else:
            parsed = pd.to_numeric(raw, errors="coerce").astype("float64")
            fail((raw.notna() & parsed.isna()).to_numpy(), feature.name, "a number", raw)
            typed[feature.name] = parsed
    if labelled:
        if spec.id_column and spec.id_column in df.columns:
            ids = df[spec.id_column].reset_index(drop=True)
            typed[spec.id_column] = (
                ids.astype(object)
                .where(ids.notna(), None)
                .map(lambda v: v if v is None else str(v))
            )
        if spec.label.name in df.columns:
            raw = df[spec.label.name].reset_index(drop=True)
            labels = label_as_int(raw, spec)
            outside = (labels.isna()).to_numpy()
            for i in np.flatnonzero(outside):
                row_reasons.setdefault(int(i), []).append(
                    f"{spec.label.name}: {raw.iloc[i]!r} is not a label value "
                    f"({spec.label.positive!r} or {spec.label.negative!r})"
                )
            if outside.all() and len(raw):
                fatal.append(
                    f"column {spec.label.name!r}: no value is {spec.label.positive!r} or "
                    f"{spec.label.negative!r}"
                )
            typed[LABEL_INT] = labels.fillna(0).astype("Int8")
            typed[spec.label.name] = raw
        if spec.event_time_column and spec.event_time_column in df.columns:
            raw = df[spec.event_time_column].reset_index(drop=True)
            parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
            fail((raw.notna() & parsed.isna()).to_numpy(), spec.event_time_column, "a time", raw)
            typed[spec.event_time_column] = parsed.astype("datetime64[ns, UTC]")
        if not spec.id_column and not missing:
            typed[DERIVED_ID_COLUMN] = content_ids(typed, spec)
    return typed, row_reasons, fatal


def validate_frame(
    df: pd.DataFrame, spec: FeatureSpec, *, labelled: bool = True
) -> ValidationResult:
    """Validate ``df`` against the contract; every failing row is quarantined with its reasons.

    The valid frame keeps the contract columns, typed, with the integer label in ``_label``.
    """
    total = len(df)
    extra = [
        c
        for c in df.columns
        if c not in spec.feature_names
        and c not in {spec.id_column, spec.label.name, spec.event_time_column} - {None}
    ]
    typed, row_reasons, fatal = type_frame(df, spec, labelled=labelled)
    ids = None if spec.id_column or not labelled else typed.get(DERIVED_ID_COLUMN)
    if fatal:
        return ValidationResult(
            valid=typed.iloc[0:0],
            quarantine=_quarantine_frame(df, {}),
            total_rows=total,
            fatal_errors=fatal,
            dropped_columns=extra,
        )
    schema = training_schema(spec) if labelled else serving_schema(spec)
    counts: dict[str, int] = {}
    for reasons in row_reasons.values():
        for reason in reasons:
            key = reason.split(":")[0] + ": " + reason.rsplit(" is ", 1)[-1]
            counts[key] = counts.get(key, 0) + 1
    try:
        schema.validate(typed, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        column_level = cases[cases["index"].isna()]
        for _, case in column_level.iterrows():
            fatal.append(f"column {case['column']!r}: {case['check']} ({case['failure_case']})")
        row_level = cases[cases["index"].notna()]
        for (column, check), group in row_level.groupby(["column", "check"], sort=False):
            shown = column if column != LABEL_INT else spec.label.name
            key = f"{shown}: {check}"
            for idx, value in zip(group["index"], group["failure_case"], strict=True):
                reasons = row_reasons.setdefault(int(idx), [])
                # a value that did not parse is already reported; its NaN is not a second fault
                if not any(r.startswith(f"{shown}:") for r in reasons):
                    reasons.append(f"{shown}: {check} failed for {value!r}")
                    counts[key] = counts.get(key, 0) + 1
    bad_rows = np.array(sorted(row_reasons), dtype=np.int64)
    keep = np.ones(total, dtype=bool)
    keep[bad_rows] = False
    contract_cols = [c for c in typed.columns if c != spec.label.name]
    valid = typed.loc[keep, contract_cols].reset_index(drop=True)
    return ValidationResult(
        valid=valid,
        quarantine=_quarantine_frame(df, row_reasons, ids),
        total_rows=total,
        fatal_errors=fatal,
        dropped_columns=extra,
        failures_by_check=counts,
    )


def _quarantine_frame(
    df: pd.DataFrame, row_reasons: dict[int, list[str]], ids: pd.Series | None = None
) -> pd.DataFrame:
    """The failing rows with their raw values as text, the source row number and the reasons
    (and, for a table without an id column, each row's derived id)."""
    rows = sorted(row_reasons)
    out = df.iloc[rows].reset_index(drop=True).astype("string")
    out.insert(0, ROW_COLUMN, np.array(rows, dtype=np.int64))
    out.insert(1, REASON_COLUMN, ["; ".join(row_reasons[i]) for i in rows])
    if ids is not None:
        out.insert(2, DERIVED_ID_COLUMN, ids.iloc[rows].to_numpy().astype(str))
    return out


def model_frame(df: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The model's input frame: features in pinned order, numbers as float32, categories as str.

    Missing categories become :data:`MISSING_CATEGORY` (ONNX string tensors cannot hold null);
    missing numbers stay NaN for the pipeline's imputer.
    """
    out = {}
    for feature in spec.features:
        col = df[feature.name]
        if feature.kind == FeatureKind.BOOLEAN:
            out[feature.name] = _parse_bool(col).astype("float32")
        elif feature.is_numeric:
            out[feature.name] = pd.to_numeric(col, errors="raise").astype("float32")
        else:
            out[feature.name] = col.astype(object).where(col.notna(), MISSING_CATEGORY).astype(str)
    return pd.DataFrame(out, index=df.index)


def onnx_feed(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """ONNX Runtime inputs from a :func:`model_frame`: one (n, 1) array per feature."""
    feed: dict[str, np.ndarray] = {}
    for feature in spec.features:
        values = frame[feature.name].to_numpy()
        if feature.is_numeric:
            feed[feature.name] = values.astype(np.float32).reshape(-1, 1)
        else:
            feed[feature.name] = values.astype(object).reshape(-1, 1)
    return feed
