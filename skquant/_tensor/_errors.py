"""Quantization error of a weight matrix: relative error and SQNR.

Weights have shape ``(n_in, n_out)`` and activations ``(m, n_in)``; a layer computes
``X @ W``. Re-exported by :mod:`skquant.metrics`.
"""

import numpy as np

from .._common._checks import check_matrix

__all__ = ["relative_error", "sqnr", "unit_factor"]


def _pair(W, Q):
    W = check_matrix(W, "W", dtype=[np.float64, np.float32])
    Q = check_matrix(Q, "Q", dtype=[np.float64, np.float32])
    if W.shape != Q.shape:
        raise ValueError(
            f"W and Q must have the same shape, got W.shape={W.shape} and "
            f"Q.shape={Q.shape} instead."
        )
    # both by one power of two (exact), so that squares and sums neither
    # overflow nor underflow: the errors do not depend on a common scale
    f = unit_factor(W, Q)
    return W.astype(np.float64) * f, Q.astype(np.float64) * f


def unit_factor(*arrays):
    """The power of two that brings the largest magnitude in ``arrays`` into
    ``[0.5, 1)`` (1 when they are all zero)."""
    top = max(float(np.abs(a).max(initial=0.0)) for a in arrays)
    return np.ldexp(1.0, -int(np.frexp(top)[1])) if top > 0 else 1.0


def relative_error(W, Q, X=None):
    """Relative error of quantized weights, on a layer's output when ``X`` is given.

    ``||X (W - Q)||_F / ||X W||_F``, or ``||W - Q||_F / ||W||_F`` without ``X``.

    Parameters
    ----------
    W : array-like of shape (n_in, n_out)
        Original weights.
    Q : array-like of shape (n_in, n_out)
        Quantized weights.
    X : array-like of shape (m, n_in), default=None
        Activations entering the layer.

    Returns
    -------
    error : float
        The relative error (0 when ``Q == W``; ``inf`` when the reference is 0 and
        ``Q`` differs).

    See Also
    --------
    sqnr : The same comparison in decibels.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.metrics import relative_error
    >>> W = np.array([[3.0], [4.0]])
    >>> relative_error(W, np.array([[3.0], [3.0]]))
    0.2
    >>> relative_error(W, W, X=np.ones((5, 2)))
    0.0
    """
    W, Q = _pair(W, Q)
    D = W - Q
    if X is not None:
        X = check_matrix(X, "X", dtype=[np.float64, np.float32])
        if X.shape[1] != W.shape[0]:
            raise ValueError(
                f"X must have W.shape[0]={W.shape[0]} columns, got X.shape={X.shape} "
                "instead."
            )
        X = X.astype(np.float64) * unit_factor(X)
        D, W = X @ D, X @ W
    num, den = np.linalg.norm(D), np.linalg.norm(W)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def sqnr(W, Q):
    """Signal-to-quantization-noise ratio in decibels.

    ``10 log10(||W||^2 / ||W - Q||^2)``.

    Parameters
    ----------
    W : array-like of shape (n_in, n_out)
        Original weights.
    Q : array-like of shape (n_in, n_out)
        Quantized weights.

    Returns
    -------
    sqnr_db : float
        The ratio in dB (``inf`` when ``Q == W``; ``-inf`` when ``W`` is zero
        and ``Q`` is not: no signal, only noise).

    See Also
    --------
    relative_error : The same comparison as a ratio of norms.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.metrics import sqnr
    >>> round(sqnr(np.array([[10.0]]), np.array([[9.0]])), 6)
    20.0
    """
    W, Q = _pair(W, Q)
    noise = np.sum((W - Q) ** 2)
    if noise == 0:
        return float("inf")
    signal = np.sum(W**2)
    if signal == 0:  # (log10(0) warned, then gave -inf)
        return float("-inf")
    return float(10 * np.log10(signal / noise))
