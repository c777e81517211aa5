"""Each numba kernel against a NumPy reference: dtype x order x read-only x variant."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from skquant._kernels import _msq, _packing
from skquant._kernels._threads import effective_n_jobs, numba_threads
from skquant._quantizers._walk import walk_to_vertices

DTYPES = [np.float32, np.float64]
ORDERS = ["C", "F"]
READONLY = [False, True]
VARIANTS = ["", "_parallel"]


def _make(dtype, order, readonly, shape=(33, 7), seed=0):
    X = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    X[0, 0] = 0.0
    X = np.asarray(X, order=order)
    if readonly:
        X.flags.writeable = False
    return X


def kernel_for(name, variant):
    return getattr(_msq, name + variant)


params = pytest.mark.parametrize(
    "dtype, order, readonly, variant",
    [(d, o, r, v) for d in DTYPES for o in ORDERS for r in READONLY for v in VARIANTS],
)


def _grid(X):
    dt = X.dtype.type
    level = (np.abs(X).max(axis=0) / 7).astype(X.dtype)
    inv = (dt(1) / level).astype(X.dtype)
    zp = np.arange(X.shape[1]).astype(X.dtype) - 3
    return inv, level, zp, dt(-7), dt(7)


@params
def test_fake_quantize_matches_numpy(dtype, order, readonly, variant):
    X = _make(dtype, order, readonly)
    inv, level, zp, qmin, qmax = _grid(X)
    out = np.empty_like(X)
    with numba_threads(2 if variant else 1):
        kernel_for("fake_quantize", variant)(X, inv, level, zp, qmin, qmax, out)
    ref = (np.clip(np.rint(X * inv) + zp, qmin, qmax) - zp) * level
    assert ref.dtype == dtype
    assert_array_equal(out, ref)


@params
def test_quantize_matches_numpy(dtype, order, readonly, variant):
    X = _make(dtype, order, readonly)
    inv, _, zp, qmin, qmax = _grid(X)
    out = np.empty(X.shape, dtype=np.int16)
    kernel_for("quantize", variant)(X, inv, zp, qmin, qmax, out)
    assert_array_equal(out, np.clip(np.rint(X * inv) + zp, qmin, qmax))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantize_matches_numpy(dtype):
    codes = np.random.default_rng(1).integers(-7, 8, size=(9, 4)).astype(np.int8)
    level = np.array([0.1, 0.2, 0.3, 0.4], dtype=dtype)
    zp = np.array([0, 1, -1, 2], dtype=dtype)
    out = np.empty(codes.shape, dtype=dtype)
    _msq.dequantize(codes, level, zp, out)
    assert_array_equal(out, (codes - zp) * level)


@params
def test_sign_fake_quantize_matches_numpy(dtype, order, readonly, variant):
    X = _make(dtype, order, readonly)
    level = np.abs(X).mean(axis=0).astype(dtype)
    out = np.empty_like(X)
    kernel_for("sign_fake_quantize", variant)(X, level, out)
    assert_array_equal(out, np.where(X >= 0, level, -level))
    assert np.all(out[0, 0] == level[0])  # sign(0) = +1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("readonly", READONLY)
def test_column_statistics(dtype, order, readonly):
    X = _make(dtype, order, readonly)
    out = np.empty(X.shape[1], dtype=dtype)
    _msq.column_abs_max(X, out)
    assert_array_equal(out, np.abs(X).max(axis=0))
    _msq.column_abs_mean(X, out)
    ref = np.abs(X.astype(np.float64)).mean(axis=0)
    np.testing.assert_allclose(out, ref, rtol=4 * np.finfo(dtype).eps)


@params
def test_grid_mse_errors_matches_numpy(dtype, order, readonly, variant):
    X = _make(dtype, order, readonly)
    dt = X.dtype.type
    base = (np.abs(X).max(axis=0) / 3).astype(dtype)
    ratios = np.array([0.25, 0.5, 1.0], dtype=dtype)
    out = np.empty((3, X.shape[1]))
    kernel_for("grid_mse_errors", variant)(X, base, ratios, dt(-3), dt(3), out)
    for k, r in enumerate(ratios):
        step = (r * base).astype(dtype)
        inv = (dt(1) / step).astype(dtype)
        Q = np.clip(np.rint(X * inv), -3, 3) * step
        ref = ((X - Q).astype(np.float64) ** 2).sum(axis=0)
        np.testing.assert_allclose(out[k], ref, rtol=1e-12)


@params
def test_ternary_optimal_scale_matches_numpy(dtype, order, readonly, variant):
    X = _make(dtype, order, readonly)
    out = np.empty(X.shape[1], dtype=dtype)
    kernel_for("ternary_optimal_scale", variant)(X, out)
    for j in range(X.shape[1]):
        a = np.sort(np.abs(X[:, j].astype(np.float64)))[::-1]
        S = np.cumsum(a)
        k = np.argmax(S**2 / np.arange(1, a.size + 1))
        np.testing.assert_allclose(out[j], S[k] / (k + 1), rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("n_bits", [1, 2, 3, 4, 5, 7, 8, 11, 16])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100])
def test_pack_bits_matches_numpy_bitstream(n_bits, variant, n):
    rng = np.random.default_rng(n_bits)
    qmin = -(2 ** (n_bits - 1))
    codes = rng.integers(qmin, qmin + 2**n_bits, size=n).astype(np.int32)
    out = np.empty(-(-n // 8) * n_bits, dtype=np.uint8)
    getattr(_packing, "pack_bits" + variant)(codes, n_bits, qmin, out)
    # reference: every code's bits, least significant first, padded to whole blocks
    u = (codes.astype(np.int64) - qmin).astype(np.uint64)
    bits = ((u[:, None] >> np.arange(n_bits, dtype=np.uint64)) & 1).astype(np.uint8)
    bits = np.concatenate([bits.ravel(), np.zeros(out.size * 8 - bits.size, np.uint8)])
    assert_array_equal(out, np.packbits(bits, bitorder="little"))
    back = np.empty(n, dtype=np.int32)
    getattr(_packing, "unpack_bits" + variant)(out, n_bits, qmin, back)
    assert_array_equal(back, codes)


def test_effective_n_jobs():
    import numba

    top = numba.config.NUMBA_NUM_THREADS
    assert effective_n_jobs(None) == 1
    assert effective_n_jobs(1) == 1
    assert effective_n_jobs(-1) == top
    assert effective_n_jobs(10**6) == top
    assert effective_n_jobs(-(10**6)) == 1


@pytest.mark.skipif("NUMBA_DISABLE_JIT" in os.environ, reason="checks compiled code")
def test_parallel_kernels_have_their_own_cache_entries():
    # numba's cache key ignores parallel=True: the two variants must be distinct
    # functions (see docs/contributing.rst, numba kernels), or one would load the
    # other's machine code.
    assert _msq.fake_quantize.py_func is not _msq.fake_quantize_parallel.py_func
    assert _msq.fake_quantize_parallel.targetoptions.get("parallel")
    assert not _msq.fake_quantize.targetoptions.get("parallel")


def test_one_blas_thread_limits_and_restores():
    """Inside the block every BLAS library runs one thread; after it, the
    previous counts are back; the library scan is reused between calls."""
    from threadpoolctl import threadpool_info

    from skquant._kernels import _threads

    def counts():
        return [
            (d["filepath"], d["num_threads"])
            for d in threadpool_info()
            if d["user_api"] == "blas"
        ]

    before = counts()
    with _threads.one_blas_thread():
        inside = counts()
        scan = _threads._BLAS[0]
    assert inside and all(n == 1 for _, n in inside)
    assert counts() == before
    with _threads.one_blas_thread():
        assert _threads._BLAS[0] is scan


def test_blas_n_jobs_follows_the_blas_limit_and_the_main_thread():
    """A kernel following BLAS runs on the libraries' current thread count:
    the limit in force, and one from a thread other than the main one."""
    import threading

    from threadpoolctl import threadpool_limits

    from skquant._kernels._threads import blas_n_jobs

    with threadpool_limits(limits=1, user_api="blas"):
        assert blas_n_jobs() == 1
    with threadpool_limits(limits=3, user_api="blas"):
        assert blas_n_jobs() == 3
        seen = []
        worker = threading.Thread(target=lambda: seen.append(blas_n_jobs()))
        worker.start()
        worker.join()
        assert seen == [1]


_LEAK_CHECK = """
import json

