import numpy as np
import pandas as pd

from data_contracts.schemas import validate_frame
from data_contracts.synthetic import INVALID_KINDS, DriftKnobs, GeneratorConfig, generate


def test_same_seed_same_rows_other_seed_other_rows():
    a = generate(GeneratorConfig(rows=5000, seed=3))
    b = generate(GeneratorConfig(rows=5000, seed=3))
    c = generate(GeneratorConfig(rows=5000, seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a["amount"].equals(c["amount"])


def test_fraud_rate_missing_values_and_contract(spec, small_data):
    rate = small_data["is_fraud"].mean()
    assert 0.01 <= rate <= 0.03
    assert small_data["distance_from_home_km"].isna().any()
    assert small_data["device_type"].isna().any()
    result = validate_frame(small_data, spec)
    assert result.quarantined_rows == 0 and not result.fatal_errors


def test_signal_is_spread_over_several_features(small_data):
    fraud = small_data[small_data["is_fraud"] == 1]
    legit = small_data[small_data["is_fraud"] == 0]
    assert fraud["is_new_device"].mean() > 3 * legit["is_new_device"].mean()
    assert fraud["txn_count_1h"].mean() > 2 * legit["txn_count_1h"].mean()
    assert fraud["amount"].median() > 2 * legit["amount"].median()
    assert fraud["country_mismatch"].mean() > 3 * legit["country_mismatch"].mean()
    # no single feature separates the classes
    for column in ("is_new_device", "country_mismatch", "card_present"):
        assert 0.02 < fraud[column].mean() < 0.98


def test_invalid_rows_break_the_contract_on_purpose(spec):
    n = 2 * len(INVALID_KINDS)
    df = generate(GeneratorConfig(rows=3000, seed=1, invalid_rows=n))
    result = validate_frame(df, spec)
    assert result.quarantined_rows == n
    assert not result.fatal_errors


def test_drift_knobs_move_the_world(spec):
    base = generate(GeneratorConfig(rows=20_000, seed=2))
    drifted = generate(
        GeneratorConfig(
            rows=20_000,
            seed=2,
            drift=DriftKnobs(amount_scale=2.0, merchant_shift=0.5, fraud_rate=0.1),
        )
    )
    assert drifted["amount"].median() > 1.8 * base["amount"].median()
    gaming = drifted["merchant_category"].isin(["gaming", "money_transfer"]).mean()
    assert gaming > base["merchant_category"].isin(["gaming", "money_transfer"]).mean() + 0.3
    assert drifted["is_fraud"].mean() > 0.08
    broken = generate(GeneratorConfig(rows=2000, seed=2, drift=DriftKnobs(broken_feed=True)))
    assert broken["distance_from_home_km"].isna().all()
    assert (broken["txn_count_1h"] == 0).all()
    assert validate_frame(broken, spec).quarantined_rows == 0  # a broken feed can look valid


def test_ids_are_unique_and_event_times_in_range():
    df = generate(GeneratorConfig(rows=10_000, seed=9, days=10, drift=DriftKnobs(start_day=5)))
    assert df["transaction_id"].is_unique
    assert df["event_time"].min() >= pd.Timestamp("2026-01-06", tz="UTC")
    assert df["event_time"].max() < pd.Timestamp("2026-01-16", tz="UTC")
    assert np.issubdtype(df["hour_of_day"].dtype, np.integer)
