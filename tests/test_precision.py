"""Per-parameter adaptive precision: the method's oracles for the numba core."""

import re
import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

import skquant
from skquant import AdaptivePrecisionQuantizer
from skquant._kernels import _precision
from skquant._precision._allocate import (
    allocate_precision,
    precision_map_bits,
    water_fill,
)


def _reference_kappa(a, budget, delta):
    """Sort-based water filling (the straightforward NumPy version)."""
    b = np.sort(delta * a[a > 0])
    if budget >= b.sum():
        return b.max() if b.size else np.inf
    below = np.concatenate([[0.0], np.cumsum(b)])
    for t in range(b.size):
        kappa = (budget - below[t]) / (b.size - t)
        if (t == 0 or kappa >= b[t - 1]) and kappa <= b[t]:
            return kappa
    raise AssertionError("no root")


gradients = hnp.arrays(
    np.float64,
    st.integers(1, 300),
    elements=st.one_of(st.just(0.0), st.floats(1e-8, 1e3)),
)


@given(gradients, st.floats(1e-3, 0.999), st.floats(1e-3, 1.0))
def test_budget_met_exactly_unless_all_clipped(a, frac, delta):
    total = delta * a.sum()
    if total == 0:
        assert water_fill(a, 1.0, delta) == np.inf
        return
    budget = frac * total
    for n_jobs in (None, 2):
        kappa = water_fill(a, budget, delta, n_jobs=n_jobs)
        tau = np.where(a * delta <= kappa, delta, kappa / np.where(a > 0, a, 1))
        np.testing.assert_allclose((a * tau).sum(), budget, rtol=1e-9)
        np.testing.assert_allclose(kappa, _reference_kappa(a, budget, delta), rtol=1e-9)
        # margins inversely proportional to |g| where unclipped
        free = a * delta > kappa
        np.testing.assert_allclose(tau[free] * a[free], kappa, rtol=1e-12)
        assert np.all(tau <= delta)
    # a budget above delta * sum|g|: every margin is the trust region
    kappa = water_fill(a, 2 * total, delta)
    assert np.all(a * delta <= kappa)


@given(gradients, st.floats(1e-3, 1.0))
def test_kappa_monotone_in_the_budget(a, delta):
    total = delta * a.sum()
    if total == 0:
        return
    kappas = [water_fill(a, f * total, delta) for f in (0.01, 0.1, 0.5, 0.9)]
    assert all(k1 <= k2 for k1, k2 in zip(kappas, kappas[1:]))


@given(
    hnp.arrays(np.float64, st.integers(1, 200), elements=st.floats(-0.999, 0.999)),
    st.floats(1e-4, 0.5),
    st.integers(0, 10**6),
)
def test_every_error_within_its_margin_and_fewest_bits(w, delta, seed):
    a = np.abs(np.random.default_rng(seed).standard_normal(w.size))
    budget = 0.3 * delta * a.sum()
    kappa = water_fill(a, budget, delta)
    tau, bits, q = np.empty(w.size), np.empty(w.size, np.int8), np.empty(w.size)
    _precision.fixed_point_quantize(w, a, kappa, delta, 30, tau, bits, q)
    assert np.all(np.abs(w - q) <= tau)
    pruned = bits == 0
    assert_array_equal(pruned, (np.abs(w) <= tau) | (q == 0))
    assert np.all(q[pruned] == 0)
    n = bits[~pruned].astype(int) - 1  # stored fractional bits
    qk, t, wk = q[~pruned], tau[~pruned], w[~pruned]
    # q holds exactly in n bits, not in n - 1
    assert_array_equal(qk * 2.0**n, np.rint(qk * 2.0**n))
    assert np.all((n == 0) | (qk * 2.0 ** (n - 1) != np.rint(qk * 2.0 ** (n - 1))))
    # the margin's grid: N = fewest bits with 2^-(N+1) <= tau; never more stored
    N = np.ceil(-np.log2(t) - 1).clip(0)
    N = np.where(2.0 ** -(N + 1) > t, N + 1, N)
    assert np.all(n <= N)
    # re-rounding w on the stored grid gives q back (transform relies on it)
    assert_array_equal(np.rint(wk * 2.0**n) / 2.0**n, qk)


