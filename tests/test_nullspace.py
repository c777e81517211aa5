"""NullSpaceQuantizer and GreedyPathQuantizer: the oracles of Maly & Saab's method."""

import pickle
import re
import warnings

import numba
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from skquant import GreedyPathQuantizer, NullSpaceQuantizer, UniformQuantizer
from skquant._kernels import _nullspace
from skquant._quantizers._nullspace import _padded_rows, _Products, ladder_neurons
from skquant._quantizers._spectrum import row_space
from skquant._quantizers._walk import walk_chunk, walk_to_vertices
from skquant.datasets import make_gaussian_layer
from skquant.metrics import relative_error

ALPHABETS = [2, 3, 4, 8, "ternary", "binary"]


def _layer(m=16, n_in=256, n_out=6, seed=0):
    return make_gaussian_layer(m, n_in, n_out, random_state=seed)


# ------------------------------------------------------------------------ the walk


@pytest.mark.parametrize("n_jobs", [None, 2])
@pytest.mark.parametrize("m, n", [(8, 64), (32, 2048), (100, 3000), (300, 700)])
def test_walk_preserves_data_and_reaches_a_vertex(n_jobs, m, n):
    rng = np.random.default_rng(m)
    X = rng.standard_normal((m, n))
    W = rng.standard_normal((n, 3)) / np.sqrt(n)
    step = np.abs(W).max(axis=0) / 7
    lo = np.floor(W / step) * step
    hi = lo + step
    V, _, k = row_space(X)
    Z, B, pivots = walk_to_vertices(V, W, lo, hi, np.arange(n), n_jobs=n_jobs)
    # X z = X w to relative 1e-9 after thousands of steps
    assert np.linalg.norm(X @ Z - X @ W) <= 1e-9 * np.linalg.norm(X @ W)
    assert pivots.max() > 0
    # inside the box, and at most k coordinates strictly inside their cell
    tol = 1e-9 * step
    assert np.all(Z >= lo - tol) and np.all(Z <= hi + tol)
    inside = (Z > lo + tol) & (Z < hi - tol)
    assert inside.sum(axis=0).max() <= k
    # the coordinates left inside are in the final basis
    for c in range(3):
        assert set(np.flatnonzero(inside[:, c])) <= set(B[:, c])


def _guided_reference(V, X, w, lo, hi, order):
    """The guided walk of one neuron by a plain loop: each step's tableau column
    solved afresh, the move toward the bound nearer GPFQ's target on the data's
    response to it with the current basis (outside the kept directions)."""
    n, k = V.shape
    B = list(scipy.linalg.qr(V.T, pivoting=True, mode="r")[1][:k])
    cols = [j for j in order if j not in set(B)]
    z, u = w.astype(np.float64).copy(), np.zeros(X.shape[0])
    for j in cols:
        if z[j] <= lo[j] or z[j] >= hi[j]:
            continue
        y = np.linalg.solve(V[B].T, V[j])
        t_hi, a_hi, t_lo, a_lo = hi[j] - z[j], -1, lo[j] - z[j], -1
        for p, b in enumerate(B):
            if abs(y[p]) <= 1e-12 * max(np.abs(y).max(), 1.0):
                continue
            r = sorted([(hi[b] - z[b]) / -y[p], (lo[b] - z[b]) / -y[p]])
            if r[1] < t_hi:
                t_hi, a_hi = r[1], p
            if r[0] > t_lo:
                t_lo, a_lo = r[0], p
        r = X[:, j] - X[:, B] @ y
        e = r @ r
        ahead = r @ u / e if e > 0 else 0.0
        to_hi = z[j] + ahead >= 0.5 * (lo[j] + hi[j])
        step, out = (max(t_hi, 0.0), a_hi) if to_hi else (min(t_lo, 0.0), a_lo)
        z[j] += step
        z[B] -= step * y
        u -= step * r
        if out < 0:
            z[j] = hi[j] if to_hi else lo[j]
        else:
            b = B[out]
            z[b] = hi[b] if (-y[out] > 0) == to_hi else lo[b]
            B[out] = j
    return z


def test_guided_walk_matches_a_plain_loop_and_reaches_a_vertex():
    """``walk_to_vertices(X=...)``: each coordinate heads for the bound nearer
    greedy path following's target on the data's response to its move;
    still a vertex of the same polytope (the constraint, the boxes, at most k
    coordinates inside their cells), and the same points as a plain loop."""
    rng = np.random.default_rng(3)
    m, n, k = 40, 60, 8
    X = rng.standard_normal((m, 12)) @ rng.standard_normal((12, n))
    X += 0.1 * rng.standard_normal((m, n))
    W = rng.standard_normal((n, 4)) / np.sqrt(n)
    step = np.abs(W).max(axis=0) / 3
    lo = np.floor(W / step) * step
    hi = lo + step
    V = row_space(X, k)[0]
    order = rng.permutation(n)
    Z, _, pivots = walk_to_vertices(V, W, lo, hi, order, X=X)
    plain = walk_to_vertices(V, W, lo, hi, order)[0]
    assert pivots.max() > 0 and not np.allclose(Z, plain)
    assert np.linalg.norm(V.T @ (Z - W)) <= 1e-10 * np.linalg.norm(V.T @ W)
    tol = 1e-9 * step
    assert np.all(Z >= lo - tol) and np.all(Z <= hi + tol)
    assert ((Z > lo + tol) & (Z < hi - tol)).sum(axis=0).max() <= k
    for c in range(W.shape[1]):
        ref = _guided_reference(V, X, W[:, c], lo[:, c], hi[:, c], order)
        np.testing.assert_allclose(Z[:, c], ref, atol=1e-9 * step[c])


@given(
    st.integers(1, 12),
    st.integers(2, 80),
    st.integers(0, 90),
    st.floats(0, 0.5),
    st.integers(0, 10**6),
)
def test_property_walk_any_chunking_reaches_a_vertex(k, free, chunk, on_grid, seed):
    # every chunk size (shared first tableau, fresh ones after, eta flushes every
    # 32 pivots), and the inverse form (chunk 0), walks to a vertex that keeps
    # V^T z = V^T w, also when a fraction of the coordinates start on a grid
    # point (degenerate boxes lo = hi)
    rng = np.random.default_rng(seed)
    n = k + free
    V = np.linalg.qr(rng.standard_normal((n, k)))[0]
    W = rng.standard_normal((n, 2))
    step = np.array([0.3, 0.05])
    lo = np.floor(W / step) * step
    hi = lo + step
    snap = rng.random((n, 2)) < on_grid
    W = np.where(snap, lo, W)
    hi = np.where(snap, lo, hi)
    Z, B, _ = walk_to_vertices(V, W, lo, hi, rng.permutation(n), chunk=chunk)
    ref = np.linalg.norm(V.T @ W, axis=0)
    assert np.all(np.linalg.norm(V.T @ (Z - W), axis=0) <= 1e-9 * np.maximum(ref, 1))
    tol = 1e-9 * step
    assert np.all(Z >= lo - tol) and np.all(Z <= hi + tol)
    inside = (Z > lo + tol) & (Z < hi - tol)
    for c in range(2):
        assert set(np.flatnonzero(inside[:, c])) <= set(B[:, c])


