"""Send generated transactions to a running bento, as live traffic (demos, load, drift tests).

python -m flows.cli.traffic --url http://127.0.0.1:3000 --rows 5000 [--amount-scale 1.8 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

DESCRIPTION = (
    "Send generated transactions to a running bento, as live traffic (demos, load, drift tests)."
)


def post_batch(url: str, records: list[dict], timeout: float = 60) -> dict:
    """POST one /predict_batch request; the error names the status and the server's reply."""
    request = urllib.request.Request(
        url.rstrip("/") + "/predict_batch",
        json.dumps({"records": records}).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        # the URL is the operator's own --url argument: nothing untrusted picks the scheme
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # nosec B310
            return json.loads(reply.read())
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{url}: HTTP {err.code}: {err.read()[:500]!r}") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the traffic sender's options on ``parser`` (shared by ``fraud traffic``)."""
    parser.description = DESCRIPTION
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the bento's base URL")
    parser.add_argument("--rows", type=int, default=5000, help="transactions to send (5000)")
    parser.add_argument("--batch", type=int, default=1000, help="records per request (1000)")
    parser.add_argument("--seed", type=int, default=101, help="generator seed (101)")
    parser.add_argument("--amount-scale", type=float, default=1.0, help="drift: scale amounts")
    parser.add_argument("--merchant-shift", type=float, default=0.0, help="drift: merchant mix")
    parser.add_argument("--broken-feed", action="store_true", help="drift: a broken feed")


def run(args: argparse.Namespace) -> int:
    """Generate ``args.rows`` transactions and score them at ``args.url``; the exit code."""
    # imported here so that `fraud --help` and argument errors stay fast
    from tqdm import tqdm

    from data_contracts.spec import default_spec
    from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
    from flows.delivery.smoke import request_records

    frame = generate(
        GeneratorConfig(
            rows=args.rows,
            seed=args.seed,
            drift=DriftKnobs(
                amount_scale=args.amount_scale,
                merchant_shift=args.merchant_shift,
                broken_feed=args.broken_feed,
                start_day=60,
            ),
        )
    )
    records = request_records(frame, default_spec())
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
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m flows.cli.traffic``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m flows.cli.traffic")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
