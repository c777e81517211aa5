"""scikit-learn's estimator checks over every public estimator of skquant.

The data-driven quantizers (``NullSpaceQuantizer``, ``GreedyPathQuantizer``,
``GPTQQuantizer``) need
calibration activations as a fit parameter, which scikit-learn's checks never pass.
They are checked through a subclass defined here that draws fixed activations of the
right width when ``fit`` gets none; everything else is the estimator's own code.
"""

import numpy as np
import pytest
from sklearn.utils.estimator_checks import (
    check_param_validation,
    parametrize_with_checks,
)

import skquant
from skquant import AdaptivePrecisionQuantizer
from skquant._quantizers._datadriven import BaseDataQuantizer
from skquant.utils.discovery import all_estimators


def _shape_2d(W):
    """Shape of ``W`` when it is 2-D with at least one row, else None."""
    shape = getattr(W, "shape", None)
    if shape is None:
        shape = np.shape(np.asarray(W))
    return tuple(shape) if len(shape) == 2 and shape[0] >= 1 else None


def _activations_for(W):
    """Fixed activations (8 x n_in) matching ``W``, or None when W is not 2-D."""
    shape = _shape_2d(W)
    return (
        None
        if shape is None
        else np.random.default_rng(0).standard_normal((8, shape[0]))
    )


def _gradient_for(W):
    """A fixed gradient shaped like ``W``, or None when W is not 2-D."""
    shape = _shape_2d(W)
    return None if shape is None else np.random.default_rng(0).standard_normal(shape)


def _with_calibration(cls):
    """A subclass of ``cls`` whose fit draws its required fit parameter when absent."""
    if issubclass(cls, AdaptivePrecisionQuantizer):

        def fit(self, W, y=None, *, gradient=None):
            if gradient is None:
                gradient = _gradient_for(W)
            return cls.fit(self, W, y, gradient=gradient)

        def fit_transform(self, W, y=None, *, gradient=None):
            return fit(self, W, y, gradient=gradient).transform(W)

    else:

        def fit(self, W, y=None, *, activations=None, target_activations=None):
            if activations is None:
                activations = _activations_for(W)
            return cls.fit(
                self,
                W,
                y,
                activations=activations,
                target_activations=target_activations,
            )

        def fit_transform(
            self, W, y=None, *, activations=None, target_activations=None
        ):
            if activations is None:
                activations = _activations_for(W)
            return cls.fit_transform(
                self,
                W,
                y,
                activations=activations,
                target_activations=target_activations,
            )

    qualname = f"_Calibrated{cls.__name__}"
    sub = type(
        cls.__name__,
        (cls,),
        {
            "fit": fit,
            "fit_transform": fit_transform,
            "__module__": __name__,
            "__qualname__": qualname,
            "__doc__": cls.__doc__,
        },
    )
    globals()[qualname] = sub  # so that pickle finds it
    return sub


_ROWS_ARE_INPUTS = (
    "the rows of W are the layer's inputs, paired with the columns of the "
    "calibration activations: permuting or sub-setting them alone changes the layer"
)
_DATA_DRIVEN_FAILS = {
    "check_methods_sample_order_invariance": _ROWS_ARE_INPUTS,
    "check_methods_subset_invariance": _ROWS_ARE_INPUTS,
    "check_fit_idempotent": _ROWS_ARE_INPUTS + " (it transforms W with other rows)",
}


# Extra configurations checked besides each estimator's defaults.
EXTRA_PARAMS = {
    "UniformQuantizer": [
        {"n_bits": 2, "granularity": "per_tensor"},
        {"n_bits": 8, "scale": "mse", "n_jobs": 2},
        {"scale": "percentile", "percentile": 99.0},
    ],
    "TernaryQuantizer": [{"scale": "twn", "granularity": "per_tensor"}],
    "GPTQQuantizer": [{"n_bits": "binary", "act_order": True, "block_size": 3}],
    "BinaryQuantizer": [{"granularity": "per_tensor", "n_jobs": -1}],
    "ActivationQuantizer": [
        {"granularity": "per_feature", "symmetric": True},
        {"calibration": "percentile", "n_bits": 4},
    ],
}

