"""Single-layer quantization error: bounds, predicted rates, and decay experiments.

Notation: a layer computes ``X @ w`` with calibration data ``X`` of shape
``(m, n_in)``; ``w`` is one neuron (column of ``W``), ``q`` its quantized version and
``step`` the grid step (for ternary ``{-a, 0, a}`` the step is ``a``). Every bound
here is on the absolute error ``||X w - X q||_2`` unless its name says relative.

A-priori bounds hold for any ``w`` before quantizing; a-posteriori bounds use what the
quantizer did (which coordinates it left off the alphabet). Where an exact constant
is intractable (a maximum over subsets of columns), the functions return a certified
upper bound and say so. The bounds are on exact arithmetic: a quantizer that
computes ``q`` in float32 rounds it once more (relative ``2**-24``), which shows
where the bound is tight (weights halfway between grid points, ``X = I``).
"""

import numbers

import numpy as np

from ._common._checks import (
    check_bool,
    check_int,
    check_positive,
    check_rng,
    check_squares,
    float_array,
)
from ._common._plot import axes
from ._common._progress import progress
from ._quantizers._gpfq import GreedyPathQuantizer
from ._quantizers._nullspace import NullSpaceQuantizer
from ._quantizers._uniform import UniformQuantizer
from ._tensor._alphabets import alphabet_from
from ._tensor._errors import unit_factor
from .datasets import make_gaussian_layer
from .metrics import relative_error

__all__ = [
    "error_decay",
    "gpfq_bound",
    "lp_scale_bound",
    "max_subset_norm_bound",
    "msq_bound",
    "nullspace_bound",
    "plot_error_decay",
    "posterior_nullspace_bound",
    "predicted_rate",
]


def _as2d(X):
    X = float_array(X, "X")
    if X.ndim != 2 or X.size == 0:
        raise ValueError(
            f"X must be a non-empty 2-D array of shape (m, n_in), got X.shape="
            f"{X.shape} instead."
        )
    if not np.all(np.isfinite(X)):
        raise ValueError(
            f"X must be finite, got {int(np.sum(~np.isfinite(X)))} NaN or infinite "
            "entries."
        )
    # (large X is told by the bound that overflows, see _out)
    check_squares(
        X, "X", "scale X up: the bounds follow a common scale of X.", high=False
    )
    return X


def _subset_size(r, X, name):
    """An integer number of columns in ``[0, n_in]``."""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {name}={r!r}.")
    if not 0 <= r <= X.shape[1]:
        raise ValueError(f"{name} must be in [0, n_in={X.shape[1]}], got {name}={r!r}.")
    return int(r)


def _steps(step):
    """``step`` as a float, or a 1-D float64 array of per-column steps (a fitted
    quantizer's ``scale_``), each finite and > 0; else a ValueError naming it."""
    if np.ndim(step) == 0:
        if isinstance(step, np.ndarray):  # (a 0-d array: its number)
            step = step[()]
        return check_positive(step, "step")
    arr = float_array(step, "step")
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(
            "step must be a finite number > 0 or a 1-D array of them (one per "
            f"column), got an array of shape {arr.shape} with values "
            f"{arr.ravel()[:4].tolist()} instead."
        )
    return arr


def _out(bound):
    """A bound as a float, or an array for per-column steps (ValueError when it
    overflows float64, naming X and ``step``, which it scales with)."""
    if not np.all(np.isfinite(bound)):
        raise ValueError(
            "the bound overflows float64: it scales with the product of X's and "
            "step's magnitudes (scale X or step down)."
        )
    return float(bound) if np.ndim(bound) == 0 else np.asarray(bound, np.float64)


def _is_binary(variant):
    """Whether ``variant`` (``"grid"``, ``"ternary"`` or ``"binary"``) is the binary
    alphabet ``{-a, a}``, whose coordinates move by up to ``step = a``."""
    if variant == "grid":
        return False
    try:
        return alphabet_from(variant).is_binary
    except ValueError:
        raise ValueError(
            "variant must be 'grid', 'ternary' or 'binary', got "
            f"variant={variant!r} instead."
        ) from None


