"""MSQ weight quantizers: rounding invariants (oracles), exact cases, bad input."""

import itertools
import os
import re
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from strategies import weight_matrices

from skquant import BinaryQuantizer, TernaryQuantizer, UniformQuantizer
from skquant._kernels._threads import numba_threads

ALL = [UniformQuantizer, TernaryQuantizer, BinaryQuantizer]


def ulp_tol(W, scale):
    """A few units in the last place of the products involved."""
    eps = np.finfo(W.dtype).eps
    return 4 * eps * (np.abs(W) + scale)


# ---------------------------------------------------------------------- exact cases


def test_round_half_to_even_exact_codes():
    # step 1 given by hand: ties go to the even neighbour, beyond K=7 is clipped
    W = np.array([[0.5], [1.5], [2.5], [-0.5], [-2.5], [3.49], [7.0], [8.2], [-9.0]])
    q = UniformQuantizer(n_bits=4, scale=1.0).fit(W)
    assert_array_equal(q.encode(W).ravel(), [0, 2, 2, 0, -2, 3, 7, 7, -7])
    assert q.encode(W).dtype == np.int8


def test_maxabs_step_and_codes_by_hand():
    # steps 0.75 / 3 and 3 / 3 are exact in float32 (the stored dtype), so the
    # ties below are exact ties
    W = np.array([[0.75, -1.5], [0.375, 0.3], [-0.1, 3.0]])
    q = UniformQuantizer(n_bits=3).fit(W)  # K = 3
    assert_array_equal(q.scale_, [0.25, 1.0])
    # 0.375 / 0.25 = 1.5 -> 2 (even); 0.3 -> 0; -1.5 -> -2 (even); -0.1/0.25 -> 0
    assert_array_equal(q.encode(W), [[3, -2], [2, 0], [0, 3]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxabs_step_clips_nothing(dtype):
    """K times the stored step reaches every column's largest weight, exactly
    (float32 weights too: their quotient is not rounded down first)."""
    W = np.random.default_rng(0).standard_normal((64, 2000)).astype(dtype)
    for n_bits in (2, 4, 8):
        q = UniformQuantizer(n_bits=n_bits).fit(W)
        reach = q.qmax_ * q.scale_.astype(np.float64)  # exact: 2**7 * float32
        assert np.all(reach >= np.abs(W).max(axis=0).astype(np.float64))


@pytest.mark.parametrize(
    "n_bits, dtype", [(2, np.int8), (8, np.int8), (9, np.int16), (16, np.int16)]
)
def test_code_range_and_dtype(n_bits, dtype):
    W = np.random.default_rng(n_bits).standard_normal((50, 3))
    q = UniformQuantizer(n_bits=n_bits).fit(W)
    K = 2 ** (n_bits - 1) - 1
    assert (q.qmin_, q.qmax_) == (-K, K)
    codes = q.encode(W)
    assert codes.dtype == dtype
    assert codes.min() == -K or codes.max() == K  # max-abs lands on the last point


def test_per_tensor_has_one_scale():
    W = np.array([[1.0, -4.0], [2.0, 0.5]])
    q = UniformQuantizer(n_bits=3, granularity="per_tensor").fit(W)
    assert q.scale_.shape == (1,)
    np.testing.assert_allclose(q.scale_, [4.0 / 3])


def test_percentile_scale_clips_outliers():
    W = np.concatenate([np.linspace(-1, 1, 999), [100.0]])[:, None]
    q = UniformQuantizer(n_bits=4, scale="percentile", percentile=99.0).fit(W)
    # stored in float32, rounded up: within 2**-23 relative of the float64 step
    expected = np.percentile(np.abs(W), 99.0) / 7
    np.testing.assert_allclose(q.scale_, expected, rtol=2**-23)
    assert q.scale_[0] >= expected
    assert q.transform(W).max() == pytest.approx(7 * q.scale_[0])


def test_user_scale_array_and_scalar():
    W = np.array([[1.0, 2.0], [3.0, -4.0]])
    q = UniformQuantizer(n_bits=4, scale=[0.5, 1.0]).fit(W)
    assert_array_equal(q.encode(W), [[2, 2], [6, -4]])
    q = UniformQuantizer(n_bits=4, scale=0.5).fit(W)
    assert_array_equal(q.scale_, [0.5, 0.5])


def test_mse_scale_beats_maxabs_on_laplace_weights(rng):
    W = rng.laplace(size=(4000, 4))
    mse = UniformQuantizer(n_bits=3, scale="mse").fit(W)
    mx = UniformQuantizer(n_bits=3).fit(W)
    err_mse = ((W - mse.transform(W)) ** 2).sum(axis=0)
    err_max = ((W - mx.transform(W)) ** 2).sum(axis=0)
    assert np.all(err_mse < 0.5 * err_max)  # clipping the tails pays off by far


def test_binary_and_ternary_by_hand():
    W = np.array([[0.5, -2.0], [-1.5, 0.0]])
    b = BinaryQuantizer().fit(W)
    assert_array_equal(b.scale_, [1.0, 1.0])
    assert_array_equal(b.encode(W), [[1, -1], [-1, 1]])  # sign(0) = +1
    t = TernaryQuantizer().fit(np.array([[1.0], [0.9], [0.1], [-1.1]]))
    # supports: {1.1}: 1.21, {1.1,1}: 4.41/2=2.205, {1.1,1,.9}: 9/3=3, +0.1: 9.61/4
    np.testing.assert_allclose(t.scale_, [1.0])


def test_twn_rule_by_hand():
    w = np.array([[0.1], [0.2], [1.0], [-2.0], [0.05]])
    delta = 0.7 * np.abs(w).mean()  # 0.469
    expected = np.abs(w)[np.abs(w) > delta].mean()  # (1 + 2) / 2
    q = TernaryQuantizer(scale="twn").fit(w)
    np.testing.assert_allclose(q.scale_, [expected])
    assert expected == 1.5


# ------------------------------------------------------------------ brute-force optima


def _brute_force_ternary(w):
    best = np.inf
    for t in itertools.product((-1, 0, 1), repeat=len(w)):
        t = np.array(t, dtype=float)
        if not t.any():
            err = w @ w
        else:
            a = max(w @ t / (t @ t), 0.0)
            err = np.sum((w - a * t) ** 2)
        best = min(best, err)
    return best


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=7))
def test_ternary_optimal_matches_brute_force(values):
    w = np.array(values)[:, None]
    q = TernaryQuantizer().fit(w)
    err = np.sum((w - q.transform(w)) ** 2)
    best = _brute_force_ternary(w.ravel())
    assert err <= best + 1e-9 * (1 + w.ravel() @ w.ravel())


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=30))
def test_binary_level_is_l2_optimal(values):
    w = np.array(values)[:, None]
    q = BinaryQuantizer().fit(w)
    err = np.sum((w - q.transform(w)) ** 2)
    s = np.where(w >= 0, 1.0, -1.0)
    for a in np.linspace(0, 2 * np.abs(w).max() + 1, 201):
        assert err <= np.sum((w - a * s) ** 2) + 1e-9 * (1 + np.sum(w**2))


