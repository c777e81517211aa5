"""Kernels of greedy rounding and of the null-space quantizer's diagnostics.

Greedy path following (GPFQ's rule) over chosen coordinates of each neuron, with
its residual carried along; the moves from the pre-processed points to their
codes; and the spectral norms of column subsets of the data that
``NullSpaceQuantizer.bound_`` needs. The walk itself is in :mod:`._nullspace`.
"""

import numba as nb
import numpy as np


@nb.njit(nogil=True)
def _subset_norm(G, S):  # pragma: no cover
    s = S.shape[0]
    M = np.empty((s, s))
    for a in range(s):
        for b in range(s):
            M[a, b] = G[S[a], S[b]]
    return np.sqrt(max(np.linalg.eigvalsh(M)[-1], 0.0))


@nb.njit(cache=True, nogil=True)
def subset_norms(G, idx, counts, out):  # pragma: no cover
    """Spectral norms ``||X_S||_2`` of column subsets, from the Gram matrix.

    Parameters
    ----------
    G : float64 ndarray of shape (n, n), ``X^T X``
    idx : int64 ndarray of shape (s, n_sets), the subsets by column, padded
    counts : int64 ndarray of shape (n_sets,), the size of each subset
    out : float64 ndarray of shape (n_sets,), written (0 for an empty subset)
    """
    for c in range(counts.shape[0]):
        out[c] = _subset_norm(G, idx[: counts[c], c].copy()) if counts[c] else 0.0


@nb.njit(cache=True, nogil=True, parallel=True)
def subset_norms_parallel(G, idx, counts, out):  # pragma: no cover
    """Subset-parallel :func:`subset_norms` (same arguments, same result)."""
    for c in nb.prange(counts.shape[0]):
        out[c] = _subset_norm(G, idx[: counts[c], c].copy()) if counts[c] else 0.0


@nb.njit(cache=True, nogil=True)
def rounding_moves(Z, codes, step, off, tol):  # pragma: no cover
    """The moves ``q - z`` of the rounding, as a CSC matrix, in two passes.

    Parameters
    ----------
    Z : float64 ndarray of shape (n, n_out), the pre-processed points
    codes : ndarray of shape (n, n_out), their codes (``q = codes * step``)
    step : float64 ndarray of shape (n_out,)
    off : bool ndarray of shape (n, n_out), the entries off the grid
    tol : float, moves of at most ``tol * step`` (round-off) are left out

    Returns
    -------
    indptr, indices, data : the CSC arrays of the moves ``q - z`` kept (column by
        column, rows increasing)
    dist2 : float64 ndarray of shape (n_out,), ``sum (z - q)^2`` over ``off``
    """
    n, n_out = Z.shape
    indptr = np.zeros(n_out + 1, dtype=np.int64)
    dist2 = np.zeros(n_out)
    for c in range(n_out):
        s = step[c]
        count = 0
        acc = 0.0
        for i in range(n):
            d = Z[i, c] - codes[i, c] * s
            if abs(d) > tol * s:
                count += 1
            if off[i, c]:
                acc += d * d
        indptr[c + 1] = indptr[c] + count
        dist2[c] = acc
    indices = np.empty(indptr[n_out], dtype=np.int64)
    data = np.empty(indptr[n_out])
    for c in range(n_out):
        s = step[c]
        p = indptr[c]
        for i in range(n):
            q = codes[i, c] * s
            if abs(Z[i, c] - q) > tol * s:
                indices[p] = i
                data[p] = q - Z[i, c]
                p += 1
    return indptr, indices, data, dist2


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


#: columns :func:`greedy_path` advances together when they share their
#: coordinates (the innermost loops run across them, vectorised)
BLOCK = 16


@nb.njit(nogil=True)
def _shared(idx):  # pragma: no cover
    """Whether every column of ``idx`` lists the same coordinates."""
    for c in range(1, idx.shape[1]):
        for r in range(idx.shape[0]):
            if idx[r, c] != idx[r, 0]:
                return False
            if idx[r, 0] < 0:
                break
    return True


@nb.njit(nogil=True)
def _squared_norms(XqT, coords):  # pragma: no cover
    """``||Xq_t||^2`` for the coordinates ``t`` of ``coords`` (summed as
    :func:`_greedy_column` sums them)."""
    den = np.zeros(XqT.shape[0])
    for t in coords:
        if t < 0:
            break
        d = 0.0
        for i in range(XqT.shape[1]):
            xq = XqT[t, i]
            d += xq * xq
        den[t] = d
    return den


@nb.njit(nogil=True)
def _greedy_block(
    XqT, XfT, W, coords, den, U, inv_step, zp, qmin, qmax, codes, c0, c1
):  # pragma: no cover
    """:func:`_greedy_column` for the columns ``c0`` to ``c1`` (sharing
    ``coords``) together: for each column, the same operations in the same
    order (no sum reordered, so the same codes and residuals), but one pass over
    a coordinate's inputs serves them all, and the innermost loops run across
    the columns (``benchmarks/bench_layer_kernels.py``, ``gpfq-path``)."""
    m = XqT.shape[1]
    B = c1 - c0
    Ub = np.empty((m, B))  # the columns' residuals, row by row
    for i in range(m):
        for j in range(B):
            Ub[i, j] = U[c0 + j, i]
    acc, wt, qs = np.empty(B), np.empty(B), np.empty(B)
    for t in coords:
        if t < 0:
            break
        for j in range(B):
            wt[j] = W[t, c0 + j]
            acc[j] = 0.0
        for i in range(m):
            xq, xf = XqT[t, i], XfT[t, i]
            for j in range(B):
                acc[j] += xq * (Ub[i, j] + wt[j] * xf)
        dt = den[t]
        for j in range(B):
            inv = inv_step[c0 + j]
            target = acc[j] / dt if dt > 0 else wt[j]
            q = min(max(np.rint(target * inv + zp), qmin), qmax)
            codes[t, c0 + j] = q
            qs[j] = (q - zp) / inv
        for i in range(m):
            xq, xf = XqT[t, i], XfT[t, i]
            for j in range(B):
                Ub[i, j] += wt[j] * xf - qs[j] * xq
    for i in range(m):
        for j in range(B):
            U[c0 + j, i] = Ub[i, j]


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

    Columns that share their coordinates advance :data:`BLOCK` at a time
    (:func:`_greedy_block`: the same codes).
    """
    n_out = W.shape[1]
    if n_out > 1 and _shared(idx):
        den = _squared_norms(XqT, idx[:, 0])
        for c0 in range(0, n_out, BLOCK):
            c1 = min(c0 + BLOCK, n_out)
            _greedy_block(
                XqT, XfT, W, idx[:, 0], den, U, inv_step, zp, qmin, qmax, codes, c0, c1
            )
        return
    for c in range(n_out):
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
    n_out = W.shape[1]
    if n_out > 1 and _shared(idx):
        den = _squared_norms(XqT, idx[:, 0])
        for b in nb.prange((n_out + BLOCK - 1) // BLOCK):
            c0 = b * BLOCK
            c1 = min(c0 + BLOCK, n_out)
            _greedy_block(
                XqT, XfT, W, idx[:, 0], den, U, inv_step, zp, qmin, qmax, codes, c0, c1
            )
        return
    for c in nb.prange(n_out):
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
