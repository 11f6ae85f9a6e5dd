"""How labelled rows are divided into train, validation and holdout: by id hash or by time.

Two ways, chosen by a :class:`SplitPolicy`:

* ``hash``: a stratified split by a hash of the row id. The holdout is frozen (a row stays in it
  when the data grows or is re-read) and has exactly the data set's fraud rate.
* ``time``: the most recent period is the holdout (the last fraction of rows by event time, or
  every row at or after a cut-off), the period just before it is the validation part, and the
  model learns only from what came earlier. This is the question a fraud team asks: how does
  the model do on transactions after the ones it learned from.

``auto`` (the default) picks ``time`` when the spec names an event-time column, ``hash``
otherwise. Plain functions, no Prefect, no MLflow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from data_contracts.schemas import LABEL_INT
from data_contracts.spec import DERIVED_ID_COLUMN, FeatureSpec

PARTS = ("train", "validation", "holdout")
HOLDOUT_SALT = "holdout"
# holdout_rule key of a hash split: the highest holdout rank of class 0 and of class 1
RANK_RULE = "holdout_rank_max"


class SplitPolicy(BaseModel):
    """Which split a release uses, and its sizes; a flow parameter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["auto", "hash", "time"] = Field(
        "auto",
        description="auto: time when the spec has an event-time column, else hash; "
        "hash: stratified by a hash of the row id; time: the most recent period is the holdout",
    )
    holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of rows in the holdout (hash: of each class)."
    )
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of the remaining rows used to tune the threshold."
    )
    holdout_after: datetime | None = Field(
        None,
        description="time split only: rows at or after this time (UTC unless it says "
        "otherwise) are the holdout, instead of the last holdout_fraction of rows",
    )

    @field_validator("holdout_after")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _cutoff_needs_time(self) -> SplitPolicy:
        if self.holdout_after is not None and self.kind == "hash":
            raise ValueError("split.holdout_after: a cut-off date needs kind 'time' or 'auto'")
        return self


@dataclass(frozen=True)
class Splits:
    """Train, validation (threshold tuning) and holdout (gates) frames, and how they were made.

    ``kind`` is the split used (``hash`` or ``time``); ``boundaries`` holds the first and last
    event time of each part (``train_min``, ``train_max``, ... as ISO 8601 UTC) when the spec
    has an event-time column, else it is empty. ``holdout_rule`` records what decides holdout
    membership beyond the boundaries (a hash split's highest holdout rank of each class), so a
    later release can tell which of its holdout rows this one learned from
    (:func:`rows_learned_from`). The parts of a time split are in time order.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame
    kind: Literal["hash", "time"] = "hash"
    boundaries: dict[str, str] = field(default_factory=dict)
    holdout_rule: dict[str, str] = field(default_factory=dict)


class SplitError(ValueError):
    """The policy cannot be applied to this data; the message names the setting and the data."""


def _hash_rank(ids: pd.Series, salt: str) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per id: the same id always lands the same way."""
    digest = [
        int.from_bytes(hashlib.blake2b(f"{salt}:{v}".encode(), digest_size=8).digest(), "big")
        for v in ids.astype(str)
    ]
    return np.asarray(digest, dtype=np.float64) / 2.0**64


def split_rank(df: pd.DataFrame, id_column: str, salt: str) -> np.ndarray:
    """Each row's hash rank for a split: derived ids (tables without an id column) are ranked
    without their occurrence suffix, so identical rows land in the same part."""
    ids = df[id_column]
    if id_column == DERIVED_ID_COLUMN:
        ids = ids.astype(str).str.rsplit("-", n=1).str[0]
    return _hash_rank(ids, salt)


def _stratified_take(
    df: pd.DataFrame, id_column: str, fraction: float, salt: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, float]]:
    """The rows left and the rows taken (the lowest ranks of each class), and the highest rank
    taken per class (-1.0 when it takes none of a class)."""
    rank = split_rank(df, id_column, salt)
    take = np.zeros(len(df), dtype=bool)
    highest: dict[int, float] = {}
    labels = df[LABEL_INT].to_numpy()
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        k = round(len(idx) * fraction)
        chosen = idx[np.argsort(rank[idx], kind="stable")[:k]]
        take[chosen] = True
        highest[cls] = float(rank[chosen].max()) if k else -1.0
    return df[~take].reset_index(drop=True), df[take].reset_index(drop=True), highest


