"""Kernels of memoryless scalar quantization (MSQ).

Every kernel takes a 2-D array ``X`` of shape ``(n_rows, n_cols)`` (C- or F-ordered,
writable or read-only, float32 or float64) whose **columns are channels**, and
per-column parameters as 1-D arrays of length ``n_cols`` in ``X``'s dtype. Per-tensor
quantization passes the same value in every column. Scalars (``qmin``, ``qmax``)
arrive in ``X``'s dtype. Outputs are written to a caller-allocated ``out`` that
must not alias ``X``.

The grid is ``code = clip(rint(x * inv_step) + zero_point, qmin, qmax)`` and the
dequantized value ``(code - zero_point) * level``. ``np.rint`` rounds half to even, as
``torch.round`` does, so the torch adapter reproduces these kernels bit for bit.
``level`` equals ``1 / inv_step`` for uniform grids; the sign kernels serve the binary
alphabet ``{-level, +level}``, in which zero maps to ``+level``.
"""

import numba as nb
import numpy as np


@nb.njit(inline="always")
def _code(x, inv_step, zero_point, qmin, qmax):  # pragma: no cover
    q = np.rint(x * inv_step) + zero_point
    return min(max(q, qmin), qmax)


@nb.njit(nogil=True)
def _fake_quantize_row(
    x, inv_step, level, zero_point, qmin, qmax, out
):  # pragma: no cover
    for j in range(x.shape[0]):
        q = _code(x[j], inv_step[j], zero_point[j], qmin, qmax)
        out[j] = (q - zero_point[j]) * level[j]


@nb.njit(cache=True, nogil=True)
def fake_quantize(X, inv_step, level, zero_point, qmin, qmax, out):  # pragma: no cover
    """Round every entry of ``X`` to its column's grid and dequantize into ``out``.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_cols), float32 or float64
    inv_step, level, zero_point : ndarray of shape (n_cols,), X's dtype
    qmin, qmax : scalar of X's dtype
    out : ndarray like X, written in place; must not alias X.
    """
    for i in range(X.shape[0]):
        _fake_quantize_row(X[i], inv_step, level, zero_point, qmin, qmax, out[i])


@nb.njit(cache=True, nogil=True, parallel=True)
def fake_quantize_parallel(
    X, inv_step, level, zero_point, qmin, qmax, out
):  # pragma: no cover
    """Row-parallel :func:`fake_quantize` (same arguments, same result)."""
    for i in nb.prange(X.shape[0]):
        _fake_quantize_row(X[i], inv_step, level, zero_point, qmin, qmax, out[i])


@nb.njit(nogil=True)
def _quantize_row(x, inv_step, zero_point, qmin, qmax, out):  # pragma: no cover
    for j in range(x.shape[0]):
        out[j] = _code(x[j], inv_step[j], zero_point[j], qmin, qmax)


@nb.njit(cache=True, nogil=True)
def quantize(X, inv_step, zero_point, qmin, qmax, out):  # pragma: no cover
    """Integer codes of ``X`` on its columns' grids, written into the integer ``out``.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_cols), float32 or float64
    inv_step, zero_point : ndarray of shape (n_cols,), X's dtype
    qmin, qmax : scalar of X's dtype
    out : integer ndarray of shape (n_rows, n_cols) holding ``[qmin, qmax]``.
    """
    for i in range(X.shape[0]):
        _quantize_row(X[i], inv_step, zero_point, qmin, qmax, out[i])


@nb.njit(cache=True, nogil=True, parallel=True)
def quantize_parallel(X, inv_step, zero_point, qmin, qmax, out):  # pragma: no cover
    """Row-parallel :func:`quantize` (same arguments, same result)."""
    for i in nb.prange(X.shape[0]):
        _quantize_row(X[i], inv_step, zero_point, qmin, qmax, out[i])


@nb.njit(nogil=True)
def _dequantize_row(codes, level, zero_point, out):  # pragma: no cover
    for j in range(codes.shape[0]):
        out[j] = (codes[j] - zero_point[j]) * level[j]


