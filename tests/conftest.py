"""Shared fixtures: the default spec, small generated data sets and an isolated state home."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from data_contracts.spec import FeatureSpec, default_spec
from data_contracts.synthetic import GeneratorConfig, generate

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# in-process flow runs persist their (JSON) results: keep them out of the user's ~/.prefect
if "PREFECT_LOCAL_STORAGE_PATH" not in os.environ:
    _storage = tempfile.mkdtemp(prefix="fraud-tests-prefect-storage-")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = _storage
    atexit.register(shutil.rmtree, _storage, ignore_errors=True)


def _tier(item: pytest.Item) -> int:
    """0: uses a server stack (the longest modules), 1: other integration tests, 2: unit."""
    if "stack" in getattr(item, "fixturenames", ()):
        return 0
    return 1 if item.get_closest_marker("integration") else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest tiers first, each module kept together and in its order.

    ``make test`` runs on two pytest-xdist workers with whole modules as work units, in this
    order (``--no-loadscope-reorder``: xdist would otherwise hand out the modules with the most
    tests first, which puts the few-test stack modules last, both workers on them at the end):
    the longest modules first keep one worker from starting a long stack module while the other
    has nothing left to do. The order is a pure function of the collection, as xdist requires of
    every worker.
    """
    first_index: dict[str, int] = {}
    tier: dict[str, int] = {}
    for index, item in enumerate(items):
        module = item.nodeid.split("::")[0]
        first_index.setdefault(module, index)
        tier[module] = min(tier.get(module, 2), _tier(item))
    items.sort(key=lambda i: (tier[i.nodeid.split("::")[0]], first_index[i.nodeid.split("::")[0]]))


@pytest.fixture(scope="session")
def spec() -> FeatureSpec:
    return default_spec()


@pytest.fixture(scope="session")
def small_data() -> pd.DataFrame:
    """30k clean generated rows (about 600 frauds): enough to train a meaningful model."""
    return generate(GeneratorConfig(rows=30_000, seed=11))


@pytest.fixture
def fraud_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated FRAUD_HOME (MLflow SQLite store, quarantine, work files) for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("FRAUD_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FRAUD_MLFLOW_TRACKING_URI", raising=False)
    return home