def msq_bound(X, step, *, variant="grid"):
    """A-priori bound for memoryless scalar quantization inside the range.

    Every coordinate moves by at most ``step / 2`` (``step`` for the binary
    ``{-a, a}``, ``step = a``), so
    ``||X (w - q)|| <= ||X||_2 * sqrt(n_in) * step / 2``. It holds when no weight
    is clipped (within the grid's range; ``|w| <= 2a`` for binary): max-abs scales
    (``scale="maxabs"``); scales that clip the largest weights (``"mse"``,
    ``"percentile"``) can exceed it, and so can
    :class:`~skquant.BinaryQuantizer`'s ``scale="mean"`` (``a`` the mean of
    ``|w|``, below half of the largest weights of most neurons).

    Parameters
    ----------
    X : array-like of shape (m, n_in)
        Calibration data.
    step : float or array-like of shape (n_out,)
        Grid step, or one per column (a fitted quantizer's ``scale_``).
    variant : {"grid", "ternary", "binary"}, default="grid"
        The alphabet: the rounding error per coordinate is ``step / 2``, except
        ``step`` for binary.

    Returns
    -------
    bound : float or ndarray of shape (n_out,)
        The bound on ``||X w - X q||_2`` (per column for per-column steps).

    See Also
    --------
    nullspace_bound : The bound after the null-space pre-processing.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.theory import msq_bound
    >>> float(msq_bound(np.eye(4), step=0.5))
    0.5
    """
    X = _as2d(X)
    step = _steps(step)
    per = step if _is_binary(variant) else step / 2
    with np.errstate(over="ignore"):  # (told by _out)
        return _out(np.linalg.norm(X, 2) * np.sqrt(X.shape[1]) * per)


def max_subset_norm_bound(X, r):
    """Certified upper bound on ``max_{|S| <= r} ||X_S||_2`` (columns ``S`` of ``X``).

    The exact maximum over subsets is intractable; both ``||X||_2`` and
    ``sqrt(sum of the r largest ||X_i||^2)`` (``||X_S||_2 <= ||X_S||_F``) bound it,
    and the smaller is returned.

    Parameters
    ----------
    X : array-like of shape (m, n_in)
        Calibration data.
    r : int
        Largest subset size.

    Returns
    -------
    bound : float
        The certified upper bound.

    See Also
    --------
    nullspace_bound : Uses it for the a-priori bound.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.theory import max_subset_norm_bound
    >>> float(max_subset_norm_bound(np.diag([3.0, 4.0, 1.0]), r=2))
    4.0
    """
    X = _as2d(X)
    r = _subset_size(r, X, "r")
    f = unit_factor(X)  # (a power of two: exact, and no sum of squares overflows)
    Xs = X * f
    col = np.sort(np.einsum("ij,ij->j", Xs, Xs))[::-1]
    frob = np.sqrt(col[:r].sum()) / f
    return float(min(np.linalg.norm(X, 2), frob))