@nb.njit(cache=True, nogil=True)
def dequantize(codes, level, zero_point, out):  # pragma: no cover
    """``out = (codes - zero_point) * level`` column-wise, in ``out``'s float dtype.

    Parameters
    ----------
    codes : integer ndarray of shape (n_rows, n_cols)
    level, zero_point : ndarray of shape (n_cols,), out's dtype
    out : float ndarray of shape (n_rows, n_cols).
    """
    for i in range(codes.shape[0]):
        _dequantize_row(codes[i], level, zero_point, out[i])


@nb.njit(nogil=True)
def _sign_row(x, level, out):  # pragma: no cover
    for j in range(x.shape[0]):
        out[j] = level[j] if x[j] >= 0 else -level[j]


@nb.njit(cache=True, nogil=True)
def sign_fake_quantize(X, level, out):  # pragma: no cover
    """Binary alphabet: ``out = level * sign(X)`` column-wise, with ``sign(0) = +1``.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_cols), float32 or float64
    level : ndarray of shape (n_cols,), X's dtype (``level`` of ones gives codes)
    out : ndarray of shape (n_rows, n_cols), float or signed integer.
    """
    for i in range(X.shape[0]):
        _sign_row(X[i], level, out[i])


@nb.njit(cache=True, nogil=True, parallel=True)
def sign_fake_quantize_parallel(X, level, out):  # pragma: no cover
    """Row-parallel :func:`sign_fake_quantize` (same arguments, same result)."""
    for i in nb.prange(X.shape[0]):
        _sign_row(X[i], level, out[i])


@nb.njit(cache=True, nogil=True)
def column_abs_max(X, out):  # pragma: no cover
    """``out[j] = max_i |X[i, j]|``.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_cols), n_rows >= 1
    out : ndarray of shape (n_cols,), X's dtype.
    """
    out[:] = 0
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            a = abs(X[i, j])
            if a > out[j]:
                out[j] = a


@nb.njit(cache=True, nogil=True)
def column_abs_mean(X, out):  # pragma: no cover
    """``out[j] = mean_i |X[i, j]|``, accumulated in float64.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_cols), n_rows >= 1
    out : ndarray of shape (n_cols,).
    """
    acc = np.zeros(X.shape[1], dtype=np.float64)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            acc[j] += abs(X[i, j])
    for j in range(X.shape[1]):
        out[j] = acc[j] / X.shape[0]


@nb.njit(nogil=True)
def _grid_sq_errors(X, ratio, base_step, qmin, qmax, err):  # pragma: no cover
    # err[j] = sum_i (X[i, j] - Q(X[i, j]))^2 on the grid step_j * [qmin, qmax],
    # step_j = ratio * base_step[j], rounded exactly as fake_quantize rounds.
    one = X.dtype.type(1)
    step = np.empty_like(base_step)
    inv_step = np.empty_like(base_step)
    for j in range(base_step.shape[0]):
        step[j] = ratio * base_step[j]
        inv_step[j] = one / step[j]
    err[:] = 0.0
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            q = _code(X[i, j], inv_step[j], X.dtype.type(0), qmin, qmax) * step[j]
            d = np.float64(X[i, j] - q)
            err[j] += d * d


@nb.njit(cache=True, nogil=True)
def grid_mse_errors(X, base_step, ratios, qmin, qmax, out):  # pragma: no cover
    """Squared rounding errors of every column for a family of candidate steps.

    ``out[k, j] = sum_i (X[i, j] - Q_k(X[i, j]))^2`` where ``Q_k`` rounds to the grid
    ``ratios[k] * base_step[j] * [qmin, qmax]`` exactly as :func:`fake_quantize` does.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_cols), float32 or float64
    base_step : ndarray of shape (n_cols,), X's dtype, every entry > 0
    ratios : ndarray of shape (n_ratios,), X's dtype, every entry > 0
    qmin, qmax : scalar of X's dtype
    out : float64 ndarray of shape (n_ratios, n_cols).
    """
    for k in range(ratios.shape[0]):
        _grid_sq_errors(X, ratios[k], base_step, qmin, qmax, out[k])


