"""Alphabets, their integer ranges, and the rules that pick a scale per channel.

Every rule takes a 2-D array ``Wc`` whose columns are the channels (one column per
output channel for ``granularity="per_channel"``, a single column holding the whole
tensor for ``"per_tensor"``) and returns one positive scale per column in ``Wc``'s
dtype; :func:`stored_scale` then rounds them to the stored dtype,
:data:`SCALE_DTYPE`. The numerics run in :mod:`skquant._kernels._msq`.
"""

from dataclasses import dataclass

import numpy as np

from .._kernels import _msq
from .._kernels._threads import effective_n_jobs, numba_threads

_CODE_DTYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32)

#: The dtype of every stored weight scale (``scale_`` of the weight quantizers),
#: whatever the dtype of the weights: a float32 step is within a relative 1.2e-7 of
#: the float64 one, far below the error of any grid it spaces, and costs 32 bits
#: instead of 64 per channel in the stored size.
SCALE_DTYPE = np.dtype(np.float32)


def uniform_range(n_bits):
    """Signed symmetric range ``[-K, K]``, ``K = 2**(n_bits - 1) - 1``, of b bits."""
    k = 2 ** (n_bits - 1) - 1
    return -k, k


def code_dtype(qmin, qmax):
    """The smallest integer dtype that holds every code in ``[qmin, qmax]``."""
    for dtype in _CODE_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


#: the kinds of alphabet with fixed-width codes (the fixed-point kind stores a
#: precision per code instead)
GRID_KINDS = ("uniform", "ternary", "binary", "affine")


def check_code_range(codes, qmin, qmax):
    """``codes``, else a ``ValueError`` when one lies outside ``[qmin, qmax]`` (one
    ``min`` and one ``max`` over them: no temporary array)."""
    if codes.size:
        lo, hi = codes.min(), codes.max()
        if lo < qmin or hi > qmax:
            raise ValueError(
                f"codes must lie in [{qmin}, {qmax}], got values in [{lo}, {hi}] "
                "instead."
            )
    return codes


