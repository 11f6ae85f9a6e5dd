"""Messages and docstrings name commands that exist: every `fraud X` is a ``fraud`` subcommand
(and `fraud X ACTION` one of its actions when X has actions), every `make X` a Makefile target,
every ``scripts/...`` a file. A message that sends the operator to a missing command is a dead
end.

Mentions are read from the string literals (docstrings, messages, f-string parts) of the code.
`fraud X` counts when quoted (a backtick or ``$(`` before it; unquoted, "fraud rate" is the
domain speaking); `make X` also counts unquoted, except before the English words of
``MAKE_PROSE``.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("flows", "bento", "data_contracts")

QUOTED = re.compile(r"(?:`|\$\()(fraud|make) ([a-z][a-z0-9_-]*)(?: ([a-z][a-z0-9_-]*))?")
BARE_MAKE = re.compile(r"(?<![`\w-])(?<!\$\()make ([a-z][a-z0-9_-]*)")
MAKE_PROSE = {"a", "an", "it", "its", "one", "sure", "the", "them", "this", "that", "up"}
SCRIPT = re.compile(r"\bscripts/([\w./-]*\w)")
# `target:` at the start of a line; digits included (`k8s-render`)
MAKE_TARGET = re.compile(r"^([a-zA-Z0-9_-]+):", re.MULTILINE)


def mentions(text: str) -> Iterator[tuple[str, ...]]:
    """Every command ``text`` names: ("fraud", "fleet", "up"), ("fraud", "summary", ""),
    ("make", "run"), ("scripts", "docker-engine.sh")."""
    for match in QUOTED.finditer(text):
        kind, word, action = match.groups()
        yield (kind, word, action or "") if kind == "fraud" else (kind, word)
    for match in BARE_MAKE.finditer(text):
        if match.group(1) not in MAKE_PROSE:
            yield "make", match.group(1)
    for match in SCRIPT.finditer(text):
        yield "scripts", match.group(1)


def string_literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant in the module at ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


@functools.cache
def make_targets() -> frozenset[str]:
    return frozenset(MAKE_TARGET.findall((ROOT / "Makefile").read_text()))


@functools.cache
def fraud_actions(name: str) -> frozenset[str] | None:
    """The actions of ``fraud NAME`` (its sub-subcommands); None when it takes none."""
    command = next(c for c in COMMANDS if c.name == name)
    parser = argparse.ArgumentParser()
    command.load(command.configure)(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return frozenset(action.choices)
    return None


def missing(kind: str, name: str, action: str = "") -> str | None:
    """Why the mention names nothing, or None when it exists."""
    if kind == "make":
        return None if name in make_targets() else "no such Makefile target"
    if kind == "scripts":
        return None if (ROOT / "scripts" / name).exists() else "no such file in scripts/"
    if name not in {c.name for c in COMMANDS}:
        return "no such fraud subcommand"
    actions = fraud_actions(name)
    if action and actions is not None and action not in actions:
        return f"`fraud {name}` has no action {action!r} (it has {sorted(actions)})"
    return None


def test_messages_name_commands_that_exist():
    wrong = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, text in string_literals(path):
                for mention in mentions(text):
                    if reason := missing(*mention):
                        named = " ".join(filter(None, mention))
                        wrong.append(f"{path.relative_to(ROOT)}:{line}: `{named}`: {reason}")
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_the_mentions_of_the_code():
    """Not vacuous: the commands the code names are found, and so are the Makefile targets."""
    found = {
        mention
        for folder in SCANNED
        for path in (ROOT / folder).rglob("*.py")
        for _, text in string_literals(path)
        for mention in mentions(text)
    }
    assert {("fraud", "fleet", "up"), ("make", "fleet-up"), ("make", "history")} <= found
    assert {"run", "data", "fleet-up", "history", "k8s-render"} <= make_targets()
    assert {"up", "down", "status", "restore", "roll"} == fraud_actions("fleet")
    assert fraud_actions("summary") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run `scripts/fleet.sh install` (as root)", "no such file in scripts/"),
        ("see `make histories`", "no such Makefile target"),
        ("start the UI with make mlfow-ui", "no such Makefile target"),
        ("release one first (make runn)", "no such Makefile target"),
        ("`fraud fleets up` starts one", "no such fraud subcommand"),
        ("`fraud fleet start` starts one", "`fraud fleet` has no action 'start'"),
        ('eval "$(fraud stacks env)"', "no such fraud subcommand"),
    ],
)
def test_a_wrong_command_is_reported(text, expected):
    reasons = [missing(*mention) or "" for mention in mentions(text)]
    assert any(reason.startswith(expected) for reason in reasons), reasons


@pytest.mark.parametrize(
    "text",
    [
        "make sure the named work pools exist",
        "Tags that make a registered version self-describing",
        "share of fraud (0.02); the fraud rate of the fraud team",
        "[fraud alert] a run failed",
        "`fraud fleet status` shows it, `make fleet-up` starts one, (make run) releases",
        "`fraud summary --model-name x`, ``fraud history``, (as root: scripts/docker-engine.sh)",
    ],
)
def test_prose_and_existing_commands_pass(text):
    assert [m for m in mentions(text) if missing(*m)] == []
