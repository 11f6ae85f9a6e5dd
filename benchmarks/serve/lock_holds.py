"""The longest single calls that hold the interpreter lock while a 10,000-record JSON batch is
checked: each call as the batch path makes it now, beside the call it replaced, in one run.

    uv run python -m benchmarks.serve.lock_holds

Each figure is the calling thread's CPU time (``time.thread_time``, best of 7), so the machine's
load does not inflate it the way it inflates wall-clock latencies: while one of these calls
runs, the event loop cannot answer a single row. The collector is off during each timed call
(its own pause is measured on its own line).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from pydantic_core import from_json

from bento.json_slices import _CUT, _HEAD, SLICE_BYTES, _parse_piece
from bento.record_checker import VALIDATE_SLICE, RecordChecker
from bento.request_model import build_request_model
from data_contracts.schemas import validate_frame
from data_contracts.spec import default_spec
from data_contracts.synthetic import GeneratorConfig, generate
from flows.packaging.smoke import request_records

RECORDS = 10_000
BEFORE_SLICE = 1000  # records per validation call before this change
GC_THRESHOLDS = (20_000, 20, 100)  # bento.service's (importing it loads the service)


def cpu_ms(work: Callable[[], Any], repeat: int = 7) -> float:
    """The best CPU time of ``work`` in this thread, in ms, with the collector off."""
    best = float("inf")
    for _ in range(repeat):
        gc.disable()
        start = time.thread_time()
        work()
        best = min(best, time.thread_time() - start)
        gc.enable()
    return best * 1000


def main() -> int:
    spec = default_spec()
    frame = validate_frame(generate(GeneratorConfig(rows=RECORDS + 2000, seed=99)), spec).valid
    body = json.dumps({"records": request_records(frame.head(RECORDS), spec)}).encode()
    checker = RecordChecker(build_request_model(spec), spec)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    records = from_json(body)["records"]
    validate = checker.batch_adapter.validate_python
    models = [
        m
        for i in range(0, RECORDS, VALIDATE_SLICE)
        for m in validate(records[i : i + VALIDATE_SLICE])
    ]
    row = itemgetter(*checker.columns)
    head = _HEAD.match(body)
    assert head is not None
    cut = _CUT.search(body, head.end() + SLICE_BYTES)
    assert cut is not None

    def young_collection() -> None:
        gc.disable()
        alive = validate(from_json(body)["records"][: RECORDS // 2])  # half a batch in flight
        start = time.thread_time()
        gc.collect(0)
        figures["collection"] = min(figures.get("collection", 1e9), time.thread_time() - start)
        del alive
        gc.enable()

    figures: dict[str, float] = {}
    for _ in range(5):
        young_collection()

    def whole_zip() -> Any:
        return list(zip(*map(row, (m.__dict__ for m in models)), strict=True))

    def slice_zip() -> Any:
        return list(zip(*[row(m.__dict__) for m in models[:VALIDATE_SLICE]], strict=True))

    piece_end = cut.start() + 1
    rows = [
        (
            "parse",
            cpu_ms(lambda: from_json(body)),
            cpu_ms(lambda: _parse_piece(body, head.end(), piece_end)),
            f"whole body ({len(body) / 1e6:.1f} MB) / one {SLICE_BYTES // 1024} KB slice",
        ),
        (
            "validate",
            cpu_ms(lambda: validate(records[:BEFORE_SLICE])),
            cpu_ms(lambda: validate(records[:VALIDATE_SLICE])),
            f"{BEFORE_SLICE:,} / {VALIDATE_SLICE:,} records per call",
        ),
        (
            "transpose",
            cpu_ms(whole_zip),
            cpu_ms(slice_zip),
            f"one zip of {RECORDS:,} / {VALIDATE_SLICE:,} rows",
        ),
        (
            "young collection",
            figures["collection"] * 1000,
            0.0,
            f"{RECORDS // 2:,} records and their models alive / none while a batch is in flight",
        ),
    ]
    print(f"{RECORDS:,}-record batch: the longest calls holding the lock, CPU ms")
    print(f"{'call':<18}{'before':>8}{'now':>8}  what")
    for name, before, now, what in rows:
        print(f"{name:<18}{before:>8.2f}{now:>8.2f}  {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