@settings(deadline=None, max_examples=40)
@given(
    st.integers(1, 40),
    st.integers(2, 120),
    st.integers(1, 90),
    st.booleans(),
    st.integers(0, 10**6),
)
def test_property_inverse_and_tableau_forms_reach_the_same_vertices(
    k, free, chunk, guided, seed
):
    # the same moves in the same order: the same vertices up to round-off,
    # guided or not, whichever chunk the tableau uses; more than REFRESH pivots
    # for the larger cases, so the inverse is also computed afresh on the way
    rng = np.random.default_rng(seed)
    n = k + free
    X = rng.standard_normal((k + 20, 6)) @ rng.standard_normal((6, n))
    X += 0.3 * rng.standard_normal((k + 20, n))
    V = row_space(X, k)[0]
    W = rng.standard_normal((n, 3)) / np.sqrt(n)
    step = np.abs(W).max(axis=0) / 3
    lo = np.floor(W / step) * step
    hi = lo + step
    order = rng.permutation(n)
    guide = X if guided else None
    a, Ba, pa = walk_to_vertices(V, W, lo, hi, order, chunk=0, X=guide)
    b, Bb, pb = walk_to_vertices(V, W, lo, hi, order, chunk=chunk, X=guide)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * step.max())
    assert_array_equal(pa, pb)
    assert_array_equal(np.sort(Ba, axis=0), np.sort(Bb, axis=0))
    # the default form is the inverse one at these k
    assert_array_equal(walk_to_vertices(V, W, lo, hi, order, X=guide)[0], a)


@given(st.integers(1, 40), st.integers(1, 12), st.floats(0, 1), st.integers(0, 10**6))
def test_property_padded_rows_lists_each_columns_rows(n, n_out, density, seed):
    # each column's True rows, increasing, then -1 (at least one row)
    mask = np.random.default_rng(seed).random((n, n_out)) < density
    idx = _padded_rows(mask)
    assert idx.shape == (max(int(mask.sum(axis=0).max()), 1), n_out)
    for j in range(n_out):
        rows = np.flatnonzero(mask[:, j])
        assert_array_equal(idx[: rows.size, j], rows)
        assert np.all(idx[rows.size :, j] == -1)


@pytest.mark.parametrize("chunk", [None, 0, 7, 40, 10**6])
def test_walk_serial_and_parallel_agree(chunk):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((24, 300))
    W = rng.standard_normal((300, 9)) / 17
    step = np.abs(W).max(axis=0) / 3
    lo = np.floor(W / step) * step
    hi = lo + step
    V = row_space(X)[0]
    order = np.argsort(-(X**2).sum(axis=0))
    fa, fb = np.zeros(9), np.zeros(9)
    a = walk_to_vertices(V, W, lo, hi, order, n_jobs=None, chunk=chunk, flops=fa)
    b = walk_to_vertices(V, W, lo, hi, order, n_jobs=2, chunk=chunk, flops=fb)
    for x, y in zip(a, b):
        assert_array_equal(x, y)
    # the counted arithmetic: the same walk, the same count; at least the final
    # drift check (4 n k) and 6 k per coordinate moved off its start (those not
    # on a bound already)
    assert_array_equal(fa, fb)
    n, k = V.shape
    moved = ((W > lo) & (W < hi)).sum(axis=0) - k
    assert np.all(fa >= 4 * n * k + 6 * k * np.maximum(moved, 0))
    assert_array_equal(walk_to_vertices(V, W, lo, hi, order, chunk=chunk)[0], a[0])


def test_final_refinement_restores_the_equality_but_never_leaves_the_box():
    # one constraint v^T z = v^T w; basis = coordinate 0
    v = np.array([[0.6], [0.8]])
    w = np.array([0.5, 0.5])
    lo, hi = np.zeros(2), np.ones(2)
    B = np.array([0])
    z = np.array([0.5, 0.4])  # drifted: v^T (w - z) = 0.08, fixed by z_0 += 0.08/0.6
    _nullspace._resolve_basis(v, w, z, B, lo, hi)
    assert abs(v[:, 0] @ (z - w)) <= 1e-15 and lo[0] <= z[0] <= hi[0]
    # a nearly singular basis would need z_0 += 0.08 / 1e-9: refused, z kept
    v = np.array([[1e-9], [1.0]]) / np.hypot(1e-9, 1.0)
    z = np.array([0.5, 0.4])
    _nullspace._resolve_basis(v, w, z, B, lo, hi)
    assert_array_equal(z, [0.5, 0.4])


def test_walk_without_constraints_rounds_to_the_nearer_bound():
    # k = 0 (e.g. all-zero data): every coordinate moves to its nearer cell bound
    rng = np.random.default_rng(0)
    W = rng.standard_normal((20, 3))
    lo = np.floor(W * 4) / 4
    hi = lo + 0.25
    flops = np.full(3, -1.0)
    Z, B, pivots = walk_to_vertices(
        np.empty((20, 0)), W, lo, hi, np.arange(20), flops=flops
    )
    assert B.shape == (0, 3) and not pivots.any()
    assert_array_equal(flops, 0.0)  # no constraint: no arithmetic
    assert_array_equal(Z, np.where(hi - W <= W - lo, hi, lo))  # ties go up
    q = NullSpaceQuantizer(n_bits=3).fit(W, activations=np.zeros((5, 20)))
    assert q.rank_ == 0 and not q.n_off_grid_.any()


def test_walk_on_near_duplicate_columns_stays_in_its_boxes():
    # columns equal up to 1e-15..1e-6 and scales e^-4..e^4: nearly singular bases
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n, k = 160, 70
        X = rng.standard_normal((k, n))
        src, dst = rng.integers(0, n, 60), rng.integers(0, n, 60)
        X[:, dst] = X[:, src] * rng.uniform(0.5, 2, 60)
        X[:, dst] += 10.0 ** rng.uniform(-15, -6, 60) * rng.standard_normal((k, 60))
        X *= np.exp(rng.uniform(-4, 4, n))
        V = row_space(X)[0]
        W = rng.standard_normal((n, 3))
        lo = np.floor(W / 0.3) * 0.3
        hi = lo + 0.3
        for chunk in (None, 0, 1, 40):
            Z = walk_to_vertices(V, W, lo, hi, rng.permutation(n), chunk=chunk)[0]
            assert np.all(np.isfinite(Z))
            assert np.all(Z >= lo - 1e-9 * 0.3) and np.all(Z <= hi + 1e-9 * 0.3)
            ref = np.linalg.norm(V.T @ W, axis=0)
            assert np.all(np.linalg.norm(V.T @ (Z - W), axis=0) <= 1e-6 * ref)


@pytest.mark.parametrize(
    "n, k, single", [(784, 232, True), (784, 591, True), (4096, 32, False)]
)
def test_walk_chunk_model(n, k, single):
    C = walk_chunk(n, k)
    assert 1 <= C <= n - k
    assert (C == n - k) == single
    assert walk_chunk(10, 10) == 1 and walk_chunk(10, 0) == 10


