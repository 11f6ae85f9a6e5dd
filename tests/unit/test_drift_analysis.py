"""Drift computation: reading Evidently by metric name, guards, window reading, the verdict."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from data_contracts.inference_log import SCORE_COLUMN
from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.monitoring.analysis import (
    analyse,
    column_kinds,
    drift_results,
    find_metric,
    prepare_frames,
    summary_facts,
)
from flows.monitoring.sampling import sample_pair
from flows.monitoring.statistics import JENSEN_SHANNON, WASSERSTEIN, statistic
from flows.monitoring.verdict import ColumnDrift, DriftPolicy, Outcome, decide, not_enough_data
from flows.monitoring.window import Window, monitored_columns, read_inference_log, window_id
from tests.support.drift import write_log

FIXTURE = Path(__file__).parents[1] / "fixtures" / "evidently_drift_report.json"
UNTESTABLE = {"distance_from_home_km": "window has no values"}
EXPECTED_DRIFTED = {
    "amount",
    "amount_sum_24h",
    "amount_to_avg_ratio",
    "merchant_category",
    "distance_from_home_km",
    "score",
}


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(FIXTURE.read_text())


def test_find_metric_reads_by_name_and_parameters(report):
    amount = find_metric(report, "ValueDrift", column="amount")
    assert amount["config"]["method"] == WASSERSTEIN
    assert amount["config"]["threshold"] == 0.1
    assert amount["value"] == pytest.approx(0.646, abs=0.001)
    assert [t["status"] for t in amount["tests"]] == ["FAIL"]
    merchant = find_metric(report, "ValueDrift", column="merchant_category")
    assert merchant["config"]["method"] == JENSEN_SHANNON
    assert find_metric(report, "RowCount")["value"] == 5000


def test_find_metric_refuses_missing_and_ambiguous(report):
    with pytest.raises(KeyError, match="found 0"):
        find_metric(report, "ValueDrift", column="no_such_column")
    with pytest.raises(KeyError, match="found 3"):  # three quantiles of the same column
        find_metric(report, "QuantileValue", column="amount")


def test_drift_results_do_not_depend_on_metric_order(report, spec):
    results = drift_results(report, spec, UNTESTABLE)
    assert [r.column for r in results] == monitored_columns(spec)
    assert {r.column for r in results if r.drifted} == EXPECTED_DRIFTED
    shuffled = dict(
        report, metrics=random.Random(3).sample(report["metrics"], len(report["metrics"]))
    )
    assert drift_results(shuffled, spec, UNTESTABLE) == results


def test_an_empty_window_column_is_judged_as_drift(report, spec):
    (home,) = [
        r for r in drift_results(report, spec, UNTESTABLE) if r.column == "distance_from_home_km"
    ]
    assert home.drifted and home.method == "all values missing" and home.statistic == 1.0
    (ref,) = [
        r
        for r in drift_results(report, spec, {"distance_from_home_km": "reference has no values"})
        if r.column == "distance_from_home_km"
    ]
    assert not ref.drifted and ref.method == "not tested"


def test_summary_facts_read_by_name(report, spec):
    facts = summary_facts(report, spec)
    assert facts["rows"] == 5000
    assert facts["missing_share"]["device_type"] > 0
    assert "distance_from_home_km" not in facts["missing_share"]


def test_our_statistics_match_evidentlys_on_the_fixture_data(report, spec):
    # the same rows tests/fixtures/make_drift_report.py fed to Evidently
    ref = generate(GeneratorConfig(rows=5000, seed=21))
    cur = generate(
        GeneratorConfig(rows=5000, seed=22, drift=DriftKnobs(amount_scale=1.8, merchant_shift=0.5))
    )
    for frame in (ref, cur):
        frame["score"] = 1 / (1 + np.exp(-(np.log1p(frame["amount"]) - 5)))
    ref_p, cur_p, _ = prepare_frames(ref, cur, spec)
    for column, method in (("amount", WASSERSTEIN), ("merchant_category", JENSEN_SHANNON),
                           ("card_present", JENSEN_SHANNON), ("score", WASSERSTEIN)):  # fmt: skip
        expected = find_metric(report, "ValueDrift", column=column)["value"]
        assert statistic(method, ref_p[column], cur_p[column]) == pytest.approx(expected, rel=1e-6)


def test_column_kinds_come_from_the_spec(spec):
    numerical, categorical = column_kinds(spec)
    assert "hour_of_day" in numerical and "amount" in numerical and SCORE_COLUMN in numerical
    assert {"card_present", "merchant_category", "device_type"} <= set(categorical)
    assert set(numerical) | set(categorical) == set(monitored_columns(spec))
    assert not set(numerical) & set(categorical)


def test_small_and_empty_windows_give_not_enough_data(spec):
    ref = generate(GeneratorConfig(rows=2000, seed=1))
    ref[SCORE_COLUMN] = 0.1
    policy = DriftPolicy(min_window_rows=500)
    for rows in (0, 3, 499):
        window = ref.head(rows)
        analysis = analyse(ref, window, spec, policy)
        assert analysis.verdict.outcome == Outcome.NOT_ENOUGH_DATA
        assert not analysis.verdict.retrain_wanted
        assert analysis.snapshot is None and analysis.results == []
        assert f"{rows:,} rows, below the minimum of 500" in analysis.verdict.reasons[0]
    assert not_enough_data(500, policy) is None


def test_all_nan_columns_are_set_aside_not_passed_to_evidently(spec):
    ref = generate(GeneratorConfig(rows=300, seed=1))
    cur = generate(GeneratorConfig(rows=300, seed=2, drift=DriftKnobs(broken_feed=True)))
    for frame in (ref, cur):
        frame[SCORE_COLUMN] = 0.2
    _, _, untestable = prepare_frames(ref, cur, spec)
    assert untestable == {
        "distance_from_home_km": "window has no values",
        "distance_from_last_txn_km": "window has no values",
    }


def _drift(column: str, drifted: bool, statistic: float = 0.5) -> ColumnDrift:
    return ColumnDrift(
        column=column, kind="numeric", method=WASSERSTEIN, statistic=statistic, threshold=0.1,
        drifted=drifted,
    )  # fmt: skip


def test_decide_on_share_threshold_and_score():
    features = [_drift(f"f{i}", i < 3) for i in range(10)]
    at = decide([*features, _drift(SCORE_COLUMN, False)], DriftPolicy(drift_share=0.3))
    assert at.outcome == Outcome.DRIFT and at.drift_share == pytest.approx(0.3)
    assert at.features_drifted == ["f0", "f1", "f2"] and at.retrain_wanted
    below = decide([*features, _drift(SCORE_COLUMN, False)], DriftPolicy(drift_share=0.31))
    assert below.outcome == Outcome.NO_DRIFT and not below.retrain_wanted
    assert "3 of 10 features drifted (30% < 31%)" in below.reasons[0]
    score_only = decide(
        [*[_drift(f"f{i}", False) for i in range(10)], _drift(SCORE_COLUMN, True, 0.4)],
        DriftPolicy(),
    )
    assert score_only.outcome == Outcome.DRIFT and score_only.score_drifted
    assert score_only.drift_share == 0 and "model score drifted" in score_only.reasons[0]


def _log_frame(spec, rows: int, start: datetime, seed: int) -> pd.DataFrame:
    frame = generate(GeneratorConfig(rows=rows, seed=seed))
    frame[SCORE_COLUMN] = np.linspace(0, 1, rows)
    frame["timestamp"] = [start + timedelta(minutes=10 * i) for i in range(rows)]
    return frame


def test_inference_log_windows_by_hours_rows_and_version(tmp_path, spec):
    root = tmp_path / "log"
    start = datetime(2026, 3, 1, 0, 5, tzinfo=UTC)
    frame = _log_frame(spec, 432, start, 5)  # 3 days, one row every 10 minutes
    write_log(frame.iloc[:300], root, spec, model_version="v2")
    write_log(frame.iloc[300:], root, spec, model_version="3")
    assert sorted(p.name for p in root.iterdir()) == [
        "date=2026-03-01", "date=2026-03-02", "date=2026-03-03"
    ]  # fmt: skip
    now = start + timedelta(minutes=10 * 431)
    day = read_inference_log(root, Window(hours=24), now=now, columns=monitored_columns(spec))
    assert len(day) == 144 and day["timestamp"].is_monotonic_increasing
    assert day["timestamp"].min() > pd.Timestamp(now - timedelta(hours=24))
    last = read_inference_log(root, Window(rows=50), now=now)
    assert len(last) == 50 and last["timestamp"].max() == pd.Timestamp(now)
    v2 = read_inference_log(root, Window(hours=1000), now=now, model_version="2")
    assert len(v2) == 300 and set(v2["model_version"]) == {"v2"}
    v3 = read_inference_log(root, Window(rows=1000), now=now, model_version="v3", as_table=True)
    assert isinstance(v3, pa.Table) and v3.num_rows == 132
    earlier = read_inference_log(root, Window(hours=2), now=start + timedelta(hours=1))
    assert len(earlier) == 7  # 00:05 .. 01:05; rows after `now` are not in the window
    assert read_inference_log(tmp_path / "missing", Window(hours=1)).empty


def test_window_id_is_a_content_identity(spec):
    frame = _log_frame(spec, 20, datetime(2026, 3, 1, tzinfo=UTC), 1)
    a = window_id(frame, "4")
    assert a == window_id(frame.copy(), "4")
    assert a == window_id(pa.Table.from_pandas(frame), "4")
    assert a != window_id(frame.head(19), "4") and a != window_id(frame, "5")
    assert window_id(frame.head(0), "4") == "v4-empty"


def test_sample_pair_is_seeded_and_documents_itself(spec):
    big = pd.DataFrame({"x": np.arange(10_000)})
    small = pd.DataFrame({"x": np.arange(1500)})
    ref, cur, info = sample_pair(pa.Table.from_pandas(big), small, 2000, seed=4)
    assert len(ref) == 2000 and len(cur) == 1500 and ref["x"].is_unique
    assert info.sampled and "2,000 of 10,000 reference rows" in info.describe()
    again, _, _ = sample_pair(big, small, 2000, seed=4)
    assert again["x"].tolist() == ref["x"].tolist()
    _, _, whole = sample_pair(small, small, 2000, seed=4)
    assert not whole.sampled and whole.describe().startswith("no sampling")
