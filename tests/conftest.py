import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

#: fixtures and the scripts that wrote them, not tests
collect_ignore = ["data"]

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


@pytest.fixture(autouse=True)
def _walks_on_the_threads_given(monkeypatch):
    """The library walks short walks on one thread whatever ``n_jobs`` says
    (``PARALLEL_WALK``); the tests' walks are short, so here they run on the
    threads given and the thread-count tests compare the parallel kernel with
    the serial one. ``test_nullspace.py`` checks the rule itself."""
    from skquant._quantizers import _walk

    monkeypatch.setattr(_walk, "PARALLEL_WALK", 0.0)


@pytest.fixture
def traced_peak():
    """``traced_peak(fn) -> (fn(), the peak bytes Python and NumPy allocated
    during it)`` (tracemalloc: NumPy's arrays are counted, numba's and torch's
    own allocations are not)."""

    def run(fn):
        tracemalloc.start()
        try:
            out = fn()
            return out, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    return run


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits_mlp():
    """A (64, 32) MLPClassifier fitted on the first 1200 digits, and all digits.

    Returns ``(mlp, X, y)`` with ``X`` scaled to [0, 1]; rows from 1200 on are
    held out.
    """
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((64, 32), max_iter=300, random_state=0).fit(
            X[:1200], y[:1200]
        )
    return mlp, X, y