import numpy as np
from numba.core.runtime import rtsys
from skquant._kernels import _nullspace
from skquant._kernels._nullspace import REFRESH
from skquant._quantizers._walk import walk_to_vertices

# every check of the basis inverse fails: it is computed afresh (compiled with
# this value: a fresh NUMBA_CACHE_DIR)
_nullspace.INVERSE_TOL = -1.0

rng = np.random.default_rng(0)
n, k, n_out = 400, 16, 3
V = np.linalg.qr(rng.standard_normal((n, k)))[0]
W = rng.standard_normal((n, n_out))
lo, hi = np.floor(W), np.floor(W) + 1
X = rng.standard_normal((24, n))
for chunk in (0, 40):  # the inverse form, the tableau in chunks
    for guide in (None, X):
        args = (V, W, lo, hi, np.arange(n))
        walk_to_vertices(*args, chunk=chunk, X=guide)  # compiled, warm
        flops = np.zeros(n_out)
        before = rtsys.get_allocation_stats()
        pivots = walk_to_vertices(*args, chunk=chunk, X=guide, flops=flops)[2]
        after = rtsys.get_allocation_stats()
        if chunk == 0 and guide is None:
            print("flops", json.dumps(flops.tolist()))
        assert pivots.min() > REFRESH, pivots  # the inverse computed afresh
        assert after.alloc - before.alloc > 0
        assert after.alloc - before.alloc == after.free - before.free
        assert after.mi_alloc - before.mi_alloc == after.mi_free - before.mi_free