def nullspace_bound(X, step, *, variant="grid", rank=None):
    """A-priori bound for the null-space method (Maly & Saab) on the data ``X``.

    At most ``r = rank(X)`` coordinates stay off the alphabet and each is rounded by
    at most ``step / 2`` (grid and ternary) or ``step`` (binary), so
    ``||X w - X q|| <= max_{|S|<=r} ||X_S||_2 * sqrt(r) * step / 2``; the maximum is
    replaced by :func:`max_subset_norm_bound` (certified). With a ``rank`` cap ``k``
    below the rank of ``X`` (the quantizer's ``rank=k``), the pre-processing keeps
    only the top ``k`` directions of the data and the bound gains its drift,
    ``sigma_{k+1} * ||w - z||_2 <= sigma_{k+1} * sqrt(n_in) * cell``, ``cell``
    being how far ``z`` may move within a coordinate's cell (``step``, or ``2 *
    step`` for binary). That drift term is the grid variant's, whose point ``z``
    stays in ``w``'s cells: the LP variant's ``z`` does not, and with a rank cap
    the bound does not hold for it (its fitted ``bound_`` does). It is the
    bound of the walk (:class:`~skquant.NullSpaceQuantizer`'s ``variant="grid"``
    and ``"lp"``), not of ``variant="path"``, whose basis coordinates leave their
    cells: only the fitted ``bound_`` holds there.

    Parameters
    ----------
    X : array-like of shape (m, n_in)
        Calibration data.
    step : float or array-like of shape (n_out,)
        Grid step, or the level ``c`` of ``c {-1, 0, 1}`` (LP variant, without a
        rank cap); or one per column (a fitted quantizer's ``scale_``).
    variant : {"grid", "ternary", "binary"}, default="grid"
        The alphabet: the rounding error per coordinate is ``step / 2``, except
        ``step`` for binary.
    rank : int, default=None
        The rank cap ``k`` of the quantizer (``r = k`` coordinates off the
        alphabet, and the drift term when ``k`` is below the rank of ``X``),
        between 1 and the rank of ``X``: a fitted quantizer's ``rank_`` (its
        ``rank`` parameter may be a fraction of the energy, ``"auto"``, or
        above the rank, which it caps); ``None`` takes the numerical rank of
        ``X``.

    Returns
    -------
    bound : float or ndarray of shape (n_out,)
        The bound on ``||X w - X q||_2`` (per column for per-column steps).

    See Also
    --------
    posterior_nullspace_bound : The a-posteriori version with the actual ``S``.
    msq_bound : Without pre-processing.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.theory import msq_bound, nullspace_bound
    >>> X = np.random.default_rng(0).standard_normal((8, 1000))
    >>> bool(nullspace_bound(X, 0.1) < msq_bound(X, 0.1) / 5)
    True
    """
    X = _as2d(X)
    step = _steps(step)
    binary = _is_binary(variant)
    s = np.linalg.svd(X, compute_uv=False)  # once: the rank and sigma_{k+1}
    tol = s.max(initial=0.0) * max(X.shape) * np.finfo(s.dtype).eps
    full = int(np.sum(s > tol))  # numpy's matrix_rank
    if rank is None:
        r = full
    else:
        r = _subset_size(rank, X, "rank")
        if r > min(X.shape):
            raise ValueError(
                f"rank must be at most min(m, n_in)={min(X.shape)} (the rank of X "
                f"cannot exceed it), got rank={rank!r}."
            )
    per = step if binary else step / 2
    with np.errstate(over="ignore"):  # (told by _out)
        bound = max_subset_norm_bound(X, r) * np.sqrt(r) * per
        if r < full:  # the directions left out drift: sigma_{r+1} ||w - z||
            bound = bound + s[r] * np.sqrt(X.shape[1]) * (2 * step if binary else step)
        return _out(bound)


def posterior_nullspace_bound(X, S, z_S, q_S, drift=0.0):
    """A-posteriori bound with the coordinates ``S`` left off the alphabet.

    ``||X w - X q|| <= ||X w - X z|| + ||X_S||_2 ||z_S - q_S||_2``, where ``z`` is
    the pre-processed neuron (``X z = X w`` up to round-off without a rank cap) and
    ``drift = ||X w - X z||`` (at most ``sigma_{k+1} ||w - z||`` with a rank cap
    ``k``). It holds for any rounding of ``z_S``.

    Parameters
    ----------
    X : array-like of shape (m, n_in)
        Calibration data.
    S : array-like of int
        Coordinates left off the alphabet.
    z_S : array-like
        Their pre-processed values.
    q_S : array-like
        Their quantized values.
    drift : float, default=0.0
        ``||X w - X z||``.

    Returns
    -------
    bound : float
        The bound on ``||X w - X q||_2``.

    See Also
    --------
    nullspace_bound : The a-priori version.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.theory import posterior_nullspace_bound
    >>> X = np.eye(3)
    >>> float(posterior_nullspace_bound(X, [0], [0.25], [0.5]))
    0.25
    """
    X = _as2d(X)
    drift = check_positive(drift, "drift", zero=True)
    S = np.asarray(S)
    if S.size and S.dtype.kind not in "iu":
        raise TypeError(f"S must hold integer column indices, got dtype {S.dtype}.")
    if S.ndim > 1 or len(np.unique(S)) != S.size:
        raise ValueError(
            "S must be a 1-D sequence of distinct column indices, got "
            f"S={S.tolist()!r}."
        )
    S = S.astype(int).ravel()
    if S.size and (S.min() < 0 or S.max() >= X.shape[1]):
        raise ValueError(
            f"S must index columns of X in [0, {X.shape[1] - 1}], got indices from "
            f"{S.min()} to {S.max()}."
        )
    z_S = float_array(z_S, "z_S").ravel()
    q_S = float_array(q_S, "q_S").ravel()
    if z_S.shape != S.shape or q_S.shape != S.shape:
        raise ValueError(
            f"z_S and q_S must have one value per index of S ({S.size}), got "
            f"{z_S.size} and {q_S.size}."
        )
    for name, v in (("z_S", z_S), ("q_S", q_S)):
        if not np.all(np.isfinite(v)):
            raise ValueError(
                f"{name} must be finite, got {int(np.sum(~np.isfinite(v)))} NaN or "
                "infinite entries."
            )
    if S.size == 0:
        return float(drift)
    d = z_S - q_S
    return float(drift + np.linalg.norm(X[:, S], 2) * np.linalg.norm(d))


