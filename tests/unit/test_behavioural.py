"""Behavioural tests of a model trained on the default data: invariance, direction, minimum
functionality (checklist-style, on top of the aggregate metrics)."""

import numpy as np
import pandas as pd
import pytest

from flows.training.train import predict_proba


@pytest.fixture(scope="module")
def base_row(splits) -> pd.DataFrame:
    legit = splits.holdout[splits.holdout["_label"] == 0]
    return legit.head(200).copy()


def score(trained, spec, frame):
    return predict_proba(trained.pipeline, frame, spec)


def test_id_and_event_time_do_not_change_the_score(trained, spec, base_row):
    before = score(trained, spec, base_row)
    changed = base_row.assign(
        transaction_id=[f"other-{i}" for i in range(len(base_row))],
        event_time=pd.Timestamp("2030-06-01", tz="UTC"),
    )
    np.testing.assert_array_equal(before, score(trained, spec, changed))


def test_account_takeover_pattern_raises_the_score(trained, spec, base_row):
    before = score(trained, spec, base_row)
    riskier = base_row.assign(txn_count_1h=6, minutes_since_last_txn=1.0,
                              distance_from_last_txn_km=900.0, is_new_device=1.0)  # fmt: skip
    after = score(trained, spec, riskier)
    assert np.mean(after > before) > 0.9
    assert after.mean() > 5 * before.mean()


def test_card_not_present_pattern_raises_the_score(trained, spec, base_row):
    before = score(trained, spec, base_row)
    riskier = base_row.assign(channel="ecommerce", card_present=0.0, is_new_device=1.0,
                              merchant_category="electronics", amount=450.0,
                              country_mismatch=1.0, device_type="desktop")  # fmt: skip
    assert score(trained, spec, riskier).mean() > 3 * before.mean()


def test_obvious_cases_land_on_the_right_side(trained, spec, base_row):
    legit = base_row.head(1).assign(
        amount=25.0, merchant_category="grocery", channel="pos", device_type="terminal",
        hour_of_day=11, card_present=1.0, country_mismatch=0.0, is_new_device=0.0,
        txn_count_1h=0, txn_count_24h=2, minutes_since_last_txn=600.0,
        distance_from_home_km=3.0, distance_from_last_txn_km=2.0, failed_pin_attempts_24h=0,
        account_age_days=2500, avg_amount_30d=40.0, amount_to_avg_ratio=0.6,
    )  # fmt: skip
    fraud = legit.assign(
        amount=1800.0, merchant_category="money_transfer", channel="ecommerce",
        device_type="desktop", hour_of_day=3, card_present=0.0, country_mismatch=1.0,
        is_new_device=1.0, txn_count_1h=7, txn_count_24h=14, minutes_since_last_txn=1.5,
        distance_from_last_txn_km=1200.0, failed_pin_attempts_24h=2, amount_to_avg_ratio=45.0,
    )  # fmt: skip
    assert score(trained, spec, legit)[0] < trained.threshold
    assert score(trained, spec, fraud)[0] >= trained.threshold
