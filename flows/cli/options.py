"""Options that several ``fraud`` commands accept, declared once with one help text each.

A command that takes one of these calls the function here instead of declaring the option
itself, so the name, the default and the help stay the same across commands. Only
``argparse`` is imported: ``fraud --help`` and every ``fraud X --help`` stay fast.
"""

from __future__ import annotations

import argparse

DEFAULT_BENTO_URL = "http://127.0.0.1:3000"
MODEL_HELP = "registered model name (default: the spec's name)"


def add_drift_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The drift knobs shared by ``fraud generate-data`` and ``fraud traffic``, in their own
    group; the group is returned so a command can add knobs only it has."""
    drift = parser.add_argument_group("drift knobs (for monitoring demos)")
    drift.add_argument(
        "--amount-scale",
        type=float,
        default=1.0,
        help="multiply every amount by this (inflation, FX); 1.0: no drift",
    )
    drift.add_argument(
        "--merchant-shift",
        type=float,
        default=0.0,
        help="share of legitimate transactions moved to gaming/money_transfer (0.0)",
    )
    drift.add_argument(
        "--broken-feed",
        action="store_true",
        help="a broken upstream feed: distances arrive null and velocity counts as zero",
    )
    drift.add_argument(
        "--new-fraud-pattern",
        type=float,
        default=0.0,
        help="share of frauds in a pattern unseen before: inputs barely move, recall drops (0.0)",
    )
    return drift


def add_fleet_up_arguments(parser: argparse.ArgumentParser) -> None:
    """The size, port and version of a fleet to start (``fraud fleet up``, and the commands that
    start one through it); ``args.port`` None means the balancer's default port, 3000."""
    parser.add_argument("--replicas", type=int, default=2, help="number of replicas (default: 2)")
    parser.add_argument("--port", type=int, default=None, help="balancer port (default: 3000)")
    parser.add_argument(
        "--version", default=None, help="model version to serve (default: the champion)"
    )


def add_model_argument(parser: argparse.ArgumentParser, flag: str = "--model") -> None:
    """The registered model a command works on (``args.model``, or ``args.model_name`` for
    ``--model-name``); None means the spec's name, resolved when the command runs."""
    parser.add_argument(flag, default=None, help=MODEL_HELP)


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    """``--url``: the base URL of a running bento or fleet (``args.url``)."""
    parser.add_argument(
        "--url", default=DEFAULT_BENTO_URL, help=f"the bento's base URL ({DEFAULT_BENTO_URL})"
    )


def model_name(name: str | None) -> str:
    """The model a command works on: ``name`` when given, else the shipped spec's name."""
    if name:
        return name
    from data_contracts.spec import default_spec  # parsed only when a command runs

    return default_spec().name
