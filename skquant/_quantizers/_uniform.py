"""Memoryless scalar quantizers of weight matrices: uniform, binary, ternary."""

import numbers

import numpy as np
from sklearn.utils._param_validation import StrOptions

from .._common._checks import Interval
from .._kernels import _msq, check_device, torch_kernels
from .._tensor import _alphabets
from ._base import BaseWeightQuantizer

__all__ = ["BinaryQuantizer", "TernaryQuantizer", "UniformQuantizer"]

_SCALE_CONSTRAINT = ["array-like", Interval(numbers.Real, 0, None, closed="neither")]


class UniformQuantizer(BaseWeightQuantizer):
    """Symmetric b-bit uniform quantizer of weight matrices (memoryless, MSQ).

    Every weight is rounded independently to the nearest point of the grid
    ``scale * {-K, ..., K}``, ``K = 2**(n_bits - 1) - 1``, whose codes fit a signed
    ``n_bits``-bit integer (the "narrow" symmetric range: ``-2**(n_bits-1)`` is not
    used, so zero is exact and the grid is symmetric). The scale is learned per
    output channel (column of ``W``) or per tensor.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    n_bits : int, default=4
        Bits per weight, 2 to 16.
    granularity : {"per_channel", "per_tensor"}, default="per_channel"
        One scale per output channel (column of ``W``) or one for the whole matrix.
    scale : {"maxabs", "percentile", "mse"}, float or array-like, default="maxabs"
        How the step is chosen: ``"maxabs"`` puts ``max|w|`` on the last grid point
        (no clipping); ``"percentile"`` puts the ``percentile``-th percentile of
        ``|w|`` there (the rest is clipped); ``"mse"`` searches the clipping that
        minimises the squared error, at 1% resolution. A positive float, or an
        array with one step per channel, fixes the step.
    percentile : float, default=99.9
        Percentile of ``|w|`` used by ``scale="percentile"``.
    n_jobs : int, default=None
        Number of numba threads used by :meth:`fit` and :meth:`transform`; ``None``
        means 1, ``-1`` means all. The previous thread count is restored afterwards.
    device : None, str or torch.device, default=None
        Where the rounding of :meth:`encode` and :meth:`transform` runs: ``None``,
        the numba kernels; a torch device (``"cuda"``, ``"cpu"``), torch
        operations on it (needs PyTorch), bit for bit the same codes (the same
        product, rounding half to even and clip in ``W``'s dtype). The scales are
        fitted by NumPy either way.

    Attributes
    ----------
    scale_ : ndarray of shape (n_out,) or (1,)
        Step of each channel's grid (one entry with ``granularity="per_tensor"``),
        in float32 whatever the dtype of ``W`` (the stored scale: codes and
        dequantized values are computed against it).
    qmin_ : int
        Smallest code, ``-K``.
    qmax_ : int
        Largest code, ``K``.
    n_bits_ : int
        Bits stored per weight.
    n_features_in_ : int
        Number of output channels (columns of ``W``) seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        The channels' names: ``W``'s string column names in :meth:`fit`.

    See Also
    --------
    BinaryQuantizer : One bit per weight, ``{-a, +a}``.
    TernaryQuantizer : ``{-a, 0, +a}``, two bits per weight.

    Notes
    -----
    Rounding is half to even (``np.rint``, the same as ``torch.round``), computed as
    ``rint(w * (1 / scale))`` in ``W``'s dtype; codes are clipped to ``[-K, K]``.
    Inside the range ``|w - Q(w)| <= scale / 2`` up to one rounding of the
    product. The step is stored in float32 whatever ``W``'s dtype, rounded up (a
    relative change below ``2**-23``; max-abs still clips nothing), and every code
    and dequantized value is computed against the stored step, converted exactly
    to ``W``'s dtype. An all-zero
    channel (or one whose step would be below float32's smallest normal number,
    with a warning) gets the step ``finfo(float32).eps``: weights below about
    ``1e-38`` quantize to 0 (to ``+-eps`` under the binary alphabet, which has
    no 0); a ``scale`` given below that number is refused. A step beyond
    float32's largest number (float64 weights above about ``3e38 * K``) is that
    number, and the weights beyond ``K`` times it are clipped.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import UniformQuantizer
    >>> W = np.array([[0.75, -1.5], [0.375, 0.3], [-0.1, 3.0]])
    >>> q = UniformQuantizer(n_bits=3).fit(W)
    >>> q.scale_
    array([0.25, 1.  ], dtype=float32)
    >>> q.encode(W)  # 0.375 / 0.25 = 1.5 and -1.5 / 1 round to the even code
    array([[ 3, -2],
           [ 2,  0],
           [ 0,  3]], dtype=int8)
    >>> q.transform(W)
    array([[ 0.75, -2.  ],
           [ 0.5 ,  0.  ],
           [ 0.  ,  3.  ]])
    """

    _parameter_constraints: dict = {
        **BaseWeightQuantizer._parameter_constraints,
        "n_bits": [Interval(numbers.Integral, 2, 16, closed="both")],
        "scale": [StrOptions({"maxabs", "percentile", "mse"}), *_SCALE_CONSTRAINT],
        "percentile": [Interval(numbers.Real, 0, 100, closed="right")],
        "device": "no_validation",
    }

    #: for instances pickled before the parameter existed
    device = None

    def __init__(
        self,
        n_bits=4,
        *,
        granularity="per_channel",
        scale="maxabs",
        percentile=99.9,
        n_jobs=None,
        device=None,
    ):
        self.n_bits = n_bits
        self.granularity = granularity
        self.scale = scale
        self.percentile = percentile
        self.n_jobs = n_jobs
        self.device = device

    def _device_codes(self, W, level):
        """The codes from torch on ``device``, in ``W``'s dtype (or None)."""
        device = check_device(self.device, type(self).__name__)
        if device is None:
            return None
        dtype = W.dtype.type
        inv = (dtype(1) / level).astype(W.dtype)
        return torch_kernels().msq_codes(
            W, inv, np.zeros_like(level), self.qmin_, self.qmax_, device
        )

    def _fake_quantize(self, W, level, out):
        q = self._device_codes(W, level)
        if q is None:
            return super()._fake_quantize(W, level, out)
        np.multiply(q, level, out=out)

    def _quantize(self, W, level, out):
        q = self._device_codes(W, level)
        if q is None:
            return super()._quantize(W, level, out)
        out[...] = q

    def _code_range(self):
        qmin, qmax = _alphabets.uniform_range(self.n_bits)
        return qmin, qmax, self.n_bits

    def _fit_scale(self, Wc, rule, qmin, qmax):
        if rule == "maxabs":
            return _alphabets.maxabs_step(Wc, qmax)
        if rule == "percentile":
            return _alphabets.percentile_absmax(Wc, self.percentile) / qmax
        return _alphabets.mse_optimal_step(Wc, qmin, qmax, n_jobs=self.n_jobs)


