"""Kernels of the null-space pre-processing (Maly & Saab): the walk to a vertex.

The walk moves one neuron ``w`` (a column of ``W``) inside
``P = {z : V^T z = V^T w, lo <= z <= hi}``, where ``V`` (``n x k``, orthonormal
columns) spans the row space of the calibration data, until it reaches a vertex of
``P``: at most ``k`` coordinates stay strictly inside their box, every other one sits
on a box bound (a grid point). It works like the simplex method on the equality
system ``A z_B = c - V_N^T z_N``: a basis ``B`` of ``k`` free coordinates
(``A = V_B^T``), one pass over the other ``n - k`` coordinates in a fixed order, and
at each one a move along the null-space direction ``d`` (``d_j = 1``,
``d_B = -A^{-1} v_j``) until ``z_j`` or a basis coordinate reaches a bound; in the
latter case that coordinate is frozen and ``j`` takes its place (a pivot).

Cost. The directions ``A^{-1} v_j`` of the coordinates still to visit are kept as a
simplex tableau (``k`` numbers per coordinate) in chunks of ``C`` coordinates. A
pivot changes the tableau by a rank-one (eta) update; the updates are applied
lazily to the next coordinate (``O(k)`` each) and, every ``L`` pivots, to the rest of
the chunk at once as one rank-``L`` matrix product (BLAS-3). A new chunk solves its
tableau afresh with the current basis (an LU factorisation, ``O(k^3 + k^2 C)``);
the first chunk's tableau is shared by all neurons (they start from the same basis)
and computed once per layer. Per neuron this is
``O((n - k) k (k + C))`` with ``C`` near ``k``, i.e. ``O(n k^2)``; when ``n - k`` is
below a few ``k`` a single shared chunk is cheaper, ``O(k (n - k)^2)`` with no
factorisation per neuron. :func:`skquant._quantizers._walk.walk_chunk` picks
``C`` from these counts (``L`` is :data:`ETA_BLOCK`). Measured on the 784-input MNIST
layer with m = 1024, one thread: 0.9 ms per neuron at k = 64, 2.2 ms at k = 232 (two
thirds of it the batched updates, about 41 Mflop), 0.5 ms at k = 591.

The inverse form keeps ``A^{-1}`` itself (``k x k``) instead: each step is one
product ``A^{-1} v_j`` and each pivot one rank-one update of it (``2 k^2`` flops
each, ``O(n k^2)`` per neuron like the tableau's), computed afresh after a
small pivot, and every :data:`REFRESH` pivots when a check (``A^{-1} (A 1)``
against the ones, ``3 k^2`` flops) finds it off by more than
:data:`INVERSE_TOL`. Computing it afresh every :data:`REFRESH` pivots
unchecked (``2 k^3`` flops each) took a fifth of the walk at ``k = 50``
(LeNet-5's 400-input layer, 120 neurons: 39.1 ms against 31.8 ms, to the same
vertices). Its loops are plain, contiguous and
branch-free, where the tableau's etas are a chain of short dependent updates, so
for small ``k`` it is the faster one: measured on LeNet-5's, the Fashion CNN's and
VGG-8's layers (one thread, 64 neurons), 1.3x to 3.1x faster for ``k <= 32``,
from 2.1x faster to 1.5x slower at ``k = 64``, and slower above but on the
3136-input layer (up to 4.1x at ``k = 200``), where ``A^{-1}`` outgrows the
first-level cache
(``benchmarks/bench_nullspace_speed.py --forms``).
:func:`skquant._quantizers._walk.walk_to_vertices` takes it for ``k <=``
:data:`skquant._quantizers._walk.INVERSE_RANK`. Both forms visit the coordinates
in the same order and make the same moves: they reach the same vertices up to
round-off.

Numerics: a chunk also ends after a pivot that is small relative to its column, so
that the next one starts from a fresh factorisation; at the end, when
``V^T z`` has drifted from ``V^T w`` by more than ``1e-13`` relatively, the basis
coordinates are solved again (up to two rounds of iterative refinement), so that the
equality holds to round-off whatever the number of steps, unless the correction
would push a basis coordinate out of its box (a nearly singular final basis, seen on
data with near-duplicate columns): then the walk's own drift is kept, and reported
by the estimator as ``preprocessing_residual_``.
"""

