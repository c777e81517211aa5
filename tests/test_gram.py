"""The Gram helpers every data-driven quantizer uses, GPTQ's two forms, and the
18432-input layer that killed the interpreter through NumPy's ``X.T @ X``."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

import skquant._quantizers._gptq as gptq_module
from skquant import GPTQQuantizer
from skquant._quantizers._gram import gram, inverse_upper_cholesky, triangle_product

shapes = st.tuples(st.integers(1, 12), st.integers(1, 30), st.integers(1, 5))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, block=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_gram_matches_products(shape, block, seed):
    m, n, p = shape
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((m, n)), rng.standard_normal((m, p))
    X_before = X.copy()
    G = gram(X, block=block)
    np.testing.assert_allclose(G, X.T @ X, rtol=1e-12, atol=1e-12)
    assert np.array_equal(G, G.T)  # mirrored, not recomputed
    np.testing.assert_allclose(gram(X, Y, block=block), X.T @ Y, atol=1e-12)
    # a Fortran-ordered X gives the same
    np.testing.assert_allclose(gram(np.asfortranarray(X), block=block), G, atol=1e-12)
    assert np.array_equal(X, X_before)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, block=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_triangle_product_matches_dense(shape, block, seed):
    m, n, p = shape
    rng = np.random.default_rng(seed)
    X, Y, W = (rng.standard_normal(s) for s in ((m, n), (m, n), (n, p)))
    G = X.T @ Y
    np.testing.assert_allclose(
        triangle_product(X, Y, W, "lower", block=block), np.tril(G) @ W, atol=1e-10
    )
    np.testing.assert_allclose(
        triangle_product(X, Y, W, "strict_upper", block=block),
        np.triu(G, 1) @ W,
        atol=1e-10,
    )
    with pytest.raises(ValueError, match="part must be"):
        triangle_product(X, Y, W, "upper")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), block=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_inverse_upper_cholesky(n, block, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n + 3, n))
    H = A.T @ A + 0.5 * np.eye(n)
    H_before = H.copy()
    U = inverse_upper_cholesky(H, block=block)
    assert np.array_equal(H, H_before)  # not overwritten unless asked
    assert np.array_equal(U, np.triu(U))
    np.testing.assert_allclose(U.T @ U, np.linalg.inv(H), rtol=1e-8, atol=1e-10)
    U2 = inverse_upper_cholesky(H, overwrite=True, block=block)
    assert U2 is H  # in H's own memory
    np.testing.assert_allclose(U2, U, rtol=1e-12, atol=1e-14)


def test_inverse_upper_cholesky_refuses_indefinite():
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        inverse_upper_cholesky(np.diag([1.0, -1.0, 2.0]))


@settings(max_examples=30, deadline=None)
@given(
    n_bits=st.sampled_from([2, 3, 4, "ternary", "binary"]),
    m=st.integers(1, 12),
    extra=st.integers(1, 40),
    n_out=st.integers(1, 5),
    act_order=st.booleans(),
    target=st.sampled_from(["weights", "float_output"]),
    block_size=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_gptq_lowrank_form_gives_the_cholesky_codes(
    n_bits, m, extra, n_out, act_order, target, block_size, seed
):
    """Fewer rows than inputs: the low-rank form (no n x n matrix) rounds every
    coordinate at the value the Cholesky form rounds it at."""
    rng = np.random.default_rng(seed)
    n = m + extra
    X = rng.standard_normal((m, n)) * rng.uniform(0.1, 2.0, n)
    Xf = X + 0.1 * rng.standard_normal((m, n))
    W = rng.standard_normal((n, n_out)) / np.sqrt(n)
    params = dict(
        n_bits=n_bits, act_order=act_order, target=target, block_size=block_size
    )
    fits = {}
    original = gptq_module._use_lowrank
    try:
        for lowrank in (True, False):
            gptq_module._use_lowrank = lambda m, n, lowrank=lowrank: lowrank
            fits[lowrank] = GPTQQuantizer(**params).fit(
                W, activations=X, target_activations=Xf
            )
    finally:
        gptq_module._use_lowrank = original
    a, b = fits[True], fits[False]
    # a value that lands within rounding noise of a grid midpoint may round
    # either way; everything else is the same code
    assert np.mean(a.codes_ == b.codes_) >= 0.98
    np.testing.assert_allclose(
        a.calibration_error_, b.calibration_error_, rtol=0.05, atol=1e-3
    )


def test_gptq_picks_the_lowrank_form_for_wide_layers():
    assert gptq_module._use_lowrank(256, 18432)
    assert not gptq_module._use_lowrank(1024, 784)


WIDE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from skquant import GPTQQuantizer, NullSpaceQuantizer
    from skquant._quantizers._gram import gram
    rng = np.random.default_rng(0)
    X = np.maximum(rng.standard_normal((256, 18432)), 0)
    W = rng.standard_normal((18432, 10)) / 100
    G = gram(X)
    out = {"gram_ok": bool(np.isclose(G[5, 7], X[:, 5] @ X[:, 7]))}
    del G
    if sys.argv[1] == "fit":
        for name, q in [("gptq", GPTQQuantizer(n_bits=4)),
                        ("nullspace", NullSpaceQuantizer(n_bits=4, rank=8))]:
            out[name] = float(np.median(q.fit(W, activations=X).calibration_error_))
    json.dump(out, sys.stdout)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("threads, work", [("1", "gram"), ("4", "fit")])
def test_wide_layer_finishes_in_a_subprocess(threads, work):
    """18432 inputs, 256 rows: NumPy's ``X.T @ X`` segfaulted here (OpenBLAS
    0.3.31); the Gram helper finishes at one BLAS thread and at more threads than
    this machine has cores, and GPTQ and the null-space method fit the layer."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
    proc = subprocess.run(
        [sys.executable, "-c", WIDE, work],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["gram_ok"]
    if work == "fit":
        assert 0 < out["gptq"] < 0.5 and 0 <= out["nullspace"] < 0.5


def test_float32_data_is_copied_once(traced_peak):
    """float32 calibration data was converted to float64 and then transposed by
    GPFQ's per-neuron path (two float64 copies), and the null-space fit took its
    fitting rows twice; each now holds one converted copy at a time."""
    from skquant import GreedyPathQuantizer, NullSpaceQuantizer
    from skquant._quantizers._gpfq import use_gram

    rng = np.random.default_rng(0)
    # rank 50: the null-space fit climbs its ladder (full-rank data has no freedom)
    X = (rng.standard_normal((20000, 50)) @ rng.standard_normal((50, 200))).astype(
        np.float32
    )
    W = rng.standard_normal((200, 8)).astype(np.float32) / 14
    assert not use_gram(*X.shape, W.shape[1])  # the per-neuron path
    x64 = X.size * 8
    GreedyPathQuantizer(n_bits=4).fit(W[:, :2], activations=X[:50])  # compiled
    gpfq, peak = traced_peak(
        lambda: GreedyPathQuantizer(n_bits=4).fit(W, activations=X)
    )
    assert peak < 1.5 * x64, peak / x64  # 2.04 before
    same = GreedyPathQuantizer(n_bits=4).fit(W, activations=X.astype(np.float64))
    np.testing.assert_array_equal(gpfq.encode(W), same.encode(W))
    NullSpaceQuantizer(n_bits=4).fit(W[:, :2], activations=X[:500])  # compiled
    _, peak = traced_peak(lambda: NullSpaceQuantizer(n_bits=4).fit(W, activations=X))
    assert peak < 4.0 * x64, peak / x64  # 4.31 before (3.72 now)


def test_data_whose_squares_overflow_is_refused():
    """Activations around 1e200 made GPFQ return all-zero codes and the
    null-space fit NaN errors, with NumPy's overflow warnings only."""
    from skquant import GreedyPathQuantizer, NullSpaceQuantizer

    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((50, 8)) * 1e200, rng.standard_normal((8, 3))
    for est in (GreedyPathQuantizer(4), NullSpaceQuantizer(4), GPTQQuantizer(4)):
        with pytest.raises(ValueError, match="activations holds values up to "):
            est.fit(W, activations=X)
    fine = GreedyPathQuantizer(4).fit(W, activations=X * 1e-200)
    assert np.all(np.isfinite(fine.calibration_error_))


def test_data_whose_squares_underflow_is_refused():
    """Activations around 1e-170 gave errors and bounds of 0 (below the measured
    error) and round-to-nearest codes: the sums of squares underflowed."""
    from skquant import GreedyPathQuantizer, NullSpaceQuantizer

    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((16, 32)), rng.standard_normal((32, 3))
    for est in (GreedyPathQuantizer(4), NullSpaceQuantizer(4), GPTQQuantizer(4)):
        with pytest.raises(ValueError, match="activations holds values of at most"):
            est.fit(W, activations=X * 1e-170)
        with pytest.raises(ValueError, match="target_activations holds values of"):
            est.fit(W, activations=X, target_activations=X * 1e-170)
        # where the squares are still normal, the codes are those of X itself
        ref = clone(est).fit(W, activations=X)
        tiny = clone(est).fit(W, activations=X * 2.0**-500)
        np.testing.assert_array_equal(tiny.codes_, ref.codes_)
        np.testing.assert_allclose(tiny.calibration_error_, ref.calibration_error_)
    zeros = GreedyPathQuantizer(4).fit(W, activations=np.zeros_like(X))
    assert zeros.codes_.shape == W.shape  # no signal at all is not refused


@pytest.mark.parametrize("variant", [None, "grid", "lp"])
def test_a_dead_neuron_stays_near_zero_under_the_binary_alphabet(variant):
    """An all-zero column got the step 1 under the data-driven quantizers' binary
    alphabet (its codes +-1: an output larger than the live neuron's), where the
    memoryless BinaryQuantizer gives it float32's eps."""
    from skquant import BinaryQuantizer, GreedyPathQuantizer, NullSpaceQuantizer

    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 64))
    W = rng.standard_normal((64, 2)) / 8
    W[:, 0] = 0.0
    eps = np.finfo(np.float32).eps
    assert BinaryQuantizer().fit(W).scale_[0] == eps
    if variant is None:
        ests = [GreedyPathQuantizer(n_bits="binary"), GPTQQuantizer(n_bits="binary")]
    else:
        ests = [NullSpaceQuantizer(n_bits="binary", variant=variant, rank=None)]
    for est in ests:
        Q = est.fit_transform(W, activations=X)
        assert est.scale_[0] == eps
        np.testing.assert_array_equal(np.abs(Q[:, 0]), eps)
        assert np.linalg.norm(X @ Q[:, 0]) < 1e-4 * np.linalg.norm(X @ W[:, 1])
