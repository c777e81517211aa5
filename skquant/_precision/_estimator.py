"""AdaptivePrecisionQuantizer: the allocation as a scikit-learn estimator over one
weight matrix.
"""

import numbers

import numpy as np
from sklearn.base import (
    BaseEstimator,
    OneToOneFeatureMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import metadata_routing
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from .._common._blocks import row_blocks
from .._common._checks import Interval, check_float_dtype, check_matrix
from .._common._jobs import N_JOBS
from .._quantizers._base import validate_weights
from .._tensor._alphabets import code_dtype
from .._tensor._fixedpoint import group_starts
from .._tensor._qtensor import QuantizedTensor
from ._allocate import (
    allocate_precision,
    power_of_two_scale,
    precision_map_bits,
    round_fixed,
)

__all__ = ["AdaptivePrecisionQuantizer"]


#: entries per block of rows in the elementwise passes
BLOCK_ENTRIES = 1 << 16


class AdaptivePrecisionQuantizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
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
    range_ : float
        The power of two ``s`` at or above ``max|W|``: the range the precisions
        are counted in.
    scale_ : float
        The grid step of the codes (the finest step ``s / 2^N_max``): every
        rounded weight is ``code * scale_`` (the convention of every quantizer,
        and of torch and ONNX).
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
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        The channels' names: ``W``'s string column names in :meth:`fit`.

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
    #: ``fit`` takes the loss gradient (see the network layer's quantizer protocol)
    _fit_requires = "gradient"

    def _network_error(self):
        return None

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
        "n_jobs": N_JOBS,
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
        return validate_weights(self, W, reset)

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
        names = getattr(gradient, "columns", None)
        if names is not None and hasattr(self, "feature_names_in_"):
            if list(map(str, names)) != list(self.feature_names_in_):
                raise ValueError(  # (used by position: the channels mixed up)
                    f"gradient's columns must be W's, in W's order "
                    f"({list(self.feature_names_in_)[:8]}), got "
                    f"{list(names)[:8]} instead."
                )
        G = check_matrix(gradient, "gradient", dtype=np.float64)
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
        self.range_ = res["scales"][0]
        self.margins_ = res["margins"][0]
        self.bits_ = res["bits"][0]
        if max_frac < 0:  # even one fractional bit is subnormal: all pruned
            self.bits_ = np.zeros_like(self.bits_)
        n_frac = max(int(self.bits_.max(initial=1)) - 1, 0)
        self.scale_ = self.range_ / 2.0**n_frac
        self.kappa_ = res["kappa"]
        res = None  # its rounded weights are not needed: the codes are
        # the fitted W's codes lie in the fitted range: their own dtype holds them
        tensor = self.compress_codes(self._codes(W, code_dtype(*self._code_range())))
        meta = tensor.encoded()[0]
        self.map_coder_ = meta["map_coder"]
        terms = np.empty(W.shape)  # one array summed as a whole: the same sum
        for rows in row_blocks(W.shape, BLOCK_ENTRIES):
            terms[rows] = np.abs(G[rows]) * np.abs(
                W[rows].astype(np.float64) - self._quantized64(W, rows)
            )
        self.predicted_loss_increase_ = float(np.sum(terms))
        del terms
        self.payload_bits_ = meta["payload_bits"]
        self.size_bits_ = tensor.size_bits
        self.precision_map_bits_ = dict(
            precision_map_bits(self._map_symbols()),
            stored=self.size_bits_ - self.payload_bits_ - 16,
        )
        self.bits_per_param_ = self.size_bits_ / W.size
        return self

    def __setstate__(self, state):
        # fitted before scale_ became the grid step, scale_ held the power-of-two
        # range (now range_): give an old pickle today's names
        if "range_" not in state and "scale_" in state and "bits_" in state:
            state = dict(state)
            state["range_"] = state["scale_"]
            n_frac = max(int(state["bits_"].max(initial=1)) - 1, 0)
            state["scale_"] = state["range_"] / 2.0**n_frac
        super().__setstate__(state)

    def _map_symbols(self):
        """The precisions the map stores: one per parameter, or one per group."""

        starts = group_starts(*self.bits_.shape, self.group_size)
        return np.ascontiguousarray(self.bits_.T).ravel()[starts]

    def _check_fitted_shape(self, W, name="W"):
        if W.shape != self.bits_.shape:
            raise ValueError(
                f"{name} must have the fitted shape {self.bits_.shape}, got "
                f"{name}.shape={W.shape} instead."
            )

    def _quantized64(self, W, rows=slice(None)):
        """Rows ``rows`` of the rounded weights in float64 (exact multiples of the
        finest step)."""
        n_frac = self.bits_[rows].astype(np.int64) - 1
        x = W[rows].astype(np.float64) / self.range_
        return round_fixed(x, n_frac, clip=self.group_size is not None) * self.range_

    def _codes(self, W, dtype=np.int64):
        n_max = max(int(self.bits_.max(initial=1)) - 1, 0)
        codes = np.empty(W.shape, dtype=dtype)
        for rows in row_blocks(W.shape, BLOCK_ENTRIES):
            codes[rows] = np.rint(self._quantized64(W, rows) / self.range_ * 2.0**n_max)
        return codes

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
        out = np.empty(W.shape, dtype=W.dtype)
        for rows in row_blocks(W.shape, BLOCK_ENTRIES):
            out[rows] = self._quantized64(W, rows)
        return out

    def _code_range(self):
        k = int(round(self.range_ / self.scale_))
        return -k, k

    def encode(self, W):
        """Integer codes of ``W`` on the finest step: ``W_q = codes * scale_``.

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
        return self._encode(self._validate_W(W, reset=False))

    def _encode(self, W):
        """:meth:`encode` of a checked ``W``."""
        self._check_fitted_shape(W)
        qmin, qmax = self._code_range()
        codes = self._codes(W)
        if codes.size and (codes.min() < qmin or codes.max() > qmax):
            raise ValueError(
                f"W has values beyond the fitted range +-{self.range_:g} (its "
                f"largest |w| is {float(np.abs(W).max()):g}): their codes do not fit "
                "the fitted grid. Fit on this W instead."
            )
        return codes.astype(code_dtype(qmin, qmax))

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
            ``codes * scale_``.
        """
        # (compress_codes checks the codes and dtype, the tensor their range)
        return self.compress_codes(codes, dtype).dequantize()

    def compress_codes(self, codes, dtype=None):
        """A :class:`~skquant.QuantizedTensor` of codes from :meth:`encode`.

        Parameters
        ----------
        codes : ndarray of int of shape (n_in, n_out)
            Codes.
        dtype : {np.float32, np.float64}, default=None
            Float dtype of the dequantized values (float64 when ``None``).

        Returns
        -------
        qt : QuantizedTensor
            Alphabet ``"fixed_point"``, one power-of-two scale (the finest step),
            and the per-parameter bits as its precision map.
        """
        check_is_fitted(self)
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            raise TypeError(
                "codes of AdaptivePrecisionQuantizer must be integers, got "
                f"codes.dtype={codes.dtype!s} instead."
            )
        self._check_fitted_shape(codes, "codes")
        qmin, qmax = self._code_range()
        return QuantizedTensor(  # (which checks that the codes lie in [qmin, qmax])
            codes=codes,
            scale=np.array([self.scale_]),
            n_bits=max(int(self.bits_.max(initial=1)), 1),
            qmin=qmin,
            qmax=qmax,
            alphabet="fixed_point",
            float_dtype=check_float_dtype(dtype),
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
        check_is_fitted(self)
        W = self._validate_W(W, reset=False)
        qt = self.compress_codes(self._encode(W), W.dtype)
        try:
            qt.encoded()  # (kept by the tensor: its size and file need it)
        except ValueError as exc:
            raise ValueError(
                "the fitted precision map gives each weight of the fitted W the "
                "fewest bits that hold its code, and this W's codes do not match "
                f"it ({exc}). Compress the W that was fitted, or fit on this W."
            ) from exc
        return qt

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
