"""Kernels of the null-space pre-processing (Maly & Saab) and of greedy rounding.

The walk moves one neuron ``w`` (a column of ``W``) inside
``P = {z : V^T z = V^T w, lo <= z <= hi}``, where ``V`` (``n x k``, orthonormal
columns) spans the row space of the calibration data, until it reaches a vertex of
``P``: at most ``k`` coordinates stay strictly inside their box, every other one sits
on a box bound (a grid point). It works like the simplex method on the equality
system ``A z_B = c - V_N^T z_N``: a basis ``B`` of ``k`` free coordinates, the inverse
of ``A = V_B^T`` kept up to date with rank-one (eta) updates, and one pass over the
other coordinates. Each step costs ``O(k^2)``, so one neuron costs ``O(n k^2)``, and
a layer ``O(n_out n k^2)`` after one ``O(m n k)`` SVD shared by all neurons.

Numerics: the inverse is refactorised from scratch every ``k`` pivots and whenever a
pivot is small relative to its column; at the end the basis coordinates are solved
again (two rounds of iterative refinement) so that ``V^T z = V^T w`` holds to
round-off whatever the number of steps.
"""

import numba as nb
import numpy as np


@nb.njit(nogil=True, fastmath=True)
def _matvec(A, x, out):  # pragma: no cover
    # A pure multiply-add leaf (it rounds, clips and divides nothing): fastmath only
    # lets LLVM split the sums over SIMD lanes. Measured on a 784-input layer with
    # k = 232 (MNIST, m = 1024): 0.049 -> 0.015 s per neuron. The sums differ from
    # the serial order in the last bits, which can change which vertex is reached,
    # never the equality (restored exactly at the end).
    for p in range(A.shape[0]):
        acc = 0.0
        for r in range(A.shape[1]):
            acc += A[p, r] * x[r]
        out[p] = acc


@nb.njit(nogil=True)
def _eta_update(Ainv, y, row, leave):  # pragma: no cover
    # rows p != leave of the new inverse: Ainv[p] -= y[p] * (new row `leave`)
    k = Ainv.shape[0]
    for p in range(k):
        if p != leave:
            f = y[p]
            if f != 0.0:
                a = Ainv[p]
                for r in range(k):
                    a[r] -= f * row[r]


@nb.njit(nogil=True)
def _refactor(V, B, Ainv):  # pragma: no cover
    k = B.shape[0]
    A = np.empty((k, k))
    for p in range(k):
        for r in range(k):
            A[r, p] = V[B[p], r]
    Ainv[:, :] = np.linalg.inv(A)


@nb.njit(nogil=True)
def _resolve_basis(V, w, z, B, Ainv):  # pragma: no cover
    # z_B += A^{-1} (V^T w - V^T z): restores the equality to round-off
    n, k = V.shape
    for _ in range(2):
        res = np.zeros(k)
        for i in range(n):
            diff = w[i] - z[i]
            if diff != 0.0:
                for r in range(k):
                    res[r] += V[i, r] * diff
        for p in range(k):
            acc = 0.0
            for r in range(k):
                acc += Ainv[p, r] * res[r]
            z[B[p]] += acc


@nb.njit(nogil=True)
def _walk_column(V, w, lo, hi, basis0, order, z, B):  # pragma: no cover
    n, k = V.shape
    z[:] = w
    B[:] = basis0
    if k == 0:
        return 0
    Ainv = np.empty((k, k))
    _refactor(V, B, Ainv)
    in_basis = np.zeros(n, dtype=np.bool_)
    for p in range(k):
        in_basis[B[p]] = True
    y = np.empty(k)
    row = np.empty(k)
    pivots = 0
    for j in order:
        if in_basis[j]:
            continue
        if z[j] <= lo[j] or z[j] >= hi[j]:
            continue  # already on a grid point
        # direction d: d_j = 1, d_B = -y with y = A^{-1} v_j, so that V^T d = 0
        _matvec(Ainv, V[j], y)
        ymax = 0.0
        for p in range(k):
            ymax = max(ymax, abs(y[p]))
        tiny = 1e-12 * max(ymax, 1.0)
        t_hi = hi[j] - z[j]
        t_lo = lo[j] - z[j]
        arg_hi = -1
        arg_lo = -1
        for p in range(k):
            d = -y[p]
            b = B[p]
            if d > tiny:
                up = (hi[b] - z[b]) / d
                down = (lo[b] - z[b]) / d
            elif d < -tiny:
                up = (lo[b] - z[b]) / d
                down = (hi[b] - z[b]) / d
            else:
                continue
            if up < t_hi:
                t_hi = up
                arg_hi = p
            if down > t_lo:
                t_lo = down
                arg_lo = p
        t_hi = max(t_hi, 0.0)
        t_lo = min(t_lo, 0.0)
        if t_hi <= -t_lo:
            t, leave, to_hi = t_hi, arg_hi, True
        else:
            t, leave, to_hi = t_lo, arg_lo, False
        z[j] += t
        for p in range(k):
            z[B[p]] -= t * y[p]
        if leave < 0:
            z[j] = hi[j] if to_hi else lo[j]
            continue
        # basis coordinate B[leave] reached its bound: snap it, pivot j in
        b = B[leave]
        d = -y[leave]
        if (d > 0) == to_hi:
            z[b] = hi[b]
        else:
            z[b] = lo[b]
        in_basis[b] = False
        in_basis[j] = True
        B[leave] = j
        pivots += 1
        piv = y[leave]
        if abs(piv) < 1e-7 * ymax or pivots % k == 0:
            _refactor(V, B, Ainv)
        else:
            for r in range(k):
                Ainv[leave, r] /= piv
                row[r] = Ainv[leave, r]
            _eta_update(Ainv, y, row, leave)
    _refactor(V, B, Ainv)
    _resolve_basis(V, w, z, B, Ainv)
    return pivots


