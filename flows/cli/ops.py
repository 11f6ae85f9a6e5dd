"""The operator commands for the release: roll the champion back, print the alias history.

Only the command line lives here (``python -m flows.cli.ops --help``, or ``fraud rollback`` and
``fraud history``); the rollback itself is :func:`flows.promotion.rollback.rollback`. The
stage modules are imported when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_REFUSED = 3
EXIT_FAILED = 1
ROLLBACK_HELP = "move the champion alias back to a version that passed its gates"
HISTORY_HELP = "print every recorded alias move, oldest first"


def _default_model() -> str:
    from data_contracts.spec import default_spec

    return default_spec().name


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the rollback options on ``parser`` (shared by ``fraud rollback``)."""
    parser.description = (
        "Move `champion` to VERSION (it must have passed its gates and packaging), "
        "re-point the bento store, the champion pointer and the `latest` image to it, roll "
        "the serving fleet when one runs (`fraud fleet`), and record the move in the audit "
        "log. Holds the same Prefect lock as a release, so "
        "PREFECT_API_URL must point at the stack's Prefect server. Exit codes: 0 done, "
        f"{EXIT_REFUSED} refused (nothing changed), {EXIT_FAILED} failed."
    )
    parser.add_argument("--version", required=True, help="registered model version, e.g. 3")
    parser.add_argument("--model", default=None, help="registered model name (default: the spec's)")
    parser.add_argument("--reason", default="manual rollback", help="why; kept in the audit log")
    parser.add_argument("--actor", default=None, help="who; default: user:<login name>")
    parser.add_argument(
        "--no-image",
        dest="image",
        action="store_false",
        help="do not touch Docker images (bento store and pointer only)",
    )


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the history options on ``parser`` (shared by ``fraud history``)."""
    parser.description = "Print every recorded move of the champion alias, oldest first."
    parser.add_argument("--model", default=None, help="registered model name (default: the spec's)")


def run_rollback(args: argparse.Namespace) -> int:
    """Roll back as ``args`` say; prints the outcome and returns the exit code."""
    from flows.core.settings import Settings
    from flows.packaging.errors import PackagingError
    from flows.promotion.rollback import RollbackRefused, rollback
    from flows.serving.rollout import RolloutFailed

    model = args.model or _default_model()
    try:
        result = rollback(Settings(), model, args.version, args.reason, args.actor, args.image)
    except (RollbackRefused, ValueError) as err:
        print(f"rollback refused: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except (PackagingError, RolloutFailed) as err:
        print(f"rollback failed, nothing moved: {err}", file=sys.stderr)
        return EXIT_FAILED
    for line in result.lines():
        print(line)
    return 0


def run_history(args: argparse.Namespace) -> int:
    """Print the model's alias moves; returns the exit code."""
    from flows.core.settings import Settings
    from flows.promotion.rollback import alias_history

    settings = Settings()
    model = args.model or _default_model()
    moves = alias_history(settings, model)
    if not moves:
        print(f"no alias moves recorded for {model} (tracking URI {settings.tracking_uri})")
    for move in moves:
        print(move.line())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m flows.cli.ops`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.cli.ops",
        description="Operate the fraud model release: roll the champion back, show the history.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_rollback_arguments(sub.add_parser("rollback", help=ROLLBACK_HELP))
    add_history_arguments(sub.add_parser("history", help=HISTORY_HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_history(args) if args.command == "history" else run_rollback(args)


if __name__ == "__main__":
    sys.exit(main())