@dataclass(frozen=True)
class Alphabet:
    """The one record of what a code means, shared by every quantizer and tensor.

    ``kind`` is ``"uniform"`` (codes ``qmin..qmax`` times the step), ``"ternary"``
    (codes ``-1, 0, 1`` times the level), ``"binary"`` (codes ``-1, +1`` times the
    level, stored as one bit), ``"affine"`` (codes minus a zero point, times the
    step) or ``"fixed_point"`` (per-parameter precision; the codes are integers on
    the finest grid, see :class:`~skquant.AdaptivePrecisionQuantizer`).
    Every special case of an alphabet lives here.
    """

    kind: str
    qmin: int
    qmax: int
    n_bits: int

    @property
    def dtype(self):
        """Smallest integer dtype of the codes."""
        return code_dtype(self.qmin, self.qmax)

    @property
    def largest_code(self):
        """``K``: the largest code magnitude (1 for ternary and binary)."""
        return max(abs(int(self.qmin)), abs(int(self.qmax)))

    def stored(self, codes):
        """``(unsigned-able codes, their qmin)`` as packed: binary as bits {0, 1}."""
        if self.kind == "binary":
            return (np.asarray(codes) > 0).astype(np.int8), 0
        return codes, self.qmin

    def from_stored(self, stored, dtype=None):
        """Inverse of :meth:`stored`."""
        dtype = self.dtype if dtype is None else dtype
        if self.kind == "binary":  # stored {0, 1}: an int16 twice them, less 1
            return (2 * stored.astype(np.int16) - 1).astype(dtype)
        return stored.astype(dtype, copy=False)

    @property
    def stored_qmin(self):
        """The ``qmin`` the packed codes are offset by."""
        return 0 if self.kind == "binary" else self.qmin

    def code_grid(self, step):
        """``(zp, inv_step, cmin, cmax)``: codes are ``clip(rint(w inv_step + zp))``.

        The binary ``{-a, a}`` is the grid of step ``2a`` with zero point 0.5 and
        codes ``{0, 1}`` (mapped back to ``{-1, +1}`` by :meth:`final_codes`).
        """
        if self.kind == "binary":
            return 0.5, 1.0 / (2.0 * step), 0.0, 1.0
        return 0.0, 1.0 / step, float(self.qmin), float(self.qmax)

    def final_codes(self, codes):
        """Codes from :meth:`code_grid`'s units, in :attr:`dtype`."""
        if self.kind == "binary":
            codes = 2 * codes - 1
        return codes.astype(self.dtype)

    def boxes(self, Z0, step, out=None):
        """Cells ``[lo, hi]`` of the alphabet around every entry of ``Z0``, and
        ``Z0`` put inside them: ``(lo, hi, clip(Z0, lo, hi))``, the last written
        to ``out`` when given (a float64 array like ``Z0``, with its layout;
        ``Z0`` itself may be passed).

        Binary cells are the whole interval ``[-a, a]``; grid cells are clipped to
        the range, and entries on a grid point get a degenerate cell.
        """
        if self.kind == "binary":
            lo = np.broadcast_to(-step, Z0.shape).copy()
            hi = np.broadcast_to(step, Z0.shape).copy()
            return lo, hi, np.clip(Z0, lo, hi, out=out)
        bounds = (float(self.qmin), float(self.qmax))
        dtypes = (np.float64,) * (2 if out is not None else 3)
        given = () if out is None else (out,)
        return _grid_kernel(_msq.grid_cells, Z0, step, bounds, dtypes, given)

    def on_alphabet(self, Z, step, rtol=1e-9):
        """Entries of ``Z`` within ``rtol * step`` of their column's alphabet."""
        if self.kind == "binary":
            return np.abs(np.abs(Z) - step) <= rtol * step
        return _grid_kernel(_msq.on_grid, Z, step, (float(rtol),), (bool,))[0]

    def check_codes(self, codes, owner, *, values=True):
        """``codes`` as an array; raise when they are not integers of this alphabet
        (with ``values=False``, when they are not integers: their values are left
        to whoever checks them next, as ``QuantizedTensor`` does)."""
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            raise TypeError(
                f"codes of {owner} must be integers, got codes.dtype={codes.dtype!s} "
                "instead."
            )
        if not values:
            return codes
        if self.kind == "binary" and np.any(codes == 0):
            raise ValueError(
                f"codes of {owner} must be -1 or +1, got a 0 code instead."
            )
        return check_code_range(codes, self.qmin, self.qmax)

    @property
    def is_binary(self):
        """Whether this is ``{-a, +a}``: no zero code, one bit per weight."""
        return self.kind == "binary"

    @property
    def level_rule(self):
        """The data-free rule of the level ``a`` (the quantizers' ``scale=``).

        ``"mean"`` (``mean|w|``, XNOR-Net's) for binary, ``"twn"`` (ternary weight
        networks' ``mean{|w| : |w| > 0.7 mean|w|}``) for ternary, ``None`` for a
        grid of steps.
        """
        return _LEVEL_RULES.get(self.kind)


def round_on_grid(values, grid):
    """``(codes, values)``: the points of a :meth:`Alphabet.code_grid` grid
    ``(zp, inv_step, cmin, cmax)`` nearest ``values``, as codes in the grid's
    units (:meth:`Alphabet.final_codes` makes them the alphabet's) and as the
    values they stand for."""
    zp, inv, cmin, cmax = grid
    codes = np.clip(np.rint(values * inv + zp), cmin, cmax)
    return codes, (codes - zp) / inv


def _grid_kernel(kernel, Z, step, args, dtypes, given=()):
    """``kernel(Z, step, *args, *outs)`` of :mod:`skquant._kernels._msq` on a float64
    ``Z`` (columns: channels) with one step per column, and its outputs: new
    ones, one per dtype of ``dtypes``, in ``Z``'s layout (F-ordered ``Z`` is
    read in place), then the ``given`` ones."""
    Z = np.asarray(Z, dtype=np.float64)
    order = "F" if Z.flags.f_contiguous and not Z.flags.c_contiguous else "C"
    Z = np.asarray(Z, order=order)
    step = np.ascontiguousarray(np.broadcast_to(step, Z.shape[1:]), np.float64)
    outs = tuple(np.empty(Z.shape, dtype=d, order=order) for d in dtypes) + given
    kernel(Z, step, *args, *outs)
    return outs


