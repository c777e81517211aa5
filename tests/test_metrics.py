"""Metrics: relative error, SQNR, model size."""

import warnings

import numpy as np
import pytest

from skquant import quantize
from skquant.metrics import compression_ratio, model_size_bits, relative_error, sqnr


def test_relative_error_by_hand():
    W = np.array([[3.0], [4.0]])
    assert relative_error(W, np.array([[3.0], [3.0]])) == pytest.approx(0.2)
    X = np.array([[1.0, 0.0], [0.0, 2.0]])
    # X W = [3, 8], X Q = [3, 6]: error 2 / sqrt(73)
    assert relative_error(W, np.array([[3.0], [3.0]]), X) == pytest.approx(
        2 / np.sqrt(73)
    )
    assert relative_error(np.zeros((2, 1)), np.zeros((2, 1))) == 0.0
    assert relative_error(np.zeros((2, 1)), np.ones((2, 1))) == np.inf


@pytest.mark.parametrize("scale", [2.0**600, 2.0**-600, 1e300, 1e-300])
def test_errors_do_not_depend_on_a_common_scale(scale):
    # squares of 1e200 overflowed (NaN) and those of 1e-170 underflowed (0)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 3))
    Q = W + rng.standard_normal((6, 3)) / 10
    X = rng.standard_normal((5, 6))
    assert relative_error(W * scale, Q * scale) == pytest.approx(relative_error(W, Q))
    assert relative_error(W, Q, X * scale) == pytest.approx(relative_error(W, Q, X))
    assert sqnr(W * scale, Q * scale) == pytest.approx(sqnr(W, Q))


def test_sqnr_by_hand():
    assert sqnr(np.array([[10.0]]), np.array([[9.0]])) == pytest.approx(20.0)
    assert sqnr(np.ones((2, 2)), np.ones((2, 2))) == np.inf
    with warnings.catch_warnings():  # no signal, only noise: -inf, no warning
        warnings.simplefilter("error")
        assert sqnr(np.zeros((2, 2)), np.ones((2, 2))) == -np.inf


def test_metric_errors():
    with pytest.raises(
        ValueError, match=r"same shape, got W.shape=\(2, 1\) and Q.shape=\(1, 2\)"
    ):
        relative_error(np.ones((2, 1)), np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"X must have W.shape\[0\]=2 columns"):
        relative_error(np.ones((2, 1)), np.ones((2, 1)), X=np.ones((4, 3)))
    with pytest.raises(ValueError, match="Input W contains NaN"):
        sqnr(np.array([[np.nan]]), np.array([[1.0]]))


def test_model_size_refuses_what_is_not_tensors():
    qt = quantize(np.ones((4, 4)))
    # a string counted one float a character; a nested list one float a tensor
    for bad in ("abc", [[qt]], None, 3, [qt, "b"]):
        with pytest.raises(TypeError, match="tensors must be a QuantizedTensor, an"):
            model_size_bits(bad)
    assert model_size_bits([qt, [0.5, 1.0]]) == qt.size_bits + 64


def test_model_size_and_compression_with_biases():
    W = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    b = np.zeros(10, np.float32)
    qt = quantize(W, n_bits=2)
    bits = model_size_bits([qt, b])
    assert bits == 64 * 10 * 2 + 10 * 32 + 10 * 32
    assert compression_ratio([qt, b]) == pytest.approx(32 * 650 / bits)
    assert model_size_bits(b, float_bits=16) == 160
    assert compression_ratio(b) == 1.0


def test_float_bits_is_checked_by_name():
    for bad in (0, -1, 2.5, "32", True):
        with pytest.raises(ValueError, match=r"float_bits must be an int >= 1"):
            model_size_bits([np.zeros(10)], float_bits=bad)
        with pytest.raises(ValueError, match=r"float_bits must be an int >= 1"):
            compression_ratio([np.zeros(10)], float_bits=bad)


def test_empty_model_has_no_compression_ratio():
    for empty in ([], [np.zeros(0)], {}):
        with pytest.raises(ValueError, match="tensors must hold at least one entry"):
            compression_ratio(empty)


def test_a_dict_counts_its_values_not_its_keys():
    qt = quantize(np.random.default_rng(0).standard_normal((100, 10)), n_bits=4)
    b = np.zeros(10)
    state = {"w": qt, "b": b}
    assert model_size_bits(state) == model_size_bits([qt, b]) == qt.size_bits + 320
    assert compression_ratio(state) == compression_ratio([qt, b])
