"""Model loading refuses anything it cannot verify; the served tag is resolved predictably."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bento.runtime import FeatureEncoder, ModelLoadError, example_record, load_runtime
from bento.store import ModelNotFoundError, bento_root, resolve_model_tag, sha256_file
from data_contracts.artifacts import ONNX_FILE as MODEL_FILE
from data_contracts.artifacts import SPEC_FILE, write_champion_pointer
from tests.support.serving import train_tiny_model


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory):
    return train_tiny_model(spec, tmp_path_factory.mktemp("store") / "bentoml")


@pytest.fixture
def model_dir(tiny, tmp_path) -> tuple[Path, dict]:
    d = tmp_path / "model"
    d.mkdir()
    (d / MODEL_FILE).write_bytes(tiny.model_bytes)
    (d / SPEC_FILE).write_text(json.dumps(tiny.spec.model_dump(mode="json")))
    meta = {
        "sha256": sha256_file(d / MODEL_FILE),
        "spec_hash": tiny.spec.spec_hash(),
        "threshold": 0.4,
        "model_version": "7",
    }
    return d, meta


def test_loads_verified_model(model_dir, tiny):
    d, meta = model_dir
    rt = load_runtime(d, meta, tag="fraud-detector:v7")
    assert (rt.model_version, rt.threshold, rt.sha256) == ("7", 0.4, meta["sha256"])
    offline = tiny.offline_scores(5)
    for rec, expected in zip(tiny.records(5), offline, strict=True):
        assert rt.score_one(rec) == pytest.approx(float(expected), abs=1e-6)


def test_encoder_feeds_every_input_in_order(spec):
    enc = FeatureEncoder(spec)
    rec = example_record(spec)
    one = enc.encode_one(rec)
    many = enc.encode_columns({k: [v, v] for k, v in rec.items()})
    assert list(one) != []
    assert set(one) == set(many) == set(spec.feature_names)
    for name in spec.feature_names:
        assert one[name].shape == (1, 1)
        assert many[name].shape == (2, 1)
    nulls = enc.encode_one({**rec, "device_type": None, "avg_amount_30d": None})
    assert nulls["device_type"][0, 0] == "__missing__"
    assert np.isnan(nulls["avg_amount_30d"][0, 0])


def test_missing_file(model_dir):
    d, meta = model_dir
    (d / SPEC_FILE).unlink()
    with pytest.raises(ModelLoadError, match=r"feature_spec\.json is missing"):
        load_runtime(d, meta, tag="t")


def test_corrupt_model(model_dir):
    d, meta = model_dir
    data = bytearray((d / MODEL_FILE).read_bytes())
    data[-10] ^= 0xFF
    (d / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt: sha256"):
        load_runtime(d, meta, tag="t")


def test_spec_hash_mismatch(model_dir):
    d, meta = model_dir
    with pytest.raises(ModelLoadError, match="feature spec hash"):
        load_runtime(d, {**meta, "spec_hash": "0000000000000000"}, tag="t")


def test_spec_that_does_not_match_the_graph(model_dir, spec):
    d, meta = model_dir
    other = spec.model_dump(mode="json")
    other["features"] = list(reversed(other["features"]))
    (d / SPEC_FILE).write_text(json.dumps(other))
    from data_contracts.spec import parse_spec

    meta = {**meta, "spec_hash": parse_spec(other).spec_hash()}
    with pytest.raises(ModelLoadError, match="pinned order"):
        load_runtime(d, meta, tag="t")


def test_not_an_onnx_file(model_dir):
    d, meta = model_dir
    (d / MODEL_FILE).write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        load_runtime(d, {**meta, "sha256": sha256_file(d / MODEL_FILE)}, tag="t")


@pytest.mark.parametrize("threshold", [1.5, float("nan")])
def test_bad_threshold(model_dir, threshold):
    d, meta = model_dir
    with pytest.raises(ModelLoadError, match="threshold"):
        load_runtime(d, {**meta, "threshold": threshold}, tag="t")


def test_missing_metadata(model_dir):
    d, meta = model_dir
    del meta["sha256"]
    with pytest.raises(ModelLoadError, match="no 'sha256'"):
        load_runtime(d, meta, tag="t")


# --------------------------------------------------------------------------- which tag


def test_tag_from_env_then_pointer(tmp_path):
    env = {"FRAUD_HOME": str(tmp_path), "FRAUD_MODEL_TAG": "fraud-detector:v2"}
    assert resolve_model_tag(env) == "fraud-detector:v2"
    env.pop("FRAUD_MODEL_TAG")
    with pytest.raises(ModelNotFoundError, match="no champion pointer"):
        resolve_model_tag(env)
    write_champion_pointer(tmp_path / "bentoml", "fraud-detector:v5")
    assert resolve_model_tag(env) == "fraud-detector:v5"


def test_a_checkout_serves_the_fraud_champion_unless_another_model_is_named(tmp_path):
    """Pointers are per model: another model's release never changes what card traffic gets."""
    write_champion_pointer(tmp_path / "bentoml", "fraud-detector:v5")
    write_champion_pointer(tmp_path / "bentoml", "credit-risk:v2")
    env = {"FRAUD_HOME": str(tmp_path)}
    assert resolve_model_tag(env) == "fraud-detector:v5"
    assert resolve_model_tag({**env, "FRAUD_MODEL_NAME": "credit-risk"}) == "credit-risk:v2"
    with pytest.raises(ModelNotFoundError, match="other-model has no champion pointer"):
        resolve_model_tag({**env, "FRAUD_MODEL_NAME": "other-model"})


def test_legacy_shared_pointer_counts_for_its_own_model_only(tmp_path):
    (tmp_path / "bentoml").mkdir()
    (tmp_path / "bentoml" / "champion_tag").write_text("credit-risk:v2\n")
    env = {"FRAUD_HOME": str(tmp_path)}
    with pytest.raises(ModelNotFoundError):
        resolve_model_tag(env)  # never the credit model for card traffic
    assert resolve_model_tag({**env, "FRAUD_MODEL_NAME": "credit-risk"}) == "credit-risk:v2"
    write_champion_pointer(tmp_path / "bentoml", "credit-risk:v3")  # the per-model file wins
    assert resolve_model_tag({**env, "FRAUD_MODEL_NAME": "credit-risk"}) == "credit-risk:v3"


def test_bento_serves_its_packed_model_only(tmp_path):
    env = {"FRAUD_MODEL_TAG": "fraud-detector:v2"}
    assert resolve_model_tag(env, packed_tags=["fraud-detector:v9"]) == "fraud-detector:v9"
    with pytest.raises(ModelNotFoundError, match="exactly one"):
        resolve_model_tag(env, packed_tags=[])


def test_bento_root_detection(tmp_path):
    service = tmp_path / "src" / "bento" / "service.py"
    service.parent.mkdir(parents=True)
    service.write_text("")
    assert bento_root(service) is None
    (tmp_path / "bento.yaml").write_text("name: x\n")
    assert bento_root(service) == tmp_path.resolve()
