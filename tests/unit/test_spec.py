import json

import pytest
from pydantic import ValidationError

from data_contracts.spec import FeatureKind, load_spec, parse_spec


def test_default_spec_declares_features_label_id_and_time(spec):
    assert 15 <= len(spec.features) <= 25
    kinds = {f.kind for f in spec.features}
    assert kinds == set(FeatureKind)
    assert spec.label.name not in spec.feature_names
    assert spec.id_column not in spec.feature_names
    assert spec.event_time_column not in spec.feature_names


def test_spec_hash_is_stable_and_content_addressed(spec, tmp_path):
    data = spec.model_dump(mode="json")
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data, indent=4))
    assert load_spec(path).spec_hash() == spec.spec_hash()
    data["features"][0]["max"] = 60000
    assert parse_spec(data).spec_hash() != spec.spec_hash()


def test_order_is_part_of_the_contract(spec):
    data = spec.model_dump(mode="json")
    data["features"] = list(reversed(data["features"]))
    reordered = parse_spec(data)
    assert reordered.feature_names == list(reversed(spec.feature_names))
    assert reordered.spec_hash() != spec.spec_hash()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["features"].append(dict(d["features"][0])), "declared twice"),
        (lambda d: d["features"][1].pop("categories"), "needs categories"),
        (lambda d: d["features"][0].update(min=10, max=1), "min 10.0 > max 1.0"),
        (lambda d: d["features"][0].update(kind="text"), "kind"),
        (lambda d: d["label"].update(negative=1), "must differ"),
        (lambda d: d.update(features=[]), "at least one feature"),
    ],
)
def test_bad_spec_is_refused_with_the_field_named(spec, change, message):
    data = spec.model_dump(mode="json")
    change(data)
    with pytest.raises(ValidationError, match=message):
        parse_spec(data)


def test_label_mapping_accepts_strings_and_numbers(spec):
    assert spec.label_to_int(1) == 1
    assert spec.label_to_int("0") == 0
    with pytest.raises(ValueError, match="neither the positive"):
        spec.label_to_int("maybe")


def test_spec_file_extension_is_checked(tmp_path):
    path = tmp_path / "spec.txt"
    path.write_text("name: x")
    with pytest.raises(ValueError, match=r"expected \.yaml, \.yml or \.json"):
        load_spec(path)