def test_parallel_kernels_match_serial():
    rng = np.random.default_rng(0)
    a = np.abs(rng.standard_normal(300_000)) * (rng.random(300_000) > 0.2)
    w = rng.uniform(-0.99, 0.99, 300_000)
    k1 = _precision.water_fill(a, 10.0, 0.05)
    k2 = _precision.water_fill_parallel(a, 10.0, 0.05)
    assert k1 == k2
    outs = []
    for f in (
        _precision.fixed_point_quantize,
        _precision.fixed_point_quantize_parallel,
    ):
        tau, bits, q = np.empty(a.size), np.empty(a.size, np.int8), np.empty(a.size)
        f(w, a, k1, 0.05, 24, tau, bits, q)
        outs.append((tau, bits, q))
    for x, y in zip(*outs):
        assert_array_equal(x, y)


def test_estimator_oracles_and_accounting():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((60, 8))
    G = rng.standard_normal((60, 8)) * np.exp(rng.standard_normal((60, 8)))
    G[0, 0] = 0.0
    q = AdaptivePrecisionQuantizer(budget=0.05, trust_region=0.1).fit(W, gradient=G)
    Q = q.transform(W)
    assert np.all(np.abs(W - Q) <= q.margins_)
    np.testing.assert_allclose((np.abs(G) * q.margins_).sum(), 0.05, rtol=1e-9)
    assert q.predicted_loss_increase_ <= 0.05 + 1e-12
    assert q.range_ == 4.0  # max|W| in [2, 4)
    assert q.margins_[0, 0] == pytest.approx(0.1 * q.range_)  # zero gradient
    # larger gradient -> smaller margin -> more bits (where unclipped)
    free = np.abs(G) * q.margins_ > 0
    i, j = np.unravel_index(np.argmax(np.abs(G)), G.shape)
    assert q.bits_[i, j] >= np.median(q.bits_[free])
    # raw, the last stored bit of a code with >= 1 fractional bit is implied
    b = q.bits_.astype(int)
    raw = AdaptivePrecisionQuantizer(
        budget=0.05, trust_region=0.1, payload_coder="raw"
    ).fit(W, gradient=G)
    raw_bits = b.sum() - np.count_nonzero(b >= 2)
    assert raw.payload_bits_ == 8 * ((raw_bits + 7) // 8)
    assert np.array_equal(raw.transform(W), Q)
    # the range coder only codes a class of fields where that saves bits
    assert q.payload_bits_ <= raw.payload_bits_
    assert q.size_bits_ == q.payload_bits_ + q.precision_map_bits_["stored"] + 16
    # "auto" keeps the smaller coder, never above the fixed-width map
    assert q.precision_map_bits_["stored"] <= q.precision_map_bits_["fixed"] + 64
    # a larger budget never costs more bits
    q2 = AdaptivePrecisionQuantizer(budget=0.5, trust_region=0.1).fit(W, gradient=G)
    assert q2.payload_bits_ <= q.payload_bits_


def test_precision_map_bits_by_hand():
    bits = np.array([0, 0, 5, 5, 5, 5, 9, 9])
    sizes = precision_map_bits(bits)
    # 3 levels: 2-bit index x 8 + 3 x 8-bit table; entropy 1.5 bits x 8 = 12 + 24
    assert sizes == {"fixed": 16 + 24, "entropy": 12 + 24}


def test_all_zero_gradients_give_the_trust_region():
    W = np.random.default_rng(2).standard_normal((10, 3))
    q = AdaptivePrecisionQuantizer(trust_region=0.25).fit(W, gradient=np.zeros_like(W))
    np.testing.assert_allclose(q.margins_, 0.25 * q.range_)
    assert q.kappa_ == np.inf


def test_allocate_precision_shares_one_budget():
    rng = np.random.default_rng(3)
    Ws = [rng.standard_normal((20, 5)), rng.standard_normal(7) * 0.01]
    Gs = [rng.standard_normal((20, 5)), rng.standard_normal(7)]
    res = allocate_precision(Ws, Gs, 0.1, 0.05)
    total = sum((np.abs(G) * m).sum() for G, m in zip(Gs, res["margins"]))
    np.testing.assert_allclose(total, 0.1, rtol=1e-9)
    assert res["scales"] == [4.0, 2.0 ** np.floor(np.log2(np.abs(Ws[1]).max()) + 1)]


def test_bad_input():
    W = np.ones((4, 3))
    with pytest.raises(ValueError, match="requires the loss gradient"):
        AdaptivePrecisionQuantizer().fit(W)
    with pytest.raises(
        ValueError, match=re.escape("gradient must have the shape of W (4, 3)")
    ):
        AdaptivePrecisionQuantizer().fit(W, gradient=np.ones((3, 4)))
    with pytest.raises(ValueError, match="Input gradient contains NaN"):
        AdaptivePrecisionQuantizer().fit(W, gradient=np.full((4, 3), np.nan))
    for name, value in (("budget", 0.0), ("budget", -1.0), ("trust_region", 0.0)):
        with pytest.raises(ValueError, match=f"The '{name}' parameter"):
            AdaptivePrecisionQuantizer(**{name: value}).fit(W, gradient=W)
    q = AdaptivePrecisionQuantizer().fit(W, gradient=W)
    with pytest.raises(ValueError, match="fitted shape"):
        q.transform(np.ones((5, 3)))


def test_inputs_not_modified_dtype_kept():
    W = np.random.default_rng(4).standard_normal((8, 2)).astype(np.float32)
    G = np.ones((8, 2))
    W0, G0 = W.copy(), G.copy()
    Q = AdaptivePrecisionQuantizer().fit(W, gradient=G).transform(W)
    assert Q.dtype == np.float32
    assert_array_equal(W, W0)
    assert_array_equal(G, G0)


@given(
    W=hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        st.tuples(st.integers(1, 12), st.integers(1, 5)),
        elements=st.floats(-100, 100, allow_nan=False, width=32),
    ),
    budget=st.floats(1e-4, 10),
)
# a subnormal float32 weight: its step would be below the smallest normal number
@example(W=np.array([[1e-45]], dtype=np.float32), budget=1.0)
def test_encode_compress_decode_equal_transform(W, budget):
    G = np.random.default_rng(0).standard_normal(W.shape)
    q = AdaptivePrecisionQuantizer(budget=budget).fit(W, gradient=G)
    codes = q.encode(W)
    assert codes.dtype.kind == "i"
    assert_array_equal(q.decode(codes, dtype=W.dtype), q.transform(W))
    qt = q.compress(W)
    assert qt.alphabet == "fixed_point"
    assert qt.dequantize().dtype == W.dtype
    assert_array_equal(qt.dequantize(), q.transform(W))
    assert qt.size_bits == q.size_bits_
    # a weight with N fractional bits has a code that is a multiple of 2^(N_max - N)
    n_frac = np.maximum(q.bits_.astype(np.int64) - 1, 0)
    shift = int(n_frac.max()) - n_frac
    assert np.all(codes.astype(np.int64) % (2**shift) == 0)


