"""The bento's inference-log service: buffers scored records and writes them off the request path.

The format, the folder layout and the file writing are the contract's
(:mod:`data_contracts.inference_log`, shared with the drift check that reads the log); this
module is the serving side around it: buffering, a flush thread, and counting what is lost.

Requests only append to in-memory column buffers (under a lock, a few microseconds). A
background thread writes the buffer every ``flush_interval_s`` seconds, sooner when
``flush_records`` are waiting, and once more on :meth:`InferenceLogWriter.close`. Each write
is a new file (written to a temporary name, then renamed), so readers never see half a file.
A failed write never reaches the caller: the records are dropped and reported through
``on_lost`` and the log (the first loss at once with its cause, then at most one line per
``loss_log_interval_s`` with the running total). :meth:`InferenceLogWriter.start` tries the
folder first and logs at once when it cannot be written. Every flush tries again, so the log
resumes by itself when the folder becomes writable, and says how many records were lost.
Whether the log can be written right now (the last write, or an idle probe of the folder and
today's date folder every flush interval) is :attr:`InferenceLogWriter.writable`, reported
through ``on_state`` (the ``fraud_inference_log_writable`` gauge) and :meth:`status`
(``GET /model``, ``fraud fleet status``); a change is logged once.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_contracts.id_key import load_id_key
from data_contracts.inference_log import (
    LOG_DIR_ENV,
    IdHasher,
    LogFiles,
    build_table,
    day_folder,
    hash_transaction_id,
    log_schema,
)
from data_contracts.spec import FeatureSpec

__all__ = ["LOG_DIR_ENV", "InferenceLogWriter", "hash_transaction_id", "log_schema"]
logger = logging.getLogger("fraud.serving.inference_log")

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
        on_state: Callable[[bool], None] | None = None,
        id_key: bytes | None = None,
    ) -> None:
        self.root = Path(root)
        self._id_key = id_key  # None: data_contracts.id_key.load_id_key() at the first id
        self._hasher: IdHasher | None = None
        self.spec = spec
        self.model_version = model_version
        self.flush_interval_s = flush_interval_s
        self.flush_records = flush_records
        self.max_buffered_records = max_buffered_records
        self.loss_log_interval_s = loss_log_interval_s
        self._on_written = on_written or (lambda n: None)
        self._on_lost = on_lost or (lambda n, reason: None)
        self._on_state = on_state or (lambda ok: None)
        self.writable: bool | None = None  # None until the first check
        self._numbers = tuple(f.name for f in spec.features if f.is_numeric)
        self._strings = tuple(f.name for f in spec.features if not f.is_numeric)
        self._lock = threading.Lock()
        self._bufs = self._empty()
        self._pending = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._files = LogFiles(self.root)
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

    def _hash(self, transaction_id: str | None) -> str | None:
        """The stored form of a transaction id, hashed by the caller's thread as it is
        scored: the flush thread never hashes a whole file's ids at once."""
        if transaction_id is None:
            return None
        hasher = self._hasher
        if hasher is None:
            key = load_id_key() if self._id_key is None else self._id_key
            hasher = self._hasher = IdHasher(key)
        return hasher(transaction_id)

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
        try:
            tx_hash = self._hash(transaction_id)
        except Exception as err:  # an unusable key: count, log, keep serving
            self._report_loss(1, f"{type(err).__name__}: {err}")
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
            bufs["tx"].append(tx_hash)
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
        """Buffer many scored records given column-wise (feature name -> values); the ids are
        hashed here, in the caller's thread (the batch's scoring thread)."""
        n = len(scores)
        if n == 0 or not self._admit(n):
            return
        try:
            tx_hashes = [self._hash(t) for t in transaction_ids]
        except Exception as err:  # an unusable key: count, log, keep serving
            self._report_loss(n, f"{type(err).__name__}: {err}")
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
            bufs["tx"].extend(tx_hashes)
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
        """Create the log folder and a file in it, and in today's date folder when it exists
        (another writer may have made it): the problem, or None when both can be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            today = day_folder(self.root, datetime.now(UTC))
            for folder in (self.root, today) if today.is_dir() else (self.root,):
                probe = folder / f".probe-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
        except OSError as err:
            return f"{type(err).__name__}: {err}"
        return None

    def start(self) -> None:
        """Check the folder (logging at once when it cannot be written), start the flush thread."""
        self._set_writable(self.check_writable())
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="inference-log-writer", daemon=True
            )
            self._thread.start()

    def status(self) -> dict[str, Any]:
        """What ``GET /model`` says about the log: folder, writable now, written, lost, why."""
        return {
            "folder": str(self.root),
            "writable": self.writable,
            "written": self.written,
            "lost": self.lost,
            "last_error": self.last_error,
        }

    def _set_writable(self, problem: str | None, *, say: bool = True) -> None:
        """Record whether the log can be written; report a change once, and log it unless
        ``say`` is False (a write's losses and resumption are logged by themselves)."""
        ok = problem is None
        if problem is not None:
            self.last_error = problem
        if ok == self.writable:
            return
        was, self.writable = self.writable, ok
        try:
            self._on_state(ok)
        except Exception:  # a metrics failure must not stop the writer
            logger.exception("inference log: reporting its state failed")
        if not say:
            return
        if not ok:
            logger.error(
                "inference log: folder %s cannot be written (%s); serving goes on, scored "
                "records are counted as lost until it can",
                self.root,
                problem,
                extra={"reason": problem, "log_root": str(self.root)},
            )
        elif was is False:
            logger.info("inference log: folder %s can be written again", self.root)

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
            if self._pending == 0:  # idle: look whether the log could be written now
                self._set_writable(self.check_writable())
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
            written, files = self._write_buffers(cols, n)
        finally:
            del cols
            # the log uses memory in bursts: give pyarrow's freed pages back to the system
            pa.default_memory_pool().release_unused()
        if written:
            self.written += written
            self._on_written(written)
            self._resumed()
        self.files.extend(files)  # after the count: whoever sees a file sees it counted
        return written

    def _write_buffers(self, cols: dict[str, Any], n: int) -> tuple[int, list[Path]]:
        """Write one file per UTC date; a failed file loses its own records, not the others'."""
        try:
            table = self._table(cols)
        except Exception as err:  # a conversion failure: count, log, keep serving
            self._report_loss(n, f"{type(err).__name__}: {err}")
            return 0, []
        written = self._files.write(table)
        for lost, reason in written.failures:  # any I/O failure: count, log, keep serving
            self._report_loss(lost, reason)
        self._set_writable(written.failures[-1][1] if written.failures else None, say=False)
        return written.rows, written.files

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
        """Buffers to an Arrow table; numbers are handed over as C arrays, not Python objects."""
        numbers = {name: np.frombuffer(bufs[name], dtype=np.float64) for name in self._numbers}
        seconds = np.frombuffer(bufs["timestamp"], dtype=np.float64)
        return build_table(
            self.spec,
            {**numbers, **{name: bufs[name] for name in self._strings}},
            scores=np.frombuffer(bufs["score"], dtype=np.float64),
            decisions=np.frombuffer(bufs["decision"], dtype=np.int8),
            timestamps=(seconds * 1e6).astype(np.int64),
            model_version=self.model_version,
            request_ids=bufs["request_id"],
            transaction_id_hashes=bufs["tx"],
        )