def channel_view(W, granularity):
    """``W`` itself per channel, or one column holding every entry per tensor."""
    if granularity == "per_tensor":
        return W.reshape(-1, 1)
    return W


def kernel_for(module, name, n_jobs):
    """The serial kernel ``name`` of ``module``, or its ``_parallel`` twin."""
    if effective_n_jobs(n_jobs) > 1:
        return getattr(module, name + "_parallel")
    return getattr(module, name)


def safe_scale(scale, dtype):
    """Scales in ``dtype``, with ``finfo(dtype).eps`` for unusable ones.

    A scale is unusable when it is zero (an all-zero channel) or below the smallest
    normal number of ``dtype`` (its inverse would overflow, and ``0 * inf`` is NaN).
    """
    info = np.finfo(dtype)
    scale = np.asarray(scale, dtype=dtype)
    return np.where(scale >= info.tiny, scale, info.eps).astype(dtype, copy=False)


def stored_scale(level):
    """Scales as stored: in :data:`SCALE_DTYPE`, every one a usable step.

    ``level`` (in the weights' dtype) is rounded up to the nearest float32, so a
    grid never shrinks: max-abs steps still clip nothing. A step above float32's
    largest number becomes that number (the weights beyond ``K`` times it are
    clipped), and an unusable one (zero, or below float32's smallest normal
    number: see :func:`safe_scale`) becomes ``finfo(float32).eps``. Every
    computation with the scale (codes, dequantized values, the data-driven
    methods, the torch layers) then uses this stored value, converted exactly to
    the weights' dtype.
    """
    level = np.asarray(level)
    top = np.finfo(SCALE_DTYPE).max
    with np.errstate(over="ignore", invalid="ignore"):
        level = np.where(level > top, top, level)
        out = level.astype(SCALE_DTYPE)
        below = out.astype(level.dtype) < level
        out = np.where(below, np.nextafter(out, SCALE_DTYPE.type(np.inf)), out)
    return safe_scale(out, SCALE_DTYPE)


def maxabs_step(Wc, qmax):
    """Per-column max-abs step ``max |w| / qmax``, in float64: a float32 quotient
    rounded down would leave :func:`stored_scale`'s step (rounded up from it)
    one ulp short of reaching ``max |w|``."""
    return absmax(Wc).astype(np.float64) / qmax


def absmax(Wc):
    """Per-column ``max |w|``."""
    out = np.empty(Wc.shape[1], dtype=Wc.dtype)
    _msq.column_abs_max(Wc, out)
    return out


def absmean(Wc):
    """Per-column ``mean |w|``: the L2-optimal level of the binary alphabet."""
    out = np.empty(Wc.shape[1], dtype=Wc.dtype)
    _msq.column_abs_mean(Wc, out)
    return out


def percentile_absmax(Wc, percentile):
    """Per-column ``percentile``-th percentile of ``|w|``."""
    return np.percentile(np.abs(Wc), percentile, axis=0).astype(Wc.dtype)


def mse_optimal_step(Wc, qmin, qmax, *, n_grid=100, n_jobs=None):
    """Step of the grid ``step * [qmin, qmax]`` minimising each column's squared error.

    Searches the clipping ratios ``rho = 1/n_grid, 2/n_grid, ..., 1`` of the max-abs
    step (a resolution of 1% of it by default) with the same rounding as the
    transform. Since ``rho = 1`` (max-abs) is a candidate, and the best step is
    compared with max-abs again once both are rounded to :data:`SCALE_DTYPE` (the
    step that is stored), the stored result is never worse in squared error than
    the stored max-abs step.
    """
    base = safe_scale(absmax(Wc) / qmax, Wc.dtype)
    ratios = (np.arange(1, n_grid + 1) / n_grid).astype(Wc.dtype)
    err = _grid_errors(Wc, base, ratios, qmin, qmax, n_jobs)
    # steps below the smallest normal number are unusable (safe_scale replaces them)
    steps = ratios[:, None].astype(Wc.dtype) * base[None, :]
    err[(steps < np.finfo(Wc.dtype).tiny) | np.isnan(err)] = np.inf
    # argmin takes the first minimum; prefer max-abs (the last ratio) on exact ties
    best = n_grid - 1 - np.argmin(err[::-1], axis=0)
    found = stored_scale(base * ratios[best]).astype(Wc.dtype)
    maxabs = stored_scale(maxabs_step(Wc, qmax)).astype(Wc.dtype)
    # rounding to the stored dtype may reorder near-ties: keep max-abs where the
    # rounded search result is worse than the rounded max-abs step
    worse = _sq_errors(Wc, found, qmin, qmax) > _sq_errors(Wc, maxabs, qmin, qmax)
    return np.where(worse, maxabs, found)