import numba as nb
import numpy as np

#: pivots whose eta updates are batched into one matrix product
ETA_BLOCK = 32

#: the inverse form checks the basis inverse after this many pivots, and
#: computes it afresh when the check finds it off by more than
#: :data:`INVERSE_TOL`
REFRESH = 128

#: the inverse form's check: ``A^{-1} (A 1)`` from the kept inverse may differ
#: from the vector of ones by at most this much in any entry (a fresh inverse
#: is off by about ``eps`` times ``A``'s condition number)
INVERSE_TOL = 1e-10

#: numba's decorator for the walk's per-step code, which allocates nothing: no
#: reference counting (numba's runtime off), so that an array argument or row
#: view costs no atomic increment and decrement, which at small caps cost more
#: than the step's arithmetic: LeNet-5's 400-input layer's ladder walks (32
#: neurons, one thread, unguided) went from 4.9, 5.8, 9.5 and 13.8 ms to 1.6,
#: 3.1, 7.0 and 11.0 ms at k = 12, 25, 50 and 100, to the same vertices
#: (``benchmarks/bench_nullspace_speed.py --walks lenet5``). The leaves called
#: from it (``_axpy``, ``_inverse_times``, ...) inherit the setting; what
#: allocates (a factorisation, a solve) stays in functions that set
#: ``_nrt=True`` and return no array.
_unref = nb.njit(nogil=True, error_model="numpy", _nrt=False)


@nb.njit(nogil=True, fastmath=True)
def _axpy(a, x, y):  # pragma: no cover
    # y -= a * x: a pure multiply-add leaf, so fastmath only vectorises it
    for p in range(y.shape[0]):
        y[p] -= a * x[p]


@nb.njit(nogil=True, fastmath=True)
def _sub_from(x, y):  # pragma: no cover
    # y <- x - y: a pure leaf, vectorised
    for p in range(y.shape[0]):
        y[p] = x[p] - y[p]


@nb.njit(nogil=True, fastmath=True)
def _dot(x, y):  # pragma: no cover
    # x . y: a pure multiply-add reduction leaf, vectorised
    acc = 0.0
    for p in range(x.shape[0]):
        acc += x[p] * y[p]
    return acc


@nb.njit(nogil=True, fastmath=True)
def _rows_times(a, M, out):  # pragma: no cover
    # out = a @ M (float32, M's rows contiguous): a pure multiply-add leaf
    # (a BLAS call needs numba's runtime, which the step runs without)
    out[:] = 0.0
    for p in range(M.shape[0]):
        ap = a[p]
        for q in range(M.shape[1]):
            out[q] += ap * M[p, q]


@nb.njit(nogil=True, fastmath=True)
def _dot32(x, y):  # pragma: no cover
    # _dot in float32 (the guide's arrays), at float32's vector width
    acc = np.float32(0.0)
    for p in range(x.shape[0]):
        acc += x[p] * y[p]
    return acc


@_unref
def _apply_etas(y, E, leave, t):  # pragma: no cover
    # y <- E_t ... E_1 y: pivot s divides row leave[s] by the pivot E[s, leave[s]]
    # and eliminates it from the other rows
    for s in range(t):
        lv = leave[s]
        yl = y[lv] / E[s, lv]
        _axpy(yl, E[s], y)
        y[lv] = yl


@nb.njit(nogil=True)
def _workspace(k, chunk):  # pragma: no cover
    # buffers of one walking thread, allocated once: the chunk tableau, the gathered
    # leaving rows and the product of a flush, the etas, k-vectors
    # (y, up, down, zb, lob, hib), and the inverse form's A^{-T}. chunk 0: the
    # inverse form (no tableau)
    return (
        np.empty((chunk, k)),
        np.empty(chunk * ETA_BLOCK),
        np.empty(chunk * k),
        np.empty((ETA_BLOCK, k)),
        np.empty((ETA_BLOCK, k)),
        np.empty((6, k)),
        np.empty(ETA_BLOCK, dtype=np.int64),
        np.empty(ETA_BLOCK, dtype=np.int64),
        np.full(k, -1, dtype=np.int64),
        np.empty((k, k) if chunk == 0 else (0, 0)),
    )


