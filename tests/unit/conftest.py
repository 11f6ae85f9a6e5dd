from __future__ import annotations

import pytest

from data_contracts.schemas import validate_frame
from flows.training.release import TrainedCandidate, train_candidate
from flows.training.train import Splits, TrainParams, split


@pytest.fixture(scope="session")
def splits(spec, small_data) -> Splits:
    return split(validate_frame(small_data, spec).valid, spec, 0.2, 0.2)


@pytest.fixture(scope="session")
def trained(spec, splits) -> TrainedCandidate:
    """A model trained on the default generated data (session-wide: trained once)."""
    return train_candidate(splits, spec, TrainParams(max_iter=100))