def lp_scale_bound(X, w):
    """Certified upper bound on the LP scale ``c = min {||z||_inf : X z = X w}``.

    By LP duality ``c = max {<X w, v> : ||X^T v||_1 <= 1}``, hence
    ``c <= ||X w||_2 / min_{||v||=1, v in range(X)} ||X^T v||_1`` (the exact
    minimum is intractable). With ``y = X^T v``, ``||y||_1 >= ||y||_2 >=
    sigma_min`` and ``||y||_1 >= ||y||_2^2 / ||y||_inf >= sigma_min^2 / max_i
    ||X_i||_2`` (``X_i`` the columns of ``X``: ``|y_i| <= ||X_i||``); the returned
    ``||X w|| / max(sigma_min, sigma_min^2 / max_i ||X_i||)`` is certified. The
    second term is the larger on wide data, where it falls as ``c`` does (about
    ``n_in^-1`` on Gaussian data, against ``n_in^-1/2`` for the first). Singular
    values at round-off level (below ``max(m, n_in) eps sigma_max``, numpy's rank
    cut-off) are not divided by: ``c`` being a norm of ``X w``, the part of ``X w``
    along their directions adds at most ``|v_i^T w|`` each (``v_i`` the right
    singular vector), so the bound stays certified on (numerically) rank-deficient
    data. It is capped at ``||w||_inf`` (``z = w`` is feasible).

    Parameters
    ----------
    X : array-like of shape (m, n_in)
        Calibration data.
    w : array-like of shape (n_in,)
        The neuron.

    Returns
    -------
    bound : float
        Upper bound on ``c``.

    See Also
    --------
    nullspace_bound : Turns ``c`` into an error bound.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.theory import lp_scale_bound
    >>> float(lp_scale_bound(np.eye(2), np.array([3.0, 4.0])))
    4.0
    """
    X = _as2d(X)
    w = float_array(w, "w")
    if w.shape != (X.shape[1],) or not np.all(np.isfinite(w)):
        raise ValueError(
            f"w must be a finite vector of length n_in={X.shape[1]}, got "
            f"w.shape={w.shape}."
        )
    X = X * unit_factor(X)  # (the bound does not depend on a common scale of X)
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    if s[0] == 0:
        raise ValueError(
            "X is all zeros: it has no range, so the LP scale is not defined."
        )
    kept = s > max(X.shape) * np.finfo(float).eps * s[0]
    with np.errstate(over="ignore"):  # (an overflow: the cap below is finite)
        vw = Vt @ w  # X w = U diag(s) Vt w: its part along each direction
        low = s[kept][-1]
        columns = np.linalg.norm(s[kept, None] * Vt[kept], axis=0).max()
        bound = np.linalg.norm(s[kept] * vw[kept]) / max(low, low * (low / columns))
        bound = bound + np.abs(vw[~kept]).sum()
    return float(min(bound, np.abs(w).max()))  # (z = w is feasible)