def test_compress_errors():
    W = np.ones((4, 3))
    q = AdaptivePrecisionQuantizer().fit(W, gradient=W)
    with pytest.raises(ValueError, match=re.escape("codes must have the fitted shape")):
        q.decode(np.zeros((3, 3), dtype=np.int8))
    with pytest.raises(TypeError, match="must be integers"):
        q.decode(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="variable-width codes"):
        q.compress(W).pack()


def test_other_weights_get_an_error_not_wrapped_codes():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((30, 5)) / 4
    q = AdaptivePrecisionQuantizer(budget=0.05).fit(W, gradient=W * 1e-2)
    with pytest.raises(ValueError, match="beyond the fitted range"):
        q.encode(10 * W)  # its codes wrapped around in int8
    with pytest.raises(ValueError, match="Compress the W that was fitted"):
        q.compress(W + 0.01)
    # the fitted W, and any W inside the range, encode as before
    np.testing.assert_array_equal(q.decode(q.encode(W)), q.transform(W))
    np.testing.assert_array_equal(q.decode(q.encode(W / 2)), q.transform(W / 2))


def test_max_bits_cap_below_a_margin_warns():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((20, 5))
    G = rng.standard_normal((20, 5)) * 1e-3
    G[3, 2] = 1e9  # one parameter asks for a margin far below 2^-max_bits
    with pytest.warns(UserWarning, match=r"max_bits=8 caps 1 parameter\(s\)"):
        res = allocate_precision([W], [G], 1e-2, 0.05, max_bits=8)
    err = np.abs(res["quantized"][0] - W)
    assert err[3, 2] > res["margins"][0][3, 2]  # what the warning says
    # every margin honoured: nothing to say
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = allocate_precision([W], [G * 0 + 1e-3], 1e-2, 0.05, max_bits=24)
    assert np.all(np.abs(res["quantized"][0] - W) <= res["margins"][0])