def _sq_errors(Wc, step, qmin, qmax):
    """Per-column squared error of the grid ``step * [qmin, qmax]`` (as transform)."""
    return _grid_errors(Wc, step, np.ones(1, dtype=Wc.dtype), qmin, qmax)[0]


#: columns a single long column is cut into for :func:`_grid_errors`
LANES = 64


def _grid_errors(Wc, base, ratios, qmin, qmax, n_jobs=None):
    """``err[k, j] = sum_i (Wc[i, j] - Q_k(Wc[i, j]))^2`` on the grids
    ``ratios[k] * base[j] * [qmin, qmax]`` (:func:`_msq.grid_mse_errors`).

    The kernel sums each column in order, one addition after another; one long
    column (a per-tensor grid) is therefore cut into :data:`LANES` columns of
    the same step, summed side by side (the sum's order differs, not its terms:
    6x faster on 4096 x 4096 weights).
    """
    dtype = Wc.dtype.type
    if Wc.shape[1] == 1 and Wc.shape[0] >= 4 * LANES:
        flat = np.ascontiguousarray(Wc[:, 0])
        body = flat.shape[0] - flat.shape[0] % LANES
        err = _grid_errors(
            flat[:body].reshape(-1, LANES),
            np.repeat(base, LANES),
            ratios,
            qmin,
            qmax,
            n_jobs,
        ).sum(axis=1, keepdims=True)
        if body < flat.shape[0]:
            err += _grid_errors(flat[body:, None], base, ratios, qmin, qmax, n_jobs)
        return err
    err = np.empty((ratios.shape[0], Wc.shape[1]))
    with numba_threads(n_jobs):
        kernel_for(_msq, "grid_mse_errors", n_jobs)(
            Wc, base, ratios, dtype(qmin), dtype(qmax), err
        )
    return err


def ternary_optimal_level(Wc, n_jobs=None):
    """Per-column level ``a`` minimising ``||w - a t||`` over ternary ``t``."""
    out = np.empty(Wc.shape[1], dtype=Wc.dtype)
    with numba_threads(n_jobs):
        kernel_for(_msq, "ternary_optimal_scale", n_jobs)(Wc, out)
    return out


def ternary_twn_level(Wc):
    """Ternary weight networks' level ``a = mean{|w| : |w| > 0.7 mean|w|}``."""
    A = np.abs(Wc)
    delta = 0.7 * A.mean(axis=0)
    mask = A > delta
    count = mask.sum(axis=0)
    total = np.where(mask, A, 0).sum(axis=0)
    return (total / np.maximum(count, 1)).astype(Wc.dtype)


_LEVEL_RULES = {"binary": "mean", "ternary": "twn"}

#: ``{-a, +a}``: codes -1 and +1, stored as one bit.
BINARY = Alphabet("binary", -1, 1, 1)

#: ``{-a, 0, +a}``: codes -1, 0 and 1 in two bits.
TERNARY = Alphabet("ternary", -1, 1, 2)

_NAMED = {"binary": BINARY, "ternary": TERNARY}


def alphabet_from(name, *, allow_float=False):
    """The :class:`Alphabet` of a user-facing name, ``"binary"`` or ``"ternary"``.

    With ``allow_float``, ``"float"`` (no alphabet: the weights stay float) gives
    ``None``; any other name raises a ``ValueError`` naming the accepted ones.
    """
    if isinstance(name, str) and name in _NAMED:
        return _NAMED[name]
    if allow_float and isinstance(name, str) and name == "float":
        return None
    accepted = (
        "'float', 'binary' or 'ternary'" if allow_float else "'binary' or 'ternary'"
    )
    raise ValueError(f"alphabet must be {accepted}, got alphabet={name!r}.")
