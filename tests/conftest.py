import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "skquant",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# CI runs the same examples every time (a red CI blocks landing); local runs explore.
settings.register_profile(
    "ci", parent=settings.get_profile("skquant"), derandomize=True
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "skquant")
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