# {Class name: {check name: reason}}; every entry needs a written reason.
_PER_PARAMETER = (
    "the fitted precision map has one entry per weight: transform takes W of the "
    "fitted shape only, with its rows in the fitted order"
)
EXPECTED_FAILED_CHECKS: dict = {
    "NullSpaceQuantizer": _DATA_DRIVEN_FAILS,
    "GreedyPathQuantizer": _DATA_DRIVEN_FAILS,
    "GPTQQuantizer": _DATA_DRIVEN_FAILS,
    "AdaptivePrecisionQuantizer": {
        "check_methods_sample_order_invariance": _PER_PARAMETER,
        "check_methods_subset_invariance": _PER_PARAMETER,
        "check_fit_idempotent": _PER_PARAMETER,
    },
}


# {Class name: reason}: estimators the checks cannot run on at all.
NOT_CHECKED = {
    "LayerBitAllocator": (
        "it measures a given fitted network (an MLP or a torch model) on X: there is "
        "no default network to fit on the checks' arbitrary X, and the network's "
        "input width fixes X's; its contract (clone, parameters, errors, refit) is "
        "tested in test_layerbits.py"
    ),
}


def _instances():
    for name, cls in all_estimators():
        if name in NOT_CHECKED:
            continue
        if issubclass(cls, BaseDataQuantizer | AdaptivePrecisionQuantizer):
            cls = _with_calibration(cls)
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
def test_parameter_constraints_are_well_formed(name_cls):
    """scikit-learn's own check of the declared constraints (each invalid value
    refused by name), which check_estimator does not run."""
    name, cls = name_cls
    check_param_validation(name, cls())


@pytest.mark.parametrize("name_cls", all_estimators(), ids=lambda p: p[0])
def test_numeric_parameters_refuse_bools(name_cls):
    """bool is an Integral: scikit-learn's Interval took scale=True for 1.0,
    n_jobs=True for 1, damp=True, rank=True, ..."""
    from sklearn.utils._param_validation import Interval, InvalidParameterError

    name, cls = name_cls
    numeric = [
        param
        for param, constraints in cls._parameter_constraints.items()
        if isinstance(constraints, list)
        and any(isinstance(c, Interval) for c in constraints)
        and not any(c == "boolean" or c is bool for c in constraints)
    ]
    assert numeric, name  # (every estimator has one: n_jobs, n_bits, ...)
    for param in numeric:
        for bad in (True, np.bool_(False)):
            est = cls().set_params(**{param: bad})
            with pytest.raises(InvalidParameterError, match=f"'{param}' parameter"):
                est._validate_params()


@pytest.mark.parametrize("name_cls", all_estimators(), ids=lambda p: p[0])
def test_docstring_has_example(name_cls):
    _, cls = name_cls
    assert ">>> " in (cls.__doc__ or ""), f"{cls.__name__} has no doctest example"


WEIGHT_QUANTIZERS = [
    cls
    for name, cls in all_estimators()
    if name.endswith("Quantizer") and name != "ActivationQuantizer"
]


@pytest.mark.parametrize("cls", WEIGHT_QUANTIZERS, ids=lambda c: c.__name__)
def test_scale_is_the_grid_step(cls):
    # one name per quantity: every weight quantizer's scale_ multiplies its codes
    rng = np.random.default_rng(3)
    W = rng.standard_normal((40, 6)) / 4
    needs = cls._fit_requires != "weights"
    q = _with_calibration(cls)() if needs else cls()
    if "n_bits" in q.get_params():
        q.set_params(n_bits=3)
    q.fit(W)
    codes = q.encode(W)
    assert codes.dtype.kind in "iu"
    # data-driven quantizers round with their float64 step; scale_ is that step
    # stored in float32 (rounded up), hence the float32 tolerance
    np.testing.assert_allclose(
        q.transform(W), codes * np.broadcast_to(q.scale_, (W.shape[1],)), rtol=1e-6
    )


