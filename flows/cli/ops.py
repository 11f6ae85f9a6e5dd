"""The operator commands for the release: roll the champion back, print the alias history.

Only the command line lives here (``fraud rollback`` and ``fraud history``); the rollback
itself is :func:`flows.promotion.rollback.rollback`. The stage modules are imported when a
command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli.options import add_model_argument, model_name

EXIT_REFUSED = 3
EXIT_FAILED = 1


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``fraud rollback`` on ``parser``."""
    parser.description = (
        "Move `champion` to VERSION (it must have passed its gates and packaging), "
        "re-point the bento store, the champion pointer and the `latest` image to it, roll "
        "the serving fleet when one runs (`fraud fleet`), and record the move in the audit "
        "log. Holds the same Prefect lock as a release, so "
        "PREFECT_API_URL must point at the stack's Prefect server. Exit codes: 0 done, "
        f"{EXIT_REFUSED} refused (nothing changed), {EXIT_FAILED} failed."
    )
    parser.add_argument("--version", required=True, help="registered model version, e.g. 3")
    add_model_argument(parser)
    parser.add_argument("--reason", default="manual rollback", help="why; kept in the audit log")
    parser.add_argument("--actor", default=None, help="who; default: user:<login name>")
    parser.add_argument(
        "--no-image",
        dest="image",
        action="store_false",
        help="do not touch Docker images (bento store and pointer only)",
    )


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``fraud history`` on ``parser``."""
    parser.description = "Print every recorded move of the champion alias, oldest first."
    add_model_argument(parser)


def run_rollback(args: argparse.Namespace) -> int:
    """Roll back as ``args`` say; prints the outcome and returns the exit code."""
    from flows.core.settings import Settings
    from flows.packaging.errors import PackagingError
    from flows.promotion.rollback import RollbackRefused, rollback
    from flows.serving.rollout import RolloutFailed

    model = model_name(args.model)
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
    model = model_name(args.model)
    moves = alias_history(settings, model)
    if not moves:
        print(f"no alias moves recorded for {model} (tracking URI {settings.tracking_uri})")
    for move in moves:
        print(move.line())
    return 0