def gpfq_bound(X, step, *, variant="grid"):
    """A-priori bound for greedy path following (GPFQ) without clipping.

    Each step picks the grid point nearest to the projection, so
    ``||u_t||^2 <= ||u_{t-1}||^2 + (step / 2)^2 ||X_t||^2`` and
    ``||X w - X q|| <= ||X||_F * step / 2`` (``step`` in place of ``step / 2`` for
    the binary ``{-a, a}``). It holds when no weight is clipped (max-abs scales:
    a projection past the grid's range is then clipped towards ``w``, which
    only shrinks the step's error); scales that clip the largest weights
    (``scale="mse"``, ``"percentile"``) can exceed it. (For Gaussian data the error
    is much smaller, of order ``sqrt(m log n_in)`` steps: see
    :func:`predicted_rate`.)

    Parameters
    ----------
    X : array-like of shape (m, n_in)
        Calibration data.
    step : float or array-like of shape (n_out,)
        Grid step, or one per column (a fitted quantizer's ``scale_``).
    variant : {"grid", "ternary", "binary"}, default="grid"
        The alphabet: the rounding error per coordinate is ``step / 2``, except
        ``step`` for binary.

    Returns
    -------
    bound : float or ndarray of shape (n_out,)
        The bound on ``||X w - X q||_2`` (per column for per-column steps).

    See Also
    --------
    msq_bound : The same order for memoryless rounding.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.theory import gpfq_bound
    >>> float(gpfq_bound(np.ones((4, 4)), step=0.5))
    1.0
    """
    X = _as2d(X)
    step = _steps(step)
    per = step if _is_binary(variant) else step / 2
    f = unit_factor(X)
    with np.errstate(over="ignore"):  # (told by _out)
        return _out(np.linalg.norm(X * f) / f * per)


def predicted_rate(method, m, n_in):
    """Predicted relative error on Gaussian data, up to a constant.

    With ``X`` of shape ``(m, n_in)`` i.i.d. Gaussian, ``m`` fixed and ``n_in``
    growing (the rates of Maly & Saab's analysis): ``"msq"``: flat; ``"grid"`` (the
    null-space grid variant at fixed bits): ``sqrt(m / n_in)``; ``"gpfq"``:
    ``sqrt(m log n_in / n_in)``; ``"lp"`` (scale-free ternary):
    ``m sqrt(log(n_in / m)) / n_in``, the logarithm taken at least 1 (``n_in / m``
    clamped to at least ``e``: the rate is asymptotic, for ``n_in >> m``).

    Parameters
    ----------
    method : {"msq", "grid", "gpfq", "lp"}
        The method.
    m : int
        Number of samples.
    n_in : int or array-like of int
        Input dimensions.

    Returns
    -------
    rate : ndarray
        The predicted error, up to a constant factor.

    See Also
    --------
    error_decay : Measures the rates.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.theory import predicted_rate
    >>> r = predicted_rate("grid", 16, np.array([100, 400]))
    >>> float(r[0] / r[1])
    2.0
    """
    if isinstance(m, bool) or not isinstance(m, numbers.Real):
        raise TypeError(f"m must be a number >= 1, got m={m!r}.")
    if not (np.isfinite(m) and m >= 1):
        raise ValueError(f"m must be a number >= 1, got m={m!r}.")
    if isinstance(n_in, str | bool) or np.asarray(n_in).dtype.kind not in "iuf":
        raise TypeError(f"n_in must be a number or a 1-D array of them, got {n_in!r}.")
    n = np.asarray(n_in, dtype=float)
    if n.ndim > 1 or n.size == 0 or not np.all(np.isfinite(n)) or np.any(n < 1):
        raise ValueError(
            f"n_in must be a number >= 1 or a 1-D array of them, got n_in={n_in!r}."
        )
    if method == "msq":
        return np.ones_like(n)
    if method == "grid":
        return np.sqrt(m / n)
    if method == "gpfq":
        return np.sqrt(m * np.log(n) / n)
    if method == "lp":
        return m * np.sqrt(np.log(np.maximum(n / m, np.e))) / n
    raise ValueError(
        f"method must be one of 'msq', 'grid', 'gpfq', 'lp', got method={method!r} "
        "instead."
    )


def _method_estimator(method, n_bits, rounding):
    if method == "msq":
        return UniformQuantizer(n_bits=n_bits)
    if method == "gpfq":
        return GreedyPathQuantizer(n_bits=n_bits)
    if method == "grid":
        return NullSpaceQuantizer(n_bits=n_bits, rounding=rounding)
    return NullSpaceQuantizer(n_bits="ternary", variant="lp", rounding=rounding)