def test_memory_per_weight_of_fit_compress_transform_and_load(tmp_path, traced_peak):
    """Bytes allocated per weight at the peak (float32 weights and gradient):
    the fit held about 127 (whole-matrix int64 and float64 temporaries in the
    encoding and the rounding), compress 98, transform 49 and load 82; the
    passes now go a block of rows at a time and the stored form is made and
    read in one pass over narrow arrays. The stored bytes are unchanged."""
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((600, 600)) * 0.05).astype(np.float32)
    G = (rng.standard_normal((600, 600)) * 1e-3).astype(np.float32)
    small = AdaptivePrecisionQuantizer(budget=1e-2)  # compiled before measuring
    skquant.save(
        small.fit(W[:40, :40], gradient=G[:40, :40]).compress(W[:40, :40]),
        tmp_path / "small.skq",
    )
    skquant.load(tmp_path / "small.skq")
    q, fit = traced_peak(
        lambda: AdaptivePrecisionQuantizer(budget=1e-2).fit(W, gradient=G)
    )
    qt, compress = traced_peak(lambda: q.compress(W))
    Wq, transform = traced_peak(lambda: q.transform(W))
    skquant.save(qt, tmp_path / "w.skq")
    back, load = traced_peak(lambda: skquant.load(tmp_path / "w.skq"))
    per = {
        k: v / W.size
        for k, v in dict(
            fit=fit, compress=compress, transform=transform, load=load
        ).items()
    }
    assert per["fit"] < 64 and per["compress"] < 40, per
    assert per["transform"] < 24 and per["load"] < 40, per
    assert_array_equal(back.codes, qt.codes)
    assert_array_equal(back.precision_bits, qt.precision_bits)
    assert_array_equal(Wq, qt.dequantize().astype(np.float32))


def test_compress_codes_and_decode_check_their_input():
    from sklearn.exceptions import NotFittedError

    rng = np.random.default_rng(0)
    W, G = rng.standard_normal((10, 4)), rng.standard_normal((10, 4)) * 1e-2
    with pytest.raises(NotFittedError):
        AdaptivePrecisionQuantizer().compress_codes(np.zeros((2, 2), int))
    with pytest.raises(NotFittedError):  # (AttributeError on 'bits_' before)
        AdaptivePrecisionQuantizer().compress(W)
    q = AdaptivePrecisionQuantizer().fit(W, gradient=G)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "codes must have the fitted shape (10, 4), got codes.shape=(2, 2)"
        ),
    ):
        q.compress_codes(np.zeros((2, 2), int))
    with pytest.raises(
        TypeError, match="codes of AdaptivePrecisionQuantizer must be integers"
    ):
        q.compress_codes(W)
    qmin, qmax = q._code_range()
    for code in (2**40, qmax + 1, qmin - 1):  # beyond the fitted range
        with pytest.raises(
            ValueError, match=re.escape(f"codes must lie in [{qmin}, {qmax}]")
        ):
            q.decode(np.full(W.shape, code))
    assert_array_equal(q.decode(np.full(W.shape, qmax)), np.full(W.shape, q.range_))


@pytest.mark.parametrize("dtype", [np.int32, np.float16, "float128", "nope", ">f8"])
def test_decode_dtype_is_checked_by_name(dtype):
    W = np.random.default_rng(0).standard_normal((8, 4))
    q = AdaptivePrecisionQuantizer().fit(W, gradient=W)
    with pytest.raises(
        ValueError,
        match="dtype must be float32, float64 or None, got dtype="
        + re.escape(repr(dtype)),
    ):
        q.decode(q.encode(W), dtype=dtype)
    assert q.decode(q.encode(W), dtype=np.float32).dtype == np.float32


def test_a_dataframe_gradient_must_name_ws_channels_in_order():
    """The gradient's columns are W's channels: reordered ones are refused
    (used by position, they gave each channel another's precision), and
    compress of the fitted DataFrame says nothing about feature names."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    cols = ["a", "b", "c", "d"]
    W = pd.DataFrame(rng.standard_normal((50, 4)), columns=cols)
    G = pd.DataFrame(
        rng.standard_normal((50, 4)) * [1e-4, 1e-4, 1e-4, 1.0], columns=cols
    )
    q = AdaptivePrecisionQuantizer(budget=0.05)
    with pytest.raises(ValueError, match=r"gradient's columns must be W's"):
        q.fit(W, gradient=G[cols[::-1]])
    q.fit(W, gradient=G)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qt = q.compress(W)
    np.testing.assert_array_equal(qt.dequantize(), q.transform(W))