def stratified_hash_split(
    df: pd.DataFrame, id_column: str, fraction: float, salt: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off ``fraction`` of each class, chosen by a hash of the id.

    The choice depends only on the ids, so a transaction stays in the holdout when the data set
    grows or is re-read: the holdout is frozen and exactly stratified. Derived ids (tables
    without an id column) are ranked without their occurrence suffix, so identical rows land in
    the same part: a repeat in training must not score its twin in the holdout.
    """
    rest, taken, _ = _stratified_take(df, id_column, fraction, salt)
    return rest, taken


def resolve_kind(policy: SplitPolicy, spec: FeatureSpec) -> Literal["hash", "time"]:
    """The split a policy means for this spec; SplitError when it asks for time without one."""
    if policy.kind == "hash":
        return "hash"
    if spec.event_time_column:
        return "time"
    if policy.kind == "time" or policy.holdout_after is not None:
        raise SplitError(
            f"split: kind {policy.kind!r}"
            + (" with holdout_after" if policy.holdout_after is not None else "")
            + f" needs an event_time_column, and spec {spec.name!r} has none"
        )
    return "hash"


def _period_start(times: pd.Series, fraction: float) -> pd.Timestamp:
    """The time from which the last ``fraction`` of rows (by time) lie; ties stay together."""
    ordered = np.sort(times.to_numpy(dtype="datetime64[ns]"))  # UTC instants
    position = min(len(ordered) - 1, int(np.floor(len(ordered) * (1.0 - fraction))))
    return pd.Timestamp(ordered[position]).tz_localize(UTC)


def _time_cut(
    df: pd.DataFrame, column: str, start: pd.Timestamp, what: str, setting: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows before ``start`` and rows at or after it; SplitError when either side is empty."""
    late = (df[column] >= start).to_numpy()
    first, last = df[column].min(), df[column].max()
    if not late.any():
        raise SplitError(
            f"split.{setting}: no row has an event time at or after {start.isoformat()} "
            f"(the data runs from {first.isoformat()} to {last.isoformat()}); "
            f"the {what} would be empty"
        )
    if late.all():
        raise SplitError(
            f"split.{setting}: every row has an event time at or after {start.isoformat()} "
            f"(the data runs from {first.isoformat()} to {last.isoformat()}); nothing is left "
            f"before the {what}: the event times do not span enough of a period"
        )
    return df[~late].reset_index(drop=True), df[late].reset_index(drop=True)


def time_split(df: pd.DataFrame, spec: FeatureSpec, policy: SplitPolicy) -> Splits:
    """Holdout = the most recent period, validation = the period just before, train = the rest.

    Every row with the boundary's event time goes to the later part, so no instant is shared
    between parts. The result is in time order (ties by row id).
    """
    column = spec.event_time_column
    if not column:
        raise SplitError(f"split: kind 'time' needs an event_time_column in spec {spec.name!r}")
    ordered = df.sort_values([column, spec.row_id_column], kind="stable").reset_index(drop=True)
    if policy.holdout_after is not None:
        holdout_start = pd.Timestamp(policy.holdout_after).tz_convert(UTC)
        setting = "holdout_after"
    else:
        holdout_start = _period_start(ordered[column], policy.holdout_fraction)
        setting = "holdout_fraction"
    rest, holdout = _time_cut(ordered, column, holdout_start, "holdout", setting)
    validation_start = _period_start(rest[column], policy.validation_fraction)
    train, validation = _time_cut(rest, column, validation_start, "validation part",
                                  "validation_fraction")  # fmt: skip
    return Splits(train=train, validation=validation, holdout=holdout, kind="time",
                  boundaries=boundaries(train, validation, holdout, column))  # fmt: skip


def hash_split(df: pd.DataFrame, spec: FeatureSpec, policy: SplitPolicy) -> Splits:
    """Frozen stratified holdout first, then a stratified validation split of the rest."""
    ids = spec.row_id_column
    rest, holdout, highest = _stratified_take(df, ids, policy.holdout_fraction, HOLDOUT_SALT)
    train, validation = stratified_hash_split(rest, ids, policy.validation_fraction, "valid")
    column = spec.event_time_column
    periods = boundaries(train, validation, holdout, column) if column else {}
    rule = {f"{RANK_RULE}_{cls}": repr(value) for cls, value in highest.items()}
    return Splits(train=train, validation=validation, holdout=holdout, kind="hash",
                  boundaries=periods, holdout_rule=rule)  # fmt: skip


def apply_split(df: pd.DataFrame, spec: FeatureSpec, policy: SplitPolicy) -> Splits:
    """Split validated rows as the policy says (``auto`` resolved with :func:`resolve_kind`)."""
    if resolve_kind(policy, spec) == "time":
        return time_split(df, spec, policy)
    return hash_split(df, spec, policy)


def split(
    df: pd.DataFrame, spec: FeatureSpec, holdout_fraction: float, validation_fraction: float
) -> Splits:
    """The id-hash split with the given fractions (kept for callers that choose sizes only)."""
    policy = SplitPolicy(kind="hash", holdout_fraction=holdout_fraction,
                         validation_fraction=validation_fraction)  # fmt: skip
    return hash_split(df, spec, policy)


def boundaries(
    train: pd.DataFrame, validation: pd.DataFrame, holdout: pd.DataFrame, column: str
) -> dict[str, str]:
    """First and last event time of each part, as ISO 8601 UTC (empty parts are left out)."""
    out: dict[str, str] = {}
    for name, part in zip(PARTS, (train, validation, holdout), strict=True):
        if len(part):
            out[f"{name}_min"] = part[column].min().isoformat()
            out[f"{name}_max"] = part[column].max().isoformat()
    return out


def describe(splits: Splits) -> str:
    """One line for logs: the split kind, and the rows and period of each part."""
    parts = []
    for name in PARTS:
        text = f"{name} {len(getattr(splits, name)):,} rows"
        if f"{name}_min" in splits.boundaries:
            text += f" ({splits.boundaries[f'{name}_min']} .. {splits.boundaries[f'{name}_max']})"
        parts.append(text)
    return f"{splits.kind} split: " + ", ".join(parts)


def split_tags(splits: Splits) -> dict[str, str]:
    """What a registered version records of its split: ``split.kind``, each part's first and
    last event time, and a hash split's holdout ranks; :func:`rows_learned_from` reads them."""
    return {"split.kind": splits.kind} | {
        f"split.{k}": v for k, v in (splits.boundaries | splits.holdout_rule).items()
    }


@dataclass(frozen=True)
class Overlap:
    """Which rows of a holdout an earlier version may have learned from.

    ``seen`` has one flag per holdout row: True where the row fell (or would have fallen) in
    that version's train or validation part. None when its records cannot tell; ``basis`` says
    how it was told, or why not.
    """

    seen: np.ndarray | None
    basis: str

    @property
    def count(self) -> int:
        """Holdout rows the version may have learned from (0 when it cannot be told)."""
        return int(self.seen.sum()) if self.seen is not None else 0


def rows_learned_from(
    tags: dict[str, str],
    holdout: pd.DataFrame,
    *,
    id_column: str,
    event_time_column: str | None,
    same_ids: bool = True,
) -> Overlap:
    """The rows of ``holdout`` a version may have learned from, from the split its tags record
    (:func:`split_tags`).

    A time split learned from every row before its holdout's first event time
    (``split.holdout_min``); a hash split from every row ranked above its holdout's highest rank
    of the row's class (``split.holdout_rank_max_<class>``). A row the version never had counts
    as seen too when the rule puts it outside that version's holdout: the rule errs towards
    excluding rows, never towards comparing on a row the version trained on. ``id_column`` and
    ``event_time_column`` are the version's own (from its spec); ``same_ids`` is False when the
    holdout's ids may mean other rows than the version's (derived ids under another spec).
    """
    kind = tags.get("split.kind")
    if kind == "time":
        start = tags.get("split.holdout_min")
        if not start or not event_time_column or event_time_column not in holdout.columns:
            return Overlap(None, f"its time split names no holdout start for column "
                           f"{event_time_column!r} in this holdout")  # fmt: skip
        begin = pd.Timestamp(start)
        seen = (holdout[event_time_column] < begin).to_numpy(dtype=bool)
        return Overlap(seen, f"its time holdout began at {begin.isoformat()}; "
                       f"{int(seen.sum()):,} of these rows are earlier")  # fmt: skip
    if kind == "hash":
        highest = [tags.get(f"split.{RANK_RULE}_{cls}") for cls in (0, 1)]
        if None in highest:
            return Overlap(None, "its hash split predates the recorded holdout ranks")
        if id_column not in holdout.columns or not same_ids:
            return Overlap(None, f"its row ids ({id_column!r}) do not identify these rows")
        rank = split_rank(holdout, id_column, HOLDOUT_SALT)
        labels = holdout[LABEL_INT].to_numpy()
        limit = np.where(labels == 1, float(highest[1]), float(highest[0]))
        seen = rank > limit
        return Overlap(seen, f"its hash holdout by {id_column!r} leaves {int(seen.sum()):,} of "
                       "these rows outside it")  # fmt: skip
    return Overlap(None, "its version records no split kind")