# ------------------------------------------------------ oracles of memoryless rounding


@given(
    weight_matrices(),
    st.integers(2, 16),
    st.sampled_from(["maxabs", "mse"]),
    st.sampled_from(["per_channel", "per_tensor"]),
)
def test_oracle_alphabet_error_idempotence_roundtrip(W, n_bits, scale, granularity):
    q = UniformQuantizer(n_bits=n_bits, scale=scale, granularity=granularity).fit(W)
    Q = q.transform(W)
    codes = q.encode(W)
    step = np.broadcast_to(q.scale_, (W.shape[1],))
    K = 2 ** (n_bits - 1) - 1
    # every value is an alphabet element: an integer code in [-K, K] times the step
    assert codes.min() >= -K and codes.max() <= K
    assert_array_equal(Q, codes * step.astype(W.dtype))
    # decode(encode(W)) == transform(W) exactly
    assert_array_equal(q.decode(codes), Q)
    assert Q.dtype == W.dtype
    # |w - Q(w)| <= step / 2 inside the range [-K step, K step]
    inside = np.abs(W) <= K * step
    err = np.abs(W.astype(np.float64) - Q)
    bound = step / 2 + ulp_tol(W, step)
    assert np.all(err[inside] <= np.broadcast_to(bound, W.shape)[inside])
    # idempotence
    assert_array_equal(q.transform(Q), Q)


