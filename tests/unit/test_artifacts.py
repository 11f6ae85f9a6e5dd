"""The artifact contract agrees with what each side actually uses."""

from __future__ import annotations

import pytest

from bento.request_model import BatchItem, Prediction
from data_contracts import artifacts
from data_contracts.spec import default_spec


def test_default_served_model_is_the_shipped_specs():
    assert default_spec().name == artifacts.DEFAULT_MODEL_NAME


def test_response_fields_are_the_bentos_answer_fields():
    assert set(Prediction.model_fields) == set(artifacts.PREDICTION_FIELDS)
    assert set(BatchItem.model_fields) == {artifacts.SCORE_FIELD, artifacts.DECISION_FIELD}


def test_tags_round_trip():
    tag = artifacts.store_tag("credit-risk", "12")
    assert tag == "credit-risk:v12" == artifacts.image_tag("credit-risk", 12)
    assert artifacts.parse_tag(tag) == ("credit-risk", "12")
    with pytest.raises(ValueError):
        artifacts.parse_tag("credit-risk:latest")


def test_the_contract_imports_no_third_party_package():
    """The bento image imports it: standard library only."""
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse(Path(artifacts.__file__).read_text())
    roots = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots


def test_a_pointer_that_cannot_be_used_says_why(tmp_path):
    from data_contracts.artifacts import PointerError, pointer_path, read_champion_pointer

    path = pointer_path(tmp_path, "fraud-detector")
    path.parent.mkdir(parents=True)
    assert read_champion_pointer(tmp_path, "fraud-detector") is None
    path.write_bytes(b"")
    assert read_champion_pointer(tmp_path, "fraud-detector") is None  # the flows: none
    for content, reason in (
        (b"", "undecodable"),
        (b"\xff", "undecodable"),
        (b"x" * 2000, "oversized"),
    ):
        path.write_bytes(content)
        with pytest.raises(PointerError) as refused:
            read_champion_pointer(tmp_path, "fraud-detector", strict=True)
        assert refused.value.reason == reason
    path.unlink()
    path.mkdir()
    with pytest.raises(PointerError, match="is not a regular file"):
        read_champion_pointer(tmp_path, "fraud-detector")
