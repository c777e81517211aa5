"""Gram matrices of calibration data, and the algebra the data-driven quantizers do
on them, in as few ``n_in x n_in`` matrices as each method needs.

GPFQ's Gram form, GPTQ and the null-space method work with ``G = X^T X`` of a
layer's calibration inputs ``X`` (``m`` rows, ``n_in`` columns), a float64
``n_in x n_in`` matrix: ``8 n_in^2`` bytes (2.7 GB at ``n_in = 18432``). These
helpers

* form ``X^T Y`` by blocks of output rows (:func:`gram`): NumPy's ``X.T @ X``
  goes to BLAS ``syrk`` on the transposed operand, which was seen to kill the
  interpreter (signal 11) with the OpenBLAS that NumPy 2.4 bundles at 18432
  columns, and measured 3.6x slower than the blocked products here;
* form ``tril(X^T Y) @ W`` and ``triu(X^T Y, 1) @ W`` from the data with a running
  prefix (:func:`triangle_product`), never the ``n_in x n_in`` matrix;
* factor ``H^-1 = U^T U`` in ``H``'s own memory (:func:`inverse_upper_cholesky`).

Everything is float64: GPTQ's Cholesky of a damped ``H`` needs it (float32 loses
positive definiteness on wide, nearly singular layers), and the Gram path's
rounding decisions divide by ``G[t, t]``.
"""

import contextlib

import numpy as np
from scipy.linalg import lapack

from .._kernels._threads import one_blas_thread

__all__ = [
    "gram",
    "triangle_product",
    "lower_product",
    "output_errors",
    "inverse_upper_cholesky",
    "GRAM_BLOCK",
]

#: Columns per block of output rows (a 2048-column ``syrk`` at most).
GRAM_BLOCK = 2048

#: The largest matrix OpenBLAS's threaded Cholesky factorises here without
#: crashing (it segfaults at 16384 with 2 threads); larger ones use one thread.
SAFE_THREADED_CHOLESKY = 8192