@nb.njit(nogil=True, error_model="numpy", _nrt=True)
def _flush_etas(src, dst, E, leave, t, H, gbuf, pbuf, D, mark):  # pragma: no cover
    # dst <- src with the t pending pivots applied (rows = tableau columns), as one
    # product: M - I is zero outside the columns D of the leaving rows, so
    # x' = x + (M - I)[:, D] x[D]. src and dst may be the same rows.
    r, k = src.shape
    nd = 0
    for s in range(t):
        if mark[leave[s]] < 0:
            mark[leave[s]] = nd
            D[nd] = leave[s]
            nd += 1
    # the columns D of M = E_t ... E_1, all etas at once: row i (column D[i]) is
    # the unit vector until the first eta that leaves D[i] (an eta changes a
    # vector only through its entry at its leaving row), so at eta s only the
    # rows of the leaving rows seen so far are updated (D is in order of first
    # leaving), each by one independent short update
    for i in range(nd):
        H[i, :] = 0.0
        H[i, D[i]] = 1.0
    active = 0
    for s in range(t):
        lv = leave[s]
        if mark[lv] >= active:
            active = mark[lv] + 1
        e = E[s]
        inv = 1.0 / e[lv]
        for i in range(active):
            h = H[i]
            a = h[lv] * inv
            if a != 0.0:
                _axpy(a, e, h)
                h[lv] = a
    for i in range(nd):
        mark[D[i]] = -1
        H[i, D[i]] -= 1.0
    tmp = gbuf[: r * nd].reshape((r, nd))
    for c in range(r):
        for i in range(nd):
            tmp[c, i] = src[c, D[i]]
    prod = pbuf[: r * k].reshape((r, k))
    np.dot(tmp, H[:nd], prod)
    for c in range(r):
        for p in range(k):
            dst[c, p] = src[c, p] + prod[c, p]
    return nd


@nb.njit(nogil=True)
def _basis_matrix(V, B):  # pragma: no cover
    k = B.shape[0]
    A = np.empty((k, k))
    for p in range(k):
        for r in range(k):
            A[r, p] = V[B[p], r]
    return A


@nb.njit(nogil=True, _nrt=True)
def _tableau(V, B, cols, out):  # pragma: no cover
    # rows c of out: A^{-1} v_{cols[c]} with A = V_B^T
    k = B.shape[0]
    R = np.empty((k, cols.shape[0]))
    for c in range(cols.shape[0]):
        for r in range(k):
            R[r, c] = V[cols[c], r]
    out[:] = np.linalg.solve(_basis_matrix(V, B), R).T


@nb.njit(nogil=True)
def _drift(V, w, z):  # pragma: no cover
    # V^T (w - z) and ||V^T w||
    n, k = V.shape
    res = np.zeros(k)
    ref = np.zeros(k)
    for i in range(n):
        diff = w[i] - z[i]
        wi = w[i]
        for r in range(k):
            res[r] += V[i, r] * diff
            ref[r] += V[i, r] * wi
    return res, np.sqrt(np.sum(ref * ref))


@nb.njit(nogil=True)
def _resolve_basis(V, w, z, B, lo, hi):  # pragma: no cover
    # z_B += A^{-1} V^T (w - z), twice, when the equality has drifted, and only while
    # the corrected basis coordinates stay in their boxes: on a nearly singular
    # basis the correction can be huge, and a vertex that is off by round-off is
    # better than one thrown out of its cells
    res, scale = _drift(V, w, z)
    if np.sqrt(np.sum(res * res)) <= 1e-13 * scale:
        return
    k = B.shape[0]
    A = _basis_matrix(V, B)
    for _ in range(2):
        corr = np.linalg.solve(A, res)
        for p in range(k):
            b = B[p]
            tol = 1e-9 * max(hi[b] - lo[b], abs(z[b]), 1e-300)
            if not (lo[b] - tol <= z[b] + corr[p] <= hi[b] + tol):
                return
        for p in range(k):
            z[B[p]] += corr[p]
        res, scale = _drift(V, w, z)
        if np.sqrt(np.sum(res * res)) <= 1e-13 * scale:
            return


@nb.njit(nogil=True, fastmath=True)
def _absmax(y):  # pragma: no cover
    # max |y_p|: a pure max-reduction leaf (no NaN reaches the walk), vectorised
    m = 0.0
    for p in range(y.shape[0]):
        m = max(m, abs(y[p]))
    return m


