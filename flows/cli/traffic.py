"""Send generated transactions to a running bento, as live traffic (demos, load, drift tests).

``fraud traffic --url http://127.0.0.1:3000 --rows 5000 [--amount-scale 1.8 ...]``

Every record carries its generated ``transaction_id``, so the bento logs its keyed hash. With
``--feedback`` the sender also plays the chargeback feed: it writes the labels of what it sent
(hashed ids, ``label``, ``labelled_at`` = now + ``--label-delay-hours``) to the feedback folder
the drift check joins (``FRAUD_FEEDBACK_DIR``, default ``<home>/feedback``).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from data_contracts.api_keys import auth_headers
from flows.cli.options import add_drift_arguments, add_url_argument
from flows.core.http import tls_context

if TYPE_CHECKING:  # pandas is imported only when traffic is sent: `fraud --help` stays fast
    import pandas as pd

DESCRIPTION = (
    "Send generated transactions to a running bento, as live traffic (demos, load, drift tests)."
)


def post_batch(url: str, records: list[dict], timeout: float = 60) -> dict:
    """POST one /predict_batch request; the error names the status and the server's reply."""
    request = urllib.request.Request(
        url.rstrip("/") + "/predict_batch",
        json.dumps({"records": records}).encode(),
        {"Content-Type": "application/json", **auth_headers()},  # the configured API key
    )
    try:
        # the URL is the operator's own --url argument: nothing untrusted picks the scheme
        context = tls_context() if url.startswith("https:") else None  # FRAUD_TLS_CA
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:  # nosec B310
            return json.loads(reply.read())
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{url}: HTTP {err.code}: {err.read()[:500]!r}") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``fraud traffic`` on ``parser``."""
    parser.description = DESCRIPTION
    add_url_argument(parser)
    parser.add_argument("--rows", type=int, default=5000, help="transactions to send (5000)")
    parser.add_argument("--batch", type=int, default=1000, help="records per request (1000)")
    parser.add_argument("--seed", type=int, default=101, help="generator seed (101)")
    add_drift_arguments(parser)
    parser.add_argument(
        "--feedback",
        action="store_true",
        help="also write the labels of the sent transactions to the feedback folder",
    )
    parser.add_argument(
        "--label-delay-hours",
        type=float,
        default=0.0,
        help="labels become known this many hours after sending (0: at once)",
    )


def run(args: argparse.Namespace) -> int:
    """Generate ``args.rows`` transactions and score them at ``args.url``; the exit code."""
    # imported here so that `fraud --help` and argument errors stay fast
    from tqdm import tqdm

    from data_contracts.spec import default_spec
    from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
    from flows.packaging.smoke import request_records

    frame = generate(
        GeneratorConfig(
            rows=args.rows,
            seed=args.seed,
            drift=DriftKnobs(
                amount_scale=args.amount_scale,
                merchant_shift=args.merchant_shift,
                broken_feed=args.broken_feed,
                new_fraud_pattern=args.new_fraud_pattern,
                start_day=60,
            ),
        )
    )
    records = request_records(frame, default_spec())
    for record, tx in zip(records, frame["transaction_id"], strict=True):
        record["transaction_id"] = tx
    scored = fraud = 0
    try:
        with tqdm(total=len(records), unit="tx", desc="scoring") as bar:
            for start in range(0, len(records), args.batch):
                reply = post_batch(args.url, records[start : start + args.batch])
                scored += reply["scored"]
                fraud += sum(1 for p in reply["predictions"] if p and p["is_fraud"])
                bar.update(len(records[start : start + args.batch]))
    except (OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"scored {scored:,} transactions at {args.url}; {fraud:,} flagged as fraud")
    if args.feedback:
        path = write_feedback(frame, args.label_delay_hours)
        print(f"labels of the {len(frame):,} transactions: {path}")
    return 0


def write_feedback(frame: pd.DataFrame, delay_hours: float) -> Path:
    """The chargeback feed of a traffic run: hashed ids, labels, when each label is known."""
    from datetime import UTC, datetime, timedelta

    import pandas as pd

    from data_contracts.id_key import hash_id
    from flows.core.settings import Settings
    from flows.monitoring.feedback import LABEL, LABELLED_AT

    settings = Settings()
    key = settings.id_key()
    known = datetime.now(UTC) + timedelta(hours=delay_hours)
    labels = pd.DataFrame(
        {
            "transaction_id_hash": [hash_id(str(t), key) for t in frame["transaction_id"]],
            LABEL: frame["is_fraud"].astype("int8"),
            LABELLED_AT: pd.Timestamp(known),
        }
    )
    path = settings.feedback_root / f"feedback-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")  # hidden: the drift check skips it
    labels.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path
