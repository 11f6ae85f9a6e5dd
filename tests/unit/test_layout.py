"""The layout stays as the README's map describes it: one folder a stage, entry flows on top,
modules short enough to read (a longer one says why in its docstring)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the only module that may import bentoml._internal (the flows reach the stores through it)
INTERNALS = {"bento/internals.py"}
ENTRY_FLOWS = {"__init__.py", "train_and_release.py", "drift_check.py", "failure_alert.py"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_bentoml_internals_are_reached_from_one_module():
    users = {
        str(path.relative_to(ROOT))
        for folder in ("bento", "flows", "data_contracts")
        for path in (ROOT / folder).rglob("*.py")
        if any(name.startswith("bentoml._internal") for name in _imports(path))
    }
    assert users == INTERNALS


def test_only_entry_flows_sit_at_the_top_of_flows():
    top = {p.name for p in (ROOT / "flows").glob("*.py")}
    assert top == ENTRY_FLOWS
    stages = {p.name for p in (ROOT / "flows").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert stages == {
        "core",
        "training",
        "registry",
        "packaging",
        "promotion",
        "serving",
        "monitoring",
        "alerting",
        "cli",
        "stack",
    }