@_unref
def _ratio_test(y, zb, lob, hib, t_hi, t_lo, up, down):  # pragma: no cover
    # how far the basis allows z_j to move up (t_hi) and down (t_lo) along
    # d = (1, -y), and which basis position stops each (-1: z_j's own bound).
    # Branch-free first pass (vectorised), then the first minimiser/maximiser.
    k = y.shape[0]
    tiny = 1e-12 * max(_absmax(y), 1.0)
    for p in range(k):
        d = -y[p]
        moves = abs(d) > tiny
        dd = d if moves else 1.0
        r1 = (hib[p] - zb[p]) / dd
        r2 = (lob[p] - zb[p]) / dd
        up[p] = max(r1, r2) if moves else np.inf
        down[p] = min(r1, r2) if moves else -np.inf
    arg_hi = -1
    arg_lo = -1
    for p in range(k):
        if up[p] < t_hi:
            t_hi = up[p]
            arg_hi = p
        if down[p] > t_lo:
            t_lo = down[p]
            arg_lo = p
    return max(t_hi, 0.0), arg_hi, min(t_lo, 0.0), arg_lo


@_unref
def _step(j, y, z, lo, hi, B, zb, lob, hib, up, down, XT, guide):  # pragma: no cover
    # One coordinate's move along d (d_j = 1, d_B = -y): the ratio test, the
    # side (the shorter move, or the guide's), the move, and, when a basis
    # coordinate stops it, that coordinate snapped to its bound and j pivoted in
    # at its position. Returns that position (-1: no pivot) and the flops.
    k = y.shape[0]
    m = XT.shape[1]
    u, col, XB, y32 = guide
    t_hi, arg_hi, t_lo, arg_lo = _ratio_test(
        y, zb, lob, hib, hi[j] - z[j], lo[j] - z[j], up, down
    )
    flops = 6.0 * k  # the ratio test (4k) and the move (2k)
    if m > 0:
        # toward the bound nearer GPFQ's target z_j + <r, u> / |r|^2,
        # r = X_j - X_B y the data's response to the move with the
        # current basis (it lies outside the kept directions)
        if k:
            for p in range(k):
                y32[p] = y[p]
            _rows_times(y32, XB, col)  # X_B y (the basis rows, contiguous)
            _sub_from(XT[j], col)
        else:
            for q in range(m):
                col[q] = XT[j, q]
        ip = _dot32(col, u)
        nn = _dot32(col, col)
        ahead = ip / nn if nn > 0.0 else 0.0
        up_ = z[j] + ahead >= 0.5 * (lo[j] + hi[j])
        flops += 2.0 * m * k + 6.0 * m
    else:  # the shorter move
        up_ = t_hi <= -t_lo
    if up_:
        step, out, to_hi = t_hi, arg_hi, True
    else:
        step, out, to_hi = t_lo, arg_lo, False
    z[j] += step
    _axpy(step, y, zb)
    if m > 0:
        _axpy(np.float32(step), col, u)
    if out < 0:
        z[j] = hi[j] if to_hi else lo[j]
        return out, flops
    # basis position `out` reached its bound: snap it, pivot j in
    b = B[out]
    z[b] = hib[out] if (-y[out] > 0) == to_hi else lob[out]
    B[out] = j
    for q in range(m):
        XB[out, q] = XT[j, q]
    zb[out] = z[j]
    lob[out] = lo[j]
    hib[out] = hi[j]
    return out, flops


@nb.njit(nogil=True, _nrt=True)
def _start(w, lo, hi, basis0, z, B, vecs, XT, guide):  # pragma: no cover
    # a walk's first state: z = w, the shared first basis, the basis
    # coordinates' values and boxes by basis position (contiguous), the guide's
    # response zero and its basis rows
    z[:] = w
    B[:] = basis0
    zb, lob, hib = vecs[3], vecs[4], vecs[5]
    for p in range(B.shape[0]):
        zb[p] = z[B[p]]
        lob[p] = lo[B[p]]
        hib[p] = hi[B[p]]
    if XT.shape[1] > 0:
        u, _, XB, _ = guide
        u[:] = 0.0
        for p in range(B.shape[0]):
            XB[p] = XT[B[p]]