def _sequence(values, name, what):
    """``values`` as a non-empty list (a lone value or a string is refused)."""
    if isinstance(values, str | numbers.Number) or not hasattr(values, "__iter__"):
        raise TypeError(
            f"{name} must be a sequence of {what}, got {name}={values!r} instead."
        )
    values = list(values)
    if not values:
        raise ValueError(f"{name} must not be empty, got {name}={values!r} instead.")
    return values


def error_decay(
    n_in_values=(64, 128, 256, 512, 1024, 2048, 4096),
    *,
    m=32,
    n_bits=(2, 4),
    methods=("msq", "gpfq", "grid", "lp"),
    n_out=8,
    n_test=1000,
    rounding="nearest",
    random_state=0,
    verbose=False,
):
    """Measure single-layer relative error against ``n_in`` on Gaussian layers.

    For each ``n_in``, draws ``X`` (``m x n_in``, i.i.d. N(0, 1)), held-out data of
    ``n_test`` rows and ``W`` (``n_in x n_out``, N(0, 1/n_in)); quantizes with every
    method at every bit-width (the LP variant is ternary, whatever ``n_bits``) and
    records the relative error on the calibration and the held-out data, and the
    relative a-priori bound. Fits log-log slopes of the calibration error.

    Parameters
    ----------
    n_in_values : sequence of int, default=(64, ..., 4096)
        Layer widths.
    m : int, default=32
        Calibration samples.
    n_bits : sequence of int, default=(2, 4)
        Bit-widths.
    methods : sequence of str, default=("msq", "gpfq", "grid", "lp")
        Among ``"msq"``, ``"gpfq"``, ``"grid"`` and ``"lp"``.
    n_out : int, default=8
        Neurons per layer.
    n_test : int, default=1000
        Held-out samples.
    rounding : {"nearest", "greedy"}, default="nearest"
        Rounding of the null-space methods' off-grid coordinates (``"nearest"`` is
        the method as analysed).
    random_state : int, default=0
        Seed.
    verbose : bool, default=False
        Show a progress bar.

    Returns
    -------
    result : dict
        ``rows``: list of dicts (method, n_bits, n_in, error, test_error, bound);
        ``slopes``: ``{(method, n_bits): slope}`` of log error against log n_in
        (the LP variant's ``n_bits`` is ``"ternary"``).

    See Also
    --------
    plot_error_decay : Draws the result.

    Examples
    --------
    >>> from skquant.theory import error_decay
    >>> res = error_decay([64, 256], m=8, n_bits=(4,), methods=("msq", "grid"),
    ...                   n_out=4, n_test=50)
    >>> bool(res["slopes"][("grid", 4)] < res["slopes"][("msq", 4)])
    True
    """
    n_in_values = _sequence(n_in_values, "n_in_values", "ints >= 1")
    for n in n_in_values:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(
                "n_in_values must hold ints >= 1, got n_in_values="
                f"{n_in_values!r} instead."
            )
    n_bits = _sequence(n_bits, "n_bits", "bit-widths")
    for b in n_bits:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 2:
            raise ValueError(
                f"n_bits must hold ints >= 2 (bit-widths of the grid; the LP "
                f"variant is ternary whatever they are), got n_bits={n_bits!r} "
                "instead."
            )
    methods = _sequence(methods, "methods", "'msq', 'gpfq', 'grid', 'lp'")
    for meth in methods:
        if meth not in ("msq", "gpfq", "grid", "lp"):
            raise ValueError(
                "methods must be among 'msq', 'gpfq', 'grid', 'lp', got "
                f"{meth!r} in methods={methods!r} instead."
            )
    for name, values in (
        ("n_in_values", n_in_values),
        ("n_bits", n_bits),
        ("methods", methods),
    ):
        if len(set(values)) != len(values):  # (a slope fitted on one width)
            raise ValueError(
                f"{name} must not repeat a value, got {name}={values!r} instead."
            )
    if not isinstance(verbose, bool | np.bool_ | numbers.Integral):
        raise TypeError(f"verbose must be a bool, got verbose={verbose!r} instead.")
    for value, name in ((m, "m"), (n_out, "n_out"), (n_test, "n_test")):
        check_int(value, name)
    if rounding not in ("nearest", "greedy"):  # (ignored without a null-space method)
        raise ValueError(
            f"rounding must be 'nearest' or 'greedy', got rounding={rounding!r}."
        )
    rng = check_rng(random_state)
    rows = []
    # the LP variant is ternary whatever n_bits: run it once per width
    jobs = [
        (n, b, meth)
        for n in n_in_values
        for b in n_bits
        for meth in methods
        if not (meth == "lp" and b != n_bits[0])
    ]
    layers = {}
    for n, b, meth in progress(jobs, desc="error_decay", enabled=verbose):
        if n not in layers:
            seed = int(rng.integers(2**31))
            X, W = make_gaussian_layer(m, n, n_out, random_state=seed)
            Xt = np.random.default_rng(seed + 1).standard_normal((n_test, n))
            layers[n] = (X, W, Xt)
        X, W, Xt = layers[n]
        est = _method_estimator(meth, b, rounding)
        if meth == "msq":
            Q = est.fit_transform(W)
        else:
            Q = est.fit_transform(W, activations=X)
        step = float(np.max(est.scale_))
        if meth == "msq":
            bound = msq_bound(X, step)
        elif meth == "gpfq":
            bound = gpfq_bound(X, step)
        else:
            variant = "ternary" if meth == "lp" else "grid"
            # at the cap the fit chose (rank="auto"), its drift term included
            bound = nullspace_bound(X, step, variant=variant, rank=int(est.rank_))
        norm = np.linalg.norm(X @ W, axis=0).min()
        rows.append(
            {
                "method": meth,
                "n_bits": "ternary" if meth == "lp" else b,
                "n_in": n,
                "error": relative_error(W, Q, X),
                "test_error": relative_error(W, Q, Xt),
                "bound": bound / norm,
            }
        )
    slopes = {}
    for key in dict.fromkeys((r["method"], r["n_bits"]) for r in rows):
        sub = [r for r in rows if (r["method"], r["n_bits"]) == key]
        if len(sub) >= 2:
            x = np.log([r["n_in"] for r in sub])
            y = np.log([max(r["error"], 1e-300) for r in sub])
            slopes[key] = float(np.polyfit(x, y, 1)[0])
    return {"rows": rows, "slopes": slopes, "m": m}


