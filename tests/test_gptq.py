"""GPTQ's oracles: round to nearest on an identity Hessian, below round to nearest's
calibration error, damping of singular Hessians, blocks that change nothing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skquant import (
    BinaryQuantizer,
    GPTQQuantizer,
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    QuantizedMLP,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant._quantizers._gram import inverse_upper_cholesky as _inverse_upper_cholesky

BITS = [2, 3, 4, 8, "ternary", "binary"]


def _rtn(W, n_bits, scale="maxabs"):
    """Round to nearest on the alphabet GPTQ uses (the memoryless quantizer's)."""
    if n_bits == "ternary":
        level = np.abs(W).max(axis=0)
        return TernaryQuantizer(scale=np.where(level > 0, level, 1.0)).fit(W)
    if n_bits == "binary":
        level = np.abs(W).max(axis=0)
        return BinaryQuantizer(scale=np.where(level > 0, level, 1.0)).fit(W)
    return UniformQuantizer(n_bits=n_bits, scale=scale).fit(W)


def _layer(seed, m=300, n_in=48, n_out=12, rank=None):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((rank or n_in, n_in))
    X = rng.standard_normal((m, rank or n_in)) @ mix
    W = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
    return X, W


def _err(X, W, Q):
    return np.linalg.norm(X @ (W - Q)) / np.linalg.norm(X @ W)


def test_inverse_upper_cholesky():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((30, 30))
    H = A @ A.T + 30 * np.eye(30)
    U = _inverse_upper_cholesky(H)
    assert np.allclose(np.tril(U, -1), 0)
    np.testing.assert_allclose(U.T @ U, np.linalg.inv(H), atol=1e-12)


def test_large_choleskys_run_on_one_blas_thread(monkeypatch):
    """OpenBLAS's threaded Cholesky segfaults on large matrices (16384 with 2
    threads): above SAFE_THREADED_CHOLESKY the factorisation gets one thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from skquant._quantizers import _gram

    seen, real = [], _gram.lapack.dpotrf

    def spy(*args, **kwargs):
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        seen.append(max(blas))
        return real(*args, **kwargs)

    monkeypatch.setattr(_gram.lapack, "dpotrf", spy)
    monkeypatch.setattr(_gram, "SAFE_THREADED_CHOLESKY", 20)
    rng = np.random.default_rng(0)
    for n in (20, 30):
        A = rng.standard_normal((n, n))
        H = A @ A.T + n * np.eye(n)
        with threadpool_limits(limits=2, user_api="blas"):
            U = _inverse_upper_cholesky(H)
            given = max(
                i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"
            )
        np.testing.assert_allclose(U.T @ U, np.linalg.inv(H), atol=1e-12)
    assert seen == [given, 1]  # the small one as given, the large one on one


@settings(max_examples=40, deadline=None)
@given(
    n_bits=st.sampled_from(BITS),
    n_in=st.integers(1, 40),
    n_out=st.integers(1, 6),
    c=st.floats(0.1, 10),
    seed=st.integers(0, 2**16),
)
def test_identity_hessian_is_round_to_nearest(n_bits, n_in, n_out, c, seed):
    W = np.random.default_rng(seed).standard_normal((n_in, n_out))
    X = c * np.eye(n_in)  # H = c^2 I: no error can be compensated
    q = GPTQQuantizer(n_bits=n_bits).fit(W, activations=X)
    np.testing.assert_array_equal(q.transform(W), _rtn(W, n_bits).transform(W))


@pytest.mark.parametrize("n_bits", [2, 3, 4, "binary"])
def test_below_round_to_nearest_on_calibration_data(n_bits):
    ratios = []
    for seed in range(30):
        X, W = _layer(seed, rank=24 if seed % 2 else None)
        q = GPTQQuantizer(n_bits=n_bits).fit(W, activations=X)
        ratios.append(
            _err(X, W, q.transform(W)) / _err(X, W, _rtn(W, n_bits).transform(W))
        )
    ratios = np.array(ratios)
    # on average well below, and the fraction of cases where it is not is small
    assert ratios.mean() < 0.9
    assert np.mean(ratios >= 1) <= 0.1, f"not below RTN in {np.mean(ratios >= 1):.0%}"


def test_blocks_and_order_are_the_same_algorithm():
    X, W = _layer(3, n_in=70)
    ref = GPTQQuantizer(n_bits=3, block_size=1).fit(W, activations=X)
    for b in (7, 32, 70, 1000):
        q = GPTQQuantizer(n_bits=3, block_size=b).fit(W, activations=X)
        assert np.mean(q.codes_ != ref.codes_) <= 1e-3
    ao = GPTQQuantizer(n_bits=3, act_order=True).fit(W, activations=X)
    H = X.T @ X
    assert np.all(np.diff(np.diag(H)[ao.order_]) <= 0)
    assert sorted(ao.order_) == list(range(70))
    assert _err(X, W, ao.transform(W)) < _err(X, W, _rtn(W, 3).transform(W))


def test_damping_handles_singular_hessians():
    X, W = _layer(1)
    X[:, 5] = 0.0  # a dead input
    X[:, 7] = X[:, 6]  # duplicate inputs
    X[:, 9] = 2 * X[:, 8]
    for n_bits in BITS:
        q = GPTQQuantizer(n_bits=n_bits).fit(W, activations=X)
        Q = q.transform(W)
        assert np.all(np.isfinite(Q)) and np.all(np.isfinite(q.calibration_error_))
        assert np.all(q.alphabet_record_.on_alphabet(Q, q.scale_) | (Q == 0))
    # no nonzero input at all: the identity, round to nearest
    q = GPTQQuantizer(n_bits=3).fit(W, activations=np.zeros((10, W.shape[0])))
    np.testing.assert_array_equal(q.transform(W), _rtn(W, 3).transform(W))


def test_codes_sizes_and_calibration_error_are_honest():
    X, W = _layer(2)
    W32 = W.astype(np.float32)
    q = GPTQQuantizer(n_bits=4, scale="mse").fit(W32, activations=X)
    t = q.compress(W32)
    rtn = UniformQuantizer(n_bits=4, scale="mse").fit(W32)
    assert t.size_bits == rtn.compress(W32).size_bits
    np.testing.assert_array_equal(q.scale_, rtn.scale_)
    assert q.transform(W32).dtype == np.float32
    np.testing.assert_allclose(t.dequantize(), q.transform(W32))
    Q = q.transform(W32).astype(np.float64)
    expect = np.linalg.norm(X @ (W32 - Q), axis=0) / np.linalg.norm(X @ W32, axis=0)
    np.testing.assert_allclose(q.calibration_error_, expect, rtol=1e-5)


def test_float_targets_pull_toward_the_float_output():
    """With target="float_output", GPTQ aims at Xf @ W (not at Xq @ W)."""
    gains = []
    for seed in range(10):
        X, W = _layer(seed)
        # the quantized prefix distorts the inputs systematically
        R = np.random.default_rng(seed + 100).standard_normal((48, 48)) / 7
        Xq = X @ (np.eye(48) + 0.1 * R)
        plain = GPTQQuantizer(n_bits=3).fit(W, activations=Xq).transform(W)
        aimed = (
            GPTQQuantizer(n_bits=3, target="float_output")
            .fit(W, activations=Xq, target_activations=X)
            .transform(W)
        )
        # the paper's GPTQ quantizes W itself: the float targets change nothing
        same = (
            GPTQQuantizer(n_bits=3)
            .fit(W, activations=Xq, target_activations=X)
            .transform(W)
        )
        assert np.array_equal(same, plain)
        e = lambda Q: np.linalg.norm(X @ W - Xq @ Q)  # noqa: E731
        gains.append(e(aimed) / e(plain))
    assert np.mean(gains) < 0.95 and np.mean(np.array(gains) < 1) >= 0.9


def test_in_a_network_and_against_gpfq(digits_mlp):
    mlp, X, y = digits_mlp
    scores = {}
    for name, quantizer in {
        "rtn": UniformQuantizer(n_bits=2),
        "gpfq": GreedyPathQuantizer(n_bits=2),
        "gptq": GPTQQuantizer(n_bits=2),
    }.items():
        q = QuantizedMLP(mlp, quantizer).fit(X[:1000])
        scores[name] = q.score(X[1000:], y[1000:])
        if name == "gptq":
            assert [r["method"] for r in q.report_.rows] == ["GPTQ"] * len(
                q.report_.rows
            )
    assert scores["gptq"] > scores["rtn"] + 0.1


def test_bad_input():
    X, W = _layer(0)
    with pytest.raises(ValueError, match="damp"):
        GPTQQuantizer(damp=0.0).fit(W, activations=X)
    with pytest.raises(ValueError, match="block_size"):
        GPTQQuantizer(block_size=0).fit(W, activations=X)
    with pytest.raises(ValueError, match="columns"):
        GPTQQuantizer().fit(W, activations=X[:, :5])
    with pytest.raises(ValueError, match="calibration data"):
        GPTQQuantizer().fit(W)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GPTQQuantizer().fit(W, activations=bad)
    before = (X.copy(), W.copy())
    GPTQQuantizer(act_order=True).fit(W, activations=X, target_activations=X * 1.1)
    np.testing.assert_array_equal(X, before[0])
    np.testing.assert_array_equal(W, before[1])


@pytest.mark.parametrize("target", [False, True])
def test_too_small_damp_is_named(target):
    # 6 samples for 10 inputs: X^T X is singular, and damp=1e-300 adds nothing
    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((10, 4)), rng.standard_normal((6, 10))
    extra = {"target_activations": X + 0.1} if target else {}
    with pytest.raises(ValueError, match=r"damp must be large enough .* damp=1e-300"):
        GPTQQuantizer(damp=1e-300).fit(W, activations=X, **extra)
    GPTQQuantizer(damp=1e-12).fit(W, activations=X, **extra)  # large enough


@pytest.mark.parametrize("act_order", [False, True])
def test_calibration_error_on_tall_data_matches_the_data(act_order):
    """On tall data (rows >= 2 inputs) the errors come from the kept Gram matrix,
    not from two products with the data: the same figures, to round-off."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 30)) @ rng.standard_normal((30, 30))
    W = rng.standard_normal((30, 12))
    q = GPTQQuantizer(n_bits=3, act_order=act_order).fit(W, activations=X)
    Q = q.transform(W)
    expect = np.linalg.norm(X @ (W - Q), axis=0) / np.linalg.norm(X @ W, axis=0)
    np.testing.assert_allclose(q.calibration_error_, expect, rtol=1e-9)


@pytest.mark.parametrize(
    "cls", [GreedyPathQuantizer, NullSpaceQuantizer, GPTQQuantizer]
)
def test_dataframe_activations_must_name_ws_inputs_in_order(cls):
    """Activations' columns name the layer's inputs, W's rows: reordered ones
    are refused (used by position, every input met another's weights), for
    target_activations too; names that are not strings are not compared."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    names = [f"in{i}" for i in range(12)]
    W = pd.DataFrame(rng.standard_normal((12, 3)), index=names)
    X = pd.DataFrame(rng.standard_normal((40, 12)), columns=names)
    backwards = X[names[::-1]]
    for kwargs in (
        {"activations": backwards},
        {"activations": X, "target_activations": backwards},
    ):
        with pytest.raises(ValueError, match=r"activations' columns must be W's row"):
            cls(n_bits=3).fit(W, **kwargs)
    Q = cls(n_bits=3).fit(W, activations=X).transform(W)
    np.testing.assert_array_equal(
        Q, cls(n_bits=3).fit(W.to_numpy(), activations=X.to_numpy()).transform(W)
    )
    cls(n_bits=3).fit(W, activations=pd.DataFrame(X.to_numpy()))  # (0..11: unnamed)
