"""Khoram & Li's allocation: per-parameter fractional bits from the loss gradient, and
the fixed-point rounding.
"""

import math

import numpy as np

from .._common._warn import warn
from .._kernels import _precision
from .._kernels._threads import numba_threads
from .._tensor._alphabets import code_dtype, kernel_for
from .._tensor._fixedpoint import group_lengths, group_starts, widths_from_codes
from .._tensor._qtensor import QuantizedTensor

__all__ = [
    "allocate_precision",
    "fixed_point_tensor",
    "power_of_two_scale",
    "precision_map_bits",
    "water_fill",
]


def power_of_two_scale(W):
    """Smallest power of two strictly above ``max|W|`` (1 for an all-zero ``W``)."""
    m = float(np.max(np.abs(W))) if np.size(W) else 0.0
    if m == 0.0:
        return 1.0
    e = math.floor(math.log2(m)) + 1
    return 2.0**e


def water_fill(abs_gradient, budget, trust_region, *, n_jobs=None):
    """Scalar ``kappa`` of the margins ``tau_i = min(trust_region, kappa / |g_i|)``.

    Chosen so that ``sum_i |g_i| tau_i = budget`` (the linearised loss increase meets
    the budget exactly), unless even ``tau_i = trust_region`` everywhere stays below
    the budget, in which case every margin is clipped. ``O(n)``: see
    :mod:`skquant._kernels._precision`.

    Parameters
    ----------
    abs_gradient : ndarray of shape (n,)
        ``|g_i|``, non-negative.
    budget : float
        Allowed linearised loss increase, positive.
    trust_region : float
        Largest margin, positive.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    kappa : float
        The water level (``inf`` when every gradient is 0).
    """
    a = np.ascontiguousarray(abs_gradient, dtype=np.float64).ravel()
    with numba_threads(n_jobs):
        return float(
            kernel_for(_precision, "water_fill", n_jobs)(
                a, float(budget), float(trust_region)
            )
        )


