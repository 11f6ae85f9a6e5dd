"""The drift email's charts: distributions from the samples, small valid PNGs, history series."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.monitoring.charts import (
    SERIES,
    HistoryPoint,
    Series,
    distribution,
    distributions,
    draw_charts,
    render_distribution,
    render_history,
    top_columns,
)
from flows.monitoring.verdict import DriftPolicy
from tests.support.drift import columns

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_CHART_BYTES = 60_000


def assert_small_png(png: bytes) -> None:
    assert png.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(png))
    image.verify()  # a complete, uncorrupted PNG
    assert Image.open(io.BytesIO(png)).size == (600, 300)
    assert len(png) < MAX_CHART_BYTES, len(png)


def frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame({
        "amount": rng.lognormal(4, 1, 5000),
        "merchant_category": rng.choice(list("abcdefghijk"), 5000),
        "hour_of_day": rng.integers(0, 24, 5000).astype(float),
        "score": rng.beta(1, 8, 5000),
    })  # fmt: skip
    cur = pd.DataFrame({
        "amount": rng.lognormal(4.6, 1, 3000),
        "merchant_category": rng.choice(list("abcz"), 3000),
        "hour_of_day": rng.integers(0, 24, 3000).astype(float),
        "score": rng.beta(2, 6, 3000),
    })  # fmt: skip
    cur.loc[:9, "amount"] = np.nan
    return ref, cur


def test_distributions_are_shares_of_each_side():
    ref, cur = frames()
    kinds = {"amount": "numeric", "merchant_category": "categorical",
             "hour_of_day": "integer", "score": "score", "absent": "numeric"}  # fmt: skip
    dists = distributions(ref, cur, kinds)
    assert set(dists) == {"amount", "merchant_category", "hour_of_day", "score"}
    for d in dists.values():
        assert sum(d.reference) == pytest.approx(1) and sum(d.current) == pytest.approx(1)
        assert len(d.reference) == len(d.current) == len(d.labels)
    amount = dists["amount"]
    assert amount.edges is not None and len(amount.edges) == len(amount.labels) + 1
    assert amount.current_rows == 2990  # missing values are not counted as a bin
    assert dists["score"].edges[0] == 0.0 and dists["score"].edges[-1] == 1.0
    assert dists["hour_of_day"].edges is None and len(dists["hour_of_day"].labels) == 24
    cats = dists["merchant_category"]
    assert len(cats.labels) == 8 and cats.labels[-1] == "other"  # top 7 + the rest
    assert cats.labels[0] == "z" or cats.current[cats.labels.index("z")] > 0.2


def test_a_constant_or_empty_column_still_draws():
    same = distribution("x", "numeric", pd.Series([3.0] * 10), pd.Series([3.0] * 5))
    assert same.reference == same.current and sum(same.reference) == pytest.approx(1)
    empty = distribution("x", "numeric", pd.Series([], dtype=float), pd.Series([1.0]))
    assert empty.reference_rows == 0 and sum(empty.reference) == 0
    assert_small_png(render_distribution(empty).png)


def test_distribution_charts_are_small_valid_pngs_with_a_text_description():
    ref, cur = frames()
    cols = {c.column: c for c in columns(drifted=True)}
    for column, kind in [("amount", "numeric"), ("merchant_category", "categorical"),
                         ("score", "score")]:  # fmt: skip
        chart = render_distribution(distribution(column, kind, ref[column], cur[column]),
                                    cols[column])  # fmt: skip
        assert_small_png(chart.png)
        assert chart.name == f"dist-{column}"
        assert column in chart.alt and "threshold 0.1" in chart.alt and "(drift)" in chart.title
    assert (
        "median 56.87 → 103.1"
        in render_distribution(
            distribution("amount", "numeric", ref["amount"], cur["amount"]), cols["amount"]
        ).alt
    )


def history(n: int) -> list[HistoryPoint]:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    return [
        HistoryPoint(
            checked_at=start + timedelta(days=i),
            outcome="drift" if i == n - 1 else "no drift",
            values={"drift_share": 0.05 * i, "drift.score": 0.02 * i},
        )
        for i in range(n)
    ]


def test_history_chart_draws_every_series_and_takes_a_new_one():
    chart = render_history(history(12), DriftPolicy())
    assert_small_png(chart.png)
    assert chart.title.startswith("last 12 checks")
    assert "share of drifted features: 0.00, 0.05" in chart.alt and "score drift" in chart.alt
    # a further signal is one more Series; points without it leave that line out
    f1 = Series("realized_f1", "realized F1", "#1b5e20", lambda policy: 0.8)
    points = [p if i % 2 else HistoryPoint(p.checked_at, p.outcome, {**p.values,
              "realized_f1": 0.9}) for i, p in enumerate(history(4))]  # fmt: skip
    more = render_history(points, DriftPolicy(), (*SERIES, f1))
    assert "realized F1: 0.90, 0.90" in more.alt and more.png != chart.png
    assert_small_png(more.png)
    one = render_history(history(1), DriftPolicy())
    assert one.title.startswith("last 1 check ") and one.png.startswith(PNG_MAGIC)


def test_the_email_charts_are_history_then_the_top_drifted_columns_then_the_score():
    ref, cur = frames()
    cols = columns(drifted=True)
    dists = distributions(ref, cur, {"amount": "numeric", "merchant_category": "categorical",
                                     "score": "score"})  # fmt: skip
    assert [c.column for c in top_columns(cols, 1)] == ["amount", "score"]
    charts = draw_charts(dists, cols, history(3), DriftPolicy())
    assert [c.name for c in charts] == [
        "history", "dist-amount", "dist-merchant_category", "dist-score"]  # fmt: skip
    assert [c.name for c in draw_charts(dists, columns(drifted=False), [], DriftPolicy())] == [
        "dist-score"
    ]