class TernaryQuantizer(BaseWeightQuantizer):
    """Ternary quantizer ``{-a, 0, +a}`` of weight matrices, two bits per weight.

    Every weight is rounded to the nearest of ``{-a, 0, +a}`` (threshold ``a / 2``),
    with one level ``a`` per output channel or per tensor.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    granularity : {"per_channel", "per_tensor"}, default="per_channel"
        One level per output channel (column of ``W``) or one for the whole matrix.
    scale : {"optimal", "twn"}, float or array-like, default="optimal"
        The level ``a``. ``"optimal"`` minimises ``||w - Q(w)||_2`` exactly over the
        level and the ternary codes together (``O(n log n)`` per channel, see
        Notes). ``"twn"`` follows ternary weight networks (Li, Zhang & Liu, 2016):
        ``a`` is the mean of the ``|w|`` above ``0.7 * mean|w|``. A positive float
        or an array with one level per channel fixes it.
    n_jobs : int, default=None
        Number of numba threads used by :meth:`fit` and :meth:`transform`; ``None``
        means 1, ``-1`` means all.

    Attributes
    ----------
    scale_ : ndarray of shape (n_out,) or (1,)
        The level ``a`` of each channel, in float32 (the stored scale).
    qmin_ : int
        Smallest code, -1.
    qmax_ : int
        Largest code, 1.
    n_bits_ : int
        Bits stored per weight, 2 (the entropy bound is ``log2(3) = 1.585``).
    n_features_in_ : int
        Number of output channels (columns of ``W``) seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        The channels' names: ``W``'s string column names in :meth:`fit`.

    See Also
    --------
    UniformQuantizer : Grids of b bits; ``n_bits=2`` has the same alphabet with the
        max-abs level.
    BinaryQuantizer : One bit per weight.

    Notes
    -----
    For a support of ``k`` nonzero codes the best choice is the ``k`` largest
    ``|w_i|`` with ``a`` their mean, leaving the squared error
    ``||w||^2 - S_k^2 / k`` (``S_k`` the sum of the ``k`` largest ``|w_i|``);
    ``"optimal"`` takes the ``k`` maximising ``S_k^2 / k``. At that optimum every
    kept ``|w_i|`` is at least ``a / 2`` and every dropped one at most ``a / 2``, so
    rounding to the nearest of ``{-a, 0, a}`` (which :meth:`transform` does on any
    matrix) reproduces it. Ties at exactly ``a / 2`` round to 0.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import TernaryQuantizer
    >>> W = np.array([[1.0], [0.9], [0.1], [-1.1]])
    >>> q = TernaryQuantizer().fit(W)
    >>> q.scale_
    array([1.], dtype=float32)
    >>> q.transform(W).ravel()
    array([ 1.,  1.,  0., -1.])
    """

    _parameter_constraints: dict = {
        **BaseWeightQuantizer._parameter_constraints,
        "scale": [StrOptions({"optimal", "twn"}), *_SCALE_CONSTRAINT],
    }
    _alphabet = "ternary"

    def __init__(self, *, granularity="per_channel", scale="optimal", n_jobs=None):
        self.granularity = granularity
        self.scale = scale
        self.n_jobs = n_jobs

    def _code_range(self):
        return -1, 1, 2

    def _fit_scale(self, Wc, rule, qmin, qmax):
        if rule == "optimal":
            return _alphabets.ternary_optimal_level(Wc, n_jobs=self.n_jobs)
        return _alphabets.ternary_twn_level(Wc)