# ----------------------------------------------------------------- section 1 oracles


@pytest.mark.parametrize("n_bits", ALPHABETS)
@pytest.mark.parametrize("rounding", ["nearest", "greedy"])
def test_grid_variant_oracles(n_bits, rounding):
    X, W = _layer()
    q = NullSpaceQuantizer(n_bits=n_bits, rounding=rounding).fit(W, activations=X)
    Q = q.transform(W)
    codes = q.encode(W)
    # alphabet membership and exact decode
    assert_array_equal(q.decode(codes), Q)
    if n_bits == "binary":
        assert set(np.unique(codes)) <= {-1, 1}
    assert codes.min() >= q.qmin_ and codes.max() <= q.qmax_
    # pre-processing keeps X z == X w; at most r coordinates left off the alphabet
    assert q.preprocessing_residual_ <= 1e-9
    assert q.rank_ == 16
    assert q.n_off_grid_.max() <= q.rank_
    # measured calibration error never exceeds the a-posteriori bound
    err = np.linalg.norm(X @ (W - Q), axis=0) / np.linalg.norm(X @ W, axis=0)
    np.testing.assert_allclose(err, q.calibration_error_, rtol=1e-10)
    assert np.all(err <= q.bound_ * (1 + 1e-9))
    # fit_transform gives the same as fit then transform
    assert_array_equal(
        NullSpaceQuantizer(n_bits=n_bits, rounding=rounding).fit_transform(
            W, activations=X
        ),
        Q,
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_bits", ["ternary", "binary", 4])
def test_lp_variant_oracles(n_bits, dtype):
    X, W = _layer(m=12, n_in=200, n_out=4)
    W = W.astype(dtype)
    q = NullSpaceQuantizer(n_bits=n_bits, variant="lp", rounding="nearest")
    Q = q.fit_transform(W, activations=X)
    c = q.scale_ * (q.qmax_ if isinstance(n_bits, int) else 1)
    # c is ||z*||_inf of a basic solution: at most r - 1 entries strictly inside
    # (the solver's entries at +-c made exact; float32 weights too: their step
    # c / K is kept exact)
    assert q.n_off_grid_.max() <= 12 - 1
    assert q.preprocessing_residual_ <= 1e-9
    err = np.linalg.norm(X @ (W - Q), axis=0) / np.linalg.norm(X @ W, axis=0)
    assert np.all(err <= q.bound_ * (1 + 1e-9))
    # LP duality: c <= ||X w|| / min_{||v||=1} ||X^T v||_1 <= ||X w|| / sigma_min
    smin = np.linalg.svd(X, compute_uv=False).min()
    assert np.all(c <= np.linalg.norm(X @ W, axis=0) / smin + 1e-12)


def test_lp_scale_is_the_linf_minimum():
    X, W = _layer(m=6, n_in=40, n_out=2)
    q = NullSpaceQuantizer(n_bits="ternary", variant="lp").fit(W, activations=X)
    # any feasible point has ||z||_inf >= c: check the least-norm one and w itself
    pinv_pt = np.linalg.pinv(X) @ (X @ W)
    assert np.all(q.scale_ <= np.abs(pinv_pt).max(axis=0) + 1e-12)
    assert np.all(q.scale_ <= np.abs(W).max(axis=0) + 1e-12)


def test_lp_scale_is_the_textbook_programs_optimum():
    """The scaled program skquant solves has the optimum of the program in
    ``(z, t)`` (``min t s.t. -t <= z_i <= t, X z = X w``), solved here as written."""
    from scipy.optimize import linprog

    X, W = _layer(m=8, n_in=60, n_out=3, seed=5)
    q = NullSpaceQuantizer(n_bits="ternary", variant="lp").fit(W, activations=X)
    n = X.shape[1]
    eye, one = np.eye(n), np.ones((n, 1))
    for j in range(W.shape[1]):
        res = linprog(
            np.r_[np.zeros(n), 1.0],
            A_ub=np.block([[eye, -one], [-eye, -one]]),
            b_ub=np.zeros(2 * n),
            A_eq=np.c_[X, np.zeros(X.shape[0])],
            b_eq=X @ W[:, j],
            bounds=[(None, None)] * n + [(0, None)],
            method="highs",
        )
        np.testing.assert_allclose(q.scale_[j], res.fun, rtol=1e-9)


def test_lp_interior_point_on_many_rows_reaches_the_simplex_vertex(monkeypatch):
    import skquant._quantizers._lp as lp

    methods = []

    def recording(*args, method, **kwargs):
        methods.append(method)
        return linprog(*args, method=method, **kwargs)

    linprog = lp.linprog
    monkeypatch.setattr(lp, "linprog", recording)
    monkeypatch.setattr(lp, "IPM_ROWS", 40)  # (a small layer)
    X, W = _layer(m=40, n_in=100, n_out=2, seed=8)
    V = np.linalg.svd(X, full_matrices=False)[2].T
    seen = np.ones(X.shape[1], dtype=bool)
    Z = lp.basic_solutions(V, W, seen)
    assert methods == ["highs-ipm"] * 2
    Z_simplex = lp.basic_solutions(V, W, seen, method="highs")
    np.testing.assert_allclose(Z, Z_simplex, rtol=0, atol=1e-12 * np.abs(Z).max())
    # a vertex: all but at most k - 1 entries at +-||z||_inf
    c = np.abs(Z).max(axis=0)
    assert np.all((np.abs(Z) < c * (1 - 1e-9)).sum(axis=0) <= 40 - 1)


def test_lp_programs_are_scale_free():
    """A neuron of tiny weights (whose program the solver's absolute tolerances
    read as unbounded) has the vertex of its scaled-up copy, scaled down; one in
    the null space of the data has ``z = 0``."""
    X, W = _layer(m=8, n_in=30, n_out=2, seed=9)
    tiny = W * np.array([1.0, 1e-11])
    q = NullSpaceQuantizer(n_bits="ternary", variant="lp").fit(tiny, activations=X)
    ref = NullSpaceQuantizer(n_bits="ternary", variant="lp").fit(W, activations=X)
    np.testing.assert_allclose(q.scale_, ref.scale_ * [1.0, 1e-11], rtol=1e-9)
    np.testing.assert_array_equal(q.codes_, ref.codes_)
    null = W - np.linalg.pinv(X) @ (X @ W)  # X w = 0 (to round-off), w != 0
    q = NullSpaceQuantizer(n_bits="ternary", variant="lp").fit(null, activations=X)
    np.testing.assert_array_equal(q.codes_, 0)


@pytest.mark.parametrize("n_bits", ["ternary", "binary", 3])
@pytest.mark.parametrize("rounding", ["nearest", "greedy"])
def test_lp_inputs_no_row_sees_take_the_nearest_code(n_bits, rounding):
    """An input that is zero on every calibration row is free in the programs:
    it takes the code nearest its weight, and the others' codes and scales are
    those of the layer without it."""
    X, W = _layer(m=10, n_in=80, n_out=4, seed=6)
    dead = np.zeros(80, dtype=bool)
    dead[[0, 7, 8, 40, 79]] = True
    X[:, dead] = 0.0
    est = NullSpaceQuantizer(n_bits=n_bits, variant="lp", rounding=rounding)
    q = clone(est).fit(W, activations=X)
    live = clone(est).fit(W[~dead], activations=X[:, ~dead])
    np.testing.assert_array_equal(q.codes_[~dead], live.codes_)
    np.testing.assert_allclose(q.scale_, live.scale_, rtol=1e-12)
    # the nearest code of each unseen weight, in the alphabet's units
    Q, step = q.transform(W), q.scale_
    if n_bits == "binary":
        expected = np.where(W[dead] >= 0, step, -step)
    else:
        expected = np.clip(np.rint(W[dead] / step), q.qmin_, q.qmax_) * step
    np.testing.assert_allclose(Q[dead], expected.astype(Q.dtype), rtol=1e-6)
    assert q.n_off_grid_.max() <= 10 - 1


@pytest.mark.parametrize("n_bits", [2, 4])
def test_beats_msq_by_far_when_n_in_much_larger_than_m(n_bits):
    X, W = _layer(m=16, n_in=1024, n_out=8, seed=3)
    msq = UniformQuantizer(n_bits=n_bits).fit_transform(W)
    for rounding in ("nearest", "greedy"):
        ns = NullSpaceQuantizer(n_bits=n_bits, rounding=rounding).fit_transform(
            W, activations=X
        )
        assert relative_error(W, ns, X) < relative_error(W, msq, X) / 4


def _slope(ns, errs):
    return np.polyfit(np.log(ns), np.log(errs), 1)[0]


@pytest.mark.slow
def test_rates_on_gaussian_data():
    # relative error on the data against n_in at m fixed: MSQ flat, grid and GPFQ
    # near -1/2, the scale-free ternary LP variant near -1 (docs/nullspace.rst)
    m, sizes = 16, [128, 256, 512, 1024]
    errs = {k: [] for k in ("msq", "grid", "gpfq", "lp")}
    for n in sizes:
        e = {k: [] for k in errs}
        for seed in range(2):
            X, W = make_gaussian_layer(m, n, 6, random_state=seed)
            e["msq"].append(
                relative_error(W, UniformQuantizer(n_bits=3).fit_transform(W), X)
            )
            e["grid"].append(
                relative_error(
                    W,
                    NullSpaceQuantizer(n_bits=3, rounding="nearest").fit_transform(
                        W, activations=X
                    ),
                    X,
                )
            )
            e["gpfq"].append(
                relative_error(
                    W, GreedyPathQuantizer(n_bits=3).fit_transform(W, activations=X), X
                )
            )
            e["lp"].append(
                relative_error(
                    W,
                    NullSpaceQuantizer(
                        n_bits="ternary", variant="lp", rounding="nearest"
                    ).fit_transform(W, activations=X),
                    X,
                )
            )
        for k in errs:
            errs[k].append(np.mean(e[k]))
    # max-abs MSQ: no decay; it even creeps up, since max|w| / typical |w| grows
    # like sqrt(2 log n_in) for Gaussian weights
    assert -0.1 < _slope(sizes, errs["msq"]) < 0.3
    assert -0.8 < _slope(sizes, errs["grid"]) < -0.3
    assert -0.8 < _slope(sizes, errs["gpfq"]) < -0.3
    assert -1.3 < _slope(sizes, errs["lp"]) < -0.75


# --------------------------------------------------------------------------- rank cap


def test_no_freedom_warns_and_rounds_everything():
    X, W = _layer(m=300, n_in=64, n_out=3)
    with pytest.warns(UserWarning, match="leaves no freedom"):
        q = NullSpaceQuantizer(n_bits=4, rank=None, rounding="nearest").fit(
            W, activations=X
        )
    assert_array_equal(q.transform(W), UniformQuantizer(n_bits=4).fit_transform(W))
    with pytest.warns(UserWarning, match="leaves no freedom"):
        g = NullSpaceQuantizer(n_bits=4, rank=None).fit(W, activations=X)
    gp = GreedyPathQuantizer(n_bits=4).fit(W, activations=X)
    # greedy over every coordinate is GPFQ up to the visiting order
    assert relative_error(W, g.transform(W), X) < 1.5 * relative_error(
        W, gp.transform(W), X
    )


def test_lp_without_freedom_skips_the_programs(monkeypatch):
    """rank >= n_in fixes z by the equality: no LP is solved."""
    import skquant._quantizers._lp as ns

    def no_lp(*args, **kwargs):
        raise AssertionError("an LP was solved")

    monkeypatch.setattr(ns, "linprog", no_lp)
    X, W = _layer(m=300, n_in=40, n_out=3)
    with pytest.warns(UserWarning, match="leaves no freedom"):
        q = NullSpaceQuantizer(n_bits="ternary", variant="lp").fit(W, activations=X)
    np.testing.assert_allclose(q.scale_, np.abs(W).max(axis=0))


def test_auto_rank_picks_the_held_out_best_cap(monkeypatch):
    import skquant._quantizers._nullspace as ns

    rng = np.random.default_rng(3)
    n, m = 120, 100
    # the data's energy lies in 10 directions; the rest is small and noisy, so
    # the calibration rows' weak directions are not the test rows'
    basis = np.linalg.qr(rng.standard_normal((n, n)))[0]
    scales = np.r_[np.full(10, 10.0), np.full(n - 10, 0.05)]
    X = rng.standard_normal((m, n)) * scales @ basis.T
    W = rng.standard_normal((n, 6)) / np.sqrt(n)
    held = np.zeros(m, dtype=bool)
    held[4::5] = True
    ladder = [10, 20, 40, 80]  # the numerical rank of 80 rows, halved down to 8

    def by_hand(k):  # the held-out error of a fit on the other rows at cap k
        Q = NullSpaceQuantizer(n_bits=3, rank=k if k < 80 else None).fit_transform(
            W, activations=X[~held]
        )
        return np.linalg.norm(X[held] @ (W - Q))

    # the whole ladder (patience beyond its length): every cap tried
    # (walk_budget=None: every cap; the budget is tested in test_nullspace_budget)
    monkeypatch.setattr(ns, "AUTO_PATIENCE", 10)
    full = NullSpaceQuantizer(n_bits=3, walk_budget=None).fit(W, activations=X)
    assert sorted(full.rank_scores_) == ladder
    best = min(full.rank_scores_, key=full.rank_scores_.get)
    assert full.rank_ == min(best, full.singular_values_.size)
    assert full.rank_scores_[best] < full.rank_scores_[80]  # a cap beats full rank
    for k in ladder:
        assert full.rank_scores_[k] == pytest.approx(by_hand(k))
    # the default climbs from the smallest cap and stops after AUTO_PATIENCE caps
    # in a row that do no better than the best so far
    monkeypatch.undo()
    q = NullSpaceQuantizer(n_bits=3, walk_budget=None).fit(W, activations=X)
    tried = sorted(q.rank_scores_)
    assert tried == ladder[: len(tried)]
    for k in tried:
        assert q.rank_scores_[k] == full.rank_scores_[k]
    streak = 0
    for i, k in enumerate(tried[1:], 1):
        better = q.rank_scores_[k] < min(q.rank_scores_[j] for j in tried[:i])
        streak = 0 if better else streak + 1
        assert streak < ns.AUTO_PATIENCE or k == tried[-1]
    assert len(tried) == len(ladder) or streak == ns.AUTO_PATIENCE
    assert q.rank_ == min(
        min(q.rank_scores_, key=lambda k: (q.rank_scores_[k], -k)),
        q.singular_values_.size,
    )
    # too few rows to hold any out: the numerical rank, no scores
    q = NullSpaceQuantizer(n_bits=3, rank="auto").fit(W, activations=X[:9])
    assert q.rank_ == 9 and q.rank_scores_ == {}


@given(
    n_out=st.integers(1, 200),
    count=st.integers(2, 64),
    seed=st.integers(0, 2**16),
)
def test_ladder_neurons_spread_over_the_norms(n_out, count, seed):
    norms = np.random.default_rng(seed).random(n_out)
    pick = ladder_neurons(norms, count)
    if n_out <= count:
        assert_array_equal(pick, np.arange(n_out))
        return
    assert pick.size == min(count, n_out)  # distinct picks, sorted
    assert np.all(np.diff(pick) > 0)
    assert pick[np.argmax(norms[pick])] == np.argmax(norms)
    assert pick[np.argmin(norms[pick])] == np.argmin(norms)
    # spread: every gap between picked norm ranks is at most the even one
    ranks = np.sort(np.argsort(np.argsort(norms))[pick])
    assert np.max(np.diff(ranks)) <= int(np.ceil((n_out - 1) / (count - 1))) + 1


def test_auto_rank_ladder_on_sampled_neurons(monkeypatch):
    """On a layer wider than AUTO_NEURONS the ladder's scores are the held-out
    errors of the picked neurons only; the final fit covers every neuron."""
    import skquant._quantizers._nullspace as ns

    rng = np.random.default_rng(5)
    n, m, n_out = 96, 60, 40
    X = rng.standard_normal((m, n)) * np.r_[np.full(8, 5.0), np.full(n - 8, 0.2)]
    W = rng.standard_normal((n, n_out)) / np.sqrt(n) * rng.uniform(0.2, 2, n_out)
    held = np.zeros(m, dtype=bool)
    held[4::5] = True
    monkeypatch.setattr(ns, "AUTO_NEURONS", 9)
    monkeypatch.setattr(ns, "AUTO_PATIENCE", 10)  # every cap of the ladder
    pick = ladder_neurons(np.linalg.norm(X[held] @ W, axis=0), 9)
    assert pick.size == 9
    q = NullSpaceQuantizer(n_bits=3, walk_budget=None).fit(W, activations=X)
    assert sorted(q.rank_scores_) == [12, 24, 48]  # 48 fitting rows, halved
    for k, score in q.rank_scores_.items():
        Q = NullSpaceQuantizer(n_bits=3, rank=k if k < 48 else None).fit_transform(
            W[:, pick], activations=X[~held]
        )
        assert score == pytest.approx(np.linalg.norm(X[held] @ (W[:, pick] - Q)))
    best = min(q.rank_scores_, key=lambda k: (q.rank_scores_[k], -k))
    assert q.rank_ == best and q.codes_.shape == W.shape
    assert np.all(q.n_off_grid_ <= best)


@pytest.mark.parametrize("rank", [8, 0.9])
def test_rank_cap_gives_freedom_and_keeps_bound(rank):
    X, W = _layer(m=300, n_in=64, n_out=3)
    q = NullSpaceQuantizer(n_bits=4, rank=rank).fit(W, activations=X)
    assert q.rank_ < 64 and q.n_off_grid_.max() <= q.rank_
    err = np.linalg.norm(X @ (W - q.transform(W)), axis=0) / np.linalg.norm(
        X @ W, axis=0
    )
    assert np.all(err <= q.bound_ * (1 + 1e-9))
    if rank == 0.9:
        s2 = q.singular_values_**2
        assert s2[: q.rank_].sum() >= 0.9 * s2.sum() > s2[: q.rank_ - 1].sum()


# ----------------------------------------------------------------------- GPFQ


@pytest.mark.parametrize("n_bits", ALPHABETS)
def test_gpfq_residual_and_alphabet(n_bits):
    X, W = _layer(m=32, n_in=300, n_out=5)
    q = GreedyPathQuantizer(n_bits=n_bits).fit(W, activations=X)
    Q = q.transform(W)
    assert_array_equal(q.decode(q.encode(W)), Q)
    err = np.linalg.norm(X @ (W - Q), axis=0) / np.linalg.norm(X @ W, axis=0)
    np.testing.assert_allclose(err, q.calibration_error_, rtol=1e-9)


def test_gpfq_matches_a_numpy_reference():
    X, W = _layer(m=10, n_in=30, n_out=2)
    q = GreedyPathQuantizer(n_bits=3).fit(W, activations=X)
    step = q.scale_
    for c in range(2):
        u = np.zeros(10)
        ref = []
        for t in range(30):
            x = X[:, t]
            val = x @ (u + W[t, c] * x) / (x @ x)
            code = np.clip(np.rint(val / step[c]), -3, 3)
            ref.append(code)
            u += W[t, c] * x - code * step[c] * x
        assert_array_equal(q.encode(W)[:, c], ref)


@pytest.mark.parametrize("n_bits", ALPHABETS)
@pytest.mark.parametrize("block_size", [1, 7, 128])
def test_gpfq_gram_form_equals_the_path(n_bits, block_size):
    """All neurons at once from Gram matrices: the per-neuron path's codes."""
    rng = np.random.default_rng(4)
    Xq = rng.standard_normal((200, 60)) @ rng.standard_normal((60, 60))
    Xq[:, 3] = 0.0  # a dead input: rounded on its own
    Xf = Xq @ (np.eye(60) + 0.05 * rng.standard_normal((60, 60)))
    W = rng.standard_normal((60, 9)) / 8
    for X_target in (Xq, Xf):
        q = GreedyPathQuantizer(n_bits=n_bits)
        q._fit_alphabet(W, "maxabs")
        codes, residual, norm = q._codes(W, Xq, X_target)
        # neurons in blocks (a partial last block too): the same path
        blocked = q._codes(W, Xq, X_target, block=4)
        assert_array_equal(blocked[0], codes)
        np.testing.assert_allclose(blocked[1], residual, rtol=1e-12)
        np.testing.assert_allclose(norm, np.linalg.norm(X_target @ W, axis=0))
        # (with Xf is Xq, tril(G) @ W comes from the Gram matrix itself)
        codes_g, G = q._codes_gram(W, Xq, X_target, block_size=block_size)
        assert_array_equal(codes_g, codes)
        Q = q._tensor(codes_g).dequantize()
        np.testing.assert_allclose(
            np.linalg.norm(X_target @ W - Xq @ Q, axis=0), residual, rtol=1e-9
        )
        # the errors from G where one data set serves both, by blocks otherwise
        from skquant._quantizers._gram import output_errors

        got = output_errors(Xq, X_target, W, Q, G, block=4)
        np.testing.assert_allclose(got[0], residual, rtol=1e-9)
        np.testing.assert_allclose(got[1], norm, rtol=1e-9)
    # the public fit picks the form by its cost
    from skquant._quantizers._gpfq import use_gram

    assert use_gram(1024, 4096, 4096) and not use_gram(8, 4096, 4)


@pytest.mark.parametrize("n_bits", ALPHABETS)
@pytest.mark.parametrize("targets", [False, True])
def test_no_freedom_gram_form_equals_the_path(n_bits, targets, monkeypatch):
    """Without freedom every coordinate is rounded greedily; the Gram form over
    all neurons gives the per-neuron path's codes (on-grid entries kept)."""
    import skquant._quantizers._nullspace as ns

    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 50))
    W = rng.standard_normal((50, 7)) / 7
    Xf = X @ (np.eye(50) + 0.05 * rng.standard_normal((50, 50))) if targets else None
    fits = []
    for gram in (True, False):
        monkeypatch.setattr(ns, "use_gram", lambda *a, g=gram: g)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fits.append(
                NullSpaceQuantizer(n_bits=n_bits).fit(
                    W, activations=X, target_activations=Xf
                )
            )
    assert_array_equal(fits[0].codes_, fits[1].codes_)
    np.testing.assert_allclose(
        fits[0].calibration_error_, fits[1].calibration_error_, rtol=1e-9
    )


