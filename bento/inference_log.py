"""Inference log: every scored record appended, off the request path, to date-partitioned Parquet.

Layout (read by the drift check)::

    <root>/date=YYYY-MM-DD/part-<UTC timestamp>-<pid>-<n>.parquet

Columns: every spec feature (raw values as served), ``score`` (float64), ``decision`` (int8),
``model_version`` (str), ``timestamp`` (timestamp[us, UTC]), ``request_id`` (str),
``transaction_id_hash`` (sha256 hex of the caller's transaction id, or null).

Requests only append to in-memory column buffers (under a lock, a few microseconds). A
background thread writes the buffer every ``flush_interval_s`` seconds, sooner when
``flush_records`` are waiting, and once more on :meth:`InferenceLogWriter.close`. Each write
is a new file (written to a temporary name, then renamed), so readers never see half a file.
A failed write never reaches the caller: the records are dropped and reported through
``on_lost`` and the log (the first loss at once with its cause, then at most one line per
``loss_log_interval_s`` with the running total). :meth:`InferenceLogWriter.start` tries the
folder first and logs at once when it cannot be written. Every flush tries again, so the log
resumes by itself when the folder becomes writable, and says how many records were lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_contracts.spec import FeatureKind, FeatureSpec

LOG_DIR_ENV = "FRAUD_INFERENCE_LOG_DIR"
logger = logging.getLogger("fraud.serving.inference_log")

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
        pa.field("score", pa.float64()),
        pa.field("decision", pa.int8()),
        pa.field("model_version", pa.string()),
        pa.field("timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("request_id", pa.string()),
        pa.field("transaction_id_hash", pa.string()),
    ]
    return pa.schema(fields)


def hash_transaction_id(value: str | None) -> str | None:
    """sha256 hex of a transaction id (ids are stored hashed, never in clear)."""
    return None if value is None else hashlib.sha256(value.encode("utf-8")).hexdigest()


_NAN = float("nan")


class InferenceLogWriter:
    """Buffered, thread-flushed writer of the inference log (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        spec: FeatureSpec,
        model_version: str,
        *,
        flush_interval_s: float = 5.0,
        flush_records: int = 10_000,
        max_buffered_records: int = 200_000,
        loss_log_interval_s: float = 60.0,
        on_written: Callable[[int], None] | None = None,
        on_lost: Callable[[int, str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.spec = spec
        self.model_version = model_version
        self.flush_interval_s = flush_interval_s
        self.flush_records = flush_records
        self.max_buffered_records = max_buffered_records
        self.loss_log_interval_s = loss_log_interval_s
        self._on_written = on_written or (lambda n: None)
        self._on_lost = on_lost or (lambda n, reason: None)
        self._schema = log_schema(spec)
        self._numbers = tuple(f.name for f in spec.features if f.is_numeric)
        self._strings = tuple(f.name for f in spec.features if not f.is_numeric)
        self._lock = threading.Lock()
        self._bufs = self._empty()
        self._pending = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._writer_id = uuid.uuid4().hex[:8]
        self.written = 0
        self.lost = 0
        self.files: list[Path] = []
        self.last_error: str | None = None
        self._loss_lock = threading.Lock()
        self._lost_in_outage = 0  # since the last successful write
        self._lost_unlogged = 0  # since the last log line about losses
        self._last_loss_log = -math.inf

    # -- request path ---------------------------------------------------------------------
    def _empty(self) -> dict[str, Any]:
        """Fresh buffers: C doubles for numbers (NaN = null), lists for strings."""
        bufs: dict[str, Any] = {name: array("d") for name in self._numbers}
        bufs.update({name: [] for name in self._strings})
        bufs.update(
            score=array("d"), decision=array("b"), timestamp=array("d"), request_id=[], tx=[]
        )
        return bufs

    def append_row(
        self,
        values: Mapping[str, Any],
        score: float,
        decision: int,
        request_id: str,
        transaction_id: str | None,
    ) -> None:
        """Buffer one scored record: a handful of appends to typed column buffers."""
        if not self._admit(1):
            return
        now = time.time()
        with self._lock:
            bufs = self._bufs
            for name in self._numbers:
                v = values[name]
                bufs[name].append(_NAN if v is None else v)
            for name in self._strings:
                bufs[name].append(values[name])
            bufs["score"].append(score)
            bufs["decision"].append(decision)
            bufs["timestamp"].append(now)
            bufs["request_id"].append(request_id)
            bufs["tx"].append(transaction_id)
            self._pending += 1
            full = self._pending >= self.flush_records
        if full:
            self._wake.set()

    def append_batch(
        self,
        columns: Mapping[str, Sequence[Any]],
        scores: Sequence[float],
        decisions: Sequence[int],
        request_id: str,
        transaction_ids: Sequence[str | None],
    ) -> None:
        """Buffer many scored records given column-wise (feature name -> values)."""
        n = len(scores)
        if n == 0 or not self._admit(n):
            return
        now = time.time()
        numbers = {  # None becomes NaN, booleans 1.0/0.0
            name: np.asarray(columns[name], dtype=np.float64).tobytes() for name in self._numbers
        }
        with self._lock:
            bufs = self._bufs
            for name, raw in numbers.items():
                bufs[name].frombytes(raw)
            for name in self._strings:
                bufs[name].extend(columns[name])
            bufs["score"].extend(scores)
            bufs["decision"].extend(decisions)
            bufs["timestamp"].extend([now] * n)
            bufs["request_id"].extend([request_id] * n)
            bufs["tx"].extend(transaction_ids)
            self._pending += n
            full = self._pending >= self.flush_records
        if full:
            self._wake.set()

    def _admit(self, n: int) -> bool:
        if self._pending + n > self.max_buffered_records:
            self._report_loss(n, "buffer full")
            return False
        return True

    # -- lifecycle ------------------------------------------------------------------------
    def check_writable(self) -> str | None:
        """Create the log folder and a file in it: the problem, or None when it can be written."""
        probe = self.root / f".probe-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            return f"{type(err).__name__}: {err}"
        return None

    def start(self) -> None:
        """Check the folder (logging at once when it cannot be written), start the flush thread."""
        problem = self.check_writable()
        if problem is not None:
            self.last_error = problem
            logger.error(
                "inference log: folder %s cannot be written (%s); serving goes on, scored "
                "records are counted as lost until it can",
                self.root,
                problem,
                extra={"reason": problem, "log_root": str(self.root)},
            )
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="inference-log-writer", daemon=True
            )
            self._thread.start()

    def warm_up(self) -> None:
        """Convert and encode one dummy row in memory, so pyarrow's one-time set-up (tens of
        milliseconds holding the GIL) happens before the service is ready, not under load."""
        bufs = self._empty()
        for f in self.spec.features:
            bufs[f.name].append(
                (_NAN if f.nullable else 0.0) if f.is_numeric else (None if f.nullable else "")
            )
        bufs["request_id"].append("warm-up")
        bufs["tx"].append(None)
        bufs["score"].append(0.0)
        bufs["decision"].append(0)
        bufs["timestamp"].append(time.time())
        pq.write_table(self._table(bufs), pa.BufferOutputStream())

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the thread and write whatever is buffered."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.flush()

    @property
    def pending(self) -> int:
        """Records buffered and not written yet."""
        return self._pending

    # -- writing --------------------------------------------------------------------------
    def flush(self) -> int:
        """Write the buffered records now; return how many were written."""
        with self._lock:
            cols, self._bufs = self._bufs, self._empty()
            n, self._pending = self._pending, 0
        if n == 0:
            return 0
        try:
            written = self._write_buffers(cols, n)
        finally:
            del cols
            # the log uses memory in bursts: give pyarrow's freed pages back to the system
            pa.default_memory_pool().release_unused()
        if written:
            self.written += written
            self._on_written(written)
            self._resumed()
        return written

    def _write_buffers(self, cols: dict[str, Any], n: int) -> int:
        """Write one file per UTC date; a failed file loses its own records, not the others'."""
        try:
            table = self._table(cols)
            days = table.column("timestamp").cast(pa.int64()).to_numpy() // 86_400_000_000
        except Exception as err:  # a conversion failure: count, log, keep serving
            self._report_loss(n, f"{type(err).__name__}: {err}")
            return 0
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        written = 0
        for day in np.unique(days):
            part = table.filter(pa.array(days == day))
            try:
                self.files.append(self._write_part(part, int(day), stamp))
            except Exception as err:  # any I/O failure: count, log, keep serving
                self._report_loss(part.num_rows, f"{type(err).__name__}: {err}")
            else:
                written += part.num_rows
        return written

    def _write_part(self, part: pa.Table, day: int, stamp: str) -> Path:
        """One file under ``date=YYYY-MM-DD``: written to a hidden name, then renamed."""
        date = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
        folder = self.root / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        # unique across replicas writing to one shared folder: the PID alone repeats between
        # containers, so a per-writer random id goes with it
        name = f"part-{stamp}-{self._writer_id}-{os.getpid()}-{self._seq}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            pq.write_table(part, tmp)
            tmp.replace(folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        return folder / name

    def _report_loss(self, n: int, reason: str) -> None:
        """Count lost records; log the first loss at once, then at most once per interval."""
        now = time.monotonic()
        with self._loss_lock:
            self.lost += n
            self._lost_in_outage += n
            self._lost_unlogged += n
            self.last_error = reason
            due = now - self._last_loss_log >= self.loss_log_interval_s
            if due:
                unlogged, self._lost_unlogged, self._last_loss_log = self._lost_unlogged, 0, now
            total = self.lost
        if due:
            logger.error(
                "inference log: %d records lost (%s); %d lost in all, serving goes on",
                unlogged,
                reason,
                total,
                extra={
                    "records_lost": unlogged,
                    "records_lost_total": total,
                    "reason": reason,
                    "log_root": str(self.root),
                },
            )
        try:
            self._on_lost(n, reason)
        except Exception:  # a metrics failure must not hide the loss
            logger.exception("inference log: reporting the loss failed")

    def _resumed(self) -> None:
        """After a successful write: say so once if records were lost before it."""
        with self._loss_lock:
            lost, self._lost_in_outage = self._lost_in_outage, 0
            self._lost_unlogged, self._last_loss_log = 0, -math.inf
        if lost:
            logger.warning(
                "inference log: writing to %s again; %d records were lost before (%s)",
                self.root,
                lost,
                self.last_error,
                extra={"records_lost": lost, "reason": self.last_error, "log_root": str(self.root)},
            )

    def _table(self, bufs: dict[str, Any]) -> pa.Table:
        """Buffers to an Arrow table; numbers are converted from C arrays, not Python objects."""
        arrays = []
        for f in self.spec.features:
            if not f.is_numeric:
                arrays.append(pa.array(bufs[f.name], type=pa.string()))
                continue
            values = np.frombuffer(bufs[f.name], dtype=np.float64)
            mask = np.isnan(values) if f.nullable else None
            if f.kind == FeatureKind.INTEGER:
                whole = np.where(mask, 0.0, values) if mask is not None else values
                arrays.append(pa.array(whole.astype(np.int64), mask=mask, type=pa.int64()))
            elif f.kind == FeatureKind.BOOLEAN:
                arrays.append(pa.array(values == 1.0, mask=mask, type=pa.bool_()))
            else:
                arrays.append(pa.array(values, mask=mask, type=pa.float64()))
        n = len(bufs["score"])
        micros = (np.frombuffer(bufs["timestamp"], dtype=np.float64) * 1e6).astype(np.int64)
        tx = bufs["tx"]
        hashes = (
            pa.array([hash_transaction_id(t) for t in tx], type=pa.string())
            if any(t is not None for t in tx)
            else pa.nulls(n, type=pa.string())
        )
        arrays += [
            pa.array(np.frombuffer(bufs["score"], dtype=np.float64), type=pa.float64()),
            pa.array(np.frombuffer(bufs["decision"], dtype=np.int8), type=pa.int8()),
            pa.array([self.model_version] * n, type=pa.string()),
            pa.array(micros, type=pa.timestamp("us", tz="UTC")),
            pa.array(bufs["request_id"], type=pa.string()),
            hashes,
        ]
        return pa.Table.from_arrays(arrays, schema=self._schema)
