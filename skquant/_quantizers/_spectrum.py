"""Singular values and leading right singular vectors: of the data
(:func:`row_space`, an SVD, of the triangular factor for tall data), and from a
Gram matrix.

A full SVD of a large calibration matrix (4096 x 4096: about 21 s on one core)
is most of a null-space fit whose rank cap is small. :class:`GramSpectrum` reduces
``G = X^T X`` to tridiagonal form once (LAPACK ``dsytrd``, about 4 s there), reads
every eigenvalue off it (``dsterf``) and solves for the leading eigenvectors only
when they are asked for (``dstemr`` on the tridiagonal, ``dormqr`` to map them
back): the singular values of ``X`` are the eigenvalues' square roots and its
right singular vectors the eigenvectors.
"""

import numbers

import numpy as np
import scipy.linalg
from scipy.linalg import lapack
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from ._gram import gram

__all__ = ["GramSpectrum", "LeadingSpectrum", "RowSpectrum", "row_space"]

#: :class:`LeadingSpectrum` solves for at most this many leading vectors by
#: Lanczos iterations (ARPACK), and for more by :class:`GramSpectrum`'s
#: tridiagonal reduction. On the 4096-input test layer (a nearly flat spectrum)
#: Lanczos took 0.8 s for 12 vectors and 1.9 s for 64, the reduction 4.4 s (with
#: 4096 rows its fitting rows now take :class:`RowSpectrum`: they are fewer than
#: its inputs).
LANCZOS_VECTORS = 64


class GramSpectrum:
    """The spectrum of ``X`` from its Gram matrix ``G = X^T X``.

    Parameters
    ----------
    G : ndarray of shape (n, n)
        ``X^T X`` (float64, symmetric; only its lower triangle is read).
    m : int
        Rows of ``X`` (for the rank tolerance).

    Attributes
    ----------
    singular_values : ndarray of shape (min(m, n),)
        ``sqrt`` of the largest eigenvalues of ``G`` (negative round-off read
        as 0), in decreasing order. Those below about ``sqrt(n * eps) * s[0]``
        are round-off of the Gram matrix, not of ``X``.
    rank : int
        Eigenvalues above ``max(m, n) * eps * lambda_max``: the numerical rank as
        the Gram matrix can tell it (an SVD of ``X`` resolves singular values down
        to ``max(m, n) * eps * s[0]``; this one down to the square root of that
        fraction).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((50, 8))
    >>> spec = GramSpectrum(X.T @ X, 50)
    >>> s = np.linalg.svd(X, compute_uv=False)
    >>> bool(np.allclose(spec.singular_values, s))
    True
    >>> V = spec.vectors(3)
    >>> bool(np.allclose(np.abs(V.T @ np.linalg.svd(X)[2][:3].T), np.eye(3)))
    True
    """

    def __init__(self, G, m):
        n = G.shape[0]
        self._n = n
        if n < 2:  # nothing to reduce (and LAPACK's tridiagonal wants n >= 2)
            lam = np.maximum(np.diag(G).astype(np.float64), 0.0)[: min(m, n)]
            self.singular_values, self.rank = np.sqrt(lam), int(np.sum(lam > 0))
            self._V = np.eye(n)
            return
        lwork = int(lapack.dsytrd_lwork(n, lower=1)[0])
        c, d, e, tau, info = lapack.dsytrd(G, lower=1, lwork=lwork)
        if info != 0:  # pragma: no cover - dsytrd fails only on bad arguments
            raise RuntimeError(f"dsytrd failed (info={info})")
        self._c, self._d, self._e, self._tau = c, d, e, tau
        lam = lapack.dsterf(d, e)[0][::-1]
        lam = np.maximum(lam[: min(m, n)], 0.0)  # (X has at most m of them)
        self.singular_values = np.sqrt(lam)
        tol = max(m, n) * np.finfo(np.float64).eps * lam[0]
        self.rank = int(np.sum(lam > tol))
        self._V = np.empty((n, 0))

    def vectors(self, k):
        """The ``k`` leading right singular vectors (columns of an ``n x k``
        array with orthonormal columns); those not asked for before are solved
        now."""
        done = self._V.shape[1]
        k = min(int(k), self._n)
        if k > done:
            n = self._n
            d, e = self._d, np.append(self._e, 0.0)
            # eigenpairs n - k + 1 .. n - done (1-based, increasing eigenvalues)
            found, _, Z, info = lapack.dstemr(d, e, 2, 0.0, 0.0, n - k + 1, n - done)
            if info != 0 or found != k - done:  # pragma: no cover - LAPACK's
                raise RuntimeError(f"dstemr failed (info={info}, found={found})")
            Z = np.asfortranarray(Z[:, :found][:, ::-1])
            # Q = H(1) ... H(n-1) acts on rows 1..n-1 (the Q of a QR factorisation)
            A = self._c[1:, : n - 1]
            lwork = int(lapack.dormqr("L", "N", A, self._tau, Z[1:], -1)[1][0].real)
            Z[1:] = lapack.dormqr("L", "N", A, self._tau, Z[1:], lwork)[0]
            self._V = np.hstack([self._V, Z])
        return self._V[:, :k]