print("balanced")
"""


def test_the_walk_frees_what_it_allocates(tmp_path):
    """The walk's per-step code runs without numba's reference counting
    (``_nrt=False``): an array handed back to it by a helper would never be
    freed. numba's allocation counts (``NUMBA_NRT_STATS``, read at start-up,
    hence a fresh interpreter) balance over walks in both forms, guided or
    not, long enough to refresh the basis inverse."""
    import json
    import subprocess
    import sys

    env = {
        **os.environ,
        "NUMBA_NRT_STATS": "1",
        "NUMBA_NUM_THREADS": "1",
        "NUMBA_CACHE_DIR": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _LEAK_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()
    assert out[-1] == "balanced"
    # the forced refreshes did happen: the same walk here, its checks passing,
    # counts at least one fresh inverse (2 k^3 flops) less per neuron
    forced = np.array(json.loads(out[0].removeprefix("flops ")))
    rng = np.random.default_rng(0)
    n, k, n_out = 400, 16, 3
    V = np.linalg.qr(rng.standard_normal((n, k)))[0]
    W = rng.standard_normal((n, n_out))
    flops = np.zeros(n_out)
    walk_to_vertices(
        V, W, np.floor(W), np.floor(W) + 1, np.arange(n), chunk=0, flops=flops
    )
    assert np.all(forced - flops >= 2 * k**3)


def test_inverse_check_finds_a_drifted_inverse():
    """The inverse form keeps ``A^{-1}`` through rank-one updates and checks it
    every REFRESH pivots: ``A^{-1} (A 1)`` against the ones. A fresh inverse of
    a well-conditioned basis passes; one whose entries drifted by 1e-8 fails;
    the error is the largest entry's, whatever the basis order."""
    from skquant._kernels._nullspace import INVERSE_TOL, _basis_matrix, _inverse_error

    rng = np.random.default_rng(0)
    n, k = 60, 12
    V = np.linalg.qr(rng.standard_normal((n, k)))[0]
    B = rng.choice(n, size=k, replace=False).astype(np.int64)
    A = V[B].T
    assert_array_equal(_basis_matrix(V, B), A)
    AT = np.ascontiguousarray(np.linalg.inv(A).T)
    ones, y = np.empty(k), np.empty(k)
    fresh = _inverse_error(V, B, AT, ones, y)
    assert fresh <= 1e3 * np.finfo(float).eps * np.linalg.cond(A)
    assert fresh <= INVERSE_TOL
    np.testing.assert_allclose(y, 1.0, atol=1e-12)  # A^{-1} (A 1)
    drifted = AT + 1e-8 * rng.standard_normal(AT.shape)
    err = _inverse_error(V, B, drifted, ones, y)
    expected = np.abs(drifted.T @ A.sum(axis=1) - 1).max()
    assert err == pytest.approx(expected, rel=1e-6)
    assert err > INVERSE_TOL


# -- greedy path: columns advanced together -----------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 30),
    n_out=st.integers(2, 40),
    levels=st.sampled_from([(0.5, 0.0, 1.0), (0.0, -7.0, 7.0), (8.0, 0.0, 15.0)]),
    seed=st.integers(0, 2**16),
    parallel=st.booleans(),
)
def test_greedy_path_blocks_give_the_per_column_codes(
    n, m, n_out, levels, seed, parallel
):
    """Columns that share their coordinates advance 16 at a time
    (``_greedy_block``): codes and residuals equal, bit for bit, those of each
    column run alone (the per-column kernel), for a shuffled coordinate order, a
    list cut short (``-1``), a zero input column and several grids."""
    from skquant._kernels import _rounding

    rng = np.random.default_rng(seed)
    zp, qmin, qmax = levels
    XqT = rng.standard_normal((n, m))
    XfT = XqT + 0.1 * rng.standard_normal((n, m))
    XqT[rng.integers(n)] = 0.0  # a coordinate whose input is all zero
    W = rng.standard_normal((n, n_out))
    order = rng.permutation(n)[: rng.integers(1, n + 1)]
    idx = np.full((n, n_out), -1, dtype=np.int64)
    idx[: len(order)] = order[:, None]
    U0 = rng.standard_normal((n_out, m))
    inv = rng.uniform(0.5, 4.0, n_out)
    kernel = _rounding.greedy_path_parallel if parallel else _rounding.greedy_path
    U, codes = U0.copy(), np.full((n, n_out), 99.0)
    kernel(XqT, XfT, W, idx, U, inv, zp, qmin, qmax, codes)
    for c in range(n_out):  # one column at a time: the per-column kernel
        u, out = U0[c : c + 1].copy(), np.full((n, 1), 99.0)
        _rounding.greedy_path(
            XqT,
            XfT,
            np.ascontiguousarray(W[:, c : c + 1]),
            np.ascontiguousarray(idx[:, c : c + 1]),
            u,
            inv[c : c + 1].copy(),
            zp,
            qmin,
            qmax,
            out,
        )
        assert_array_equal(codes[:, c], out[:, 0])
        assert_array_equal(U[c], u[0])