def gram(X, Y=None, *, block=GRAM_BLOCK):
    """``X^T Y`` (``X^T X`` when ``Y`` is None) in float64, by blocks of rows.

    Each block of ``block`` output rows is one BLAS product of a column slice of
    ``X`` with ``Y``; for ``X^T X`` only the upper block rows are computed and
    mirrored (half the flops). Holds the result and nothing of its size besides.

    Parameters
    ----------
    X : ndarray of shape (m, n)
        Data, one column per input.
    Y : ndarray of shape (m, p), default=None
        Second data matrix; ``None`` means ``X`` (a symmetric result).
    block : int, default=GRAM_BLOCK
        Output rows per product.

    Returns
    -------
    G : ndarray of shape (n, p)
        ``X^T Y``, C-contiguous float64.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((5, 7))
    >>> bool(np.allclose(gram(X, block=3), X.T @ X))
    True
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[1]
    if Y is None:
        G = np.empty((n, n))
        for a in range(0, n, block):
            b = min(n, a + block)
            np.matmul(X[:, a:b].T, X[:, a:], out=G[a:b, a:])
            G[b:, a:b] = G[a:b, b:].T
            upper = np.triu(G[a:b, a:b])  # exactly symmetric diagonal block too
            G[a:b, a:b] = upper + np.triu(upper, 1).T
        return G
    Y = np.asarray(Y, dtype=np.float64)
    G = np.empty((n, Y.shape[1]))
    for a in range(0, n, block):
        b = min(n, a + block)
        np.matmul(X[:, a:b].T, Y, out=G[a:b])
    return G


def triangle_product(X, Y, W, part, *, block=GRAM_BLOCK):
    """``tril(X^T Y) @ W`` (``part="lower"``) or ``triu(X^T Y, 1) @ W``
    (``part="strict_upper"``) without the ``n x n`` matrix ``X^T Y``.

    Row ``t`` of the lower product is ``X[:, t] . sum_{s <= t} Y[:, s] W[s]``: a
    running sum over the columns of ``Y`` (an ``m x n_out`` prefix) serves every
    row, and only the diagonal ``block x block`` piece of ``X^T Y`` is formed.
    ``2 m n (n_out + block)`` flops against ``m n^2 + n^2 n_out`` through the
    Gram matrix.

    Parameters
    ----------
    X, Y : ndarray of shape (m, n)
        Data.
    W : ndarray of shape (n, n_out)
        Right factor.
    part : {"lower", "strict_upper"}
        Which triangle of ``X^T Y`` (the diagonal belongs to ``"lower"``).
    block : int, default=GRAM_BLOCK
        Rows per block.

    Returns
    -------
    P : ndarray of shape (n, n_out)
        The product, float64.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X, Y, W = rng.random((4, 6)), rng.random((4, 6)), rng.random((6, 2))
    >>> bool(np.allclose(triangle_product(X, Y, W, "lower", block=4),
    ...                  np.tril(X.T @ Y) @ W))
    True
    >>> bool(np.allclose(triangle_product(X, Y, W, "strict_upper", block=4),
    ...                  np.triu(X.T @ Y, 1) @ W))
    True
    """
    if part not in ("lower", "strict_upper"):
        raise ValueError(f"part must be 'lower' or 'strict_upper', got {part!r}.")
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    n = X.shape[1]
    out = np.empty((n, W.shape[1]))
    running = np.zeros((X.shape[0], W.shape[1]))  # Y[:, outside] @ W[outside]
    starts = range(0, n, block)
    if part == "strict_upper":
        starts = reversed(starts)
    for a in starts:
        b = min(n, a + block)
        diag = X[:, a:b].T @ Y[:, a:b]
        tri = np.tril(diag) if part == "lower" else np.triu(diag, 1)
        out[a:b] = X[:, a:b].T @ running + tri @ W[a:b]
        running += Y[:, a:b] @ W[a:b]
    return out


def lower_product(G, W, *, block=GRAM_BLOCK):
    """``tril(G) @ W`` from a held ``n x n`` matrix ``G``, ``block`` rows at a
    time (``n^2 n_out`` flops, no ``n x n`` copy): what :func:`triangle_product`
    gives from the data, once the Gram matrix is formed anyway."""
    n = G.shape[0]
    out = np.empty((n, W.shape[1]))
    for a in range(0, n, block):
        b = min(n, a + block)
        out[a:b] = np.tril(G[a:b, a:b]) @ W[a:b]
        if a:
            out[a:b] += G[a:b, :a] @ W[:a]
    return out


def output_errors(Xq, Xf, W, Q, G=None, *, block=512):
    """Per column, ``||Xf w - Xq q||`` and ``||Xf w||`` (float64).

    With ``G = Xq^T Xq`` at hand and ``Xf is Xq``, from it: ``(w - q)^T G (w -
    q)`` and ``w^T G w`` (``n^2 n_out`` flops, nothing of ``m`` rows). Otherwise
    from the data, ``block`` columns at a time (a block's ``m x block`` products,
    not the layer's).
    """
    n_out = W.shape[1]
    if G is not None and Xf is Xq:
        D = W - Q
        res2 = np.einsum("ij,ij->j", D, G @ D)
        ref2 = np.einsum("ij,ij->j", W, G @ W)
        return np.sqrt(np.maximum(res2, 0)), np.sqrt(np.maximum(ref2, 0))
    residual, norm = np.empty(n_out), np.empty(n_out)
    for a in range(0, n_out, block):
        b = min(n_out, a + block)
        ref = Xf @ W[:, a:b]
        norm[a:b] = np.sqrt(np.einsum("ij,ij->j", ref, ref))
        ref -= Xq @ Q[:, a:b]
        residual[a:b] = np.sqrt(np.einsum("ij,ij->j", ref, ref))
    return residual, norm


def _reverse_inplace(a, block=1 << 20):
    """Reverse a 1-D array in place, ``block`` elements of scratch at a time."""
    N = a.size
    half = N // 2
    for s in range(0, half, block):
        e = min(half, s + block)
        head = a[s:e].copy()
        a[s:e] = a[N - e : N - s][::-1]
        a[N - e : N - s] = head[::-1]


def cholesky_threads(n):
    """The BLAS threads for a Cholesky factorisation of order ``n``: OpenBLAS's
    threaded one crashes (SIGSEGV) on large matrices (orders 16384 and 18432 with
    2 threads, scipy's OpenBLAS 0.3.31; fine at 8192), so above
    :data:`SAFE_THREADED_CHOLESKY` one thread (a context manager)."""
    if n > SAFE_THREADED_CHOLESKY:
        return one_blas_thread()
    return contextlib.nullcontext()


def inverse_upper_cholesky(H, *, overwrite=False, block=GRAM_BLOCK):
    """Upper triangular ``U`` with ``H^-1 = U^T U``, without forming ``H^-1``.

    With ``P`` the reversal permutation and ``P H P = L L^T`` (Cholesky),
    ``H^-1 = P L^-T L^-1 P = U^T U`` for ``U = P L^-1 P``, which is upper
    triangular: one Cholesky and one triangular inverse (``2 n^3 / 3`` flops in
    all, against ``n^3`` more for an explicit inverse and a second
    factorisation). With ``overwrite=True`` and a C-contiguous float64 ``H``, all
    of it happens in ``H``'s memory (reversing both axes of a C-contiguous square
    matrix reverses its flat buffer; LAPACK reads the symmetric matrix through
    its Fortran-order transpose): no second ``n x n`` matrix.

    Parameters
    ----------
    H : ndarray of shape (n, n)
        Symmetric positive definite.
    overwrite : bool, default=False
        Whether ``H`` may be overwritten by ``U`` (when it is C-contiguous float64).
    block : int, default=GRAM_BLOCK
        Rows per block when zeroing the lower triangle.

    Returns
    -------
    U : ndarray of shape (n, n)
        Upper triangular, C-contiguous; ``H`` itself when overwritten.

    Raises
    ------
    numpy.linalg.LinAlgError
        When ``H`` is not positive definite.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.random.default_rng(0).standard_normal((8, 5))
    >>> H = A.T @ A + np.eye(5)
    >>> U = inverse_upper_cholesky(H)
    >>> bool(np.allclose(U.T @ U, np.linalg.inv(H))), bool(np.allclose(U, np.triu(U)))
    (True, True)
    """
    H = np.asarray(H)
    if not (overwrite and H.flags.c_contiguous and H.dtype == np.float64):
        H = np.array(H, dtype=np.float64, order="C")
    n = H.shape[0]
    flat = H.reshape(-1)
    _reverse_inplace(flat)  # P H P
    # H.T is the same memory in Fortran order (and the same symmetric matrix):
    # its upper factor R (P H P = R^T R) lies in H's lower triangle as R^T = L
    with cholesky_threads(n):
        R, info = lapack.dpotrf(H.T, lower=0, clean=0, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(
            f"H is not positive definite (Cholesky failed at pivot {info})."
        )
    _, info = lapack.dtrtri(R, lower=0, overwrite_c=1)  # H's lower: L^-1
    if info != 0:  # pragma: no cover - a Cholesky factor is invertible
        raise np.linalg.LinAlgError(f"triangular inverse failed (info={info}).")
    _reverse_inplace(flat)  # P L^-1 P: upper; the other triangle holds leftovers
    for a in range(0, n, block):
        b = min(n, a + block)
        H[a:b, :a] = 0.0
        H[a:b, a:b] = np.triu(H[a:b, a:b])
    return H
