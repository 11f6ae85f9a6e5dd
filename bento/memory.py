"""Giving memory back to the system after large requests (glibc's allocator).

Why a worker stayed at 1.5 GB after a burst of large refused batches (issue 14): glibc's malloc
serves big buffers (request bodies, parsed JSON, answers) from ``mmap`` only above a threshold
that it raises to the size of every large block freed (up to 32 MB), so after the first large
request the next ones come from the heap; freed heap memory is returned only from the top of
the heap and only above ``M_TRIM_THRESHOLD`` (raised along with it); and every thread that
allocates (event loop, scoring thread, log writer) may get its own arena of up to 64 MB
reservations. What is freed stays mapped and counted in RSS.

So the service fixes the thresholds at start-up (:func:`tune_allocator`, same as the
``MALLOC_*`` variables the image sets), and after a request that handled at least
``threshold`` bytes :class:`MemoryReleaser` calls ``malloc_trim(0)`` in a worker thread (at
most once per ``interval`` seconds), which returns the free pages of every arena. On a libc
without these functions (musl, macOS) all of this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import threading
import time
from functools import cache
from typing import Any

import anyio.to_thread

logger = logging.getLogger("fraud.serving")

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# the same settings as environment variables, for the image and `bentoml serve`
ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": "1048576",
    "MALLOC_TRIM_THRESHOLD_": "4194304",
}


@cache
def _libc() -> Any | None:
    """glibc, when this process runs on it; None otherwise."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    return libc


def tune_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds and cap its arenas (see the module docstring).

    Big blocks (>= 1 MB) then always come from ``mmap`` and go back on ``free``. Returns False
    when the C library is not glibc.
    """
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt(M_MMAP_THRESHOLD, int(ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]))
    libc.mallopt(M_TRIM_THRESHOLD, int(ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]))
    libc.mallopt(M_ARENA_MAX, int(ALLOCATOR_ENV["MALLOC_ARENA_MAX"]))
    return True


def trim() -> bool:
    """``malloc_trim(0)``: give the free pages of every arena back; True if any were."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def collect_and_trim() -> bool:
    """A full garbage collection (cycles still holding request buffers, such as exceptions
    with their frames), then :func:`trim`."""
    gc.collect()
    return trim()


class MemoryReleaser:
    """Trims the heap after large requests, off the event loop and at most once per interval."""

    def __init__(
        self, threshold: int = 1 << 20, interval: float = 1.0, settle_s: float = 5.0
    ) -> None:
        self.threshold = threshold
        self.interval = interval
        self.settle_s = settle_s
        self.trims = 0
        self._last = 0.0
        self._running = threading.Lock()
        self._settle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while they run

    def due(self, handled_bytes: int) -> bool:
        """True when a request that handled ``handled_bytes`` should be followed by a trim."""
        return (
            handled_bytes >= self.threshold
            and time.monotonic() - self._last >= self.interval
            and not self._running.locked()
            and _libc() is not None
        )

    async def after(self, handled_bytes: int) -> None:
        """Trim in a worker thread when :meth:`due` (call it after the answer is sent), and
        once more, with a garbage collection, ``settle_s`` after the last large request."""
        if handled_bytes < self.threshold or _libc() is None:
            return
        loop = asyncio.get_running_loop()
        if self._settle is not None:
            self._settle.cancel()
        self._settle = loop.call_later(self.settle_s, self._start_settle, loop)
        if self.due(handled_bytes):
            await self._run(trim)

    def _start_settle(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self._run(collect_and_trim))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Any) -> None:
        if self._running.locked():
            return
        with self._running:
            self._last = time.monotonic()
            await anyio.to_thread.run_sync(work)
            self.trims += 1


class CollectorPause:
    """Keeps the garbage collector off while large batches are in flight (event loop only).

    A 10,000-record batch holds tens of thousands of container objects (parsed records,
    validated models) while it is checked and scored. Every collection of the young
    generation during that time walked them, each walk one call that held the interpreter lock
    for 10-37 ms (measured with ``gc.callbacks`` beside back-to-back batches), and single rows
    waited. Those objects die by reference count once the answer is built, so with the
    collector off meanwhile they are never walked at all. The pause is re-entrant (a counter:
    the collector is on again when the last batch is done) and bounded: while batches follow
    each other without a gap, the young generations are collected once every ``max_pause_s``.
    """

    def __init__(self, max_pause_s: float = 5.0) -> None:
        self.max_pause_s = max_pause_s
        self.active = 0
        self.collections = 0  # forced by a pause longer than max_pause_s
        self._paused = False
        self._since = 0.0

    def __enter__(self) -> CollectorPause:
        if self.active == 0 and gc.isenabled():
            gc.disable()
            self._paused, self._since = True, time.monotonic()
        elif self._paused and time.monotonic() - self._since > self.max_pause_s:
            gc.collect(1)
            self.collections += 1
            self._since = time.monotonic()
        self.active += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.active -= 1
        if self.active == 0 and self._paused:
            self._paused = False
            gc.enable()
