"""The bento packs serving code only, pinned from the lock, without the training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml

from bento.store import packed_model_tags

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"sklearn", "mlflow", "prefect", "pickle", "skl2onnx", "pandas", "pandera", "flows"}


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def contract_files() -> set[str]:
    """The data_contracts modules the serving code imports, directly or through each other."""
    todo, found = list((ROOT / "bento").glob("*.py")), {"data_contracts/__init__.py"}
    while todo:
        for module in _imported_modules(todo.pop()):
            if module.startswith("data_contracts."):
                path = module.replace(".", "/") + ".py"
                if path not in found:
                    found.add(path)
                    todo.append(ROOT / path)
    return found


def test_bentofile_includes_serving_code_only():
    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert config["service"] == "bento.service:FraudDetector"
    included = set(config["include"])
    bento_files = {str(p.relative_to(ROOT)) for p in (ROOT / "bento").glob("*.py")}
    assert included == bento_files | contract_files()
    assert {"data_contracts/spec.py", "data_contracts/inference_log.py"} <= included
    assert config["python"]["requirements_txt"] == "bento/requirements.txt"


def test_requirements_are_pinned_from_the_lock():
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "serving_requirements.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    lines = [
        line
        for line in (ROOT / "bento" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    names = {line.split("==")[0] for line in lines}
    assert all("==" in line for line in lines)
    assert {"bentoml", "onnxruntime", "numpy", "pydantic", "pyarrow", "pyyaml"} <= names
    assert not names & {"scikit-learn", "mlflow", "prefect", "pandas", "skl2onnx"}


def test_serving_code_imports_no_training_stack():
    for path in [*(ROOT / "bento").glob("*.py"), *(ROOT / p for p in contract_files())]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, f"{path.name} imports {roots & FORBIDDEN}"


def test_packed_model_tags_from_bento_yaml(tmp_path):
    (tmp_path / "bento.yaml").write_text(
        yaml.safe_dump(
            {
                "models": [],
                "services": [
                    {"name": "fraud-detector", "models": [{"tag": "fraud-detector:v4"}]},
                    {"name": "other", "models": [{"tag": "other-model:v1"}]},
                ],
            }
        )
    )
    assert packed_model_tags(tmp_path, "fraud-detector") == ["fraud-detector:v4"]
    assert packed_model_tags(tmp_path) == ["fraud-detector:v4", "other-model:v1"]


def test_a_bento_of_another_spec_serves_its_model(tmp_path):
    from bento.store import resolve_model_tag

    (tmp_path / "bento.yaml").write_text(
        yaml.safe_dump({"services": [{"name": "x", "models": [{"tag": "credit-risk:v1"}]}]})
    )
    assert resolve_model_tag({}, packed_tags=packed_model_tags(tmp_path)) == "credit-risk:v1"
