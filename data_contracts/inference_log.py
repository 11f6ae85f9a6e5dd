"""The inference log: its schema, its folder layout, its one writer and its one reader.

The bento writes the log and the drift check reads it, in two processes (often two machines
sharing a mount), so every fact they must agree on is here and nowhere else. The module needs
pyarrow and numpy only: the bento imports it, and the bento keeps pandas, Prefect and MLflow out.

Layout::

    <root>/date=YYYY-MM-DD/part-<UTC stamp>-<writer id>-<pid>-<n>.parquet

One folder per UTC date of the records' timestamps. Every write is a new file (written under a
hidden temporary name, then renamed), so readers never see half a file and no file is ever
rewritten; the writer id (random per writer) keeps names unique across replicas writing to one
shared folder, where PIDs repeat. A date folder gets the permission bits of ``<root>`` when a
writer creates it, whatever that writer's umask: a shared log (``<root>`` sticky and
world-writable, as the serving fleet makes it) stays writable by every writer, whichever user
(root, the image's user) creates the day first (issue 31).

Columns: every spec feature (raw values as served, spec order), then ``score`` (float64),
``decision`` (int8), ``model_version`` (str), ``timestamp`` (timestamp[us, UTC]),
``request_id`` (str), ``transaction_id_hash`` (keyed HMAC-SHA256 hex of the caller's
transaction id, see :mod:`data_contracts.id_key`, or null: ids are never stored in clear).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_contracts.id_key import hash_id, load_id_key
from data_contracts.spec import FeatureKind, FeatureSpec

LOG_DIR_ENV = "FRAUD_INFERENCE_LOG_DIR"
SCORE_COLUMN = "score"
DECISION_COLUMN = "decision"
MODEL_VERSION_COLUMN = "model_version"
TIMESTAMP_COLUMN = "timestamp"
REQUEST_ID_COLUMN = "request_id"
TRANSACTION_ID_HASH_COLUMN = "transaction_id_hash"
PARTITION_PREFIX = "date="
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
_DAY_US = 86_400_000_000

_ARROW_TYPES = {
    FeatureKind.NUMERIC: pa.float64(),
    FeatureKind.INTEGER: pa.int64(),
    FeatureKind.BOOLEAN: pa.bool_(),
    FeatureKind.CATEGORICAL: pa.string(),
}


def log_schema(spec: FeatureSpec) -> pa.Schema:
    """The Arrow schema of the inference log for ``spec``."""
    fields = [pa.field(f.name, _ARROW_TYPES[f.kind]) for f in spec.features]
    fields += [
        pa.field(SCORE_COLUMN, pa.float64()),
        pa.field(DECISION_COLUMN, pa.int8()),
        pa.field(MODEL_VERSION_COLUMN, pa.string()),
        pa.field(TIMESTAMP_COLUMN, TIMESTAMP_TYPE),
        pa.field(REQUEST_ID_COLUMN, pa.string()),
        pa.field(TRANSACTION_ID_HASH_COLUMN, pa.string()),
    ]
    return pa.schema(fields)


def hash_transaction_id(value: str | None, key: bytes | None = None) -> str | None:
    """Keyed HMAC-SHA256 hex of a transaction id (ids are stored hashed, never in clear).

    ``key`` defaults to :func:`~data_contracts.id_key.load_id_key` (read on every call: callers
    hashing many ids load it once and pass it).
    """
    if value is None:
        return None
    return hash_id(value, load_id_key() if key is None else key)


class IdHasher:
    """:func:`~data_contracts.id_key.hash_id` with the key's HMAC set-up done once.

    Copying a keyed HMAC state is about a third cheaper than :func:`hmac.new` per id, which
    lets the bento hash each id when it is scored (a microsecond) instead of a whole file's
    ids at once in its flush thread (tens of milliseconds holding the interpreter lock).
    """

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, value: str | None) -> str | None:
        """The hex digest of ``value`` (None for None)."""
        if value is None:
            return None
        mac = self._base.copy()
        mac.update(value.encode("utf-8"))
        return mac.hexdigest()

    def many(self, values: Sequence[str | None]) -> list[str | None]:
        """The digests of ``values``, in order."""
        return [self(v) for v in values]


def partition_name(day: datetime) -> str:
    """The folder name of the UTC date of ``day``: ``date=YYYY-MM-DD``."""
    return f"{PARTITION_PREFIX}{day.astimezone(UTC):%Y-%m-%d}"


def partition_date(path: Path) -> datetime | None:
    """The UTC midnight a ``date=YYYY-MM-DD`` folder stands for; None for anything else."""
    if not path.is_dir() or not path.name.startswith(PARTITION_PREFIX):
        return None
    try:
        return datetime.strptime(path.name[len(PARTITION_PREFIX) :], "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def ensure_folder(folder: Path, like: Path) -> Path:
    """Create ``folder`` (parents too) if missing, with ``like``'s permission bits.

    The bits are set with ``chmod`` after ``mkdir``, so the creating process's umask does not
    narrow them; a folder that already exists is left as it is. A ``chmod`` refused (another
    writer created the folder meanwhile, as another user) is not an error: that writer sets
    the same bits.
    """
    if folder.is_dir():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(like.stat().st_mode)
        if stat.S_IMODE(folder.stat().st_mode) != mode:
            folder.chmod(mode)
    return folder


def day_folder(root: Path, day: datetime) -> Path:
    """The date folder of ``day`` under ``root`` (not created)."""
    return root / partition_name(day)


# ---------------------------------------------------------------------------------------------
# Writing


def build_table(
    spec: FeatureSpec,
    features: Mapping[str, Any],
    *,
    scores: Any,
    decisions: Any,
    timestamps: Any,
    model_version: str,
    request_ids: Sequence[str] | str,
    transaction_ids: Sequence[str | None] | None = None,
    id_key: bytes | None = None,
    transaction_id_hashes: Sequence[str | None] | None = None,
) -> pa.Table:
    """Scored records, given column-wise, as a table of :func:`log_schema`.

    ``features`` maps every spec feature to its values: numbers as anything numpy turns into
    float64 (None or NaN = null, booleans 1.0/0.0), categories as strings or None.
    ``timestamps`` are epoch microseconds (int64) or anything Arrow casts to timestamp[us, UTC].
    Transaction ids are hashed here with ``id_key`` (default: :func:`load_id_key`), so no
    caller can store them in clear; a caller that hashed them already (with an
    :class:`IdHasher`) passes ``transaction_id_hashes`` instead.
    """
    arrays = []
    for f in spec.features:
        if not f.is_numeric:
            arrays.append(pa.array(features[f.name], type=pa.string(), from_pandas=True))
            continue
        values = np.asarray(features[f.name], dtype=np.float64)
        mask = np.isnan(values) if f.nullable else None
        if f.kind == FeatureKind.INTEGER:
            whole = np.where(mask, 0.0, values) if mask is not None else values
            arrays.append(pa.array(whole.astype(np.int64), mask=mask, type=pa.int64()))
        elif f.kind == FeatureKind.BOOLEAN:
            arrays.append(pa.array(values == 1.0, mask=mask, type=pa.bool_()))
        else:
            arrays.append(pa.array(values, mask=mask, type=pa.float64()))
    score = np.asarray(scores, dtype=np.float64)
    n = len(score)
    ids = [request_ids] * n if isinstance(request_ids, str) else request_ids
    tx = transaction_ids if transaction_ids is not None else [None] * n
    if transaction_id_hashes is not None:
        hashes = pa.array(transaction_id_hashes, type=pa.string())
    elif any(t is not None for t in tx):
        key = load_id_key() if id_key is None else id_key
        hashes = pa.array([None if t is None else hash_id(t, key) for t in tx], type=pa.string())
    else:
        hashes = pa.nulls(n, type=pa.string())
    arrays += [
        pa.array(score, type=pa.float64()),
        pa.array(np.asarray(decisions, dtype=np.int8), type=pa.int8()),
        pa.array([model_version] * n, type=pa.string()),
        pa.array(timestamps, type=TIMESTAMP_TYPE),
        pa.array(ids, type=pa.string()),
        hashes,
    ]
    return pa.Table.from_arrays(arrays, schema=log_schema(spec))


@dataclass
class Written:
    """What one write did: the files written, their rows, and the rows of files that failed."""

    files: list[Path] = field(default_factory=list)
    rows: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)  # (rows lost, reason)


class LogFiles:
    """The one writer of log files: one file per UTC date per write, named for this writer.

    Make one per writing process (the bento service, a backfill); ``writer_id`` defaults to a
    random id so that two writers never pick the same name.
    """

    def __init__(self, root: Path, writer_id: str | None = None) -> None:
        self.root = Path(root)
        self.writer_id = writer_id or uuid.uuid4().hex[:8]
        self._seq = 0

    def write(self, table: pa.Table) -> Written:
        """Write ``table`` (of :func:`log_schema`), one new file per UTC date.

        A file that cannot be written loses its own rows, not the others': its failure is in
        the result, never raised (the bento keeps serving and counts the loss).
        """
        out = Written()
        if table.num_rows == 0:
            return out
        micros = pc.cast(table[TIMESTAMP_COLUMN], TIMESTAMP_TYPE).cast(pa.int64()).to_numpy()
        days = micros // _DAY_US
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        for day in np.unique(days):
            part = table.filter(pa.array(days == day))
            try:
                path = self._write_part(part, int(day), stamp)
            except Exception as err:  # any I/O failure: this file's rows are lost
                out.failures.append((part.num_rows, f"{type(err).__name__}: {err}"))
            else:
                out.files.append(path)
                out.rows += part.num_rows
        return out

    def _write_part(self, part: pa.Table, day: int, stamp: str) -> Path:
        """One file under ``date=YYYY-MM-DD``: written to a hidden name, then renamed."""
        folder = day_folder(self.root, datetime.fromtimestamp(day * 86_400, UTC))
        ensure_folder(folder, like=self.root)
        self._seq += 1
        name = f"part-{stamp}-{self.writer_id}-{os.getpid()}-{self._seq}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            pq.write_table(part, tmp)
            tmp.replace(folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        return folder / name


# ---------------------------------------------------------------------------------------------
# Reading


def log_files(folder: Path) -> list[Path]:
    """The finished log files of one date folder (hidden temporary files excluded), by name."""
    return sorted(p for p in folder.glob("*.parquet") if p.is_file())


def read_file(path: Path, columns: Sequence[str] | None) -> pa.Table:
    """One log file, only the ``columns`` it has (older files may lack newer columns).

    Only those columns are decoded, and the timestamp is cast to :data:`TIMESTAMP_TYPE`.
    """
    names = pq.read_schema(path).names
    wanted = None if columns is None else [c for c in dict.fromkeys(columns) if c in names]
    table = pq.read_table(path, columns=wanted)
    if TIMESTAMP_COLUMN in table.column_names:
        index = table.schema.get_field_index(TIMESTAMP_COLUMN)
        table = table.set_column(
            index, TIMESTAMP_COLUMN, pc.cast(table[TIMESTAMP_COLUMN], TIMESTAMP_TYPE)
        )
    return table


def partitions(root: Path) -> list[tuple[datetime, Path]]:
    """The date folders of the log, newest first."""
    found = ((d, p) for p in (root.iterdir() if root.is_dir() else []) if (d := partition_date(p)))
    return sorted(found, key=lambda item: item[0], reverse=True)


def version_set(model_version: str | None) -> pa.Array | None:
    """The ``model_version`` values that mean ``model_version`` (with and without ``v``)."""
    if model_version is None:
        return None
    bare = str(model_version).removeprefix("v")
    return pa.array([bare, f"v{bare}"])


def in_window(
    table: pa.Table, now: datetime, cutoff: datetime | None, versions: pa.Array | None
) -> pa.Array:
    """The rows of ``table`` (timestamp cast) up to ``now``, after ``cutoff``, of ``versions``."""
    ts = table[TIMESTAMP_COLUMN]
    keep = pc.less_equal(ts, pa.scalar(now, TIMESTAMP_TYPE))
    if cutoff is not None:
        keep = pc.and_(keep, pc.greater(ts, pa.scalar(cutoff, TIMESTAMP_TYPE)))
    if versions is not None:
        served = pc.cast(table[MODEL_VERSION_COLUMN], pa.string())
        keep = pc.and_(keep, pc.is_in(served, value_set=versions))
    return pc.fill_null(keep, False)


def _read_partition(folder: Path, columns: list[str] | None) -> pa.Table | None:
    tables = [read_file(path, columns) for path in log_files(folder)]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def read_log(
    root: Path,
    *,
    now: datetime,
    hours: float | None = None,
    rows: int | None = None,
    model_version: str | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Rows of the log up to ``now``: the last ``hours``, or the last ``rows``; oldest first.

    Only date folders that can hold such rows are read, newest first. With ``model_version``
    only rows served by that version are kept (a ``v`` prefix is ignored on both sides).
    ``columns`` selects feature columns (``timestamp`` and ``model_version`` always come too).
    No rows: an empty table with the wanted columns.
    """
    wanted = None if columns is None else [*columns, TIMESTAMP_COLUMN, MODEL_VERSION_COLUMN]
    cutoff = now - timedelta(hours=hours) if hours is not None else None
    versions = version_set(model_version)
    tables: list[pa.Table] = []
    have = 0
    for day, folder in partitions(root):
        if cutoff is not None and day + timedelta(days=1) <= cutoff:
            break
        table = _read_partition(folder, wanted)
        if table is None or table.num_rows == 0:
            continue
        table = table.filter(in_window(table, now, cutoff, versions))
        tables.append(table)
        have += table.num_rows
        if rows is not None and have >= rows:
            break
    if not tables:
        return pa.table({c: pa.nulls(0) for c in wanted or [TIMESTAMP_COLUMN]})
    table = pa.concat_tables(tables, promote_options="default").sort_by(TIMESTAMP_COLUMN)
    if rows is not None and table.num_rows > rows:
        table = table.slice(table.num_rows - rows)
    return table