def _matrix(a, axis):
    """The ``(n_rows, n_channels)`` view of a tensor, its channels along ``axis``."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a.reshape(1, 1)
    return np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])


def _from_matrix(m, shape, axis):
    """Inverse of :func:`_matrix`."""
    if len(shape) == 0:
        return m.reshape(())
    moved = list(shape)
    moved.append(moved.pop(axis))
    return np.moveaxis(m.reshape(moved), -1, axis)


def round_fixed(x, n_frac, clip):
    """``x`` rounded to ``n_frac`` fractional bits (0 where ``n_frac < 0``).

    With ``clip`` the integer is kept in ``[-2^N, 2^N - 1]`` (two's complement in
    ``N + 1`` bits: the per-group storage).
    """
    p = np.exp2(np.maximum(n_frac, 0))
    k = np.rint(x * p)
    if clip:
        k = np.clip(k, -p, p - 1)
    return np.where(n_frac < 0, 0.0, k / p)


def _round_groups(x, tau, bits, group_size, max_frac):
    """One precision per group: the fewest bits that keep every member in margin.

    ``x``, ``tau`` and ``bits`` are ``(n_rows, n_cols)`` matrices in units of the
    tensor's range (``bits`` the per-parameter precisions). A group starts at the
    largest precision of its members (a finer grid only brings a member closer), is
    pruned when every member is, and gains a bit while the clipping of the top
    code (``+s`` is not representable) pushes a member out of its margin.
    """

    n_rows, n_cols = x.shape
    xf, tf, bf = (np.ascontiguousarray(a.T).ravel() for a in (x, tau, bits))
    starts = group_starts(n_rows, n_cols, group_size)
    if starts.size == 0:
        return np.zeros_like(x), np.zeros(x.shape, np.int8)
    lengths = group_lengths(starts, xf.size)
    n_group = np.maximum.reduceat(np.where(bf > 0, bf.astype(np.int64) - 1, -1), starts)
    while True:
        n_el = np.repeat(n_group, lengths)
        q = round_fixed(xf, n_el, clip=True)
        bad = np.logical_or.reduceat(np.abs(xf - q) > tf, starts)
        grow = bad & (n_group >= 0) & (n_group < max_frac)
        if not grow.any():
            break
        n_group[grow] += 1
    widths = np.where(n_el >= 0, n_el + 1, 0).astype(np.int8)
    return q.reshape(n_cols, n_rows).T, widths.reshape(n_cols, n_rows).T


def fixed_point_tensor(
    q, scale, widths, group_size=None, map_coder="auto", payload_coder="range"
):
    """The :class:`~skquant.QuantizedTensor` of a rounded matrix (units of ``scale``).

    Parameters
    ----------
    q : ndarray of shape (n_rows, n_cols)
        Rounded values in ``[-1, 1]``, in units of the power of two ``scale``.
    scale : float
        The tensor's power-of-two range ``s``.
    widths : ndarray of int of shape (n_rows, n_cols)
        Precision of every entry (0 = pruned).
    group_size : None, "channel" or int, default=None
        The groups of ``widths``.
    map_coder : str, default="auto"
        Coder of the precision map.
    payload_coder : str, default="range"
        Coder of the payload.

    Returns
    -------
    qt : QuantizedTensor
        Alphabet ``"fixed_point"``, one scale (the finest step).
    """

    n_max = max(int(np.max(widths, initial=1)) - 1, 0)
    codes = np.rint(q * 2.0**n_max).astype(np.int64)
    if group_size is None:  # stored with the fewest bits that hold each code
        widths = widths_from_codes(codes, n_max)
    return QuantizedTensor(
        codes=codes.astype(code_dtype(-(2**n_max), 2**n_max)),
        scale=np.array([scale / 2.0**n_max]),
        n_bits=max(int(np.max(widths, initial=1)), 1),
        qmin=-(2**n_max),
        qmax=2**n_max,
        alphabet="fixed_point",
        precision_bits=np.asarray(widths, dtype=np.int8),
        group_size=group_size,
        map_coder=map_coder,
        payload_coder=payload_coder,
    )


def _pooled_gradients(a, weights, axes, group_size):
    """Every entry's ``a_i`` replaced by the mean over its group.

    Water filling on these solves the budget per group: ``sum_G a_G tau_G = B``
    with one margin ``tau_G`` per group and ``a_G`` the sum of its members' ``a_i``.
    """

    out = np.empty_like(a)
    start = 0
    for W, axis in zip(weights, axes):
        shape = np.shape(W)
        n = int(np.prod(shape))
        m = _matrix(a[start : start + n].reshape(shape), axis)
        flat = np.ascontiguousarray(m.T).ravel()
        starts = group_starts(*m.shape, group_size)
        if starts.size:
            lengths = group_lengths(starts, flat.size)
            mean = np.add.reduceat(flat, starts) / lengths
            flat = np.repeat(mean, lengths)
        pooled = flat.reshape(m.shape[1], m.shape[0]).T
        out[start : start + n] = np.ascontiguousarray(
            _from_matrix(pooled, shape, axis)
        ).ravel()
        start += n
    return out


def allocate_precision(
    weights,
    gradients,
    budget,
    trust_region,
    *,
    max_bits=24,
    group_size=None,
    group_margin="smallest",
    channel_axes=None,
    map_coder="auto",
    payload_coder="range",
    stored=True,
    n_jobs=None,
):
    """Margins, per-parameter bits and fixed-point weights for a set of tensors.

    Every tensor ``W`` is stored as ``s * F`` with ``s`` the smallest power of two
    above ``max|W|`` and ``F`` in (-1, 1) in fixed point. One water level is shared by
    all tensors (the budget is global), in the normalised units where the trust
    region is a fraction of each tensor's range.

    Parameters
    ----------
    weights : list of ndarray
        The tensors (any shapes).
    gradients : list of ndarray
        Loss gradients, shaped like ``weights``.
    budget : float
        Allowed linearised loss increase ``sum_i |g_i| tau_i``.
    trust_region : float
        Largest margin, as a fraction of each tensor's power-of-two range ``s``.
    max_bits : int, default=24
        Largest number of fractional bits per parameter.
    group_size : None, "channel" or int, default=None
        ``None``: one precision per parameter. Otherwise one per output channel
        (``"channel"``) or per ``group_size`` consecutive weights of a channel
        (the last group of a channel is shorter when ``group_size`` does not
        divide it), the fewest bits that keep every member within its margin.
    group_margin : {"smallest", "pooled"}, default="smallest"
        With groups: every member keeps its own margin and the group takes the
        smallest (``"smallest"``), or the budget is solved per group, one margin
        for all members from the group's summed gradient (``"pooled"``; the
        linearised increase stays within the budget).
    channel_axes : list of int, default=None
        The output-channel axis of every tensor (default 0; a 1-D tensor's
        entries are its channels).
    map_coder : str, default="auto"
        Coder of the stored precision maps (see :mod:`skquant._tensor._fixedpoint`).
    payload_coder : str, default="range"
        Coder of the stored payloads.
    stored : bool, default=True
        Also write every tensor's stored form (``tensors``, ``size_bits``);
        ``False`` keeps the numerics alone (``bits`` are then the kernel's).
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    result : dict
        ``quantized``, ``margins``, ``bits`` (lists like ``weights``; margins in the
        weights' units, bits include the sign, 0 means pruned), ``scales`` (the
        ``s`` of each tensor), ``tensors`` (the stored
        :class:`~skquant.QuantizedTensor` of each, in its ``(n_rows, n_channels)``
        view), ``size_bits`` (their stored size, in bits), ``kappa`` and
        ``predicted_increase`` (``sum_i |g_i| |w_i - q_i|``, at most ``budget``).
    """
    scales = [power_of_two_scale(W) for W in weights]
    axes = list(channel_axes) if channel_axes is not None else [0] * len(weights)
    a = (
        np.concatenate(
            [
                (np.abs(np.asarray(G, dtype=np.float64)) * s).ravel()
                for G, s in zip(gradients, scales)
            ]
        )
        if weights
        else np.zeros(0)
    )
    a_true = a
    if group_margin not in ("smallest", "pooled"):
        raise ValueError(
            "group_margin must be 'smallest' or 'pooled', got "
            f"group_margin={group_margin!r} instead."
        )
    if group_size is not None and group_margin == "pooled":
        a = _pooled_gradients(a, weights, axes, group_size)
    kappa = water_fill(a, budget, trust_region, n_jobs=n_jobs) if a.size else np.inf
    out = {
        "quantized": [],
        "margins": [],
        "bits": [],
        "scales": scales,
        "kappa": kappa,
        "predicted_increase": 0.0,
    }
    start = capped = 0
    worst = 0.0
    for W, s, axis in zip(weights, scales, axes):
        W = np.asarray(W)
        n = W.size
        w = np.divide(W.ravel(), s, dtype=np.float64)  # no float64 copy of W first
        tau = np.empty(n)
        bits = np.empty(n, dtype=np.int8)
        q = np.empty(n)
        with numba_threads(n_jobs):
            kernel_for(_precision, "fixed_point_quantize", n_jobs)(
                w,
                a[start : start + n],
                kappa,
                float(trust_region),
                int(max_bits),
                tau,
                bits,
                q,
            )
        if group_size is not None:
            view = [_matrix(v.reshape(W.shape), axis) for v in (w, tau, bits)]
            qm, bm = _round_groups(*view, group_size, int(max_bits))
            q = np.ascontiguousarray(_from_matrix(qm, W.shape, axis)).ravel()
            bits = np.ascontiguousarray(_from_matrix(bm, W.shape, axis)).ravel()
        err = np.abs(np.subtract(w, q, out=w), out=w)  # w is not needed again
        del w
        out["predicted_increase"] += float(np.sum(a_true[start : start + n] * err))
        over = err > tau
        capped += int(over.sum())
        if over.any():
            worst = max(worst, float(np.max(err[over] / tau[over])))
        del err, over
        if stored:
            qt = fixed_point_tensor(
                _matrix(q.reshape(W.shape), axis),
                s,
                _matrix(bits.reshape(W.shape), axis),
                group_size,
                map_coder,
                payload_coder,
            )
            out.setdefault("tensors", []).append(qt)
            bits = _from_matrix(qt.precision_bits, W.shape, axis)
        out["bits"].append(np.ascontiguousarray(bits.reshape(W.shape)))
        q *= s  # in place: the weights' units
        tau *= s
        out["quantized"].append(q.reshape(W.shape))
        out["margins"].append(tau.reshape(W.shape))
        start += n
    if stored:
        out.setdefault("tensors", [])
        out["size_bits"] = sum(t.size_bits for t in out["tensors"])
    if capped:
        warn(
            f"max_bits={max_bits} caps {capped} parameter(s) below the precision "
            f"their margin asks: their error exceeds the margin (up to {worst:.3g} "
            "times; a large gradient asks for a tiny margin), so the loss may grow "
            "by more than the budget. Raise max_bits to honour every margin.",
            UserWarning,
        )
    return out


def precision_map_bits(bits):
    """Bits to store which precision every parameter has, two ways.

    Parameters
    ----------
    bits : array-like of int
        Stored bits per parameter (0 for pruned ones).

    Returns
    -------
    sizes : dict
        ``fixed``: a fixed-width index per parameter, ``ceil(log2(#levels))`` bits
        each plus a table of the levels (8 bits per level); ``entropy``: the
        empirical entropy of the levels times their count (what an ideal entropy
        coder needs, the table included).
    """
    bits = np.asarray(bits).ravel()
    levels, counts = np.unique(bits, return_counts=True)
    table = 8 * levels.size
    width = math.ceil(math.log2(levels.size)) if levels.size > 1 else 0
    p = counts / max(bits.size, 1)
    entropy = float(-(p * np.log2(p)).sum()) if bits.size else 0.0
    return {
        "fixed": int(width * bits.size + table),
        "entropy": int(math.ceil(entropy * bits.size)) + table,
    }
