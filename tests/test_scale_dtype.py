"""Stored scales are float32 whatever the weights' dtype, and used exactly as stored.

The weight quantizers store their steps (``scale_``) in float32: a float64 ``W``
costs 32 bits per scale, not 64, and every path that dequantizes (``transform``,
``decode``, ``QuantizedTensor.dequantize``, a saved and loaded file, the torch
layers) computes ``code * scale`` with that float32 step, converted exactly to
``W``'s dtype.
"""

import importlib.util
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from strategies import weight_matrices

import skquant
from skquant import (
    BinaryQuantizer,
    GPTQQuantizer,
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    QuantizedMLP,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant._tensor._alphabets import SCALE_DTYPE, stored_scale

MEMORYLESS = [
    UniformQuantizer(n_bits=4),
    UniformQuantizer(n_bits=8, scale="mse"),
    UniformQuantizer(n_bits=3, granularity="per_tensor"),
    TernaryQuantizer(),
    BinaryQuantizer(),
]
DATA_DRIVEN = [
    GreedyPathQuantizer(n_bits=4),
    GreedyPathQuantizer(n_bits="ternary"),
    GPTQQuantizer(n_bits=3),
    NullSpaceQuantizer(n_bits=4, rank=2),
]


def _bits(a):
    """The bytes of ``a`` as unsigned integers: equality is bit for bit."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


@given(
    weight_matrices(max_rows=24, max_cols=6),
    st.sampled_from(MEMORYLESS),
)
def test_memoryless_scales_are_float32_and_used_as_stored(W, est):
    from sklearn.base import clone

    q = clone(est).fit(W)
    assert q.scale_.dtype == SCALE_DTYPE
    Q = q.transform(W)
    assert Q.dtype == W.dtype
    codes = q.encode(W)
    # decode(encode(W)) == transform(W), bit for bit, in W's dtype
    decoded = q.decode(codes)
    assert decoded.dtype == W.dtype
    assert_array_equal(_bits(decoded), _bits(Q))
    qt = q.compress(W)
    assert_array_equal(_bits(qt.dequantize()), _bits(Q))
    # the value is the code times the float32 step, converted to W's dtype
    step = np.broadcast_to(q.scale_.astype(W.dtype), (W.shape[1],))
    assert_array_equal(Q, codes.astype(W.dtype) * step)


@pytest.mark.parametrize("est", DATA_DRIVEN, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_data_driven_scales_are_float32_and_used_as_stored(est, dtype, rng):
    from sklearn.base import clone

    W = rng.standard_normal((24, 5)).astype(dtype)
    X = rng.standard_normal((40, 24))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = clone(est).fit(W, activations=X)
    assert q.scale_.dtype == SCALE_DTYPE
    Q = q.transform(W)
    assert Q.dtype == dtype
    assert_array_equal(_bits(q.decode(q.encode(W))), _bits(Q))
    assert_array_equal(_bits(q.compress(W).dequantize()), _bits(Q))
    step = np.broadcast_to(q.scale_.astype(dtype), (W.shape[1],))
    assert_array_equal(Q, q.encode(W).astype(dtype) * step)


@given(
    st.integers(1, 16).map(lambda k: 8 * k),
    st.integers(1, 12),
    st.sampled_from(["uniform", "gpfq"]),
    st.integers(0, 2**32 - 1),
)
def test_float64_weights_cost_32_bits_a_scale(n_in, n_out, method, seed):
    # n_in * n_out is a multiple of 8: the packed codes are exactly 4 bits each
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_in, n_out))  # float64, as sklearn's coefs_
    if method == "uniform":
        q = UniformQuantizer(n_bits=4).fit(W)
    else:
        q = GreedyPathQuantizer(n_bits=4).fit(
            W, activations=rng.standard_normal((8, n_in))
        )
    qt = q.compress(W)
    assert qt.scale.dtype == np.float32
    assert qt.size_bits == 4 * n_in * n_out + 32 * n_out
    assert qt.bits_per_param == 4 + 32 / n_in


def test_float64_layer_of_64_inputs_is_4_5_bits(rng):
    W = rng.standard_normal((64, 32))
    assert UniformQuantizer(n_bits=4).fit(W).compress(W).bits_per_param == 4.5


def test_quantized_mlp_on_float64_counts_float32_scales(digits_mlp):
    # the README's example: GPFQ at 4 bits on an MLP trained on float64 data
    mlp, X, y = digits_mlp
    assert mlp.coefs_[0].dtype == np.float64
    qmlp = QuantizedMLP(mlp, GreedyPathQuantizer(n_bits=4)).fit(X[1200:])
    bits = [row["bits"] for row in qmlp.report_.rows]
    n_in = [W.shape[0] for W in mlp.coefs_]
    assert bits == [4 + 32 / n for n in n_in]  # 64 inputs: 4.5; 32: 5.0
    for t in qmlp.tensors_:
        assert t.scale.dtype == np.float32 and t.float_dtype == np.float64
    assert qmlp.estimator_.coefs_[0].dtype == np.float64


@pytest.mark.parametrize(
    "quantizer", [GreedyPathQuantizer(n_bits=4), UniformQuantizer(n_bits=4)]
)
def test_quantized_mlp_takes_float32_rows_as_the_float64_ones(digits_mlp, quantizer):
    """float32 data is not copied whole to float64 (only the calibration rows
    are): the same model and the same predictions as its float64 twin."""
    mlp, X, y = digits_mlp
    X32 = X.astype(np.float32)
    X64 = X32.astype(np.float64)  # the same values
    a = QuantizedMLP(mlp, quantizer, random_state=0).fit(X32[1200:])
    b = QuantizedMLP(mlp, quantizer, random_state=0).fit(X64[1200:])
    for ta, tb in zip(a.tensors_, b.tensors_):
        assert_array_equal(ta.codes, tb.codes)
    assert_array_equal(a.predict_proba(X32), b.predict_proba(X64))


@given(weight_matrices(max_rows=20, max_cols=5), st.sampled_from(MEMORYLESS))
def test_save_load_round_trip_is_bit_exact(tmp_path_factory, W, est):
    from sklearn.base import clone

    q = clone(est).fit(W)
    qt = q.compress(W)
    path = tmp_path_factory.mktemp("scales") / "t.skq"
    skquant.save(qt, path)
    back = skquant.load(path)
    assert back.scale.dtype == np.float32
    assert_array_equal(_bits(back.scale), _bits(qt.scale))
    assert_array_equal(back.codes, qt.codes)
    assert back.float_dtype == W.dtype
    assert_array_equal(_bits(back.dequantize()), _bits(q.transform(W)))
    assert back.size_bits == qt.size_bits


def test_quantized_mlp_file_round_trip_is_bit_exact(digits_mlp, tmp_path):
    mlp, X, _ = digits_mlp
    qmlp = QuantizedMLP(mlp, UniformQuantizer(n_bits=4)).fit(X[1200:])
    skquant.save(qmlp, tmp_path / "m.skq")
    back = skquant.load(tmp_path / "m.skq")
    for a, b in zip(back.estimator_.coefs_, qmlp.estimator_.coefs_):
        assert a.dtype == b.dtype == np.float64
        assert_array_equal(_bits(a), _bits(b))
    for a, b in zip(back.tensors_, qmlp.tensors_):
        assert a.scale.dtype == np.float32
        assert_array_equal(_bits(a.scale), _bits(b.scale))
    assert_array_equal(back.predict_proba(X), qmlp.predict_proba(X))


def test_stored_scale_rounds_up_and_guards_the_float32_range():
    f32 = np.finfo(np.float32)
    level = np.array([0.1, 0.7, 0.0, 1e-300, 1e300, f32.tiny, 0.25])
    s = stored_scale(level)
    assert s.dtype == np.float32
    # float32(0.7) is below 0.7: the stored step is the next float32 up
    up = np.nextafter(np.float32(0.7), np.float32(1))
    expected = [np.float32(0.1), up, f32.eps, f32.eps, f32.max, f32.tiny, 0.25]
    assert_array_equal(s, np.array(expected, dtype=np.float32))


@given(st.floats(1e-30, 1e30), st.sampled_from([np.float32, np.float64]))
def test_stored_scale_is_the_smallest_float32_not_below(level, dtype):
    level = np.array([level], dtype=dtype)
    s = stored_scale(level)
    assert s.astype(np.float64)[0] >= level.astype(np.float64)[0]
    below = np.nextafter(s, np.float32(0)).astype(np.float64)
    assert below[0] < level.astype(np.float64)[0]


@given(weight_matrices(max_rows=24, max_cols=6), st.integers(2, 16))
def test_maxabs_clips_nothing_with_float32_steps(W, n_bits):
    q = UniformQuantizer(n_bits=n_bits).fit(W)
    step = np.broadcast_to(q.scale_.astype(np.float64), (W.shape[1],))
    err = np.abs(W.astype(np.float64) - q.transform(W))
    # every entry, the largest included, is within half a step (a few ulps)
    tol = 4 * np.finfo(W.dtype).eps * (np.abs(W) + step)
    normal = np.abs(W).max(axis=0) / q.qmax_ >= np.finfo(np.float32).tiny
    assert np.all((err <= step / 2 + tol)[:, normal])


def test_huge_float64_weights_are_clipped_not_nan():
    W = np.array([[1e300, 1.0], [-2e300, 0.5]])
    with pytest.warns(UserWarning, match=r"channels \[0\] is above float32"):
        q = UniformQuantizer(n_bits=4).fit(W)
    Q = q.transform(W)
    assert np.all(np.isfinite(Q))
    assert Q[1, 0] == -7 * np.float64(np.finfo(np.float32).max)
    assert_array_equal(q.decode(q.encode(W)), Q)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="no torch")
def test_torch_paths_use_the_stored_float32_scale(rng):
    import torch

    from skquant.torch import FakeQuantize, quantize_model

    W = rng.standard_normal((16, 6))
    est = UniformQuantizer(n_bits=4).fit(W)
    fq = FakeQuantize.from_estimator(est)
    assert fq.scale.dtype == torch.float32
    out = fq(torch.from_numpy(W)).numpy()
    assert out.dtype == np.float64
    assert_array_equal(_bits(out), _bits(est.transform(W)))

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 6)).double()
    Wt = net[0].weight.detach().numpy().T.copy()  # (n_in, n_out)
    qnet = quantize_model(net, UniformQuantizer(n_bits=4))
    layer = qnet[0]
    assert layer.weight_scale.dtype == torch.float32
    ref = UniformQuantizer(n_bits=4).fit(Wt).transform(Wt)
    assert_array_equal(_bits(layer.weight.detach().numpy().T), _bits(ref))
