"""The monitoring story, for a person watching the Prefect UI (after ``make run``).

The bento serves normal traffic -> drift-check: no drift -> drifted traffic and a labelled batch
from the drifted period -> drift-check: drift, an email with the report, one train-and-release
run started -> the new candidate passes every gate or is blocked -> the version answering on the
served port is the champion (it changed when the release promoted).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

from flows.stack.embedded import EmbeddedStack

STEPS = 7


def _title(step: int, text: str) -> None:
    print(f"\n\033[1m== {step}/{STEPS} {text}\033[0m", flush=True)


class StepFailed(RuntimeError):
    """A step of the story failed; its exit code ends the demo."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exit code {code}")
        self.code = code


def _ok(code: int) -> None:
    if code:
        raise StepFailed(code)


def drift_demo(stack: EmbeddedStack) -> int:
    """Run the story against the running stack; the first failing step's exit code ends it."""
    try:
        _story(stack)
    except StepFailed as failed:
        return failed.code
    return 0


def _story(stack: EmbeddedStack) -> None:
    cfg = stack.config
    url = f"http://127.0.0.1:{cfg.serve_port}"
    flush_wait = float(os.environ.get("FRAUD_DEMO_FLUSH_WAIT", "7"))  # the log flushes every 5 s
    release_timeout = os.environ.get("FRAUD_DEMO_RELEASE_TIMEOUT", "1200")
    drifted = ["--amount-scale", "1.8", "--merchant-shift", "0.5"]
    window = ["--param", 'window={"rows": 5000}']
    batch = cfg.home / "labelled" / f"batch-{_stamp()}.parquet"

    _title(1, f"serve the champion with bentoml serve ({url}; it follows the champion)")
    stack.serve()
    _title(2, "normal traffic: 5,000 transactions like the training data")
    _ok(stack.fraud("traffic", "--url", url, "--rows", "5000", "--seed", "201", "--feedback"))
    time.sleep(flush_wait)
    _title(3, "drift-check on the last 5,000 served rows: expect no drift, no retraining")
    _ok(stack.drift(window))
    _title(4, "the world changes: amounts x1.8, half the merchant mix moves to gaming/transfers")
    generate = ["--rows", "100000", "--seed", "202", *drifted, "--start-day", "60", "--quiet"]
    _ok(stack.fraud("generate-data", str(batch), *generate))
    print(f"a labelled batch from the drifted period landed in {batch.parent}/")
    traffic = ["--url", url, "--rows", "5000", "--seed", "203", *drifted, "--feedback"]
    _ok(stack.fraud("traffic", *traffic))
    time.sleep(flush_wait)
    _title(5, "drift-check again: expect drift, an email, one train-and-release run started")
    _ok(stack.drift(window))
    _title(6, "the triggered release runs its gates; the served port follows the champion")
    _ok(stack.fraud("served", "--url", url, "--wait", "--timeout", release_timeout))
    _title(7, "where to look")
    api = cfg.api_url.removesuffix("/api")
    print(f"Prefect UI:  {api}/runs   (drift-check artifact, the triggered train-and-release)")
    print(f"mail:        {cfg.mail_dir / 'new'}/   (or your FRAUD_SMTP_HOST)")
    print(f"reports:     {cfg.home / 'drift_reports'}/")
    print("the champion's history: make history")
    print(f"dashboard:   make monitor-ui, then http://127.0.0.1:{cfg.evidently_port}")
    sys.stdout.flush()


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")