class LeadingSpectrum:
    """The leading singular values and right singular vectors of ``X`` from its
    Gram matrix, without the others: Lanczos iterations for up to
    :data:`LANCZOS_VECTORS` of them (from a fixed start vector, so the same
    every run), a :class:`GramSpectrum` for more.

    Parameters
    ----------
    G : ndarray of shape (n, n)
        ``X^T X``.
    m : int
        Rows of ``X``.
    rank : int, default=None
        An upper bound on the rank of ``X`` known to the caller: Lanczos then
        solves for no more vectors than that (the others' eigenvalues are 0).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((300, 200))
    >>> lead = LeadingSpectrum(X.T @ X, 300)
    >>> V, s = lead.vectors(5), lead.singular_values(5)
    >>> bool(np.allclose(s, np.linalg.svd(X, compute_uv=False)[:5]))
    True
    >>> bool(np.allclose(np.linalg.norm(X @ V, axis=0), s))
    True
    """

    def __init__(self, G, m, rank=None):
        self._G, self._m = G, m
        n = G.shape[0]
        self._count = min(LANCZOS_VECTORS, n - 1, n if rank is None else rank)
        self._V, self._s = np.empty((n, 0)), np.empty(0)
        self._full = None

    def _solve(self, k):
        n = self._G.shape[0]
        if self._full is None and 0 < k <= self._count:
            v0 = np.random.default_rng(0).standard_normal(n)
            try:
                lam, V = eigsh(self._G, k=self._count, which="LA", v0=v0, tol=0)
            except ArpackNoConvergence:  # pragma: no cover - not seen on layers
                self._count = 0
                return self._solve(k)
            order = np.argsort(-lam, kind="stable")
            self._s = np.sqrt(np.maximum(lam[order], 0.0))
            self._V = np.ascontiguousarray(V[:, order])
        else:
            if self._full is None:
                self._full = GramSpectrum(self._G, self._m)
            self._V = self._full.vectors(k)
            self._s = self._full.singular_values

    def vectors(self, k):
        """The ``k`` leading right singular vectors (orthonormal columns)."""
        if k > self._V.shape[1]:
            self._solve(k)
        return self._V[:, :k]

    def singular_values(self, k):
        """The ``k`` leading singular values, decreasing."""
        if k > self._s.size:
            self._solve(k)
        return self._s[:k]