@nb.njit(nogil=True, _nrt=True)
def _finish(V, w, z, B, lo, hi, zb):  # pragma: no cover
    # the basis coordinates written back, the equality re-solved if it drifted
    n, k = V.shape
    for p in range(k):
        z[B[p]] = zb[p]
    _resolve_basis(V, w, z, B, lo, hi)
    return 4.0 * n * k  # the drift check (a refinement, when needed, uncounted)


@_unref
def _walk_column(
    V, T0, cols, w, lo, hi, basis0, z, B, ws, XT, guide
):  # pragma: no cover
    # the tableau form (see the module's docstring), or the inverse form for a
    # workspace without tableau
    if ws[0].shape[0] == 0:
        return _walk_column_inverse(V, T0, cols, w, lo, hi, basis0, z, B, ws, XT, guide)
    k = V.shape[1]
    Tbuf, gbuf, pbuf, E, H, vecs, leave, D, mark, _ = ws
    _start(w, lo, hi, basis0, z, B, vecs, XT, guide)
    chunk = Tbuf.shape[0]
    y, up, down, zb, lob, hib = vecs[0], vecs[1], vecs[2], vecs[3], vecs[4], vecs[5]
    n_cols = cols.shape[0]
    pivots = 0
    flops = 0.0  # floating-point operations, counted as the steps below do them
    start = 0
    while start < n_cols:
        stop = min(start + chunk, n_cols)
        # T: the tableau of cols[first:stop]. The first chunk's is shared (T0) and
        # only written out to Tbuf by the first flush.
        first = start
        if start == 0:
            T = T0[:stop]
        else:
            T = Tbuf[: stop - start]
            _tableau(V, B, cols[start:stop], T)
            # an LU factorisation and stop - start solves with it
            flops += 2.0 * k**3 / 3.0 + 2.0 * k * k * (stop - start)
        t = 0
        restart = stop
        for c in range(start, stop):
            j = cols[c]
            if z[j] <= lo[j] or z[j] >= hi[j]:
                continue  # already on a grid point
            # y = A^{-1} v_j: the direction d_j = 1, d_B = -y keeps V^T z fixed
            for p in range(k):
                y[p] = T[c - first, p]
            _apply_etas(y, E, leave, t)
            flops += 2.0 * k * t  # the etas (2k each)
            out, f = _step(j, y, z, lo, hi, B, zb, lob, hib, up, down, XT, guide)
            flops += f
            if out < 0:
                continue
            pivots += 1
            for p in range(k):
                E[t, p] = y[p]
            leave[t] = out
            t += 1
            if abs(y[out]) < 1e-7 * _absmax(y):
                restart = c + 1  # refactorise from the next coordinate
                break
            if t == ETA_BLOCK and c + 1 < stop:
                src = T[c + 1 - first :]
                dst = Tbuf[: src.shape[0]]  # in place, moved to the front
                nd = _flush_etas(src, dst, E, leave, t, H, gbuf, pbuf, D, mark)
                # nd leaving rows: their (nd x k) update matrix (t etas each), then
                # one (r x nd) @ (nd x k) product and the sum
                r = src.shape[0]
                flops += 2.0 * nd * t * k + 2.0 * r * nd * k + r * k
                T = dst
                first = c + 1
                t = 0
        start = restart
    return pivots, flops + _finish(V, w, z, B, lo, hi, zb)


@nb.njit(nogil=True, fastmath=True)
def _inverse_times(AT, v, y):  # pragma: no cover
    # y = A^{-1} v from AT = A^{-T} (its rows: A^{-1}'s columns), four rows a pass
    k = y.shape[0]
    y[:] = 0.0
    r = 0
    while r + 4 <= k:
        a0, a1, a2, a3 = v[r], v[r + 1], v[r + 2], v[r + 3]
        x0, x1, x2, x3 = AT[r], AT[r + 1], AT[r + 2], AT[r + 3]
        for p in range(k):
            y[p] += (a0 * x0[p] + a1 * x1[p]) + (a2 * x2[p] + a3 * x3[p])
        r += 4
    while r < k:
        a0 = v[r]
        x0 = AT[r]
        for p in range(k):
            y[p] += a0 * x0[p]
        r += 1