@nb.njit(cache=True, nogil=True, parallel=True)
def grid_mse_errors_parallel(X, base_step, ratios, qmin, qmax, out):  # pragma: no cover
    """Candidate-parallel :func:`grid_mse_errors` (same arguments, same result)."""
    for k in nb.prange(ratios.shape[0]):
        _grid_sq_errors(X, ratios[k], base_step, qmin, qmax, out[k])


@nb.njit(nogil=True)
def _ternary_scale_column(col):  # pragma: no cover
    a = np.sort(np.abs(col))[::-1]
    best_k, best_val, best_s, s = 0, 0.0, 0.0, 0.0
    for k in range(a.shape[0]):
        s += np.float64(a[k])
        val = s * s / (k + 1)
        if val > best_val:
            best_val, best_k, best_s = val, k + 1, s
    if best_k == 0:
        return 0.0
    return best_s / best_k


@nb.njit(cache=True, nogil=True)
def ternary_optimal_scale(X, out):  # pragma: no cover
    """L2-optimal ternary level ``a`` of every column.

    Minimises ``sum_i (x_i - a * t_i)^2`` over ``a > 0`` and ``t in {-1, 0, 1}^n``:
    for a support of size ``k`` the best choice is the ``k`` largest ``|x_i|`` with
    ``a`` their mean, leaving the error ``||x||^2 - S_k^2 / k``; so ``k`` maximises
    ``S_k^2 / k`` over the sorted magnitudes. ``O(n log n)`` per column.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_cols)
    out : ndarray of shape (n_cols,); 0 for an all-zero column.
    """
    for j in range(X.shape[1]):
        out[j] = _ternary_scale_column(X[:, j])


@nb.njit(cache=True, nogil=True, parallel=True)
def ternary_optimal_scale_parallel(X, out):  # pragma: no cover
    """Column-parallel :func:`ternary_optimal_scale` (same arguments, same result)."""
    for j in nb.prange(X.shape[1]):
        out[j] = _ternary_scale_column(X[:, j])


@nb.njit(cache=True, nogil=True)
def grid_cells(X, step, qmin, qmax, lo, hi, inside):  # pragma: no cover
    """Cells ``[lo, hi]`` of the grid around every entry of ``X``, and the entry
    put inside its cell (one pass).

    With ``x`` clipped to ``[qmin step, qmax step]``: ``lo = min(floor(x / step)
    step, qmax step)``, ``hi = min(lo + step, qmax step)``, ``hi = lo`` for an
    entry on a grid point, and ``inside = min(max(X, lo), hi)``. Column by
    column: fastest on F-ordered arrays.

    Parameters
    ----------
    X : float64 ndarray of shape (n_rows, n_cols)
    step : float64 ndarray of shape (n_cols,), the grid step per column
    qmin, qmax : float, the code range
    lo, hi, inside : float64 ndarray like X, written.
    """
    for j in range(X.shape[1]):
        s = step[j]
        top = qmax * s
        bottom = qmin * s
        for i in range(X.shape[0]):
            x = min(max(X[i, j], bottom), top)
            low = min(np.floor(x / s) * s, top)
            high = low if x == low else min(low + s, top)
            lo[i, j] = low
            hi[i, j] = high
            inside[i, j] = min(max(X[i, j], low), high)


@nb.njit(cache=True, nogil=True)
def on_grid(X, step, rtol, out):  # pragma: no cover
    """``|x / step - rint(x / step)| <= rtol`` for every entry (one pass, column by
    column as :func:`grid_cells`).

    Parameters
    ----------
    X : float64 ndarray of shape (n_rows, n_cols)
    step : float64 ndarray of shape (n_cols,)
    rtol : float
    out : bool ndarray like X, written.
    """
    for j in range(X.shape[1]):
        s = step[j]
        for i in range(X.shape[0]):
            r = X[i, j] / s
            out[i, j] = abs(r - np.rint(r)) <= rtol