@pytest.mark.parametrize("n_bits", ALPHABETS)
@pytest.mark.parametrize("targets", [False, True])
@pytest.mark.parametrize("rank", ["auto", 12])
@pytest.mark.filterwarnings("ignore::UserWarning")  # (no freedom at some caps)
def test_rounding_on_the_triangular_factor_equals_rounding_on_the_rows(
    n_bits, targets, rank, monkeypatch
):
    """Tall, well-conditioned data: the greedy rounding of the off-grid entries
    runs on the data's triangular factor (n rows, not m); the same codes and
    calibration errors as on the data's rows, and the errors are the direct
    ones (with targets, the residual's part outside the data's range counts)."""
    from skquant._quantizers._products import _Products

    rng = np.random.default_rng(2)
    X = rng.standard_normal((600, 40)) @ (
        np.eye(40) + 0.3 * rng.standard_normal((40, 40))
    )
    W = rng.standard_normal((40, 9)) / 7
    Xf = X + 0.1 * rng.standard_normal(X.shape) if targets else X
    used = []
    rows = _Products.rounding_rows

    def spy(self):
        out = rows(self)
        used.append(out is not None)
        return out

    fits = []
    for factor in (True, False):
        monkeypatch.setattr(
            _Products, "rounding_rows", spy if factor else (lambda self: None)
        )
        fits.append(
            NullSpaceQuantizer(n_bits=n_bits, rank=rank).fit(
                W, activations=X, target_activations=Xf if targets else None
            )
        )
    assert used and all(used)  # the factor served every rounding of the first
    assert_array_equal(fits[0].codes_, fits[1].codes_)
    np.testing.assert_allclose(
        fits[0].calibration_error_, fits[1].calibration_error_, rtol=1e-8
    )
    Q = fits[0].transform(W)
    err = np.linalg.norm(Xf @ W - X @ Q, axis=0) / np.linalg.norm(Xf @ W, axis=0)
    np.testing.assert_allclose(fits[0].calibration_error_, err, rtol=1e-8)