@nb.njit(nogil=True, fastmath=True)
def _pivot_inverse(AT, y, out):  # pragma: no cover
    # A^{-1} after column `out` of A became v_j = A y: row `out` divided by
    # y[out], y[p] times the new row taken from the others; on AT = A^{-T}
    k = y.shape[0]
    inv = 1.0 / y[out]
    for r in range(k):
        a = AT[r, out] * inv
        for p in range(k):
            AT[r, p] -= a * y[p]
        AT[r, out] = a


@nb.njit(nogil=True, _nrt=True)
def _refresh_inverse(V, B, AT):  # pragma: no cover
    # AT <- A^{-T} for the basis B, computed afresh
    AT[:] = np.linalg.inv(_basis_matrix(V, B)).T


@_unref
def _inverse_error(V, B, AT, ones, y):  # pragma: no cover
    # max |A^{-1} (A 1) - 1| with the kept inverse (A = V_B^T, A 1 the sum of
    # the basis coordinates' rows of V): 3 k^2 flops, against 2 k^3 for a fresh
    # inverse. ones, y: k-vectors, overwritten
    k = B.shape[0]
    ones[:] = 0.0
    for p in range(k):
        row = V[B[p]]
        for r in range(k):
            ones[r] += row[r]
    _inverse_times(AT, ones, y)
    err = 0.0
    for p in range(k):
        d = abs(y[p] - 1.0)
        if not d <= err:  # (a NaN too)
            err = d
    return err


@_unref
def _walk_column_inverse(
    V, AT0, cols, w, lo, hi, basis0, z, B, ws, XT, guide
):  # pragma: no cover
    # the inverse form (see the module's docstring)
    k = V.shape[1]
    vecs, AT = ws[5], ws[9]
    _start(w, lo, hi, basis0, z, B, vecs, XT, guide)
    for r in range(k):
        for p in range(k):
            AT[r, p] = AT0[r, p]
    y, up, down, zb, lob, hib = vecs[0], vecs[1], vecs[2], vecs[3], vecs[4], vecs[5]
    pivots = 0
    since = 0  # pivots since the inverse was last computed afresh
    flops = 0.0
    for c in range(cols.shape[0]):
        j = cols[c]
        if z[j] <= lo[j] or z[j] >= hi[j]:
            continue  # already on a grid point
        _inverse_times(AT, V[j], y)
        out, f = _step(j, y, z, lo, hi, B, zb, lob, hib, up, down, XT, guide)
        flops += 2.0 * k * k + f
        if out < 0:
            continue
        pivots += 1
        since += 1
        if abs(y[out]) < 1e-7 * _absmax(y):
            _refresh_inverse(V, B, AT)
            flops += 2.0 * k**3
            since = 0
        else:
            _pivot_inverse(AT, y, out)
            flops += 2.0 * k * k
            if since >= REFRESH:
                # y, up: free until the next step
                flops += 3.0 * k * k
                if not _inverse_error(V, B, AT, up, y) <= INVERSE_TOL:
                    _refresh_inverse(V, B, AT)
                    flops += 2.0 * k**3
                since = 0
    return pivots, flops + _finish(V, w, z, B, lo, hi, zb)


@nb.njit(nogil=True)
def _walk_columns(
    V, T0, cols, chunk, WT, loT, hiT, perm, basis0, ZT, basisT, pivots, flops, XT, run
):  # pragma: no cover
    # columns c0, c0 + s, ... < c1 with one workspace; each one's start point
    # and boxes gathered into the walk's order (perm) and its vertex scattered
    # back, through buffers of this thread
    c0, c1, s = run  # (first, stop, stride)
    n, k = V.shape
    ws = _workspace(k, max(min(chunk, cols.shape[0]), 1) if chunk else 0)
    # the guide's buffers: its response u, a move's response col, the basis
    # coordinates' rows of XT (contiguous, by basis position: one pass of
    # vectorised row updates gives X_B y, _rows_times) and y in float32
    r = XT.shape[1]
    guide = (
        np.empty(r, dtype=np.float32),
        np.empty(r, dtype=np.float32),
        np.empty((k if r else 0, r), dtype=np.float32),
        np.empty(k, dtype=np.float32),
    )
    w, lo, hi, z = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for c in range(c0, c1, s):
        wc, loc, hic, zc = WT[c], loT[c], hiT[c], ZT[c]
        for i in range(n):
            p = perm[i]
            w[i] = wc[p]
            lo[i] = loc[p]
            hi[i] = hic[p]
        pivots[c], flops[c] = _walk_column(
            V, T0, cols, w, lo, hi, basis0, z, basisT[c], ws, XT, guide
        )
        for i in range(n):
            zc[perm[i]] = z[i]