class RowSpectrum:
    """The spectrum of wide data ``X`` (``m < n``) from ``K = X X^T``.

    The singular values and left vectors ``U`` are the eigenpairs of the
    ``m x m`` matrix ``K`` (a :class:`GramSpectrum` of ``X^T``); the right
    vectors are ``X^T U / s``, computed for the leading ones asked for: in
    place of SVDs of the data, for the null-space quantizer's ``rank="auto"``
    on wide layers (the User Guide gives its effect on the Fashion CNN). As
    with ``X^T X``, singular values below about
    ``sqrt(m * eps) * s[0]`` are round-off, and the right vectors of those are
    not resolved (the caps use the leading ones).

    Parameters
    ----------
    K : ndarray of shape (m, m)
        ``X X^T``.
    X : ndarray of shape (m, n)
        The data.

    Attributes
    ----------
    singular_values : ndarray of shape (m,)
        As :class:`GramSpectrum`'s.
    rank : int
        As :class:`GramSpectrum`'s (its tolerance uses ``max(m, n)``).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((8, 50))
    >>> spec = RowSpectrum(X @ X.T, X)
    >>> bool(np.allclose(spec.singular_values, np.linalg.svd(X)[1]))
    True
    >>> V = spec.vectors(3)
    >>> bool(np.allclose(np.abs(V.T @ np.linalg.svd(X)[2][:3].T), np.eye(3)))
    True
    """

    def __init__(self, K, X):
        self._K, self._X = K, X
        self._inner = GramSpectrum(K, X.shape[1])
        self.singular_values, self.rank = self._inner.singular_values, self._inner.rank
        self._V = np.empty((X.shape[1], 0))

    def rows(self, mask):
        """The :class:`RowSpectrum` of the rows ``mask`` selects (their ``K``
        is a block of this one's)."""
        return RowSpectrum(self._K[np.ix_(mask, mask)], self._X[mask])

    def vectors(self, k):
        """The ``k`` leading right singular vectors (at most :attr:`rank`)."""
        k = min(int(k), self.rank)
        done = self._V.shape[1]
        if k > done:
            U = self._inner.vectors(k)[:, done:]
            new = (self._X.T @ U) / self.singular_values[done:k]
            self._V = np.hstack([self._V, new])
        return self._V[:, :k]