def test_rounding_rows_need_tall_well_conditioned_data():
    from skquant._quantizers._products import _Products

    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 40))
    W = rng.standard_normal((40, 3))
    G, s = X.T @ X, np.linalg.svd(X, compute_uv=False)
    F = _Products(W, X, X, np.eye(40), G=G, s=s).rounding_rows()
    np.testing.assert_allclose(F @ F.T, G, rtol=1e-10, atol=1e-9)
    assert np.all(np.triu(F, 1) == 0)
    # too few rows, no Gram matrix or factor, rank deficiency: the rows themselves
    assert _Products(W, X[:70], X[:70], np.eye(40), G=G, s=s).rounding_rows() is None
    assert _Products(W, X, X, np.eye(40), s=s).rounding_rows() is None
    Xd = X.copy()
    Xd[:, 5] = Xd[:, 6]
    sd = np.linalg.svd(Xd, compute_uv=False)
    assert _Products(W, Xd, Xd, np.eye(40), G=Xd.T @ Xd, s=sd).rounding_rows() is None
    # full rank but worse conditioned than the Gram row spaces allow (s ratio
    # 2e-6 < 1e-4): the Cholesky factor would lose the residual's small part
    U = np.linalg.qr(rng.standard_normal((100, 40)))[0]
    for ratio, usable in ((2e-6, False), (2e-4, True)):
        s_c = np.geomspace(1, ratio, 40)
        Xc = (U * s_c) @ np.linalg.qr(rng.standard_normal((40, 40)))[0]
        rows = _Products(W, Xc, Xc, np.eye(40), G=Xc.T @ Xc, s=s_c).rounding_rows()
        assert (rows is not None) == usable