@pytest.mark.parametrize("cls", WEIGHT_QUANTIZERS, ids=lambda c: c.__name__)
def test_weight_quantizers_know_their_channels_names(cls):
    """A DataFrame's column names are the channels' names: recorded at fit,
    checked later (reordered channels took the wrong channels' scales: a
    100x error, silently), given back by get_feature_names_out and by
    set_output(transform="pandas")."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(4)
    W = pd.DataFrame(
        rng.standard_normal((40, 3)) * [0.01, 1.0, 100.0], columns=["s", "m", "b"]
    )
    needs = cls._fit_requires != "weights"
    q = (_with_calibration(cls)() if needs else cls()).fit(W)
    assert list(q.feature_names_in_) == ["s", "m", "b"]
    assert list(q.get_feature_names_out()) == ["s", "m", "b"]
    for call in (q.transform, q.encode, q.compress):
        with pytest.raises(ValueError, match=r"W's columns \(output channels\)"):
            call(W[["b", "m", "s"]])
    out = q.set_output(transform="pandas").transform(W)
    assert list(out.columns) == ["s", "m", "b"] and out.index.equals(W.index)
    np.testing.assert_array_equal(
        out.to_numpy(), q.set_output(transform="default").transform(W.to_numpy())
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: skquant.UniformQuantizer(n_jobs=0),
        lambda: skquant.ActivationQuantizer(n_jobs=0),
        lambda: skquant.AdaptivePrecisionQuantizer(n_jobs=0),
    ],
    ids=["uniform", "activation", "adaptive"],
)
def test_n_jobs_zero_is_refused_by_name(make):
    from sklearn.utils._param_validation import InvalidParameterError

    W = np.random.default_rng(0).standard_normal((8, 3))
    est = make()
    with pytest.raises(InvalidParameterError, match="n_jobs"):
        if isinstance(est, skquant.AdaptivePrecisionQuantizer):
            est.fit(W, gradient=W)
        else:
            est.fit(W)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda a: skquant.UniformQuantizer().fit(a), "W"),
        (
            lambda a: skquant.GreedyPathQuantizer().fit(np.ones((3, 2)), activations=a),
            "activations",
        ),
        (
            lambda a: skquant.AdaptivePrecisionQuantizer().fit(
                np.ones((3, 2)), gradient=a
            ),
            "gradient",
        ),
        (lambda a: skquant.metrics.relative_error(np.ones((3, 2)), a), "Q"),
        (
            lambda a: skquant.metrics.relative_error(
                np.ones((3, 2)), np.ones((3, 2)), X=a
            ),
            "X",
        ),
    ],
)
def test_array_errors_name_the_parameter(call, name):
    # scikit-learn's messages for these ("Expected 2D array", "Complex data not
    # supported") named neither the parameter nor the array
    for bad, match in [
        (np.ones(3), "Expected 2D array"),
        (np.ones((2, 3)) + 1j, "Complex data not supported"),
        (np.ones((2, 3, 1)), "Found array with dim 3"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}: {match}"):
            call(bad)


def test_a_torch_tensor_that_needs_gradients_is_read():
    torch = pytest.importorskip("torch")
    W = torch.randn(8, 3, requires_grad=True)  # (NumPy's conversion refused it)
    q = skquant.UniformQuantizer().fit(W)
    ref = skquant.UniformQuantizer().fit(W.detach().numpy())
    np.testing.assert_array_equal(q.transform(W), ref.transform(W.detach().numpy()))
    X = torch.randn(5, 8, requires_grad=True)
    gp = skquant.GreedyPathQuantizer().fit(W, activations=X)
    assert gp.codes_.shape == (8, 3)
