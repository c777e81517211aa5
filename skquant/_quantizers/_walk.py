"""The null-space walk's driver: the shared first basis, the tableau's chunk
size, and the walk of every neuron to a vertex of its polytope (the numba kernel
is :mod:`skquant._kernels._nullspace`)."""

import numpy as np
import scipy.linalg

from .._common._blocks import row_blocks
from .._common._progress import run_in_batches
from .._kernels import _nullspace
from .._kernels._threads import numba_threads, one_blas_thread

#: how much slower a flop of a chunk's fresh factorisation and solve (LAPACK on
#: k x k, per neuron) runs than one of the batched eta updates (one large product).
#: Fitted to single-thread walks: MNIST 784-input layer with k = 32, 64, 128 and
#: Gaussian (n, k) = (4096, 256), (2048, 32); with 3 the chosen chunk was the
#: fastest measured or within 15% of it in each case (one chunk for k = 64, 128).
REFACTOR_WEIGHT = 3


def walk_chunk(n, k, block=_nullspace.ETA_BLOCK):
    """Tableau chunk size of the null-space walk with the fewest flops (a model).

    A chunk of ``C`` coordinates costs about ``k C^2 / 2`` (its eta updates) and,
    except the first, which all neurons share, ``2/3 k^3 + 2 k^2 C`` (a fresh
    factorisation and solve, weighted by :data:`REFACTOR_WEIGHT`). Returns the
    ``C`` minimising the sum over the ``ceil((n - k) / C)`` chunks.
    """
    free = n - k
    if free <= 0 or k == 0:
        return max(free, 1)
    best, best_cost = free, None
    for C in list(range(block, free, block)) + [free]:
        c = -(-free // C)
        cost = c * k * C * C / 2 + (c - 1) * REFACTOR_WEIGHT * (
            2 * k**3 / 3 + 2 * k * k * C
        )
        if best_cost is None or cost < best_cost:
            best, best_cost = C, cost
    return best


def halved(top, smallest):
    """``top``, ``top // 2``, ... down to ``smallest`` (``top`` at least)."""
    caps, k = [], top
    while k >= smallest or not caps:
        caps.append(k)
        k //= 2
    return caps


#: the walk keeps the basis inverse (the kernels' inverse form) up to this many
#: kept directions and a tableau above: measured on the benchmark networks'
#: layers (one thread), the inverse form is 1.4x to 1.9x faster for ``k <= 32``,
#: 0.6x to 1.2x the tableau's time at 64 (faster on 11 of 14 layers) and slower
#: above (``benchmarks/bench_nullspace_speed.py --forms``)
INVERSE_RANK = 64

#: the guided walk (``NullSpaceQuantizer(walk_budget=...)``) takes the data's
#: responses to its moves in the data's leading directions after the ``k`` kept
#: ones, at most this many (all of them on data of lower rank): each step costs
#: ``2 k`` flops a direction
GUIDE_DIRECTIONS = 256

#: ``walk_budget`` guides the walk only where those directions hold at least this
#: share of the data's energy outside the smallest cap (:func:`guide_share`; the
#: shares of the benchmark layers are printed by ``bench_nullspace_variants.py``
#: and ``bench_nullspace_default.py``, and quoted in the User Guide)
GUIDE_SHARE = 0.5


#: :func:`walk_to_vertices` runs its neurons on several threads only when the
#: walk's modelled arithmetic (:func:`walk_flops` a neuron, ``r`` the guide's
#: rows) is at least this many flops in all,
#: a few milliseconds on one thread: below it, waking the threads (and their
#: spinning after, on as many cores as threads) cost about what they save (the
#: User Guide's performance page has its effect on LeNet-5). The vertices are
#: the same on any thread count.
PARALLEL_WALK = 1e8


def walk_flops(k, n, r=0):
    """The walk's modelled arithmetic per neuron at cap ``k`` on ``n`` inputs:
    ``5 k^2 (n - k)`` flops (the tableau updates; see the User Guide's
    performance page), plus ``2 r k (n - k)`` for a guide of ``r`` rows. A cap
    at ``n`` or above has no walk."""
    return 0.0 if k >= n else float(5 * k * k + 2 * r * k) * (n - k)


def walk_cost(k, m, n, guided=False):
    """The walk's modelled arithmetic at cap ``k`` over GPFQ's, per neuron, on a
    layer of ``n`` inputs and ``m`` calibration rows: :func:`walk_flops` (the
    guide's ``r = min(m, GUIDE_DIRECTIONS)`` when ``guided``) against GPFQ's
    ``4 m n``."""
    return walk_flops(k, n, min(m, GUIDE_DIRECTIONS) if guided else 0) / (4 * m * n)


def guide_share(s, k, directions=None):
    """``sum(s[k:k+d]^2) / sum(s[k:]^2)`` for the singular values ``s`` (``d``:
    ``directions``, :data:`GUIDE_DIRECTIONS` unless given); 1 when nothing is
    left."""
    d = GUIDE_DIRECTIONS if directions is None else directions
    s2 = np.asarray(s, dtype=np.float64)[k:] ** 2
    total = float(s2.sum())
    return float(s2[:d].sum()) / total if total > 0 else 1.0


def guide_rows(vectors, s, k):
    """The guided walk's data at cap ``k``: rows ``s_i v_i^T`` for the data's
    directions ``i = k + 1 .. k + GUIDE_DIRECTIONS`` (``vectors(c)``: its ``c``
    leading right singular vectors, or as many as it has; ``s`` its singular
    values, sliceable from 0). A move that keeps the ``k`` leading directions'
    products has no response in them, so these rows carry its response (all of
    it when the data has no more directions), with the data's inner products."""
    V = vectors(k + GUIDE_DIRECTIONS)
    s = np.asarray(s[: V.shape[1]], dtype=np.float64)
    return s[k:, None] * V[:, k : s.size].T


def first_basis(V):
    """A well-conditioned set of ``k`` coordinates for the constraint
    ``V^T z = c`` (``V``: ``n x k``): the first ``k`` pivots of a pivoted QR of
    ``V^T``, whose rows of ``V`` form an invertible ``k x k`` block."""
    k = V.shape[1]
    if not k:
        return np.empty(0, dtype=np.int64)
    piv = scipy.linalg.qr(V.T, pivoting=True, mode="r")[1]
    return np.ascontiguousarray(piv[:k], dtype=np.int64)


def basis_and_rest(V, order):
    """:func:`first_basis` of ``V`` and the other coordinates, in ``order``."""
    basis = first_basis(V)
    in_basis = np.zeros(V.shape[0], dtype=bool)
    in_basis[basis] = True
    order = np.asarray(order, dtype=np.int64)
    return basis, np.ascontiguousarray(order[~in_basis[order]])


def outside_data(X, V, basis, cols, order="C"):
    """The change of the basis and the data's response to a move of the others.

    With ``T = V_B^{-T} V_N^T`` (``B = basis``, ``N = cols``), a change ``d`` of
    ``z_N`` keeps ``V^T z`` fixed with the change ``-T d`` of ``z_B``, and the
    data ``X`` respond with ``M d``, ``M = X_N - X_B T``: the data outside the
    kept directions. Returns ``(T, M)``, ``M`` in memory ``order`` (``"F"`` for
    readers by column), made a block of rows at a time: its one copy of the data,
    with a block's temporaries."""
    T = scipy.linalg.solve(V[basis].T, V[cols].T)
    M = np.empty((X.shape[0], len(cols)), order=order)
    for rows in row_blocks(X.shape, ROW_BLOCK_ENTRIES):
        Xr = X[rows]
        M[rows] = Xr[:, cols] - Xr[:, basis] @ T
    return T, M


#: entries of the data per block of rows in :func:`outside_data`
ROW_BLOCK_ENTRIES = 1 << 20


def walk_to_vertices(
    V, Z0, lo, hi, order, n_jobs=None, chunk=None, flops=None, X=None, cells=None
):
    """Vertices of ``{z : V^T z = V^T z0, lo <= z <= hi}`` for every column ``z0``.

    Parameters
    ----------
    V : ndarray of shape (n, k)
        Orthonormal columns, ``k < n``.
    Z0, lo, hi : ndarray of shape (n, n_out)
        Start points and their boxes, ``lo <= Z0 <= hi``.
    order : ndarray of shape (n,)
        Order in which the walk visits the coordinates.
    n_jobs : int, default=None
        Numba threads (over columns); one for a walk whose modelled arithmetic
        is below :data:`PARALLEL_WALK`.
    chunk : int, default=None
        Coordinates per tableau chunk; 0: the inverse form (the basis inverse
        kept and updated, see :mod:`skquant._kernels._nullspace`); ``None``: the
        inverse form for ``k <=`` :data:`INVERSE_RANK`, else the tableau with
        :func:`walk_chunk`'s chunk.
    flops : ndarray of shape (n_out,), default=None
        Written, when given: each column's floating-point operations, counted by
        the walk as it does them (``benchmarks/bench_nullspace_speed.py --flops``
        turns them into a rate).
    X : ndarray of shape (r, n), default=None
        The data (or any ``r`` rows with the same inner products between the
        responses below), to guide the walk: each coordinate then moves toward
        the bound nearer greedy path following's target on the data's response
        to its move with the current basis (outside the kept directions; the
        error fed forward), not to the nearer bound: ``2 r k`` more flops a
        step.
    cells : callable, default=None
        ``cells(a, b) -> (lo, hi)``: the boxes of columns ``a`` to ``b - 1``,
        ``Z0``'s columns put inside them in place (``Z0`` neuron-contiguous, F
        order), made as each batch of neurons is walked, not held for the whole
        layer (``lo`` and ``hi`` are then ``None``).

    Returns
    -------
    Z : ndarray of shape (n, n_out)
        The vertices.
    basis : ndarray of shape (k, n_out)
        Each column's final basis: the only coordinates that may be off their box
        bounds.
    pivots : ndarray of shape (n_out,)
        Pivots per column.
    """
    n, k = V.shape
    # initial basis, shared by all columns with the first chunk of the tableau
    # (none without constraint: every coordinate walks to its nearer bound)
    basis0, cols = basis_and_rest(V, order)
    if chunk is None:
        chunk = 0 if k <= INVERSE_RANK else walk_chunk(n, k)
    elif chunk:
        chunk = max(min(int(chunk), n - k), 1)
    if not chunk:  # the inverse form: A^{-T} of the first basis, shared
        T0 = scipy.linalg.inv(V[basis0].T).T if k else np.empty((0, 0))
    elif not k:
        T0 = np.empty((chunk, 0))
    else:
        T0 = scipy.linalg.solve(V[basis0].T, V[cols[:chunk]].T).T
    T0 = np.ascontiguousarray(T0)
    # the coordinates relabelled in the walk's order (the first basis, then
    # the others as visited): the kernel then reads V's, the guide's and the
    # boxes' rows one after the other, not scattered over arrays larger than
    # the caches (the same arithmetic; each neuron's own rows are gathered
    # into this order and back by the kernel)
    perm = np.concatenate([basis0, cols])
    Vp = np.ascontiguousarray(V[perm])
    first = np.arange(k, dtype=np.int64)
    seq = np.arange(k, n, dtype=np.int64)
    # the guide: the data's columns as rows (none: empty), in float32: it only
    # picks each move's side (twice float64's vector width on its products)
    XT = np.empty((0, 0), np.float32)
    if X is not None:
        # scaled by a power of two to largest magnitude ~1 (exact; the side each
        # move takes does not depend on the scale), so float32 neither overflows
        # nor underflows on activations of extreme magnitude
        top = float(np.abs(X).max()) if X.size else 0.0
        scale = np.ldexp(1.0, -int(np.frexp(top)[1])) if top > 0 else 1.0
        XT = np.ascontiguousarray((X[:, perm] * scale).T, np.float32)
    # neurons as rows (views of neuron-contiguous arrays, copies otherwise),
    # in the caller's coordinates: each walking thread gathers a neuron's rows
    # into its labels and scatters the vertex back, so no n x n_out array is
    # permuted or transposed here
    n_out = Z0.shape[1]
    ZT = np.empty(Z0.shape[::-1])
    basisT = np.empty((n_out, k), dtype=np.int64)
    pivots = np.empty(n_out, dtype=np.int64)
    if cells is None:
        Z0T, loT, hiT = (np.ascontiguousarray(a.T) for a in (Z0, lo, hi))
    elif not Z0.flags.f_contiguous:  # cells() clips Z0 in place: Z0T must see it
        raise ValueError("cells= needs Z0 in F order (neurons contiguous).")
    else:
        Z0T = Z0.T
    counted = np.zeros(n_out) if flops is None else flops
    if walk_flops(k, n, 0 if X is None else X.shape[0]) * n_out < PARALLEL_WALK:
        n_jobs = 1  # a short walk (the same vertices on any thread count)
    with numba_threads(n_jobs) as n_threads, one_blas_thread():

        def run(a, b):  # neurons a..b-1: one kernel call (the bar moves between)
            if cells is None:
                lo_ab, hi_ab = loT[a:b], hiT[a:b]
            else:
                lo_ab, hi_ab = (np.ascontiguousarray(c.T) for c in cells(a, b))
            args = (Vp, T0, seq, chunk, Z0T[a:b], lo_ab, hi_ab, perm, first)
            out = (ZT[a:b], basisT[a:b], counted[a:b])
            if n_threads > 1:
                pivots[a:b] = _nullspace.nullspace_walk_parallel(
                    *args, *out, XT, n_threads
                )
            else:
                pivots[a:b] = _nullspace.nullspace_walk(*args, *out, XT)

        run_in_batches(run, n_out, "null-space walk (neurons)", first=n_threads)
    return ZT.T, perm[basisT.T], pivots