def test_network_style_targets():
    # layer sees perturbed (quantized-prefix) inputs and follows the float ones
    rng = np.random.default_rng(0)
    Xf = rng.standard_normal((20, 100))
    Xq = Xf + 0.05 * rng.standard_normal(Xf.shape)
    W = rng.standard_normal((100, 4)) / 10
    for est in (GreedyPathQuantizer(n_bits=4), NullSpaceQuantizer(n_bits=4)):
        Q = est.fit_transform(W, activations=Xq, target_activations=Xf)
        plain = UniformQuantizer(n_bits=4).fit_transform(W)
        assert np.linalg.norm(Xq @ Q - Xf @ W) < np.linalg.norm(Xq @ plain - Xf @ W)


# ------------------------------------------------------------------------ bad input

EST = [NullSpaceQuantizer, GreedyPathQuantizer]


@pytest.mark.parametrize("cls", EST)
def test_bad_activations(cls):
    X, W = _layer(m=8, n_in=20, n_out=2)
    with pytest.raises(ValueError, match="requires calibration data: pass activations"):
        cls().fit(W)
    with pytest.raises(
        ValueError, match=re.escape("activations must have W.shape[0]=20 columns")
    ):
        cls().fit(W, activations=X[:, :19])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input activations contains NaN"):
        cls().fit(W, activations=bad)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="Input activations contains inf"):
        cls().fit(W, activations=bad)
    with pytest.raises(ValueError, match="0 sample"):
        cls().fit(W, activations=np.zeros((0, 20)))
    with pytest.raises(ValueError, match="target_activations must have the shape"):
        cls().fit(W, activations=X, target_activations=X[:4])
    q = cls().fit(W, activations=X)
    with pytest.raises(ValueError, match="W must have 20 rows"):
        q.transform(W[:10])
    with pytest.raises(ValueError, match="The 'n_bits' parameter"):
        cls(n_bits="quaternary").fit(W, activations=X)