def plot_error_decay(result, ax=None, *, test=False):
    """Log-log plot of an :func:`error_decay` result with the bounds dashed.

    Parameters
    ----------
    result : dict
        The output of :func:`error_decay`.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when ``None``.
    test : bool, default=False
        Draw the held-out error instead of the calibration error.

    Returns
    -------
    ax : matplotlib Axes
        The axes drawn on.

    See Also
    --------
    error_decay : Produces the result.
    """
    if not isinstance(result, dict) or not {"rows", "slopes", "m"} <= set(result):
        raise TypeError(
            "result must be the dict error_decay returns (keys 'rows', 'slopes', "
            f"'m', ...), got {type(result).__name__} with keys "
            f"{sorted(result) if isinstance(result, dict) else None} instead."
        )
    check_bool(test, "test")
    rows = result["rows"]
    need = {"method", "n_bits", "n_in", "error", "test_error", "bound"}
    bad = [r for r in rows if not isinstance(r, dict) or not need <= set(r)]
    if bad:
        raise ValueError(
            f"result['rows'] must hold error_decay's rows (keys {sorted(need)}), "
            f"got {bad[0]!r} among them."
        )
    ax = axes(ax, (7, 5))
    keys = list(dict.fromkeys((r["method"], r["n_bits"]) for r in rows))
    for i, (meth, b) in enumerate(keys):
        sub = [r for r in rows if (r["method"], r["n_bits"]) == (meth, b)]
        n = [r["n_in"] for r in sub]
        color = f"C{i}"
        slope = None if test else result["slopes"].get((meth, b))
        label = f"{meth} {b}" + (f" (slope {slope:+.2f})" if slope is not None else "")
        ax.loglog(
            n,
            [r["test_error" if test else "error"] for r in sub],
            "o-",
            color=color,
            label=label,
        )
        if not test:
            ax.loglog(n, [r["bound"] for r in sub], "--", color=color, alpha=0.5)
    ax.set_xlabel("n_in")
    ax.set_ylabel(
        "relative error " + ("(held-out)" if test else "(calibration; bounds dashed)")
    )
    ax.set_title(f"Gaussian layer, m = {result['m']}")
    ax.legend(fontsize=7)
    return ax
