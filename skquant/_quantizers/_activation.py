"""Affine quantization of activations (features), calibrated on data."""

import numbers

import numpy as np
from sklearn.base import (
    BaseEstimator,
    OneToOneFeatureMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._common._checks import Interval
from .._common._jobs import N_JOBS
from .._common._warn import warn
from .._kernels import _msq
from .._kernels._threads import numba_threads
from .._tensor._alphabets import (
    channel_view,
    check_code_range,
    code_dtype,
    kernel_for,
    safe_scale,
    uniform_range,
)
from ._base import FLOAT_DTYPES

__all__ = ["ActivationQuantizer"]

#: the shrink factors of the range that ``calibration="mse"`` tries
MSE_SHRINKS = np.round(np.arange(1.0, 0.195, -0.01), 2)

#: rows ``calibration="mse"`` measures the error on (sampled, evenly spaced)
MSE_ROWS = 1 << 20


def _grid(lo, hi, n_bits, symmetric):
    """``(scale, zero_point, qmin, qmax)`` of the grid over ``[lo, hi]`` (with 0)."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if symmetric:
        qmin, qmax = uniform_range(n_bits)
        return np.maximum(-lo, hi) / qmax, np.zeros(lo.shape), qmin, qmax
    qmin, qmax = 0, 2**n_bits - 1
    with np.errstate(over="ignore"):
        scale = (hi - lo) / (qmax - qmin)
    # a range wider than the largest float (hi - lo overflows): the same step, in parts
    scale = np.where(np.isfinite(scale), scale, hi / (qmax - qmin) - lo / (qmax - qmin))
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(scale > 0, np.rint(qmin - lo / scale), 0)
    return scale, np.clip(zp, qmin, qmax), qmin, qmax


def _mse_shrink(Xc, lo, hi, n_bits, symmetric, block=1 << 21):
    """Per column, the factor of :data:`MSE_SHRINKS` with the least squared error
    (the first, largest, of equal ones). The rows are read ``block`` values at a
    time, in float64: the temporaries are a block's, not the data's."""
    if Xc.shape[0] > MSE_ROWS:
        Xc = Xc[:: -(-Xc.shape[0] // MSE_ROWS)]
    grids = []
    for a in MSE_SHRINKS:
        scale, zp, qmin, qmax = _grid(lo * a, hi * a, n_bits, symmetric)
        grids.append((np.where(scale > 0, scale, 1.0), zp, qmin, qmax))
    err = np.zeros((len(MSE_SHRINKS), Xc.shape[1]))
    rows = max(1, block // max(Xc.shape[1], 1))
    for r in range(0, Xc.shape[0], rows):
        X = Xc[r : r + rows].astype(np.float64)
        for i, (safe, zp, qmin, qmax) in enumerate(grids):
            q = np.clip(np.rint(X / safe) + zp, qmin, qmax)
            err[i] += (((q - zp) * safe - X) ** 2).sum(axis=0)
    return MSE_SHRINKS[np.argmin(err, axis=0)]


class ActivationQuantizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Affine b-bit quantizer of activations, calibrated on data.

    Maps each value to ``code = clip(rint(x / scale) + zero_point, qmin, qmax)`` and
    back to ``(code - zero_point) * scale``. With ``symmetric=False`` the codes are
    unsigned, ``[0, 2**n_bits - 1]``, and the grid covers the calibrated range
    ``[min, max]`` (widened to contain 0, so that 0 is exact); with ``symmetric=True``
    they are signed, ``[-K, K]`` with ``K = 2**(n_bits - 1) - 1`` and zero point 0.
    It is an ordinary transformer over ``(n_samples, n_features)`` and sits in a
    :class:`~sklearn.pipeline.Pipeline` before any estimator.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    n_bits : int, default=8
        Bits per value, 2 to 16.
    granularity : {"per_tensor", "per_feature"}, default="per_tensor"
        One scale and zero point for all features, or one per feature (column).
    symmetric : bool, default=False
        Signed grid around 0 (zero point 0) instead of an unsigned affine one.
    calibration : {"minmax", "percentile", "mse"}, default="minmax"
        Range of the grid: the observed minimum and maximum; the
        ``100 - percentile`` and ``percentile`` percentiles (clipping outliers); or
        the observed range shrunk by the factor of ``1, 0.99, ..., 0.2`` whose grid
        puts ``X`` on it with the least mean squared error (per feature with
        ``granularity="per_feature"``; on at most 2**20 sampled rows).
    percentile : float, default=99.99
        Upper percentile used by ``calibration="percentile"``.
    n_jobs : int, default=None
        Number of numba threads used by :meth:`transform`; ``None`` means 1, ``-1`` all.

    Attributes
    ----------
    scale_ : ndarray of shape (n_features,) or (1,)
        Step of the grid.
    zero_point_ : ndarray of int of shape (n_features,) or (1,)
        Code of the value 0.
    data_min_ : ndarray of shape (n_features,) or (1,)
        Calibrated lower end of the range (before widening to contain 0).
    data_max_ : ndarray of shape (n_features,) or (1,)
        Calibrated upper end of the range.
    qmin_ : int
        Smallest code.
    qmax_ : int
        Largest code.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen in :meth:`fit`, when ``X`` has string column names.

    See Also
    --------
    UniformQuantizer : Symmetric quantization of weight matrices.

    Notes
    -----
    Rounding is half to even. A feature whose calibrated range is ``[0, 0]`` gets
    the scale ``finfo(dtype).eps`` and maps every value to 0 or a clipped code;
    a warning names such features.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import ActivationQuantizer
    >>> X = np.array([[0.0, 1.0], [0.5, 3.0], [1.0, 2.0]])
    >>> q = ActivationQuantizer(n_bits=2, granularity="per_feature").fit(X)
    >>> q.encode(X)
    array([[0, 1],
           [2, 3],
           [3, 2]], dtype=int8)
    >>> q.transform(X)
    array([[0.        , 1.        ],
           [0.66666667, 3.        ],
           [1.        , 2.        ]])
    """

    _parameter_constraints: dict = {
        "n_bits": [Interval(numbers.Integral, 2, 16, closed="both")],
        "granularity": [StrOptions({"per_tensor", "per_feature"})],
        "symmetric": ["boolean"],
        "calibration": [StrOptions({"minmax", "percentile", "mse"})],
        "percentile": [Interval(numbers.Real, 50, 100, closed="both")],
        "n_jobs": N_JOBS,
    }

    def __init__(
        self,
        n_bits=8,
        *,
        granularity="per_tensor",
        symmetric=False,
        calibration="minmax",
        percentile=99.99,
        n_jobs=None,
    ):
        self.n_bits = n_bits
        self.granularity = granularity
        self.symmetric = symmetric
        self.calibration = calibration
        self.percentile = percentile
        self.n_jobs = n_jobs

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Calibrate the grid on ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Activations (one column per feature).
        y : None
            Ignored.

        Returns
        -------
        self : object
            Fitted quantizer.
        """
        X = validate_data(self, X, dtype=list(FLOAT_DTYPES))
        granularity = (
            "per_channel" if self.granularity == "per_feature" else "per_tensor"
        )
        Xc = channel_view(X, granularity)
        if self.calibration == "percentile":
            lo = np.percentile(Xc, 100 - self.percentile, axis=0)
            hi = np.percentile(Xc, self.percentile, axis=0)
        else:
            lo, hi = Xc.min(axis=0), Xc.max(axis=0)
        if self.calibration == "mse":
            shrink = _mse_shrink(Xc, lo, hi, self.n_bits, self.symmetric)
            lo, hi = lo * shrink, hi * shrink
        self.data_min_ = np.asarray(lo, dtype=X.dtype)
        self.data_max_ = np.asarray(hi, dtype=X.dtype)
        scale, zero_point, qmin, qmax = _grid(
            self.data_min_, self.data_max_, self.n_bits, self.symmetric
        )
        self.qmin_, self.qmax_ = int(qmin), int(qmax)  # (n_bits may be np.int64)
        zero_point = zero_point.astype(np.int64)
        degenerate = np.flatnonzero(scale == 0)
        if degenerate.size:
            where = (
                f"features {degenerate.tolist()}"
                if self.granularity == "per_feature"
                else "the whole tensor"
            )
            warn(
                f"ActivationQuantizer found a calibrated range of [0, 0] for {where}; "
                "its scale is set to finfo(dtype).eps.",
                UserWarning,
            )
        self.scale_ = safe_scale(scale, X.dtype)
        self.zero_point_ = zero_point
        return self

    def _columns(self, dtype):
        n = self.n_features_in_
        level = np.broadcast_to(safe_scale(self.scale_, dtype), (n,)).copy()
        zp = np.broadcast_to(self.zero_point_.astype(dtype), (n,)).copy()
        inv = (dtype.type(1) / level).astype(dtype)
        return inv, level, zp

    def transform(self, X):
        """Quantize ``X`` and return the dequantized values.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Activations.

        Returns
        -------
        X_q : ndarray of shape (n_samples, n_features)
            Every value on its feature's grid, in ``X``'s float dtype.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=list(FLOAT_DTYPES), reset=False)
        inv, level, zp = self._columns(X.dtype)
        out = np.empty_like(X)
        dt = X.dtype.type
        with numba_threads(self.n_jobs):
            kernel_for(_msq, "fake_quantize", self.n_jobs)(
                X, inv, level, zp, dt(self.qmin_), dt(self.qmax_), out
            )
        return out

    def encode(self, X):
        """Integer codes of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Activations.

        Returns
        -------
        codes : ndarray of shape (n_samples, n_features)
            Codes in ``[qmin_, qmax_]``, in the smallest integer dtype holding them.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=list(FLOAT_DTYPES), reset=False)
        inv, _, zp = self._columns(X.dtype)
        out = np.empty(X.shape, dtype=code_dtype(self.qmin_, self.qmax_))
        dt = X.dtype.type
        with numba_threads(self.n_jobs):
            kernel_for(_msq, "quantize", self.n_jobs)(
                X, inv, zp, dt(self.qmin_), dt(self.qmax_), out
            )
        return out

    def decode(self, codes):
        """Dequantize integer codes: ``decode(encode(X)) == transform(X)``.

        Parameters
        ----------
        codes : array-like of int of shape (n_samples, n_features)
            Codes as returned by :meth:`encode`.

        Returns
        -------
        X_q : ndarray of shape (n_samples, n_features)
            Dequantized values, in the dtype of ``scale_``.
        """
        check_is_fitted(self)
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu" or codes.ndim != 2:
            raise TypeError(
                "codes of ActivationQuantizer.decode must be a 2-D integer array, got "
                f"codes.dtype={codes.dtype!s}, codes.ndim={codes.ndim} instead."
            )
        if codes.shape[1] != self.n_features_in_:
            raise ValueError(
                f"codes must have {self.n_features_in_} columns, got "
                f"codes.shape={codes.shape} instead."
            )
        check_code_range(codes, self.qmin_, self.qmax_)
        _, level, zp = self._columns(self.scale_.dtype)
        out = np.empty(codes.shape, dtype=self.scale_.dtype)
        _msq.dequantize(codes, level, zp, out)
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
