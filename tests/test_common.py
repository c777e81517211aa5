"""scikit-learn's estimator checks over every public estimator of skquant."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skquant.utils.discovery import all_estimators

# Extra configurations checked besides each estimator's defaults.
EXTRA_PARAMS = {
    "UniformQuantizer": [
        {"n_bits": 2, "granularity": "per_tensor"},
        {"n_bits": 8, "scale": "mse", "n_jobs": 2},
        {"scale": "percentile", "percentile": 99.0},
    ],
    "TernaryQuantizer": [{"scale": "twn", "granularity": "per_tensor"}],
    "BinaryQuantizer": [{"granularity": "per_tensor", "n_jobs": -1}],
    "ActivationQuantizer": [
        {"granularity": "per_feature", "symmetric": True},
        {"calibration": "percentile", "n_bits": 4},
    ],
}

# {Class name: {check name: reason}}; every entry needs a written reason.
EXPECTED_FAILED_CHECKS: dict = {}


def _instances():
    for name, cls in all_estimators():
        yield cls()
        for params in EXTRA_PARAMS.get(name, []):
            yield cls(**params)


def test_every_estimator_is_covered():
    names = {name for name, _ in all_estimators()}
    assert {"UniformQuantizer", "BinaryQuantizer", "TernaryQuantizer"} <= names
    assert set(EXTRA_PARAMS) <= names


@parametrize_with_checks(
    list(_instances()),
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS.get(
        type(est).__name__, {}
    ),
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name_cls", all_estimators(), ids=lambda p: p[0])
def test_docstring_has_example(name_cls):
    _, cls = name_cls
    assert ">>> " in (cls.__doc__ or ""), f"{cls.__name__} has no doctest example"
