"""The bulk score histogram gives exactly what one ``observe`` per score gives."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from bento.metrics import observe_many

BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def _exposition(fill) -> dict[tuple[str, str], float]:
    """The histogram's samples (bucket counts, count, sum) after ``fill``; no timestamps."""
    registry = CollectorRegistry()
    histogram = Histogram("score", "scores", buckets=BUCKETS, registry=registry)
    fill(histogram)
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_bulk_observe_equals_one_observe_per_value() -> None:
    rng = np.random.default_rng(3)
    # values on the bucket bounds, inside, below the first and above the last bound
    values = np.concatenate([rng.random(2_000), np.array(BUCKETS), [0.0, 1.0, 0.999]])

    def one_by_one(h: Histogram) -> None:
        for v in values.tolist():
            h.observe(v)

    bulk = _exposition(lambda h: observe_many(h, values))
    single = _exposition(one_by_one)
    total = ("score_sum", "")
    assert bulk[total] == pytest.approx(single.pop(total), rel=1e-12)
    del bulk[total]
    assert bulk == single
    assert bulk[("score_count", "")] == 2011
    assert bulk[("score_bucket", "0.5")] == np.count_nonzero(values <= 0.5)


def test_bulk_observe_of_nothing_changes_nothing() -> None:
    assert _exposition(lambda h: observe_many(h, np.array([]))) == _exposition(lambda h: None)


def test_fallback_without_private_fields_uses_observe() -> None:
    class PublicOnly:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    h = PublicOnly()
    observe_many(h, np.array([0.2, 0.7]))
    assert h.seen == [0.2, 0.7]