@pytest.mark.parametrize("cls", EST)
def test_degenerate_activations(cls):
    W = np.random.default_rng(0).standard_normal((30, 2))
    # constant activations have rank 1; zero activations have rank 0
    for X in (np.ones((10, 30)), np.zeros((10, 30))):
        Q = cls(n_bits=4).fit_transform(W, activations=X)
        assert np.all(np.isfinite(Q))
    # a layer with one input: no freedom at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        Q = cls(n_bits=4).fit_transform(W[:1], activations=np.ones((5, 1)))
    assert Q.shape == (1, 2)


@pytest.mark.parametrize("cls", EST)
def test_inputs_not_modified_and_dtype_kept(cls):
    X, W = _layer(m=8, n_in=50, n_out=3)
    W32 = W.astype(np.float32)
    X0, W0 = X.copy(), W32.copy()
    X.flags.writeable = False
    Q = cls(n_bits=3).fit_transform(np.asfortranarray(W32), activations=X)
    assert Q.dtype == np.float32
    assert_array_equal(X, X0)
    assert_array_equal(W32, W0)


def test_n_jobs_gives_same_codes():
    X, W = _layer(m=16, n_in=300, n_out=8)
    for cls in EST:
        a = cls(n_bits=3, n_jobs=None).fit(W, activations=X).encode(W)
        b = cls(n_bits=3, n_jobs=-1).fit(W, activations=X).encode(W)
        assert_array_equal(a, b)


def test_default_n_jobs_walks_on_the_blas_threads(monkeypatch):
    """n_jobs=None: the walk (ladder and final fit) and bound_ take the BLAS
    libraries' thread count at the fit's start, though the fit itself runs
    BLAS on one thread on small layers; the codes are those of one thread."""
    from threadpoolctl import threadpool_limits

    from skquant._quantizers import _nullspace as mod

    X, W = _layer(m=64, n_in=120, n_out=6)
    seen = []
    walk = mod.walk_to_vertices

    def spy(V, Z0, lo, hi, order, n_jobs=None, **kw):
        seen.append(n_jobs)
        return walk(V, Z0, lo, hi, order, n_jobs, **kw)

    monkeypatch.setattr(mod, "walk_to_vertices", spy)
    with threadpool_limits(limits=2, user_api="blas"):
        q = NullSpaceQuantizer(n_bits=3).fit(W, activations=X)
    assert len(seen) > 1 and set(seen) == {2}  # the ladder's walks and the last
    assert q._walk_jobs() == 2
    seen.clear()
    with threadpool_limits(limits=1, user_api="blas"):
        one = NullSpaceQuantizer(n_bits=3).fit(W, activations=X)
    assert seen and set(seen) == {1}
    assert_array_equal(q.encode(W), one.encode(W))
    np.testing.assert_allclose(q.bound_, one.bound_, rtol=1e-12)
    seen.clear()
    NullSpaceQuantizer(n_bits=3, n_jobs=1).fit(W, activations=X)
    assert set(seen) == {1}  # given: as given


@pytest.mark.parametrize("targets", [False, True])
def test_rounding_on_the_factor_keeps_the_error_to_round_off(monkeypatch, targets):
    """On tall well-conditioned data the greedy rounding runs on the triangular
    factor, its residual's part in range from ``F (w - z) + D w`` and the part
    outside from ``(Xf - Xq) w``: calibration_error_ is the direct
    ``||Xf W - Xq Q|| / ||Xf W||`` to round-off even at 16 bits, where the
    error is 1e-5 of the output, and without targets the walk's vertex keeps
    the output exactly (preprocessing_residual_ 0 at the numerical rank)."""
    calls = []
    in_range = _Products.in_range
    monkeypatch.setattr(
        _Products, "in_range", lambda self, *a: calls.append(1) or in_range(self, *a)
    )
    rng = np.random.default_rng(1)
    m, n, n_out = 600, 100, 8
    X = rng.standard_normal((m, n)) * np.geomspace(1, 0.05, n) * 30
    W = rng.standard_normal((n, n_out)) / 10
    Xf = X + 0.01 * rng.standard_normal(X.shape) if targets else X
    for bits in (4, 16):
        for rank in (20, None):
            q = NullSpaceQuantizer(n_bits=bits, rank=rank).fit(
                W, activations=X, target_activations=Xf if targets else None
            )
            Q = q.transform(W).astype(np.float64)
            direct = np.linalg.norm(Xf @ W - X @ Q, axis=0)
            direct /= np.linalg.norm(Xf @ W, axis=0)
            np.testing.assert_allclose(q.calibration_error_, direct, rtol=1e-9)
            if rank is None and not targets:
                assert q.preprocessing_residual_ <= 1e-12
    assert calls  # (the factor's path)


@pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads"
)
def test_short_walks_run_on_one_thread(monkeypatch):
    """walk_to_vertices takes the serial kernel, whatever n_jobs says, when the
    walk's modelled arithmetic ((5 k^2 + 2 r k)(n - k) flops a neuron, r the
    guide's rows) is below PARALLEL_WALK, and the parallel one from there on;
    the same vertices either way."""
    from skquant._kernels import _nullspace as kernels
    from skquant._quantizers import _walk

    calls = []
    for name in ("nullspace_walk", "nullspace_walk_parallel"):
        kernel = getattr(kernels, name)
        monkeypatch.setattr(
            kernels,
            name,
            lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a),
        )
    rng = np.random.default_rng(5)
    n, k, n_out = 60, 8, 4
    X = rng.standard_normal((k + 4, n))
    V = row_space(X, k)[0]
    W = rng.standard_normal((n, n_out))
    lo, hi = np.floor(W), np.floor(W) + 1
    for guide in (None, X):
        r = 0 if guide is None else guide.shape[0]
        work = (5.0 * k * k + 2.0 * r * k) * (n - k) * n_out
        out = {}
        for threshold in (work + 1, work):
            monkeypatch.setattr(_walk, "PARALLEL_WALK", threshold)
            calls.clear()
            out[threshold] = walk_to_vertices(
                V, W, lo, hi, np.arange(n), n_jobs=2, X=guide
            )
            expected = (
                "nullspace_walk" if threshold > work else "nullspace_walk_parallel"
            )
            assert calls and set(calls) == {expected}  # (in batches)
        assert_array_equal(out[work + 1][0], out[work][0])
        assert_array_equal(out[work + 1][1], out[work][1])