@given(
    weight_matrices(),
    st.sampled_from([TernaryQuantizer, BinaryQuantizer]),
    st.sampled_from(["per_channel", "per_tensor"]),
)
def test_oracle_binary_ternary_alphabets(W, cls, granularity):
    q = cls(granularity=granularity).fit(W)
    Q = q.transform(W)
    a = np.broadcast_to(q.scale_, (W.shape[1],)).astype(W.dtype)
    allowed = {-1, 1} if cls is BinaryQuantizer else {-1, 0, 1}
    codes = q.encode(W)
    assert set(np.unique(codes)) <= allowed
    assert_array_equal(Q, codes * a)
    assert_array_equal(q.decode(codes), Q)
    assert_array_equal(q.transform(Q), Q)
    # nearest element of the alphabet
    cand = np.stack([c * a * np.ones_like(W) for c in sorted(allowed)])
    nearest = np.abs(cand - W).min(axis=0)
    np.testing.assert_allclose(np.abs(W - Q), nearest, rtol=0, atol=1e-5 * a.max())


@given(weight_matrices(max_cols=8), st.integers(2, 8))
def test_oracle_per_channel_within_per_tensor_bound(W, n_bits):
    pc = UniformQuantizer(n_bits=n_bits).fit(W)
    pt = UniformQuantizer(n_bits=n_bits, granularity="per_tensor").fit(W)
    err_pc = np.abs(W.astype(np.float64) - pc.transform(W)).max()
    # per-channel steps never exceed the per-tensor step, so neither does its
    # worst-case error bound; and the realised error stays within per-tensor's bound
    # (channels whose step underflows the stored float32 get eps instead, and
    # quantize to exact zeros)
    K = 2 ** (n_bits - 1) - 1
    normal = np.abs(W).max(axis=0) / K >= np.finfo(pc.scale_.dtype).tiny
    assert np.all(pc.scale_[normal] <= pt.scale_[0])
    assert err_pc <= pt.scale_[0] / 2 + 4 * np.finfo(W.dtype).eps * np.abs(W).max()
    # the column holding the global max-abs is quantized identically
    j = np.unravel_index(np.argmax(np.abs(W)), W.shape)[1]
    assert_array_equal(pc.transform(W)[:, j], pt.transform(W)[:, j])


def test_per_channel_realised_max_error_can_exceed_per_tensor():
    # Why the oracle above compares bounds: with K = 7 and M = 7, the per-tensor
    # grid holds both entries of column 1 exactly, the per-channel grid does not.
    W = np.array([[7.0, 2.0], [0.0, 1.0]])
    pc = UniformQuantizer(n_bits=4).fit(W)
    pt = UniformQuantizer(n_bits=4, granularity="per_tensor").fit(W)
    assert np.abs(W - pt.transform(W)).max() == 0
    assert np.abs(W - pc.transform(W)).max() > 0


@given(
    weight_matrices(), st.integers(2, 8), st.sampled_from(["per_channel", "per_tensor"])
)
def test_oracle_mse_scale_never_worse_than_maxabs(W, n_bits, granularity):
    mse = UniformQuantizer(n_bits=n_bits, scale="mse", granularity=granularity).fit(W)
    mx = UniformQuantizer(n_bits=n_bits, granularity=granularity).fit(W)
    W64 = W.astype(np.float64)
    if granularity == "per_channel":
        e_mse = ((W64 - mse.transform(W)) ** 2).sum(axis=0)
        e_max = ((W64 - mx.transform(W)) ** 2).sum(axis=0)
    else:
        e_mse = ((W64 - mse.transform(W)) ** 2).sum()
        e_max = ((W64 - mx.transform(W)) ** 2).sum()
    assert np.all(e_mse <= e_max * (1 + 1e-12))


