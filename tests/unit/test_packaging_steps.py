"""Packaging functions that need no Docker engine: names, pointer, store, smoke logic."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_contracts import artifacts
from flows.core import http
from flows.core.settings import Settings
from flows.packaging import build, container, errors, publish, smoke, store
from flows.packaging import package as packaging
from flows.training.onnx_export import export_onnx, onnx_predict_proba, onnx_session, sha256

MODEL = "fraud-detector"
LABELS = {
    "model_name": "fraud-detector",
    "model_version": "3",
    "run_id": "r1",
    "spec_hash": "abc",
    "data_digest": "d1",
    "git_commit": "c1",
    "calibration": "none",
}


@pytest.fixture(scope="module")
def model_bytes(trained, spec) -> bytes:
    return export_onnx(trained.pipeline, spec)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


# --------------------------------------------------------------------------- names


def test_tags_carry_the_mlflow_version():
    assert artifacts.version_label("3") == "v3"
    assert artifacts.version_label(12) == "v12"
    assert artifacts.store_tag("fraud-detector", "3") == "fraud-detector:v3"
    assert artifacts.image_tag("fraud-detector", 3) == "fraud-detector:v3"
    assert artifacts.latest_image_tag("fraud-detector") == "fraud-detector:latest"


@pytest.mark.parametrize("bad", ["v3", "", "3.1", "-1", "latest"])
def test_version_must_be_an_mlflow_version_number(bad):
    with pytest.raises(ValueError, match="positive integers"):
        artifacts.version_label(bad)


@pytest.mark.parametrize("bad", ["Fraud", "fraud detector", "fraud--x", "-fraud", "a/b", ""])
def test_model_name_must_be_a_valid_image_name(bad):
    with pytest.raises(ValueError, match="lowercase"):
        artifacts.store_tag(bad, 1)


def test_store_labels_come_from_the_version_tags():
    tags = {
        "run_id": "r1",
        "feature_spec_hash": "abc",
        "data_digest": "d1",
        "git_commit": "c1",
        "holdout_f1": "0.9",
    }
    assert store.store_labels("fraud-detector", "3", tags) == LABELS
    assert store.store_labels("fraud-detector", "3", {})["run_id"] == "unknown"
    # how the scores were calibrated travels to the bento (its model page says it)
    calibrated = tags | {"calibration": "isotonic (centred, on log-odds), cross-fitted on 9 rows"}
    labels = store.store_labels("fraud-detector", "3", calibrated)
    assert labels["calibration"].startswith("isotonic")


def test_release_log_dir_is_per_version(settings):
    assert build.release_log_dir(settings, "fraud-detector", "4") == (
        settings.home / "packaging" / "fraud-detector-v4"
    )


# --------------------------------------------------------------------------- pointer file


def test_pointer_write_is_atomic_and_readable(settings):
    home = settings.bentoml_home
    assert artifacts.read_champion_pointer(home, MODEL) is None
    path = artifacts.write_champion_pointer(home, "fraud-detector:v3")
    assert path == settings.home / "bentoml" / "champions" / "fraud-detector"
    assert artifacts.read_champion_pointer(home, MODEL) == "fraud-detector:v3"
    artifacts.write_champion_pointer(home, "fraud-detector:v4")
    assert artifacts.read_champion_pointer(home, MODEL) == "fraud-detector:v4"
    assert sorted(p.name for p in path.parent.iterdir()) == ["fraud-detector"]


def test_pointer_is_where_the_service_reads_it(settings):
    from bento.store import resolve_model_tag

    artifacts.write_champion_pointer(settings.bentoml_home, "fraud-detector:v7")
    assert resolve_model_tag({"FRAUD_HOME": str(settings.home)}) == "fraud-detector:v7"


def test_failed_write_keeps_the_old_pointer(settings, monkeypatch):
    home = settings.bentoml_home
    path = artifacts.write_champion_pointer(home, "fraud-detector:v3")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        artifacts.write_champion_pointer(home, "fraud-detector:v4")
    monkeypatch.undo()
    assert artifacts.read_champion_pointer(home, MODEL) == "fraud-detector:v3"
    assert sorted(p.name for p in path.parent.iterdir()) == ["fraud-detector"]


@pytest.mark.parametrize("bad", ["fraud-detector", "fraud-detector:3", "fraud-detector:latest"])
def test_pointer_refuses_non_version_tags(settings, bad):
    with pytest.raises(ValueError):
        artifacts.write_champion_pointer(settings.bentoml_home, bad)


# --------------------------------------------------------------------------- model store


def test_import_puts_model_spec_labels_and_metadata_in_the_store(settings, model_bytes, spec):
    stored = store.import_model(
        settings.bentoml_home,
        "fraud-detector",
        "3",
        model_bytes,
        spec.model_dump(mode="json"),
        threshold=0.42,
        spec_hash=spec.spec_hash(),
        labels=LABELS,
    )
    assert stored.tag == "fraud-detector:v3"
    assert stored.path == settings.bentoml_home / "models" / "fraud-detector" / "v3"
    assert (stored.path / "model.onnx").read_bytes() == model_bytes
    assert json.loads((stored.path / "feature_spec.json").read_text())["name"] == spec.name
    assert stored.sha256 == sha256(model_bytes)
    assert (stored.threshold, stored.model_version, stored.labels) == (0.42, "3", LABELS)
    assert stored.spec_hash == spec.spec_hash()


def test_reimport_of_the_same_version_is_a_no_op(settings, model_bytes, spec):
    args = ("fraud-detector", "3", model_bytes, spec.model_dump(mode="json"))
    kwargs = {"threshold": 0.42, "spec_hash": spec.spec_hash(), "labels": LABELS}
    first = store.import_model(settings.bentoml_home, *args, **kwargs)
    mtime = (first.path / "model.yaml").stat().st_mtime_ns
    again = store.import_model(settings.bentoml_home, *args, **kwargs)
    assert again.tag == first.tag
    assert (again.path / "model.yaml").stat().st_mtime_ns == mtime


def test_reimport_with_other_bytes_replaces_the_version(settings, model_bytes, spec):
    kwargs = {"spec_hash": spec.spec_hash(), "labels": LABELS}
    store.import_model(
        settings.bentoml_home, "fraud-detector", "3", b"old", {}, threshold=0.1, **kwargs
    )
    stored = store.import_model(
        settings.bentoml_home,
        "fraud-detector",
        "3",
        model_bytes,
        spec.model_dump(mode="json"),
        threshold=0.42,
        **kwargs,
    )
    assert (stored.path / "model.onnx").read_bytes() == model_bytes
    assert stored.threshold == 0.42
    versions = settings.bentoml_home / "models" / "fraud-detector"
    assert {p.name for p in versions.iterdir() if p.is_dir()} == {"v3"}


def test_discard_failed_points_latest_back_at_the_champion(settings, model_bytes, spec):
    kwargs = {"threshold": 0.42, "spec_hash": spec.spec_hash(), "labels": LABELS}
    spec_dict = spec.model_dump(mode="json")
    store.import_model(
        settings.bentoml_home, "fraud-detector", "1", model_bytes, spec_dict, **kwargs
    )
    publish.publish_champion(settings, "fraud-detector:v1", image=False)
    store.import_model(
        settings.bentoml_home, "fraud-detector", "2", model_bytes, spec_dict, **kwargs
    )
    models = settings.bentoml_home / "models" / "fraud-detector"

    publish.discard_failed(settings, "fraud-detector:v2")

    assert not (models / "v2").exists()
    assert (models / "latest").read_text() == "v1"
    assert publish.read_champion(settings, MODEL) == "fraud-detector:v1"


def test_discard_never_removes_the_champion(settings, model_bytes, spec):
    spec_dict = spec.model_dump(mode="json")
    kwargs = {"threshold": 0.42, "spec_hash": spec.spec_hash(), "labels": LABELS}
    store.import_model(
        settings.bentoml_home, "fraud-detector", "1", model_bytes, spec_dict, **kwargs
    )
    publish.publish_champion(settings, "fraud-detector:v1", image=False)
    publish.discard_failed(settings, "fraud-detector:v1")
    assert (settings.bentoml_home / "models" / "fraud-detector" / "v1" / "model.onnx").is_file()


def test_bentoml_env_points_the_cli_at_our_store(settings):
    env = build.bentoml_env(settings, "fraud-detector:v3")
    assert env["BENTOML_HOME"] == str(settings.bentoml_home.resolve())
    assert env["FRAUD_MODEL_TAG"] == "fraud-detector:v3"
    assert env["DOCKER_BUILDKIT"] == "0"
    assert env["BENTOML_DO_NOT_TRACK"] == "true"


# --------------------------------------------------------------------------- smoke logic


def test_request_records_are_typed_json_keyed_by_feature(spec, small_data):
    frame = small_data.head(200).copy()
    frame.loc[frame.index[0], "device_type"] = None
    frame.loc[frame.index[0], "avg_amount_30d"] = np.nan
    records = smoke.request_records(frame, spec)
    assert len(records) == 200
    first = records[0]
    assert list(first) == spec.feature_names
    assert first["device_type"] is None and first["avg_amount_30d"] is None
    kinds = {f.name: f.kind.value for f in spec.features}
    for record in records:
        for name, value in record.items():
            if value is None:
                continue
            expected = {"numeric": float, "integer": int, "boolean": bool, "categorical": str}
            assert type(value) is expected[kinds[name]], (name, value)
    json.dumps(records, allow_nan=False)  # strict JSON: no NaN or inf left


def test_smoke_case_is_frozen_and_covers_both_decisions(model_bytes, spec, splits, trained):
    case = smoke.make_smoke_case(model_bytes, spec, splits.holdout, trained.threshold, rows=40)
    again = smoke.make_smoke_case(model_bytes, spec, splits.holdout, trained.threshold, rows=40)
    assert case == again
    assert len(case.records) == len(case.probabilities) == 40
    assert set(case.decisions) == {0, 1}
    # the expected probabilities are the offline ONNX scores of exactly these records
    offline = onnx_predict_proba(onnx_session(model_bytes), pd.DataFrame(case.records), spec)
    np.testing.assert_array_equal(offline, np.array(case.probabilities, dtype=np.float32))


def _case() -> smoke.SmokeCase:
    return smoke.SmokeCase(records=[{"a": 1}, {"a": 2}], probabilities=[0.1, 0.9], threshold=0.5)


def _reply(p: float, d: int, v: str = "3") -> dict:
    return {"fraud_probability": p, "is_fraud": bool(d), "model_version": v, "request_id": "x"}


def test_identical_replies_pass():
    result = smoke.compare_replies(
        _case(), [_reply(0.1, 0), _reply(0.9 + 5e-7, 1)], model_version="3"
    )
    assert result.passed
    assert result.records == 2
    assert math.isclose(result.max_abs_diff, 5e-7, rel_tol=1e-3)


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ([_reply(0.1, 0), _reply(0.9 + 2e-6, 1)], "record 1: probability"),
        ([_reply(0.1, 1), _reply(0.9, 1)], "record 0: decision 1 != offline 0"),
        ([_reply(0.1, 0), {"score": 0.9}], "record 1: unreadable reply"),
        ([_reply(0.1, 0), None], "record 1: unreadable reply"),
        ([_reply(0.1, 0)], "1 replies for 2 records"),
        ([_reply(0.1, 0), _reply(0.9, 1, "2")], "model_version '2' != '3'"),
        ([_reply(0.1, 0), _reply(float("nan"), 1)], "record 1: probability nan"),
    ],
)
def test_any_difference_fails_with_its_record(replies, expected):
    result = smoke.compare_replies(_case(), replies, model_version="3")
    assert not result.passed
    assert any(expected in m for m in result.mismatches), result.mismatches


def test_batch_reply_is_compared_record_by_record():
    good = {"predictions": [_reply(0.1, 0), _reply(0.9, 1)], "model_version": "3"}
    assert smoke.compare_batch_reply(_case(), good).passed
    partly = {"predictions": [_reply(0.1, 0), None], "model_version": "3"}
    assert smoke.compare_batch_reply(_case(), partly).mismatches == [
        "record 1: unreadable reply None ('NoneType' object is not subscriptable)"
    ]
    assert not smoke.compare_batch_reply(_case(), {"detail": "invalid batch"}).passed


# --------------------------------------------------------------------------- errors and docker


def test_error_names_the_step_the_subject_and_the_log(tmp_path):
    log = tmp_path / "build.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    err = errors.BentoBuildError("fraud-detector:v3", "exit code 1", log)
    text = str(err)
    assert text.startswith("bentoml build failed for fraud-detector:v3: exit code 1")
    assert f"log: {log}" in text
    assert "line 99" in text and "line 50" not in text
    assert isinstance(err, errors.PackagingError)


def test_missing_docker_is_reported_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    ok, detail = container.docker_status()
    assert not ok and "not on PATH" in detail
    with pytest.raises(errors.DockerUnavailableError, match=r"docker-engine\.sh"):
        container.require_docker()


def test_engine_that_does_not_answer_is_reported(monkeypatch, tmp_path):
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    ok, detail = container.docker_status()
    assert not ok
    assert detail == "`docker info` failed: Cannot connect to the Docker daemon"


def test_containerize_is_retried_on_build_failures_only(settings):
    calls: list[str] = []
    facts = container.ImageFacts("fraud-detector:v3", "sha256:x", 1, "bentoml", {})

    def flaky(_settings, bento_tag, *, repository=None):
        calls.append(bento_tag)
        if len(calls) < 3:
            raise errors.ContainerizeError(bento_tag, "exit code 1")
        return facts

    got = container.containerize_with_retries(
        settings, "fraud-detector:v3", delays_s=(0, 0), build=flaky
    )
    assert got is facts and len(calls) == 3

    calls.clear()
    with pytest.raises(errors.ContainerizeError):
        container.containerize_with_retries(
            settings, "fraud-detector:v3", delays_s=(0,), build=flaky
        )
    assert len(calls) == 2

    def root_image(_settings, bento_tag, *, repository=None):
        calls.append(bento_tag)
        raise errors.ContainerizeError(bento_tag, "image fraud-detector:v3 runs as root (User='')")

    calls.clear()
    with pytest.raises(errors.ContainerizeError, match="runs as root"):
        container.containerize_with_retries(
            settings, "fraud-detector:v3", delays_s=(0, 0), build=root_image
        )
    assert len(calls) == 1


def test_summary_says_loudly_when_no_image_was_built():
    skipped = packaging.PackagedVersion(
        "fraud-detector:v3", None, None, "no Docker on this machine"
    )
    assert skipped.summary() == {
        "bento": "fraud-detector:v3",
        "image": "NOT BUILT: no Docker on this machine",
    }


def test_free_port_is_bindable():
    import socket

    port = http.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_image_prefix_gives_a_valid_image_name(tmp_path):
    from pydantic import ValidationError

    settings = Settings(home=tmp_path, image_prefix="fraud-it-4200-")
    repo = settings.image_repository("fraud-detector")
    assert artifacts.check_name(repo) == "fraud-it-4200-fraud-detector"
    with pytest.raises(ValidationError, match="image_prefix"):
        Settings(home=tmp_path, image_prefix="Team/")