def test_bound_is_read_lazily_and_matches_threads():
    X, W = _layer(m=16, n_in=300, n_out=8)
    q = NullSpaceQuantizer(n_bits=3)
    with pytest.raises(NotFittedError):
        q.bound_
    q.fit(W, activations=X)
    assert q._bound is None  # not computed by fit
    serial = q.bound_
    assert q.bound_ is serial  # kept, and the Gram block it came from dropped
    assert q._bound_terms is None
    assert len(pickle.dumps(q)) < len(pickle.dumps(q.fit(W, activations=X)))
    assert q.bound_ is not serial and np.array_equal(q.bound_, serial)
    par = NullSpaceQuantizer(n_bits=3, n_jobs=2).fit(W, activations=X).bound_
    np.testing.assert_allclose(serial, par, rtol=1e-12)
    # refitting drops the kept bound
    q.fit(W[:, :3], activations=X)
    assert q.bound_.shape == (3,)


@given(st.integers(2, 6), st.integers(8, 40), st.integers(0, 10**6))
def test_property_walk_oracles_random_layers(m, n_in, seed):
    X, W = make_gaussian_layer(m, n_in, 2, random_state=seed)
    q = NullSpaceQuantizer(n_bits=3, rounding="nearest").fit(W, activations=X)
    assert q.preprocessing_residual_ <= 1e-9
    assert q.n_off_grid_.max() <= q.rank_
    assert np.all(q.calibration_error_ <= q.bound_ * (1 + 1e-9) + 1e-12)


@settings(deadline=None, max_examples=60)
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.sampled_from(["grid", "path"]),
    st.sampled_from(["nearest", "greedy"]),
    st.integers(0, 10**6),
)
def test_property_bound_holds_on_low_rank_data_with_silent_neurons(
    rank, n_zero, variant, rounding, seed
):
    """The bound holds for every neuron when some neurons are zero (their set S
    of off-grid coordinates is empty) and others have a single coordinate off
    the grid: an S of one coordinate was once taken for the empty one."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((10, rank)) @ rng.standard_normal((rank, 20))
    W = rng.standard_normal((20, 5))
    W[:, :n_zero] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = NullSpaceQuantizer(n_bits=3, variant=variant, rounding=rounding)
        q.fit(W, activations=X)
    Q = q.transform(W)
    norm = np.linalg.norm(X @ W, axis=0)
    err = np.linalg.norm(X @ (W - Q), axis=0) / np.where(norm > 0, norm, 1.0)
    assert np.all(err <= q.bound_ * (1 + 1e-9) + 1e-12)


@pytest.mark.parametrize(
    "est", [GreedyPathQuantizer(n_bits=3), NullSpaceQuantizer(n_bits=3, rank=6)]
)
def test_fitted_codes_are_kept_not_the_data(est, monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 30))
    W = rng.standard_normal((30, 5))
    Q = est.fit_transform(W, activations=X)
    assert not any(
        isinstance(v, np.ndarray) and v.shape[0] == 40 for v in vars(est).values()
    )
    # transform / encode / compress / pack of the fitted W redo no work
    monkeypatch.setattr(type(est), "_codes", lambda *a, **k: 1 / 0)
    assert_array_equal(est.transform(W), Q)
    assert_array_equal(est.decode(est.encode(W)), Q)
    assert_array_equal(est.compress(W).dequantize(), Q)
    assert_array_equal(est.unpack(est.pack(W), 30), est.encode(W))
    W2 = W.copy()
    W2[0, 0] += 1e-3
    with pytest.raises(ValueError, match="quantizes the W it was fitted on"):
        est.transform(W2)


def test_the_fitted_weights_are_known_by_their_values_in_any_dtype():
    """The fingerprint hashes W in its own dtype; the same values in another
    dtype are the fitted weights, other values are not (a float32 rounding of
    float64 weights included), and an estimator fitted before the dtype was
    recorded (a float64 digest) still knows its weights."""
    from skquant._quantizers._datadriven import _fingerprint

    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 30))
    W32 = rng.standard_normal((30, 5)).astype(np.float32)
    est = GreedyPathQuantizer(n_bits=3).fit(W32, activations=X)
    codes = est.encode(W32)
    assert_array_equal(est.encode(W32.astype(np.float64)), codes)
    with pytest.raises(ValueError, match="quantizes the W it was fitted on"):
        est.encode(W32.astype(np.float64) * 1e300)  # beyond float32's range
    W64 = rng.standard_normal((30, 5))
    est64 = GreedyPathQuantizer(n_bits=3).fit(W64, activations=X)
    for other in (W64.astype(np.float32), W64 * 1e300):
        with pytest.raises(ValueError, match="quantizes the W it was fitted on"):
            est64.encode(other)
    shape, _, digest = _fingerprint(W32, np.float64)
    est._fingerprint = (shape, digest)  # as an older version pickled it
    assert_array_equal(est.encode(W32), codes)
    assert_array_equal(est.encode(W32.astype(np.float64)), codes)
    W2 = W32.copy()
    W2[3, 1] += 1
    with pytest.raises(ValueError, match="quantizes the W it was fitted on"):
        est.encode(W2)


@pytest.mark.parametrize("rank", [None, 5, 0.8])
def test_start_points_are_the_least_squares_correction(rank):
    """With inputs Xq != Xf the walk starts from W + V c, c the least-squares
    solution of (Xq V) c = (Xf - Xq) W (here against numpy's lstsq)."""
    rng = np.random.default_rng(7)
    Xf = rng.standard_normal((30, 12)) @ rng.standard_normal((12, 40))
    Xq = Xf + 0.1 * rng.standard_normal(Xf.shape)
    W = rng.standard_normal((40, 3))
    q = NullSpaceQuantizer(n_bits=3, rank=rank)
    q.components_, q.singular_values_, _ = row_space(Xq, rank)
    V = q.components_
    coef = np.linalg.lstsq(Xq @ V, Xf @ W - Xq @ W, rcond=None)[0]
    Z0 = q._start_points(W, Xq, Xf, _Products(W, Xq, Xf, V))
    np.testing.assert_allclose(Z0, W + V @ coef, atol=1e-10)
    assert_array_equal(q._start_points(W, Xq, Xq, _Products(W, Xq, Xq, V)), W)


def test_small_null_space_fits_run_blas_on_one_thread(monkeypatch):
    """Below SMALL_FIT (m n_in n_out) the null-space fit runs its BLAS calls on
    one thread; at or above it, and in GPFQ's fits, on the libraries' own."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from skquant._kernels import _threads

    seen = []

    def spy(real):
        def wrapped(self, *args, **kwargs):
            blas = [
                d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"
            ]
            seen.append(max(blas))
            return real(self, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        NullSpaceQuantizer, "_fit_validated", spy(NullSpaceQuantizer._fit_validated)
    )
    monkeypatch.setattr(
        GreedyPathQuantizer, "_fit_quantize", spy(GreedyPathQuantizer._fit_quantize)
    )
    X, W = _layer(m=60, n_in=30, n_out=4)
    with threadpool_limits(2, user_api="blas"):
        NullSpaceQuantizer(n_bits=3, rank=5).fit(W, activations=X)
        GreedyPathQuantizer(n_bits=3).fit(W, activations=X)
        monkeypatch.setattr(_threads, "SMALL_FIT", 60 * 30 * 4)  # (not below it)
        NullSpaceQuantizer(n_bits=3, rank=5).fit(W, activations=X)
    assert seen == [1, 2, 2]