@given(
    n_in=st.integers(40, 300),
    n_out=st.integers(1, 9),
    n_bits=st.integers(2, 6),
    seed=st.integers(0, 2**16),
)
def test_oracle_per_tensor_mse_is_the_best_candidate(n_in, n_out, n_bits, seed):
    """Oracle on per-tensor grids of 40 to 2700 weights (a long column is summed
    in 64 side-by-side columns): the chosen step's squared error is the smallest
    of the search's candidates' (ratios 1/100 ... 1 of the max-abs step),
    summed here in float64 by NumPy, to summation round-off."""
    rng = np.random.default_rng(seed)
    W = rng.laplace(size=(n_in, n_out))
    q = UniformQuantizer(n_bits=n_bits, scale="mse", granularity="per_tensor").fit(W)
    K = 2 ** (n_bits - 1) - 1
    base = np.abs(W).max() / K

    def sq_error(step):
        return float(((W - np.clip(np.rint(W / step), -K, K) * step) ** 2).sum())

    best = min(sq_error(base * k / 100) for k in range(1, 101))
    assert sq_error(float(q.scale_[0])) <= best * (1 + 1e-6) + 1e-300


@given(weight_matrices(), st.sampled_from(ALL))
def test_pack_unpack_roundtrip_estimator(W, cls):
    q = cls().fit(W)
    packed = q.pack(W)
    assert packed.dtype == np.uint8
    assert packed.size == -(-W.size // 8) * q.n_bits_
    assert_array_equal(q.unpack(packed, W.shape[0]), q.encode(W))


# ------------------------------------------------------------- layouts, dtypes, threads


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_and_readonly_give_same_result(cls, dtype, rng):
    W = rng.standard_normal((37, 5)).astype(dtype)
    ref = cls().fit(W).transform(W)
    F = np.asfortranarray(W)
    R = W.copy()
    R.flags.writeable = False
    for V in (F, R, W[:, :].copy(order="F")):
        q = cls().fit(V)
        out = q.transform(V)
        assert out.dtype == dtype
        assert_array_equal(out, ref)
        assert_array_equal(q.encode(V), cls().fit(W).encode(W))


@pytest.mark.parametrize("cls", ALL)
def test_integer_input_is_converted_to_float64(cls):
    W = np.array([[1, -2], [3, 4], [0, 1]])
    q = cls().fit(W)
    out = q.transform(W)
    assert out.dtype == np.float64
    assert_array_equal(out, cls().fit(W.astype(float)).transform(W.astype(float)))


@pytest.mark.parametrize("cls", ALL)
def test_inputs_never_modified(cls, rng):
    W = rng.standard_normal((20, 4)).astype(np.float32)
    W0 = W.copy()
    q = cls().fit(W)
    q.transform(W)
    q.encode(W)
    q.pack(W)
    q.compress(W)
    assert_array_equal(W, W0)


@pytest.mark.parametrize("cls", ALL)
def test_n_jobs_same_result_and_threads_restored(cls, rng):
    W = rng.standard_normal((300, 7))
    before = numba.get_num_threads()
    serial = cls(n_jobs=None).fit(W)
    par = cls(n_jobs=-1).fit(W)
    assert_array_equal(serial.scale_, par.scale_)
    assert_array_equal(serial.transform(W), par.transform(W))
    assert_array_equal(serial.encode(W), par.encode(W))
    assert numba.get_num_threads() == before


def test_numba_threads_restores_on_error():
    before = numba.get_num_threads()
    with pytest.raises(RuntimeError), numba_threads(1):
        raise RuntimeError("boom")
    assert numba.get_num_threads() == before


def test_fits_leave_torch_threads_alone():
    """A fit (numba's thread pool starting in it) leaves torch's thread count as
    the user set it: in a fresh process, where the pool starts; it used to come
    back at numba's count, and workers of one thread each ran their passes on
    every core."""
    pytest.importorskip("torch")
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from skquant import UniformQuantizer\n"
        "torch.set_num_threads(1)\n"
        "assert torch.get_num_threads() == 1\n"
        "W = np.random.default_rng(0).standard_normal((300, 20))\n"
        "UniformQuantizer(n_bits=4).fit(W).transform(W)\n"
        "print(torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]


def test_all_zero_channel_gets_eps_scale():
    W = np.array([[0.0, 1.0], [0.0, -2.0]], dtype=np.float32)
    for cls in ALL:
        q = cls().fit(W)
        assert q.scale_[0] == np.finfo(np.float32).eps
        assert_array_equal(
            q.transform(W)[:, 0]
            if cls is not BinaryQuantizer
            else np.abs(q.transform(W)[:, 0]) <= q.scale_[0],
            [0, 0] if cls is not BinaryQuantizer else [True, True],
        )


def test_compress_summary_and_sizes(rng):
    W = rng.standard_normal((128, 16)).astype(np.float32)
    q = UniformQuantizer(n_bits=3).fit(W)
    qt = q.compress(W)
    assert_array_equal(qt.dequantize(), q.transform(W))
    assert qt.size_bits == 128 * 16 * 3 + 16 * 32
    s = qt.summary(W)
    assert s["n_bits"] == 3 and 0 < s["relative_error"] < 0.5 and s["sqnr_db"] > 5
    assert "alphabet='uniform'" in repr(qt)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_rejected_naming_w(cls, bad):
    W = np.ones((4, 2))
    W[1, 1] = bad
    with pytest.raises(ValueError, match="Input W contains"):
        cls().fit(W)
    q = cls().fit(np.ones((4, 2)))
    with pytest.raises(ValueError, match="Input W contains"):
        q.transform(W)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize(
    "W, msg",
    [
        (np.zeros((0, 3)), "0 sample"),
        (np.zeros((3, 0)), "0 feature"),
        (np.ones(5), "Expected 2D array, got 1D array"),
        (np.ones((2, 3, 4)), "Found array with dim 3"),
    ],
)
def test_bad_shapes(cls, W, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        cls().fit(W)


@pytest.mark.parametrize("n_bits", [1, 17, 0, -3, 2.5, "4"])
def test_impossible_bit_widths(n_bits):
    with pytest.raises(ValueError, match=r"The 'n_bits' parameter of UniformQuantizer"):
        UniformQuantizer(n_bits=n_bits).fit(np.ones((3, 2)))


@pytest.mark.parametrize("cls", ALL)
def test_wrong_number_of_columns_at_transform(cls):
    q = cls().fit(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"W must have the 3 columns .*\(4, 2\)"):
        q.transform(np.ones((4, 2)))


@pytest.mark.parametrize("cls", ALL)
def test_unfitted_use(cls):
    for method in ("transform", "encode", "pack", "compress"):
        with pytest.raises(NotFittedError):
            getattr(cls(), method)(np.ones((2, 2)))
    with pytest.raises(NotFittedError):
        cls().decode(np.ones((2, 2), dtype=np.int8))


@pytest.mark.parametrize(
    "scale, msg",
    [
        (-1.0, "The 'scale' parameter"),
        ([1.0, -1.0], "must be positive and finite"),
        ([1.0, np.nan], "must be positive and finite"),
        ([1.0, 2.0, 3.0], "array of shape (2,)"),
        ("median", "The 'scale' parameter"),
        # (it was stored as float32's eps, silently)
        (1e-42, "must be at least float32's smallest normal number"),
    ],
)
def test_bad_user_scale(scale, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        UniformQuantizer(scale=scale).fit(np.ones((3, 2)))


def test_steps_below_float32s_range_are_warned_about():
    """Channels of weights below about 1e-38 quantize to 0 (their step is
    below float32's smallest normal): said, with the channels; an all-zero
    channel is no loss."""
    W = np.zeros((8, 3))
    W[:, 1] = 1e-40
    W[:, 2] = 1.0
    with pytest.warns(UserWarning, match=r"channels \[1\] is below float32"):
        Q = UniformQuantizer(n_bits=4).fit_transform(W)
    assert not Q[:, :2].any() and Q[:, 2].all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UniformQuantizer(n_bits=4).fit(W[:, [0, 2]])


def test_steps_above_float32s_range_are_warned_about():
    """float64 weights whose step passes float32's largest number (steps are
    stored in float32) are clipped: said, with the channels (silently before,
    where max-abs steps clip nothing)."""
    W = np.ones((4, 2))
    W[0, 1] = 1e40
    for q in (UniformQuantizer(n_bits=4), TernaryQuantizer()):
        with pytest.warns(UserWarning, match=r"channels \[1\] is above float32"):
            Q = q.fit_transform(W)
        assert Q[0, 1] < 1e40 and np.isfinite(Q).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UniformQuantizer(n_bits=4).fit(np.full((4, 2), 1e38))


def test_decode_rejects_bad_codes():
    q = UniformQuantizer(n_bits=3).fit(np.ones((3, 2)))
    with pytest.raises(TypeError, match="must be integers"):
        q.decode(np.ones((3, 2)))
    with pytest.raises(ValueError, match=re.escape("must lie in [-3, 3]")):
        q.decode(np.full((3, 2), 4, dtype=np.int8))
    with pytest.raises(ValueError, match=re.escape("shape (n_in, 2)")):
        q.decode(np.zeros((3, 3), dtype=np.int8))
    b = BinaryQuantizer().fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="must be -1 or \\+1"):
        b.decode(np.zeros((3, 2), dtype=np.int8))


def test_clone_and_pickle_roundtrip(rng):
    import pickle

    W = rng.standard_normal((10, 3))
    q = UniformQuantizer(n_bits=5, scale="mse").fit(W)
    q2 = pickle.loads(pickle.dumps(q))
    assert_array_equal(q2.transform(W), q.transform(W))
    assert clone(q).get_params() == q.get_params()


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_channel_gives_no_nan(cls, dtype):
    # a scale below the smallest normal number would have an infinite inverse and
    # turn 0 * inf into NaN (found by hypothesis)
    tiny = np.finfo(dtype).smallest_subnormal
    W = np.array([[tiny, 1.0], [0.0, -1.0]], dtype=dtype)
    q = cls().fit(W)
    Q = q.transform(W)
    assert np.all(np.isfinite(Q))
    assert q.scale_[0] == np.finfo(np.float32).eps  # the stored dtype's
    assert_array_equal(q.decode(q.encode(W)), Q)


def test_float64_fit_float32_transform_tiny_scale():
    W64 = np.array([[1e-300, 1.0], [0.0, 2.0]])
    q = UniformQuantizer().fit(W64)
    Q = q.transform(W64.astype(np.float32))
    assert Q.dtype == np.float32 and np.all(np.isfinite(Q))


@pytest.mark.parametrize("dtype", [np.int32, np.float16, "nope", ">f8"])
def test_decode_dtype_is_checked_by_name(dtype):
    W = np.random.default_rng(0).standard_normal((8, 4))
    q = UniformQuantizer(n_bits=4).fit(W)
    with pytest.raises(
        ValueError,
        match="dtype must be float32, float64 or None, got dtype="
        + re.escape(repr(dtype)),
    ):
        q.decode(q.encode(W), dtype=dtype)
    assert q.decode(q.encode(W), dtype="float32").dtype == np.float32


def test_transform_keeps_float32_and_float64_and_promotes_the_rest():
    """As the docstring says: float16 (torch checkpoints' dtype) and ints are
    computed and returned in float64."""
    W = np.random.default_rng(0).standard_normal((16, 4))
    for dtype, out in [
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.float16, np.float64),
        (np.int32, np.float64),
    ]:
        Wd = W.astype(dtype)
        assert UniformQuantizer(n_bits=4).fit(Wd).transform(Wd).dtype == out
