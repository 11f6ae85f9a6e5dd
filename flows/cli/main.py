"""``fraud``: the one command for people operating the pipeline.

Each subcommand is a module of ``flows.cli`` that declares its options on a parser
(``add_arguments``-style function) and runs them (``run``-style function); options several
commands take are declared once, in :mod:`flows.cli.options`. This is the only command line:
``python -m flows.cli ARGS`` is ``fraud ARGS`` (``flows/cli/__main__.py``). Only the module of
the subcommand being run is imported, and only when it runs, so ``fraud --help`` and argument
errors do not pay for MLflow, Prefect or pandas.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Runner = Callable[[argparse.Namespace], int]

PROG = "fraud"
EPILOG = (
    "Run `fraud COMMAND --help` for a command's options. The stack's environment "
    '(PREFECT_API_URL, FRAUD_HOME, ...) comes from `eval "$(fraud stack env)"`.'
)


@dataclass(frozen=True)
class Command:
    """A subcommand: where its parser options and its runner live (imported on use)."""

    name: str
    help: str
    module: str
    configure: str
    run: str

    def load(self, attribute: str) -> Callable:
        """Import the command's module and return one of its functions."""
        return getattr(importlib.import_module(self.module), attribute)


COMMANDS: tuple[Command, ...] = (
    Command(
        "rollback",
        "move the champion alias back (or forward) to a version that passed its gates",
        "flows.cli.ops",
        "add_rollback_arguments",
        "run_rollback",
    ),
    Command(
        "history",
        "print every move of the champion alias (releases and rollbacks), oldest first",
        "flows.cli.ops",
        "add_history_arguments",
        "run_history",
    ),
    Command(
        "fleet",
        "the serving fleet: champion replicas behind HAProxy (up, down, status, restore, roll)",
        "flows.cli.fleet",
        "add_arguments",
        "run",
    ),
    Command(
        "summary",
        "where things are: Prefect UI, MLflow run, latest version and champion",
        "flows.cli.summary",
        "add_arguments",
        "run",
    ),
    Command(
        "served",
        "which version answers at a serving URL; --wait until it is the champion after a release",
        "flows.cli.served",
        "add_arguments",
        "run",
    ),
    Command(
        "generate-data",
        "write synthetic card transactions (Parquet or CSV), optionally drifted or broken",
        "flows.cli.generate_data",
        "add_arguments",
        "run",
    ),
    Command(
        "traffic",
        "send generated (optionally drifted) transactions to a running bento",
        "flows.cli.traffic",
        "add_arguments",
        "run",
    ),
    Command(
        "automations",
        "create or update the crashed-run automations on the Prefect server",
        "flows.cli.automations",
        "add_arguments",
        "run",
    ),
    Command(
        "work-pools",
        "make sure the named work pools exist on the Prefect server (process or docker)",
        "flows.cli.work_pools",
        "add_arguments",
        "run",
    ),
    Command(
        "k8s",
        "render the Kubernetes manifests with the current image tags, or check them offline",
        "flows.cli.k8s",
        "add_arguments",
        "run",
    ),
    Command(
        "stack",
        "start, stop and inspect the local servers (embedded default or --profile production)",
        "flows.cli.stack",
        "add_arguments",
        "run",
    ),
    Command(
        "api-keys",
        "rotate the bento's API keys (rotate, retire, status) in FRAUD_API_KEYS_FILE",
        "flows.cli.api_keys",
        "add_arguments",
        "run",
    ),
    Command(
        "prometheus",
        "Prometheus scraping the serving fleet: up, down, status, reload, check, register",
        "flows.cli.prometheus",
        "add_arguments",
        "run",
    ),
)


def _requested(argv: Sequence[str], names: set[str]) -> str | None:
    """The subcommand named on the command line: the first argument that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in names else None
    return None


def build_parser(
    argv: Sequence[str] = (), commands: Sequence[Command] = COMMANDS
) -> argparse.ArgumentParser:
    """The ``fraud`` parser; only the subcommand named in ``argv`` gets its full options."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate the fraud-detection pipeline: the local stack and Prometheus, "
        "rollback, history, serving fleet, summary, data, traffic, automations, work pools, "
        "Kubernetes manifests and API keys.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = _requested(argv, {c.name for c in commands})
    for command in commands:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.name == wanted:
            command.load(command.configure)(child)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    runners: Mapping[str, Runner] | None = None,
    commands: Sequence[Command] = COMMANDS,
) -> int:
    """Parse ``argv`` and run the subcommand; returns its exit code (argparse exits 2 on errors).

    ``runners`` replaces the runner of a command by name (a seam for tests and embedding);
    the others are imported from their module.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv, commands).parse_args(argv)
    command = next(c for c in commands if c.name == args.command)
    runner = (runners or {}).get(command.name) or command.load(command.run)
    return int(runner(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
