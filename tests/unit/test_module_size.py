"""Modules short enough to read: over 400 lines, a module says why in its docstring."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MAX_LINES = 400
# a module may stay longer only when its docstring says why, in a sentence holding this phrase
LONG_REASON = "longer than 400 lines"


def test_modules_fit_in_400_lines_or_say_why():
    too_long = []
    for folder in ("flows", "bento", "data_contracts", "benchmarks", "scripts", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            lines = path.read_text().count("\n")
            if lines <= MAX_LINES:
                continue
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if LONG_REASON not in doc.lower():
                too_long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not too_long, f"over {MAX_LINES} lines without a reason in the docstring: {too_long}"
