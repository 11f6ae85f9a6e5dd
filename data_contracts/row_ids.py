"""Stable row ids for a labelled table without an id column, derived from the row's content.

:func:`content_ids` hashes each row's typed features and event time in a canonical form, so
the same row gets the same id whichever file format or reader it came through, and a late
label never moves a row to another split. The validation in :mod:`data_contracts.schemas`
adds these ids while typing a frame; the canonical number form (mantissa and exponent at 15
significant digits) is a job of its own, kept apart from the pandera schemas.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from data_contracts.spec import FeatureSpec

_POW10 = 10.0 ** np.arange(309)


def _times_pow10(x: np.ndarray, power: np.ndarray) -> np.ndarray:
    """``x * 10**power`` elementwise, through exact powers of ten."""
    return x * _POW10[np.clip(power, 0, 308)] / _POW10[np.clip(-power, 0, 308)]


def _canonical_numbers(values: np.ndarray) -> np.ndarray:
    """(n, k) floats -> (n, 2k) integers: each finite non-zero x as a 15-digit mantissa m and an
    exponent e with x ~ m * 10**(e - 14); zero (either sign) as (0, 0); NaN, +inf and -inf as
    (0, 1001), (0, 1002), (0, 1003)."""
    finite = np.isfinite(values)
    nonzero = finite & (values != 0)
    base = np.where(nonzero, values, 0.0)
    exp = np.floor(np.log10(np.where(nonzero, np.abs(values), 1.0))).astype(np.int64)
    mant = np.rint(_times_pow10(base, 14 - exp))
    # log10 can be one off next to a power of ten: renormalise to exactly 15 digits
    over = np.abs(mant) >= 1e15
    mant, exp = np.where(over, np.rint(mant / 10.0), mant), np.where(over, exp + 1, exp)
    under = nonzero & (np.abs(mant) < 1e14)
    mant = np.where(under, np.rint(_times_pow10(base, 15 - exp)), mant)
    exp = np.where(under, exp - 1, exp)
    special = np.select([np.isnan(values), values == np.inf, values == -np.inf], [1, 2, 3], 0)
    exp = np.where(finite, np.where(nonzero, exp, 0), 1000 + special)
    mant = np.where(finite, mant, 0.0).astype(np.int64)
    return np.concatenate([mant, exp], axis=1)


def _text_digest(text: str) -> int:
    """A stable 64-bit digest of one text value, never 0 (0 stands for a missing value)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") or 1


def content_ids(typed: pd.DataFrame, spec: FeatureSpec) -> pd.Series:
    """Stable row ids for a table without an id column: content hash plus occurrence number.

    The hash (blake2b, 16 hex digits) covers the row's typed features and event time, in
    canonical form: numbers rounded to 15 significant digits (so a value parsed one bit apart by
    another reader, or written by another tool, hashes the same), the event time as UTC
    nanoseconds, each category as a digest of its text. So the same row gets the same id whether
    read from CSV or Parquet, with ``1`` or ``1.0``, in any order. The label is left out: a
    fraud label that arrives late (a chargeback) must not move a row to another split.
    ``-<k>`` counts earlier identical rows in file order, so legitimate repeats stay distinct.
    """
    n = len(typed)
    fixed: list[np.ndarray] = []
    if spec.event_time_column:
        times = typed[spec.event_time_column]
        ns = np.where(times.isna(), np.iinfo(np.int64).min, times.array.asi8).astype("<i8")
        fixed.append(ns.view(np.uint8).reshape(n, 8))
    numeric = [f.name for f in spec.numeric_features]
    if numeric:
        values = typed[numeric].to_numpy(dtype=np.float64)
        fixed.append(np.ascontiguousarray(_canonical_numbers(values).astype("<i8")).view(np.uint8))
    for f in spec.categorical_features:
        # each distinct text (None apart) stands for its own 8-byte digest: stable, vectorised
        codes, uniques = pd.factorize(typed[f.name], use_na_sentinel=True)
        # code -1 (None) picks the last entry, 0
        table = np.array([_text_digest(str(v)) for v in uniques] + [0], dtype="<u8")
        fixed.append(table[codes].view(np.uint8).reshape(n, 8))
    block = np.ascontiguousarray(np.hstack([a.view(np.uint8) for a in fixed]))
    rows = block.view(np.dtype((np.void, block.shape[1]))).ravel().tolist()  # bytes per row
    digests = pd.Series(
        [hashlib.blake2b(row, digest_size=8).hexdigest() for row in rows], dtype=object
    )
    occurrence = digests.groupby(digests, sort=False).cumcount()
    return digests + "-" + occurrence.astype(str)
