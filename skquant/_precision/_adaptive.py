"""Per-parameter adaptive precision from loss gradients (Khoram & Li, ICLR 2018)."""

import math
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_array, metadata_routing
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._kernels import _precision
from .._kernels._threads import numba_threads
from .._tensor._alphabets import _kernel, code_dtype

__all__ = [
    "AdaptivePrecisionQuantizer",
    "AdaptiveQuantizationResult",
    "adaptive_precision_loop",
    "adaptive_quantize_mlp",
    "adaptive_quantize_network",
    "allocate_precision",
    "mlp_loss_gradient",
    "precision_map_bits",
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
            _kernel(_precision, "water_fill", n_jobs)(
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


def _round_fixed(x, n_frac, clip):
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
    from .._tensor._fixedpoint import _group_lengths, group_starts

    n_rows, n_cols = x.shape
    xf, tf, bf = (np.ascontiguousarray(a.T).ravel() for a in (x, tau, bits))
    starts = group_starts(n_rows, n_cols, group_size)
    if starts.size == 0:
        return np.zeros_like(x), np.zeros(x.shape, np.int8)
    lengths = _group_lengths(starts, xf.size)
    n_group = np.maximum.reduceat(np.where(bf > 0, bf.astype(np.int64) - 1, -1), starts)
    while True:
        n_el = np.repeat(n_group, lengths)
        q = _round_fixed(xf, n_el, clip=True)
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
    from .._tensor._packing import QuantizedTensor

    n_max = max(int(np.max(widths, initial=1)) - 1, 0)
    codes = np.rint(q * 2.0**n_max).astype(np.int64)
    if group_size is None:  # stored with the fewest bits that hold each code
        from .._tensor._fixedpoint import widths_from_codes

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
    from .._tensor._fixedpoint import _group_lengths, group_starts

    out = np.empty_like(a)
    start = 0
    for W, axis in zip(weights, axes):
        shape = np.shape(W)
        n = int(np.prod(shape))
        m = _matrix(a[start : start + n].reshape(shape), axis)
        flat = np.ascontiguousarray(m.T).ravel()
        starts = group_starts(*m.shape, group_size)
        if starts.size:
            lengths = _group_lengths(starts, flat.size)
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
        Coder of the stored precision maps (see :mod:`skquant._fixedpoint`).
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
        W = np.asarray(W, dtype=np.float64)
        n = W.size
        w = np.ascontiguousarray(W).ravel() / s
        tau = np.empty(n)
        bits = np.empty(n, dtype=np.int8)
        q = np.empty(n)
        with numba_threads(n_jobs):
            _kernel(_precision, "fixed_point_quantize", n_jobs)(
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
        out["quantized"].append((q * s).reshape(W.shape))
        out["margins"].append((tau * s).reshape(W.shape))
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
        out["predicted_increase"] += float(
            np.sum(a_true[start : start + n] * np.abs(w - q))
        )
        over = np.abs(w - q) > tau
        capped += int(over.sum())
        if over.any():
            worst = max(worst, float(np.max(np.abs(w - q)[over] / tau[over])))
        start += n
    if stored:
        out.setdefault("tensors", [])
        out["size_bits"] = sum(t.size_bits for t in out["tensors"])
    if capped:
        warnings.warn(
            f"max_bits={max_bits} caps {capped} parameter(s) below the precision "
            f"their margin asks: their error exceeds the margin (up to {worst:.3g} "
            "times; a large gradient asks for a tiny margin), so the loss may grow "
            "by more than the budget. Raise max_bits to honour every margin.",
            UserWarning,
            stacklevel=2,
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


class AdaptivePrecisionQuantizer(TransformerMixin, BaseEstimator):
    """Per-parameter fixed-point precision from loss gradients (Khoram & Li).

    Gives every weight its own number of fractional bits so that the total is small
    while the linearised loss increase stays within a budget:
    ``min -sum_i log2(tau_i)`` subject to ``sum_i |g_i| tau_i <= budget`` and
    ``tau_i <= trust_region``, whose KKT solution is ``tau_i = min(delta, kappa /
    |g_i|)`` (water filling, solved exactly in ``O(n)``). A weight then keeps the
    fewest fractional bits ``N_i`` with ``2^-(N_i+1) <= tau_i``, and a weight smaller
    than its margin is pruned (0 bits). The matrix is stored as ``s * F``, ``s`` a
    power of two above ``max|W|`` and ``F`` in fixed point.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    budget : float, default=1e-3
        Allowed linearised loss increase (in the loss's units), positive.
    trust_region : float, default=0.05
        Largest margin, as a fraction of the power-of-two range ``s``: keeps the
        linearisation honest.
    max_bits : int, default=24
        Largest number of fractional bits of a parameter (at most 46).
    group_size : None, "channel" or int, default=None
        ``None``: one precision per weight. ``"channel"``: one per output channel
        (column); an int ``g``: one per ``g`` consecutive weights of a column (the
        last group of a column is shorter when ``g`` does not divide ``n_in``).
        A group takes the fewest bits that keep every member within its margin
        (the precision of its smallest margin, one more bit when the clipped top
        code needs it), so the map costs bits per group, not per weight.
    group_margin : {"smallest", "pooled"}, default="smallest"
        With groups: the group takes its members' smallest margin
        (``"smallest"``), or the budget is solved per group, one margin from the
        group's summed gradient (``"pooled"``).
    map_coder : {"auto", "range", "fixed", "lzma", "zlib"}, default="auto"
        How the stored precision map is coded: ``"range"`` (range coder,
        near the map's empirical entropy), ``"fixed"`` (fixed-width index into
        the levels present), ``"lzma"``/``"zlib"`` (standard-library
        compressors); ``"auto"`` keeps the smaller of ``"fixed"`` and ``"range"``.
    payload_coder : {"range", "raw"}, default="range"
        ``"range"``: the payload fields of each length up to 12 bits are
        range-coded (one model per length) where that is smaller than their raw
        bits; ``"raw"``: every field in its bits.
    n_jobs : int, default=None
        Number of numba threads; ``None`` means 1, ``-1`` all.

    Attributes
    ----------
    scale_ : float
        The power of two ``s``.
    margins_ : ndarray of shape (n_in, n_out)
        Error margin of every weight, in the weights' units.
    bits_ : ndarray of int8 of shape (n_in, n_out)
        Stored bits of every weight (fractional bits + sign; 0 when pruned).
        Fractional bits whose step would fall below the dtype's smallest normal
        number are not kept (a tensor of subnormal weights is pruned).
    kappa_ : float
        The water level.
    predicted_loss_increase_ : float
        ``sum_i |g_i| |w_i - q_i|``: the linearised loss increase of the rounding
        actually done (at most ``budget``).
    payload_bits_ : int
        Bits of the stored payload. Raw, a weight takes ``bits_i - 1`` bits when
        ``bits_i >= 2`` and one otherwise (a code is stored with the fewest bits
        that hold it, so its last bit is implied), or ``bits_i`` with groups;
        ``payload_coder="range"`` codes the short fields below that.
    precision_map_bits_ : dict
        Bits of the precision map: ``stored`` (the coded map as written, tables
        included), and for comparison ``fixed`` (fixed-width index) and ``entropy``
        (an ideal entropy coder), see :func:`precision_map_bits`.
    map_coder_ : str
        The coder the map was written with (``"auto"`` resolved).
    size_bits_ : int
        The stored size: the bytes of the payload, the map and the step's 16-bit
        exponent, times 8. :func:`skquant.save` of :meth:`compress` writes exactly
        these bytes plus a header.
    bits_per_param_ : float
        ``size_bits_`` per weight.
    n_features_in_ : int
        Number of columns of ``W``.

    See Also
    --------
    UniformQuantizer : One bit-width for every weight.

    References
    ----------
    S. Khoram and J. Li, "Adaptive quantization of neural networks", ICLR 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import AdaptivePrecisionQuantizer
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((100, 10))
    >>> G = rng.standard_normal((100, 10)) * 1e-2
    >>> q = AdaptivePrecisionQuantizer(budget=1e-2).fit(W, gradient=G)
    >>> bool(np.all(np.abs(W - q.transform(W)) <= q.margins_))
    True
    >>> bool(q.predicted_loss_increase_ <= 1e-2)
    True
    """

    __metadata_request__fit = {"W": metadata_routing.UNUSED}
    __metadata_request__transform = {"W": metadata_routing.UNUSED}
    _parameter_constraints: dict = {
        "budget": [Interval(numbers.Real, 0, None, closed="neither")],
        "trust_region": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_bits": [Interval(numbers.Integral, 1, 46, closed="both")],
        "group_size": [
            None,
            StrOptions({"channel"}),
            Interval(numbers.Integral, 1, None, closed="left"),
        ],
        "map_coder": [StrOptions({"auto", "range", "fixed", "lzma", "zlib"})],
        "payload_coder": [StrOptions({"range", "raw"})],
        "group_margin": [StrOptions({"smallest", "pooled"})],
        "n_jobs": [None, Interval(numbers.Integral, None, None, closed="neither")],
    }

    def __init__(
        self,
        budget=1e-3,
        *,
        trust_region=0.05,
        max_bits=24,
        group_size=None,
        group_margin="smallest",
        map_coder="auto",
        payload_coder="range",
        n_jobs=None,
    ):
        self.budget = budget
        self.trust_region = trust_region
        self.max_bits = max_bits
        self.group_size = group_size
        self.group_margin = group_margin
        self.map_coder = map_coder
        self.payload_coder = payload_coder
        self.n_jobs = n_jobs

    def _validate_W(self, W, reset):
        W = check_array(W, dtype=[np.float64, np.float32], input_name="W")
        return validate_data(self, W, reset=reset, skip_check_array=True)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, W, y=None, *, gradient=None):
        """Allocate a precision to every weight from the loss gradient.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weights.
        y : None
            Ignored.
        gradient : array-like of shape (n_in, n_out)
            Loss gradient with respect to ``W``.

        Returns
        -------
        self : object
            Fitted quantizer.
        """
        W = self._validate_W(W, reset=True)
        if gradient is None:
            raise ValueError(
                "AdaptivePrecisionQuantizer.fit requires the loss gradient: pass "
                f"gradient=G with G of shape {W.shape}; got gradient=None instead."
            )
        G = check_array(gradient, dtype=np.float64, input_name="gradient")
        if G.shape != W.shape:
            raise ValueError(
                f"gradient must have the shape of W {W.shape}, got gradient.shape="
                f"{G.shape} instead."
            )
        # steps below the dtype's smallest normal number are unusable (the rule of
        # every scale, _alphabets.safe_scale): fewer fractional bits, or pruned
        scale = power_of_two_scale(W)
        tiny = np.finfo(W.dtype).tiny
        max_frac = int(min(np.floor(np.log2(scale) - np.log2(tiny)), 126))
        res = allocate_precision(
            [W],
            [G],
            self.budget,
            self.trust_region,
            max_bits=max(min(self.max_bits, max_frac), 0),
            group_size=self.group_size,
            group_margin=self.group_margin,
            channel_axes=[1],
            map_coder=self.map_coder,
            payload_coder=self.payload_coder,
            stored=False,  # the stored form is written below, once
            n_jobs=self.n_jobs,
        )
        self.scale_ = res["scales"][0]
        self.margins_ = res["margins"][0]
        self.bits_ = res["bits"][0]
        if max_frac < 0:  # even one fractional bit is subnormal: all pruned
            self.bits_ = np.zeros_like(self.bits_)
        self.kappa_ = res["kappa"]
        tensor = self.compress_codes(self._codes(W))
        meta = tensor.encoded()[0]
        self.map_coder_ = meta["map_coder"]
        self.predicted_loss_increase_ = float(
            np.sum(np.abs(G) * np.abs(W.astype(np.float64) - self._quantized64(W)))
        )
        self.payload_bits_ = meta["payload_bits"]
        self.size_bits_ = tensor.size_bits
        self.precision_map_bits_ = dict(
            precision_map_bits(self._map_symbols()),
            stored=self.size_bits_ - self.payload_bits_ - 16,
        )
        self.bits_per_param_ = self.size_bits_ / W.size
        return self

    def _map_symbols(self):
        """The precisions the map stores: one per parameter, or one per group."""
        from .._tensor._fixedpoint import group_starts

        starts = group_starts(*self.bits_.shape, self.group_size)
        return np.ascontiguousarray(self.bits_.T).ravel()[starts]

    def _check_fitted_shape(self, W, name="W"):
        if W.shape != self.bits_.shape:
            raise ValueError(
                f"{name} must have the fitted shape {self.bits_.shape}, got "
                f"{name}.shape={W.shape} instead."
            )

    def _quantized64(self, W):
        """The rounded weights in float64 (exact multiples of the finest step)."""
        n_frac = self.bits_.astype(np.int64) - 1
        x = W.astype(np.float64) / self.scale_
        return _round_fixed(x, n_frac, clip=self.group_size is not None) * self.scale_

    def _codes(self, W):
        n_max = max(int(self.bits_.max(initial=1)) - 1, 0)
        return np.rint(self._quantized64(W) / self.scale_ * 2.0**n_max).astype(np.int64)

    def transform(self, W):
        """Round ``W`` with the fitted per-parameter precisions.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weights of the fitted shape.

        Returns
        -------
        W_q : ndarray of shape (n_in, n_out)
            ``s * rint(2^N_i w_i / s) / 2^N_i``, 0 where pruned, in ``W``'s dtype.
        """
        check_is_fitted(self)
        W = self._validate_W(W, reset=False)
        self._check_fitted_shape(W)
        return self._quantized64(W).astype(W.dtype)

    @property
    def step_(self):
        """The finest step ``s / 2^N_max``: every rounded weight is a multiple of it."""
        check_is_fitted(self)
        n_frac = max(int(self.bits_.max(initial=1)) - 1, 0)
        return self.scale_ / 2.0**n_frac

    def _code_range(self):
        k = int(round(self.scale_ / self.step_))
        return -k, k

    def encode(self, W):
        """Integer codes of ``W`` on the finest step: ``W_q = codes * step_``.

        A weight with ``N_i`` fractional bits has a code that is a multiple of
        ``2^(N_max - N_i)``; pruned weights have code 0.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weights of the fitted shape.

        Returns
        -------
        codes : ndarray of int of shape (n_in, n_out)
            The codes, in the smallest integer dtype that holds them.
        """
        check_is_fitted(self)
        W = self._validate_W(W, reset=False)
        self._check_fitted_shape(W)
        qmin, qmax = self._code_range()
        return self._codes(W).astype(code_dtype(qmin, qmax))

    def decode(self, codes, dtype=np.float64):
        """Return the weights of integer codes from :meth:`encode`.

        Parameters
        ----------
        codes : array-like of int of shape (n_in, n_out)
            Codes.
        dtype : {np.float32, np.float64}, default=np.float64
            Output dtype.

        Returns
        -------
        W_q : ndarray of shape (n_in, n_out)
            ``codes * step_``.
        """
        check_is_fitted(self)
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            raise TypeError(
                "codes of AdaptivePrecisionQuantizer.decode must be integers, got "
                f"codes.dtype={codes.dtype!s} instead."
            )
        self._check_fitted_shape(codes, "codes")
        return self.compress_codes(codes, dtype).dequantize()

    def compress_codes(self, codes, dtype=None):
        """A :class:`~skquant.QuantizedTensor` of codes from :meth:`encode`.

        Parameters
        ----------
        codes : ndarray of int of shape (n_in, n_out)
            Codes.
        dtype : dtype, default=None
            Float dtype of the dequantized values (float64 when ``None``).

        Returns
        -------
        qt : QuantizedTensor
            Alphabet ``"fixed_point"``, one power-of-two scale (the finest step),
            and the per-parameter bits as its precision map.
        """
        from .._tensor._packing import QuantizedTensor

        qmin, qmax = self._code_range()
        return QuantizedTensor(
            codes=codes,
            scale=np.array([self.step_]),
            n_bits=max(int(self.bits_.max(initial=1)), 1),
            qmin=qmin,
            qmax=qmax,
            alphabet="fixed_point",
            float_dtype=np.dtype(dtype) if dtype is not None else None,
            precision_bits=self.bits_,
            group_size=self.group_size,
            map_coder=self.map_coder,
            payload_coder=self.payload_coder,
        )

    def compress(self, W):
        """Quantize ``W`` into a :class:`~skquant.QuantizedTensor`.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weights of the fitted shape.

        Returns
        -------
        qt : QuantizedTensor
            ``qt.dequantize()`` equals ``transform(W)``; ``qt.size_bits`` equals
            ``size_bits_`` (payload, coded precision map, exponent), and
            :func:`skquant.save` writes those bytes plus a header.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> import skquant
        >>> rng = np.random.default_rng(0)
        >>> W = rng.standard_normal((300, 20))
        >>> G = rng.standard_normal((300, 20)) * 1e-2
        >>> q = skquant.AdaptivePrecisionQuantizer(budget=0.05).fit(W, gradient=G)
        >>> path = os.path.join(tempfile.mkdtemp(), "w.skq")
        >>> skquant.save(q.compress(W), path)
        >>> back = skquant.load(path)
        >>> bool(np.array_equal(back.dequantize(), q.transform(W)))
        True
        >>> back.size_bits == q.size_bits_
        True
        """
        W = self._validate_W(W, reset=False)
        return self.compress_codes(self.encode(W), W.dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def mlp_loss_gradient(mlp, X, y):
    """Mean log-loss of a fitted ``MLPClassifier`` and its gradient (NumPy).

    The loss is the mean cross-entropy of the network's output (softmax for several
    classes, logistic for two), without scikit-learn's L2 penalty ``alpha``
    (:meth:`skquant._network.MLPNetwork.loss_gradients`).

    Parameters
    ----------
    mlp : MLPClassifier
        A fitted classifier.
    X : array-like of shape (n_samples, n_features)
        Inputs.
    y : array-like of shape (n_samples,)
        Labels.

    Returns
    -------
    loss : float
        The mean log-loss.
    grads : list of ndarray
        Gradients with respect to ``coefs_`` then ``intercepts_`` (same order and
        shapes as ``mlp.coefs_ + mlp.intercepts_``).
    """
    from .._network._drivers import MLPNetwork

    network = MLPNetwork(mlp)
    loss, grads = network.loss_gradients(network.check_targets(X, y))
    return loss, list(grads.values())


class AdaptiveQuantizationResult:
    """What the iterative adaptive-precision drivers return.

    Attributes
    ----------
    model : object
        A copy of the network with its parameters quantized.
    history : list of dict
        One entry per accepted iteration (the first is the float network):
        ``loss``, ``accuracy`` (when evaluation data was given), ``payload_bits``
        and ``map_bits`` (as stored), ``map_bits_fixed`` and ``map_bits_entropy``
        (the map by formula, for comparison), ``total_bits`` (the stored bytes of
        every tensor, times 8), ``bits_per_param``, ``predicted_increase`` and
        ``measured_increase`` of the step.
    bits : list of ndarray
        Stored bits of every parameter (0 = pruned), tensor by tensor.
    n_params : int
        Number of parameters.
    stop_reason : str
        Why the loop stopped.
    tensors : list of QuantizedTensor or None
        The stored form of every parameter (``(n_rows, n_channels)`` views),
        ``None`` when no step was accepted; :meth:`save` writes them.
    names : list of str or None
        The parameters' names (set by the network drivers), in the order of
        ``bits`` and ``tensors``; :meth:`save` uses them by default.
    """

    def __init__(
        self, model, history, bits, n_params, stop_reason, tensors=None, names=None
    ):
        self.model = model
        self.history = history
        self.bits = bits
        self.n_params = n_params
        self.stop_reason = stop_reason
        self.tensors = tensors
        self.names = names

    def save(self, path, names=None):
        """Write the stored tensors of the quantized parameters to a skquant file.

        The file's length is ``history[-1]["total_bits"] / 8`` plus a header:
        :func:`skquant.load` reads back the tensors, in their ``(n_rows,
        n_channels)`` views, whose ``dequantize()`` gives the model's parameters.

        Parameters
        ----------
        path : str or path-like
            The file.
        names : list of str, default=None
            A name per parameter; ``None`` takes :attr:`names`, or ``"p0"``,
            ``"p1"``, ... when the result has none.
        """
        from .._tensor._io import save

        if self.tensors is None:
            raise ValueError(
                "no step was accepted: the result holds the float parameters, "
                "which have no fixed-point stored form."
            )
        names = names or self.names or [f"p{i}" for i in range(len(self.tensors))]
        save(dict(zip(names, self.tensors)), path)

    def plot_history(self, ax=None):
        """Loss and total bits per parameter against the iteration.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw the loss; the bits go on a twin axis.

        Returns
        -------
        ax : matplotlib Axes
            The loss axes.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        it = range(len(self.history))
        ax.plot(it, [h["loss"] for h in self.history], "o-", color="C0")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss", color="C0")
        ax2 = ax.twinx()
        ax2.plot(it, [h["bits_per_param"] for h in self.history], "s--", color="C1")
        ax2.set_ylabel("bits per parameter (payload + map)", color="C1")
        return ax

    def __repr__(self):
        last = self.history[-1]
        return (
            f"AdaptiveQuantizationResult(iterations={len(self.history) - 1}, "
            f"loss={last['loss']:.4g}, bits_per_param={last['bits_per_param']:.3f}, "
            f"stop_reason={self.stop_reason!r})"
        )


def _check_positive(value, name):
    """A positive finite number, or a ValueError naming ``name``."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"{name} must be a positive finite number, got {name}={value!r} instead."
        )
    return float(value)


def _check_loop_params(trust_region, max_iter, max_bits):
    _check_positive(trust_region, "trust_region")
    for name, value, low in (("max_iter", max_iter, 1), ("max_bits", max_bits, 1)):
        if not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(
                f"{name} must be an int >= {low}, got {name}={value!r} instead."
            )


def _check_bound(loss_bound, relative, loss0):
    loss_bound = _check_positive(loss_bound, "loss_bound")
    return loss0 * (1.0 + loss_bound) if relative else loss_bound


def adaptive_precision_loop(
    params,
    loss_and_grad,
    set_params,
    *,
    loss_bound,
    relative=True,
    trust_region=0.05,
    max_iter=10,
    max_bits=24,
    group_size=None,
    group_margin="smallest",
    channel_axes=None,
    map_coder="auto",
    payload_coder="range",
    retrain=None,
    retrain_steps=50,
    retrain_lr=1e-3,
    retrain_gradient=None,
    evaluate=None,
    verbose=False,
    n_jobs=None,
):
    """The iterative method of Khoram & Li, framework-free.

    Alternates: loss and gradient at the current parameters; margins from the
    remaining budget ``l_bar - L_k`` (one water level for all parameters); fixed-point
    quantization; loss check. A step whose measured loss exceeds the bound is
    retried with half the budget (up to 4 times). Stops when the total size stops
    shrinking, the bound binds, or after ``max_iter`` steps.

    With ``retrain``, every accepted step is followed by ``retrain_steps`` full-batch
    Adam steps on the loss before the next allocation (the next step then starts
    from a lower loss, so with a larger budget): ``"ste"`` keeps every parameter on
    its current fixed-point grid (the gradient at the rounded parameters updates
    float latent copies, a straight-through estimator; the result is on the grid,
    so no size is lost), ``"pruned"`` trains the kept parameters in float with the
    pruned ones held at zero (the next step rounds them again). Deterministic: no
    randomness is drawn.

    Parameters
    ----------
    params : list of ndarray
        The float parameters.
    loss_and_grad : callable
        ``loss_and_grad(params) -> (loss, grads)`` for a list of parameters.
    set_params : callable
        ``set_params(params) -> model``: a model holding these parameters.
    loss_bound : float
        ``l_bar`` as a fraction above the float loss (``relative=True``:
        ``l_bar = L_0 (1 + loss_bound)``) or as an absolute loss.
    relative : bool, default=True
        How to read ``loss_bound``.
    trust_region : float, default=0.05
        Largest margin, as a fraction of each tensor's power-of-two range.
    max_iter : int, default=10
        Largest number of steps.
    max_bits : int, default=24
        Largest number of fractional bits.
    group_size : None, "channel" or int, default=None
        One precision per parameter, per output channel, or per ``group_size``
        consecutive weights of a channel (see :func:`allocate_precision`).
    group_margin : {"smallest", "pooled"}, default="smallest"
        How a group's margin is chosen (see :func:`allocate_precision`).
    channel_axes : list of int, default=None
        The output-channel axis of every parameter (default 0).
    map_coder : str, default="auto"
        Coder of the stored precision maps (see :mod:`skquant._fixedpoint`).
    payload_coder : str, default="range"
        Coder of the stored payloads.
    retrain : {None, "ste", "pruned"}, default=None
        Fine-tuning between steps (off by default).
    retrain_steps : int, default=50
        Adam steps of each fine-tune.
    retrain_lr : float, default=1e-3
        Adam's learning rate, as a fraction of each tensor's power-of-two range.
    retrain_gradient : callable, default=None
        ``retrain_gradient(params, t) -> (loss, grads)`` for the ``t``-th Adam
        step (a minibatch, say); ``None`` uses ``loss_and_grad`` (full batch).
    evaluate : callable, default=None
        ``evaluate(model) -> accuracy``, recorded in the history.
    verbose : bool, default=False
        Progress bar with the loss and the size.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    result : AdaptiveQuantizationResult
        The quantized model, the history, the per-parameter bits and the stored
        tensors.
    """
    from .._common._progress import progress
    from .._tensor._fixedpoint import (
        check_group_size,
        check_map_coder,
        check_payload_coder,
    )

    _check_loop_params(trust_region, max_iter, max_bits)
    check_group_size(group_size)
    check_map_coder(map_coder)
    check_payload_coder(payload_coder)
    if retrain not in (None, "ste", "pruned"):
        raise ValueError(
            f"retrain must be None, 'ste' or 'pruned', got retrain={retrain!r} instead."
        )
    if retrain is not None:
        if isinstance(retrain_steps, bool) or not (
            isinstance(retrain_steps, numbers.Integral) and retrain_steps >= 1
        ):
            raise ValueError(
                "retrain_steps must be an int >= 1, got "
                f"retrain_steps={retrain_steps!r} instead."
            )
        _check_positive(retrain_lr, "retrain_lr")
    params = [np.asarray(p, dtype=np.float64).copy() for p in params]
    n_params = sum(p.size for p in params)
    loss, grads = loss_and_grad(params)
    l_bar = _check_bound(loss_bound, relative, loss)
    if l_bar <= loss:
        raise ValueError(
            f"loss_bound gives l_bar={l_bar:.6g}, not above the current loss "
            f"{loss:.6g}: there is no budget to spend. Pass a larger loss_bound."
        )
    float_bits = 32 * n_params
    history = [
        {
            "loss": loss,
            "payload_bits": float_bits,
            "map_bits": 0,
            "map_bits_fixed": 0,
            "map_bits_entropy": 0,
            "total_bits": float_bits,
            "bits_per_param": 32.0,
            "predicted_increase": 0.0,
            "measured_increase": 0.0,
        }
    ]
    if evaluate is not None:
        history[0]["accuracy"] = evaluate(set_params(params))
    best, best_bits, best_tensors, grid_scales = None, None, None, None
    stop = f"max_iter={max_iter} reached"
    bar = progress(range(max_iter), desc="adaptive precision", enabled=verbose)
    for _ in bar:
        if retrain is not None and best is not None:
            params = _retrain(
                params,
                best_bits,
                grid_scales,
                retrain_gradient or (lambda p, t: loss_and_grad(p)),
                retrain,
                retrain_steps,
                retrain_lr,
                group_size is not None,
            )
            loss, grads = loss_and_grad(params)
        budget = l_bar - loss
        if budget <= 0:
            stop = "loss bound binds"
            break
        for _retry in range(5):
            res = allocate_precision(
                params,
                grads,
                budget,
                trust_region,
                max_bits=max_bits,
                group_size=group_size,
                group_margin=group_margin,
                channel_axes=channel_axes,
                map_coder=map_coder,
                payload_coder=payload_coder,
                n_jobs=n_jobs,
            )
            new_loss, new_grads = loss_and_grad(res["quantized"])
            if new_loss <= l_bar:
                break
            budget /= 2
        else:
            stop = "no step kept the loss under the bound"
            break
        metas = [t.encoded()[0] for t in res["tensors"]]
        payload = sum(m["payload_bits"] for m in metas)
        total = res["size_bits"]
        maps = precision_map_bits(
            np.concatenate([b.ravel() for b in res["bits"]])
        )  # formulas, for comparison with the stored map
        entry = {
            "loss": new_loss,
            "payload_bits": payload,
            "map_bits": total - payload - 16 * len(res["tensors"]),
            "map_bits_fixed": maps["fixed"],
            "map_bits_entropy": maps["entropy"],
            "total_bits": total,
            "bits_per_param": total / n_params,
            "predicted_increase": res["predicted_increase"],
            "measured_increase": new_loss - loss,
        }
        if total >= history[-1]["total_bits"] and best is not None:
            stop = "size stopped shrinking"
            break
        model = set_params(res["quantized"])
        if evaluate is not None:
            entry["accuracy"] = evaluate(model)
        history.append(entry)
        bar.set_postfix(f"loss {new_loss:.4g} bits/param {total / n_params:.2f}")
        params, loss, grads = res["quantized"], new_loss, new_grads
        best, best_bits, best_tensors = model, res["bits"], res["tensors"]
        grid_scales = res["scales"]
    if best is None:
        best, best_bits = (
            set_params(params),
            [np.full(p.shape, 32, np.int8) for p in params],
        )
    return AdaptiveQuantizationResult(
        best, history, best_bits, n_params, stop, tensors=best_tensors
    )


def _retrain(params, bits, scales, gradient, mode, steps, lr, grouped):
    """Full-batch Adam on the loss between two steps of the loop.

    ``"ste"``: the loss and gradient are taken at the latent parameters rounded
    to their fixed-point grids (``bits``, ``scales``), and the result is rounded;
    ``"pruned"``: float parameters, the pruned ones (0 bits) held at zero.
    """
    n_frac = [b.astype(np.int64) - 1 for b in bits]
    keep = [b > 0 for b in bits]

    def snap(z):
        if mode == "pruned":
            return [np.where(k, v, 0.0) for v, k in zip(z, keep)]
        return [
            _round_fixed(np.clip(v / s, -1.0, 1.0), n, clip=grouped) * s
            for v, s, n in zip(z, scales, n_frac)
        ]

    z = [np.array(p, dtype=np.float64) for p in params]
    m = [np.zeros_like(v) for v in z]
    v2 = [np.zeros_like(v) for v in z]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        _, grads = gradient(snap(z), t - 1)
        for i, g in enumerate(grads):
            g = np.where(keep[i], g, 0.0)
            m[i] = b1 * m[i] + (1 - b1) * g
            v2[i] = b2 * v2[i] + (1 - b2) * g * g
            step = lr * scales[i] * (m[i] / (1 - b1**t))
            z[i] = z[i] - step / (np.sqrt(v2[i] / (1 - b2**t)) + eps)
    return snap(z)


def adaptive_quantize_mlp(
    mlp,
    X,
    y,
    *,
    loss_bound=0.1,
    relative=True,
    trust_region=0.05,
    max_iter=10,
    max_bits=24,
    group_size=None,
    group_margin="smallest",
    map_coder="auto",
    payload_coder="range",
    retrain=None,
    retrain_steps=50,
    retrain_lr=1e-3,
    retrain_batch_size=None,
    retrain_data=None,
    random_state=None,
    X_eval=None,
    y_eval=None,
    verbose=False,
    n_jobs=None,
):
    """Khoram & Li's iterative adaptive precision on a fitted ``MLPClassifier``.

    Every parameter (weights and biases) gets its own fixed-point precision; the loss
    (mean log-loss on ``X, y``, gradient in NumPy by :func:`mlp_loss_gradient`) stays
    within the bound.

    Parameters
    ----------
    mlp : MLPClassifier
        A fitted classifier (left unchanged).
    X : array-like of shape (n_samples, n_features)
        Data for the loss and its gradient.
    y : array-like of shape (n_samples,)
        Labels.
    loss_bound : float, default=0.1
        Allowed loss, relative to the float loss (``relative=True``: 10% above) or
        absolute.
    relative : bool, default=True
        How to read ``loss_bound``.
    trust_region : float, default=0.05
        Largest margin, as a fraction of each tensor's power-of-two range.
    max_iter : int, default=10
        Largest number of steps.
    max_bits : int, default=24
        Largest number of fractional bits.
    group_size : None, "channel" or int, default=None
        One precision per parameter, per output neuron (``"channel"``) or per
        ``group_size`` consecutive weights of a neuron.
    group_margin : {"smallest", "pooled"}, default="smallest"
        How a group's margin is chosen (see :func:`allocate_precision`).
    map_coder : str, default="auto"
        Coder of the stored precision maps.
    payload_coder : str, default="range"
        Coder of the stored payloads.
    retrain : {None, "ste", "pruned"}, default=None
        Fine-tune between steps (see :func:`adaptive_precision_loop`).
    retrain_steps : int, default=50
        Full-batch Adam steps of each fine-tune.
    retrain_lr : float, default=1e-3
        Adam's learning rate, relative to each tensor's range.
    retrain_batch_size : int, default=None
        Rows per fine-tune step (shuffled minibatches); ``None``: all of ``X``.
    retrain_data : tuple of (X, y), default=None
        Data of the fine-tune (the training set, say); ``None``: ``(X, y)``,
        the loss's data.
    random_state : int, default=None
        Seed of the minibatches' order.
    X_eval, y_eval : array-like, default=None
        Data whose accuracy the history records.
    verbose : bool, default=False
        Progress bar.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    result : AdaptiveQuantizationResult
        ``result.model`` is the quantized copy of ``mlp``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neural_network import MLPClassifier
    >>> from skquant import adaptive_quantize_mlp
    >>> X, y = load_digits(return_X_y=True)
    >>> X = X / 16
    >>> mlp = MLPClassifier((32,), max_iter=300, random_state=0).fit(X, y)
    >>> res = adaptive_quantize_mlp(mlp, X, y, loss_bound=0.5)
    >>> res.history[-1]["bits_per_param"] < 16, res.model.score(X, y) > 0.95
    (True, True)
    """
    from .._network._drivers import MLPNetwork

    network = MLPNetwork(mlp)
    data = network.check_targets(X, y)
    evaluate = None
    if X_eval is not None:

        def evaluate(model):
            return float(model.score(X_eval, y_eval))

    return adaptive_quantize_network(
        network,
        data,
        loss_bound=loss_bound,
        relative=relative,
        trust_region=trust_region,
        max_iter=max_iter,
        max_bits=max_bits,
        group_size=group_size,
        group_margin=group_margin,
        map_coder=map_coder,
        payload_coder=payload_coder,
        retrain=retrain,
        retrain_steps=retrain_steps,
        retrain_lr=retrain_lr,
        retrain_batch_size=retrain_batch_size,
        retrain_data=None
        if retrain_data is None
        else network.check_targets(*retrain_data),
        random_state=random_state,
        evaluate=evaluate,
        verbose=verbose,
        n_jobs=n_jobs,
    )


def _gradient_on(network, names, data, params):
    """Loss on ``data`` and its gradient, as a list in the order of ``names``."""
    loss, grads = network.loss_gradients(data, dict(zip(names, params)))
    return loss, [np.asarray(grads[k], dtype=np.float64) for k in names]


def _minibatch_gradient(network, names, data, batch_size, seed):
    """``(params, t) -> (loss, grads)`` on the ``t``-th minibatch of ``data``.

    A pair ``(X, y)`` is cut into shuffled batches of ``batch_size`` rows, one new
    permutation per pass (``np.random.default_rng(seed)``); a list of batches is
    cycled through in order.
    """
    if batch_size is None:  # full batches of the retraining data
        return lambda params, t: _gradient_on(network, names, data, params)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(
            "retrain_batch_size must be a positive int or None, got "
            f"retrain_batch_size={batch_size!r} instead."
        )
    if isinstance(data, tuple) and len(data) == 2:
        X, y = data
        n = len(X)
        rng = np.random.default_rng(seed)
        order, pos = rng.permutation(n), 0
        batches = None
    else:
        batches = list(data)

    def gradient(params, t):
        nonlocal order, pos
        if batches is not None:
            batch = batches[t % len(batches)]
        else:
            if pos >= n:
                order, pos = rng.permutation(n), 0
            idx = np.sort(order[pos : pos + batch_size])
            pos += batch_size
            batch = (X[idx], y[idx])
        return _gradient_on(network, names, batch, params)

    return gradient


def adaptive_quantize_network(network, data, **options):
    """The adaptive-precision loop over any :class:`~skquant._network.Network`.

    Every parameter of the network gets its own precision (the one driver behind
    :func:`adaptive_quantize_mlp` and ``skquant.torch.adaptive_quantize_model``).

    Parameters
    ----------
    network : Network
        The float network (left unchanged).
    data : object
        Data for the loss, in the adapter's format.
    **options : dict
        Passed to :func:`adaptive_precision_loop` (``loss_bound``, ...).

    Returns
    -------
    result : AdaptiveQuantizationResult
        ``result.model`` is the quantized copy of ``network.model``;
        ``result.names`` the parameters' names, in the order of
        ``result.tensors``.
    """
    start = network.parameters()
    names = list(start)
    batch_size = options.pop("retrain_batch_size", None)
    seed = options.pop("random_state", None)
    retrain_data = options.pop("retrain_data", None)
    if options.get("retrain") is not None and (
        batch_size is not None or retrain_data is not None
    ):
        options["retrain_gradient"] = _minibatch_gradient(
            network,
            names,
            data if retrain_data is None else retrain_data,
            batch_size,
            seed,
        )

    def loss_and_grad(params):
        return _gradient_on(network, names, data, params)

    def set_params(params):
        return network.with_parameters(dict(zip(names, params))).model

    options.setdefault("channel_axes", [network.output_axis(n) for n in names])
    result = adaptive_precision_loop(
        [start[n] for n in names], loss_and_grad, set_params, **options
    )
    result.names = list(names)
    return result
