"""Which model version answers at a serving URL, and waiting until it is the champion.

``fraud served --url http://127.0.0.1:3000`` asks the bento (one reference record) and the
registry; ``--wait`` keeps asking until the version answering is the champion after a release
that is still running has ended (the end of ``make demo-drift``): it says the version changed,
or that the release ended without moving the champion, or that serving did not follow in time.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from flows.cli.options import add_model_argument, add_url_argument, model_name

if TYPE_CHECKING:
    from flows.core.settings import Settings

DESCRIPTION = __doc__.splitlines()[0]
RELEASE_FLOW = "train-and-release"


def served_version(url: str, record: dict) -> str:
    """The version the bento at ``url`` serves: its ``GET /model`` page, else the
    ``model_version`` it answers one record with (a bento without the page)."""
    import json
    import urllib.error
    import urllib.request

    from data_contracts.artifacts import VERSION_FIELD
    from flows.cli.traffic import post_batch
    from flows.core.http import tls_context

    context = tls_context() if url.startswith("https:") else None  # FRAUD_TLS_CA
    try:
        # the URL is the operator's own --url argument: nothing untrusted picks the scheme
        page = url.rstrip("/") + "/model"
        with urllib.request.urlopen(page, timeout=10, context=context) as reply:  # nosec B310
            return str(json.loads(reply.read())["version"])
    except (urllib.error.HTTPError, KeyError, ValueError):
        return str(post_batch(url, [record], timeout=10)[VERSION_FIELD])


def champion_version(settings: Settings, model_name: str) -> str | None:
    """The registry's champion version of ``model_name`` (None without one)."""
    from flows.registry import registry

    client = registry.configure(settings)
    current = registry.current_champion(client, model_name, settings.champion_alias)
    return str(current.version) if current else None


def releases_in_progress() -> int:
    """How many train-and-release runs are scheduled to start now, pending or running."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    active = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
    soon = datetime.now(UTC) + timedelta(minutes=1)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RELEASE_FLOW])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active))
            ),
        )
    return sum(
        1 for run in runs if run.expected_start_time is None or run.expected_start_time <= soon
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``fraud served`` on ``parser``."""
    parser.description = DESCRIPTION
    add_url_argument(parser)
    add_model_argument(parser, "--model-name")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for running releases to end and for the served version to be the champion",
    )
    parser.add_argument(
        "--timeout", type=float, default=1200, help="seconds to wait at most (1200)"
    )
    parser.add_argument("--interval", type=float, default=5, help="seconds between polls (5)")


def run(args: argparse.Namespace) -> int:
    """Print the served and champion versions (waiting if asked); returns the exit code."""
    from data_contracts.spec import default_spec
    from data_contracts.synthetic import GeneratorConfig, generate
    from flows.core.settings import Settings
    from flows.packaging.smoke import request_records

    spec = default_spec()
    name, settings = model_name(args.model_name), Settings()
    record = request_records(generate(GeneratorConfig(rows=1, seed=7)), spec)[0]
    try:
        first = served_version(args.url, record)
    except (OSError, RuntimeError) as err:
        print(f"error: nothing answers at {args.url}: {err}", file=sys.stderr)
        return 1
    champion = champion_version(settings, name)
    print(f"{args.url} answers with {name} v{first}; champion is v{champion or '-'}")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    served, running = first, releases_in_progress()
    while time.monotonic() < deadline:
        if running == 0 and served == champion:
            break
        state = f"{running} release(s) running" if running else "waiting for serving to follow"
        print(f"  v{served} answers, champion v{champion or '-'}: {state}", flush=True)
        time.sleep(args.interval)
        running, champion = releases_in_progress(), champion_version(settings, name)
        try:
            served = served_version(args.url, record)
        except (OSError, RuntimeError) as err:  # a swap never fails requests: say so loudly
            print(f"  error from {args.url}: {err}", file=sys.stderr)
    if served != champion or running:
        print(
            f"error: after {args.timeout:.0f} s v{served} still answers at {args.url} while "
            f"the champion is v{champion or '-'} ({running} release(s) running)",
            file=sys.stderr,
        )
        return 1
    if served == first:
        print(f"the release ended without moving the champion: v{served} keeps answering")
    else:
        print(f"the version answering at {args.url} changed: v{first} -> v{served} (champion)")
    return 0