def row_space(X, rank=None, every=False):
    """Orthonormal basis of the row space of ``X`` kept by a rank rule.

    Parameters
    ----------
    X : ndarray of shape (m, n)
        Data.
    rank : None, int or float in (0, 1)
        ``None``: the numerical rank (singular values above
        ``max(m, n) * eps * sigma_1``); int: at most that many directions; float:
        the fewest directions holding that fraction of ``||X||_F^2``.
    every : bool, default=False
        Return the vectors of every direction of the numerical rank (the kept
        ones first), not only the kept ones.

    Returns
    -------
    V : ndarray of shape (n, k)
        Orthonormal columns spanning the kept directions (with ``every``, the
        numerical rank's columns).
    s : ndarray of shape (min(m, n),)
        All singular values of ``X``.
    k : int
        Number of kept directions.
    """
    X = triangular_factor(X)
    _, s, Vt = scipy.linalg.svd(
        X, full_matrices=False, lapack_driver="gesdd", check_finite=False
    )
    tol = max(X.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
    return _kept(Vt.T, s, int(np.sum(s > tol)), rank, every)


def _kept(V, s, numerical, rank, every):
    """:func:`row_space`'s rank rule on right singular vectors ``V`` (columns)
    and singular values ``s`` of which ``numerical`` count."""
    if rank is None:
        k = numerical
    elif isinstance(rank, numbers.Integral):
        k = min(int(rank), numerical)
    else:
        energy = np.cumsum(s**2) / max(np.sum(s**2), np.finfo(float).tiny)
        k = min(int(np.searchsorted(energy, rank) + 1), numerical)
    return np.ascontiguousarray(V[:, : numerical if every else k]), s, k


#: :func:`gram_row_space` serves data whose Gram matrix has its smallest
#: eigenvalue at least this fraction of its largest (singular values at least
#: 1e-4 of the largest): there the eigenvalues are the squared singular values
#: to a relative 1e-5 or better (round-off of ``n eps lambda_max``) and the
#: numerical rank is ``n`` either way. Convolutions over many patches are
#: usually well above it; layers whose inputs include dead units are rank
#: deficient and take the SVD.
GRAM_CONDITION = 1e-8


def _diagonal_passes(diag):
    """Whether a Gram matrix with this diagonal may pass :data:`GRAM_CONDITION`:
    ``lambda_min <= min G_ii`` and ``lambda_max >= max G_ii``, so a diagonal
    that fails the test already (a dead input, a constant-zero pixel) needs no
    Gram matrix or eigendecomposition to say so."""
    return not diag.size or diag.min() >= GRAM_CONDITION * diag.max()


def gram_row_space(G, rank=None, every=False):
    """:func:`row_space` of data ``X`` from its Gram matrix ``G = X^T X`` (one
    symmetric eigendecomposition), or ``None`` when ``G`` is worse conditioned
    than :data:`GRAM_CONDITION` allows (then the SVD is needed)."""
    if not _diagonal_passes(np.diagonal(G)):
        return None
    # divide and conquer: every eigenpair is wanted, 1.3x-1.5x faster than the
    # default (MRRR) driver on 150-1152 inputs, one thread
    lam, U = scipy.linalg.eigh(G, check_finite=False, driver="evd")
    if not lam.size or not lam[0] >= GRAM_CONDITION * lam[-1] > 0:
        return None
    return _kept(U[:, ::-1], np.sqrt(lam[::-1]), lam.size, rank, every)


def triangular_factor(X):
    """``R`` of ``X = Q R`` (``n x n``) for tall ``X``, ``X`` itself otherwise:
    the same singular values, right singular vectors and Gram matrix, from
    fewer rows (the SVD of tall MNIST rows, 1024 x 784, took 0.14 s through
    ``R`` against 0.22 s)."""
    if X.shape[0] > X.shape[1]:
        return scipy.linalg.qr(X, mode="r", check_finite=False)[0][: X.shape[1]]
    return X


class _Factors:
    """The row spaces of one layer's data ``X``: of the fitting rows (the
    ladder's, rows ``~held``) and of all rows. Tall data well enough conditioned
    (:data:`GRAM_CONDITION`) takes them from Gram matrices, all rows' as the
    fitting rows' plus the held-out rows' (``gram``: ``m n^2`` flops and an
    ``n x n`` eigendecomposition, against ``2 m n^2`` for a QR and an SVD of its
    ``R``); other data from triangular factors, all rows' from the fitting
    rows' stacked on the held-out rows. After :meth:`all`, ``G`` (all rows'
    Gram matrix) or ``factor`` (their :func:`triangular_factor`) is set."""

    def __init__(self, X):
        self.X, self._held, self._fit = X, None, None
        self.G = self.factor = None

    def fitting(self, held, rows=None):
        """``row_space`` of the fitting rows: ``(V, s, numerical rank)``
        (``rows``: ``X[~held]``, when the caller holds it already)."""
        self._held = held
        X = self.X[~held] if rows is None else rows
        if X.shape[0] > X.shape[1] and _diagonal_passes(np.einsum("ij,ij->j", X, X)):
            G = gram(X)
            out = gram_row_space(G)
            if out is not None:
                self._fit = ("gram", G)
                return out
        F = triangular_factor(X)
        self._fit = ("factor", F)
        return row_space(F)

    def fitting_products(self):
        """The fitting rows' ``(Gram matrix, triangular factor)`` after
        :meth:`fitting`, whichever it computed (the other ``None``)."""
        kind, A = self._fit
        return (A, None) if kind == "gram" else (None, A)

    def all(self, rank=None, every=False):
        """``row_space(X, rank, every)`` of all rows."""
        kind, A = self._fit if self._fit is not None else (None, None)
        if kind == "gram":
            G = A + gram(self.X[self._held])
        elif (
            kind is None
            and self.X.shape[0] > self.X.shape[1]
            and _diagonal_passes(np.einsum("ij,ij->j", self.X, self.X))
        ):
            G = gram(self.X)
        else:
            G = None
        if G is not None:
            out = gram_row_space(G, rank, every)
            if out is not None:
                self.G = G
                return out
        if kind == "factor":
            F = triangular_factor(np.vstack([A, self.X[self._held]]))
        else:
            F = triangular_factor(self.X)
        self.factor = F
        return row_space(F, rank, every)
