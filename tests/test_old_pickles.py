"""Pickles made before the package moved into its rooms still load and work.

They name the old flat module paths (``skquant._mlp``, ``skquant._uniform``,
``skquant._precision``, ...); the pickles and the numbers they gave were written by
the code of that time (tests/data/pickles_before_rooms/make_pickles.py, at commit
1facab1).
"""

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "pickles_before_rooms"


@pytest.fixture(scope="module")
def expected():
    return np.load(DATA / "expected_pickles.npz")


def _load(name):
    with warnings.catch_warnings():
        # the scikit-learn version is the same; the estimator warns otherwise
        warnings.simplefilter("ignore", UserWarning)
        return pickle.loads((DATA / f"{name}.pkl").read_bytes())


def test_quantized_mlp_pickle(expected):
    q = _load("quantized_mlp")
    # to round-off: BLAS products round differently from one CPU to another
    np.testing.assert_allclose(
        q.predict_proba(expected["X"]), expected["mlp_proba"], rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize(
    "name", ["uniform", "ternary", "gptq", "nullspace", "adaptive"]
)
def test_weight_quantizer_pickles(expected, name):
    q = _load(name)
    W = expected["W"]
    np.testing.assert_array_equal(q.transform(W), expected[f"transform_{name}"])
    # and it keeps today's meaning of scale_: the step its codes are multiplied by
    np.testing.assert_allclose(
        q.transform(W),
        q.encode(W) * np.broadcast_to(q.scale_, (W.shape[1],)),
        rtol=1e-6,
    )


def test_activation_quantizer_and_tensor_pickles(expected):
    a = _load("activation")
    np.testing.assert_array_equal(a.transform(expected["X"]), expected["activation"])
    np.testing.assert_array_equal(_load("tensor").dequantize(), expected["tensor"])


def test_layer_bit_allocator_pickle(expected):
    alloc = _load("allocator")
    bits = np.array([alloc.bits_[k] for k in sorted(alloc.bits_)])
    np.testing.assert_array_equal(bits, expected["bits"])
    assert type(alloc.sensitivity_).__name__ == "SensitivityResult"
    assert alloc.get_params()["time_limit"] == 10.0  # (a parameter since)
    before = dict(alloc.bits_)
    assert alloc.allocate(max_cost=1.0) == before  # (its default target, again)


def test_unknown_old_name_is_an_attribute_error():
    import skquant._precision

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        skquant._precision.NoSuchThing  # noqa: B018