class BinaryQuantizer(BaseWeightQuantizer):
    """Binary quantizer ``{-a, +a}`` of weight matrices, one bit per weight.

    Every weight becomes ``a * sign(w)``, with ``sign(0) = +1``; ``a`` is learned
    per output channel or per tensor.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    granularity : {"per_channel", "per_tensor"}, default="per_channel"
        One level per output channel (column of ``W``) or one for the whole matrix.
    scale : {"mean"}, float or array-like, default="mean"
        The level ``a``. ``"mean"`` takes ``mean|w|``, which minimises
        ``||w - a sign(w)||_2`` (XNOR-Net's rule). A positive float or an array with
        one level per channel fixes it.
    n_jobs : int, default=None
        Number of numba threads used by :meth:`transform`; ``None`` means 1, ``-1``
        means all.

    Attributes
    ----------
    scale_ : ndarray of shape (n_out,) or (1,)
        The level ``a`` of each channel, in float32 (the stored scale).
    qmin_ : int
        Smallest code, -1.
    qmax_ : int
        Largest code, 1 (the code 0 is never used).
    n_bits_ : int
        Bits stored per weight, 1.
    n_features_in_ : int
        Number of output channels (columns of ``W``) seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        The channels' names: ``W``'s string column names in :meth:`fit`.

    See Also
    --------
    TernaryQuantizer : ``{-a, 0, +a}``, two bits per weight.
    UniformQuantizer : Grids of b bits.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import BinaryQuantizer
    >>> W = np.array([[0.5, -2.0], [-1.5, 0.0]])
    >>> q = BinaryQuantizer().fit(W)
    >>> q.scale_
    array([1., 1.], dtype=float32)
    >>> q.transform(W)
    array([[ 1., -1.],
           [-1.,  1.]])
    """

    _parameter_constraints: dict = {
        **BaseWeightQuantizer._parameter_constraints,
        "scale": [StrOptions({"mean"}), *_SCALE_CONSTRAINT],
    }
    _alphabet = "binary"

    def __init__(self, *, granularity="per_channel", scale="mean", n_jobs=None):
        self.granularity = granularity
        self.scale = scale
        self.n_jobs = n_jobs

    def _code_range(self):
        return -1, 1, 1

    def _fit_scale(self, Wc, rule, qmin, qmax):
        return _alphabets.absmean(Wc)

    def _fake_quantize(self, W, level, out):
        _alphabets.kernel_for(_msq, "sign_fake_quantize", self.n_jobs)(W, level, out)

    def _quantize(self, W, level, out):
        ones = np.ones_like(level)
        _alphabets.kernel_for(_msq, "sign_fake_quantize", self.n_jobs)(W, ones, out)


def level_quantizer(alphabet):
    """The memoryless quantizer class of a two- or three-level alphabet.

    Parameters
    ----------
    alphabet : Alphabet or {"binary", "ternary"}
        The alphabet record, or its user-facing name.

    Returns
    -------
    cls : type
        :class:`BinaryQuantizer` or :class:`TernaryQuantizer`.
    """
    if not isinstance(alphabet, _alphabets.Alphabet):
        alphabet = _alphabets.alphabet_from(alphabet)
    return BinaryQuantizer if alphabet.is_binary else TernaryQuantizer