@nb.njit(cache=True, nogil=True)
def nullspace_walk(
    V, T0, cols, chunk, WT, loT, hiT, perm, basis0, ZT, basisT, flops, XT
):  # pragma: no cover
    """Walk every neuron (a row of ``WT``) to a vertex of its polytope.

    Parameters
    ----------
    V : float64 ndarray of shape (n, k), orthonormal columns (row space of the data)
    T0 : float64 ndarray of shape (c0, k), the tableau ``A^{-1} v_j`` of the first
        ``c0 = min(chunk, n - k)`` coordinates of ``cols`` for the basis ``basis0``;
        in the inverse form (``chunk=0``), ``A^{-T}`` (k x k) for ``basis0``
    cols : int64 ndarray of shape (n - k,), the coordinates outside ``basis0`` in
        the order they are visited
    chunk : int, coordinates per tableau chunk; 0: the inverse form
    WT : float64 ndarray of shape (n_out, n), the start points (rows)
    loT, hiT : float64 ndarray of shape (n_out, n), the boxes, ``lo <= w <= hi``
    perm : int64 ndarray of shape (n,), the walk's labels of the coordinates:
        label ``i`` is ``WT``'s, ``loT``'s, ``hiT``'s and ``ZT``'s column
        ``perm[i]``; ``V``, ``T0``, ``cols``, ``basis0``, ``XT`` and ``basisT``
        are in labels (each neuron's vectors are gathered into them and its
        vertex scattered back by the walking thread)
    basis0 : int64 ndarray of shape (k,), initial basis with ``V[basis0]`` invertible
    ZT : float64 ndarray of shape (n_out, n), written: the vertices
    basisT : int64 ndarray of shape (n_out, k), written: each neuron's final basis
        (the labels of the coordinates that may be off the grid).
    flops : float64 ndarray of shape (n_out,), written: the floating-point
        operations of each neuron's walk, counted step by step (the shared first
        tableau, computed outside, is not included).
    XT : float32 ndarray of shape (n, m) or (0, 0), the guide: the data's
        columns (``X.T``). With rows, each coordinate ``j`` moves toward the
        bound nearer greedy path following's target on the data's response to
        its move, ``X_j - X_B A^{-1} v_j`` with the current basis ``B`` (which
        lies outside the kept directions; its error fed forward), instead of
        to the nearer bound: ``2 m k`` more flops a step. Empty: unguided.

    Returns
    -------
    pivots : int64 ndarray of shape (n_out,), pivots per neuron.
    """
    pivots = np.zeros(WT.shape[0], dtype=np.int64)
    _walk_columns(
        V,
        T0,
        cols,
        chunk,
        WT,
        loT,
        hiT,
        perm,
        basis0,
        ZT,
        basisT,
        pivots,
        flops,
        XT,
        (0, WT.shape[0], 1),
    )
    return pivots


@nb.njit(cache=True, nogil=True, parallel=True)
def nullspace_walk_parallel(
    V, T0, cols, chunk, WT, loT, hiT, perm, basis0, ZT, basisT, flops, XT, n_threads
):  # pragma: no cover
    """Neuron-parallel :func:`nullspace_walk`: same arguments plus the thread
    count (each thread walks every ``n_threads``-th neuron with one workspace),
    same result."""
    n_out = WT.shape[0]
    pivots = np.zeros(n_out, dtype=np.int64)
    n_threads = max(min(n_threads, n_out), 1)
    for tid in nb.prange(n_threads):
        _walk_columns(
            V,
            T0,
            cols,
            chunk,
            WT,
            loT,
            hiT,
            perm,
            basis0,
            ZT,
            basisT,
            pivots,
            flops,
            XT,
            (tid, n_out, n_threads),
        )
    return pivots