@nb.njit(cache=True, nogil=True)
def nullspace_walk(V, W, lo, hi, basis0, order, Z, basis):  # pragma: no cover
    """Walk every column of ``W`` to a vertex of its polytope.

    Parameters
    ----------
    V : float64 ndarray of shape (n, k), orthonormal columns (row space of the data)
    W : float64 ndarray of shape (n, n_out), the start points (columns)
    lo, hi : float64 ndarray of shape (n, n_out), the boxes, ``lo <= W <= hi``
    basis0 : int64 ndarray of shape (k,), initial basis with ``V[basis0]`` invertible
    order : int64 ndarray of shape (n,), order in which coordinates are visited
    Z : float64 ndarray of shape (n, n_out), written: the vertices
    basis : int64 ndarray of shape (k, n_out), written: each column's final basis
        (the coordinates that may be off the grid).

    Returns
    -------
    pivots : int64 ndarray of shape (n_out,), pivots per column.
    """
    n_out = W.shape[1]
    pivots = np.zeros(n_out, dtype=np.int64)
    z = np.empty(W.shape[0])
    b = np.empty(basis0.shape[0], dtype=np.int64)
    for c in range(n_out):
        pivots[c] = _walk_column(
            V, W[:, c].copy(), lo[:, c].copy(), hi[:, c].copy(), basis0, order, z, b
        )
        Z[:, c] = z
        basis[:, c] = b
    return pivots


@nb.njit(cache=True, nogil=True, parallel=True)
def nullspace_walk_parallel(V, W, lo, hi, basis0, order, Z, basis):  # pragma: no cover
    """Column-parallel :func:`nullspace_walk` (same arguments, same result)."""
    n_out = W.shape[1]
    pivots = np.zeros(n_out, dtype=np.int64)
    for c in nb.prange(n_out):
        z = np.empty(W.shape[0])
        b = np.empty(basis0.shape[0], dtype=np.int64)
        pivots[c] = _walk_column(
            V, W[:, c].copy(), lo[:, c].copy(), hi[:, c].copy(), basis0, order, z, b
        )
        Z[:, c] = z
        basis[:, c] = b
    return pivots


@nb.njit(nogil=True)
def _greedy_column(
    XqT, XfT, w, idx, u, inv_step, zp, qmin, qmax, codes
):  # pragma: no cover
    m = XqT.shape[1]
    for t in idx:
        if t < 0:
            break
        num = 0.0
        den = 0.0
        wt = w[t]
        for i in range(m):
            xq = XqT[t, i]
            num += xq * (u[i] + wt * XfT[t, i])
            den += xq * xq
        target = num / den if den > 0 else wt
        q = min(max(np.rint(target * inv_step + zp), qmin), qmax)
        codes[t] = q
        qs = (q - zp) / inv_step
        for i in range(m):
            u[i] += wt * XfT[t, i] - qs * XqT[t, i]


@nb.njit(cache=True, nogil=True)
def greedy_path(
    XqT, XfT, W, idx, U, inv_step, zp, qmin, qmax, codes
):  # pragma: no cover
    """Greedy path following (GPFQ) over chosen coordinates of every column.

    For each column ``c`` and each coordinate ``t`` in ``idx[:, c]`` (in order, ``-1``
    ends the list) it picks the grid point ``q_t`` that best cancels the running
    residual ``u`` of the layer's output, then updates it::

        q_t = Q(<Xq_t, u + w_t Xf_t> / ||Xq_t||^2),   u += w_t Xf_t - q_t Xq_t

    where ``Q`` rounds to ``(code - zp) * step`` with codes in ``[qmin, qmax]``
    (``zp = 0.5``, codes ``{0, 1}`` and ``step = 2a`` give the binary ``{-a, +a}``).

    Parameters
    ----------
    XqT : float64 ndarray of shape (n, m), inputs the quantized layer sees, by column
    XfT : float64 ndarray of shape (n, m), the float network's inputs, by column
    W : float64 ndarray of shape (n, n_out), the values to follow
    idx : int64 ndarray of shape (n_idx, n_out), coordinates to round, ``-1`` padded
    U : float64 ndarray of shape (n_out, m), initial residuals; updated in place to
        the final residual ``Xf w - Xq q`` of every column
    inv_step : float64 ndarray of shape (n_out,), ``1 / step`` per column
    zp : float64, the zero point in code units
    qmin, qmax : float64, the code range
    codes : float64 ndarray of shape (n, n_out); entries at ``idx`` are written.
    """
    for c in range(W.shape[1]):
        _greedy_column(
            XqT,
            XfT,
            W[:, c].copy(),
            idx[:, c].copy(),
            U[c],
            inv_step[c],
            zp,
            qmin,
            qmax,
            codes[:, c],
        )


@nb.njit(cache=True, nogil=True, parallel=True)
def greedy_path_parallel(
    XqT, XfT, W, idx, U, inv_step, zp, qmin, qmax, codes
):  # pragma: no cover
    """Column-parallel :func:`greedy_path` (same arguments, same result)."""
    for c in nb.prange(W.shape[1]):
        _greedy_column(
            XqT,
            XfT,
            W[:, c].copy(),
            idx[:, c].copy(),
            U[c],
            inv_step[c],
            zp,
            qmin,
            qmax,
            codes[:, c],
        )
