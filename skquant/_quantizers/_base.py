"""Shared machinery of skquant's weight quantizers."""

import numpy as np
from sklearn.base import (
    BaseEstimator,
    OneToOneFeatureMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import metadata_routing
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._common._checks import check_float_dtype, check_int, check_matrix
from .._common._jobs import N_JOBS
from .._common._warn import warn
from .._kernels import _msq, check_device
from .._kernels._threads import numba_threads
from .._tensor import _alphabets
from .._tensor._alphabets import (
    Alphabet,
    channel_view,
    code_dtype,
    safe_scale,
    stored_scale,
)
from .._tensor._bits import unpack_codes
from .._tensor._qtensor import QuantizedTensor

FLOAT_DTYPES = (np.float64, np.float32)


def check_user_scale(scale, n_channels, name, cls_name, dtype):
    """Validate a scale given by the user: positive, finite, scalar or per channel."""
    arr = np.asarray(scale, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n_channels, float(arr))
    if arr.ndim != 1 or arr.shape[0] != n_channels:
        raise ValueError(
            f"{name} of {cls_name} must be a string, a float or an array of shape "
            f"({n_channels},), got {name} of shape {np.shape(scale)} instead."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(
            f"{name} of {cls_name} must be positive and finite, got {name}={scale!r} "
            "instead."
        )
    tiny = float(np.finfo(np.float32).tiny)
    if np.any(arr < tiny):  # (it became float32's eps, silently)
        raise ValueError(
            f"{name} of {cls_name} must be at least float32's smallest normal "
            f"number {tiny:.4g} (steps are stored in float32), got "
            f"{name}={scale!r:.80} instead."
        )
    return arr.astype(dtype)


def validate_weights(estimator, W, reset):
    """``W`` (a weight matrix, one column per output channel) checked for
    ``estimator``'s ``fit`` (``reset``) or a later call: a float array, with
    the columns, and their names where ``W`` is a DataFrame, of ``fit``."""
    # validate_data names every input "X"; check W under its own name first
    # (with the same checks), then let validate_data do the feature bookkeeping
    # on W as given (a DataFrame's column names: the channels')
    given, W = W, check_matrix(W, "W", dtype=list(FLOAT_DTYPES))
    n = getattr(estimator, "n_features_in_", None)
    if not reset and n is not None and W.shape[1] != n:
        name = type(estimator).__name__
        raise ValueError(
            f"W must have the {n} columns (output channels) {name} was fitted "
            f"on, got W.shape={W.shape} instead (in scikit-learn's words: X has "
            f"{W.shape[1]} features, but {name} is expecting {n} features as "
            "input)."
        )
    try:
        validate_data(estimator, given, reset=reset, skip_check_array=True)
    except ValueError as exc:  # (the column names: said of W, not of "X")
        raise ValueError(f"W's columns (output channels): {exc}") from exc
    return W


class BaseWeightQuantizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Base of the memoryless scalar quantizers of weight matrices.

    A weight matrix ``W`` has shape ``(n_in, n_out)``: one **column per output
    channel**, scikit-learn's ``coefs_`` layout, so a layer computes ``X @ W``. In
    scikit-learn's vocabulary the rows of ``W`` are the samples and its columns the
    features: ``n_features_in_`` is the number of output channels, and a
    DataFrame's column names are its channels' names (``feature_names_in_``,
    checked by every later call; ``get_feature_names_out`` and
    ``set_output(transform="pandas")`` give them back).

    Subclasses implement ``_code_range`` (codes and bits of the alphabet) and
    ``_fit_scale`` (the scale rules named by the ``scale`` parameter).
    """

    #: What ``fit`` needs besides ``W`` (the network layer reads it, never the class):
    #: ``"weights"`` nothing, ``"data"`` the layer's inputs (``activations=`` and
    #: ``target_activations=``), ``"gradient"`` the loss gradient (``gradient=``).
    _fit_requires = "weights"

    def _network_error(self):
        """Why this quantizer cannot quantize a layer of a network, or ``None``."""
        return None

    _parameter_constraints: dict = {
        "granularity": [StrOptions({"per_channel", "per_tensor"})],
        "n_jobs": N_JOBS,
    }
    _alphabet = "uniform"
    # W is the data, not metadata: stops scikit-learn from generating
    # set_fit_request(W=...) and set_transform_request(W=...)
    __metadata_request__fit = {"W": metadata_routing.UNUSED}
    __metadata_request__transform = {"W": metadata_routing.UNUSED}

    def _validate_W(self, W, reset):
        return validate_weights(self, W, reset)

    def _fit_common(self, W):
        """Validate ``W`` and store the scales and the code range; return ``W``."""
        W = self._validate_W(W, reset=True)
        if getattr(self, "device", None) is not None:  # refused at fit, not later
            check_device(self.device, type(self).__name__)
        qmin, qmax, n_bits = self._code_range()
        Wc = channel_view(W, self.granularity)
        scale = self.scale
        if isinstance(scale, str):
            level = self._fit_scale(Wc, scale, qmin, qmax)
        else:
            level = check_user_scale(
                scale, Wc.shape[1], "scale", type(self).__name__, W.dtype
            )
        self.scale_ = stored_scale(level)
        small = np.asarray(level) < np.finfo(np.float32).tiny
        lost = (  # (steps of zero channels are no loss)
            np.flatnonzero(small & (np.abs(Wc).max(axis=0) > 0))
            if small.any()
            else small[:0]
        )
        if lost.size:
            warn(
                f"{type(self).__name__}: the step of channels {lost[:8].tolist()}"
                f"{' ...' if lost.size > 8 else ''} is below float32's smallest "
                "normal number (weights below about 1e-38): they quantize to 0 "
                "(scale the weights up, or leave the layer float).",
                UserWarning,
            )
        big = np.flatnonzero(np.asarray(level) > np.finfo(np.float32).max)
        if big.size:  # (float64 weights past float32's range: clipped)
            warn(
                f"{type(self).__name__}: the step of channels {big[:8].tolist()}"
                f"{' ...' if big.size > 8 else ''} is above float32's largest "
                f"number (steps are stored in float32): its weights are clipped to "
                f"{max(abs(qmin), abs(qmax))} times that number (scale the weights "
                "down, or leave the layer float).",
                UserWarning,
            )
        self._fit_dtype = W.dtype
        self.qmin_, self.qmax_, self.n_bits_ = int(qmin), int(qmax), int(n_bits)
        return W

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, W, y=None):
        """Learn the scale of every channel of ``W``.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weight matrix, one column per output channel.
        y : None
            Ignored.

        Returns
        -------
        self : object
            Fitted quantizer.
        """
        self._fit_common(W)
        return self

    def _levels(self, dtype):
        """Per-column level (scale) broadcast to ``n_features_in_`` in ``dtype``."""
        level = safe_scale(self.scale_, dtype)
        return np.broadcast_to(level, (self.n_features_in_,)).copy()

    def transform(self, W):
        """Quantize ``W`` and return the dequantized weights.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weight matrix with the fitted number of columns.

        Returns
        -------
        W_q : ndarray of shape (n_in, n_out)
            Every entry rounded to its channel's alphabet, in ``W``'s dtype for
            float32 and float64 (other dtypes, float16 or ints, are computed and
            returned in float64).
        """
        check_is_fitted(self)
        W = self._validate_W(W, reset=False)
        out = np.empty_like(W)
        level = self._levels(W.dtype)
        with numba_threads(self.n_jobs):
            self._fake_quantize(W, level, out)
        return out

    def _fake_quantize(self, W, level, out):
        dtype = W.dtype.type
        inv = (dtype(1) / level).astype(W.dtype)
        zero = np.zeros_like(level)
        _alphabets.kernel_for(_msq, "fake_quantize", self.n_jobs)(
            W, inv, level, zero, dtype(self.qmin_), dtype(self.qmax_), out
        )

    def encode(self, W):
        """Integer codes of ``W``: ``transform(W) == decode(encode(W))``.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weight matrix with the fitted number of columns.

        Returns
        -------
        codes : ndarray of shape (n_in, n_out)
            Codes in ``[qmin_, qmax_]``, in the smallest integer dtype that holds them.
        """
        check_is_fitted(self)
        return self._encode(self._validate_W(W, reset=False))

    def _encode(self, W):
        out = np.empty(W.shape, dtype=code_dtype(self.qmin_, self.qmax_))
        level = self._levels(W.dtype)
        with numba_threads(self.n_jobs):
            self._quantize(W, level, out)
        return out

    def _quantize(self, W, level, out):
        dtype = W.dtype.type
        inv = (dtype(1) / level).astype(W.dtype)
        zero = np.zeros_like(level)
        _alphabets.kernel_for(_msq, "quantize", self.n_jobs)(
            W, inv, zero, dtype(self.qmin_), dtype(self.qmax_), out
        )

    def decode(self, codes, dtype=None):
        """Dequantize integer codes.

        Parameters
        ----------
        codes : array-like of int of shape (n_in, n_out)
            Codes as returned by :meth:`encode`.
        dtype : {np.float32, np.float64}, default=None
            Output dtype; ``None`` takes the dtype of the data seen in :meth:`fit`.

        Returns
        -------
        W_q : ndarray of shape (n_in, n_out)
            The dequantized weights.
        """
        check_is_fitted(self)
        codes = self._check_codes(codes)
        # (the tensor checks the codes' values: one pass over them)
        return self._tensor(codes, check_float_dtype(dtype)).dequantize()

    def _check_codes(self, codes):
        name = type(self).__name__
        codes = self.alphabet_record_.check_codes(codes, name)  # named as ours
        if codes.ndim != 2 or codes.shape[1] != self.n_features_in_:
            raise ValueError(
                f"codes must have shape (n_in, {self.n_features_in_}), got "
                f"codes.shape={codes.shape} instead."
            )
        return codes

    @property
    def alphabet_record_(self):
        """The fitted :class:`~skquant._tensor._alphabets.Alphabet` of the codes."""
        check_is_fitted(self)
        return Alphabet(self._alphabet, self.qmin_, self.qmax_, self.n_bits_)

    def _tensor(self, codes, dtype=None):
        if dtype is None:  # the dtype of the fitted W (scale_ is float32 whatever it)
            dtype = getattr(self, "_fit_dtype", None)
        return QuantizedTensor(
            codes=codes,
            scale=self.scale_,
            n_bits=self.n_bits_,
            qmin=self.qmin_,
            qmax=self.qmax_,
            alphabet=self._alphabet,
            float_dtype=np.dtype(dtype) if dtype is not None else None,
        )

    def compress(self, W):
        """Quantize ``W`` into a :class:`~skquant.QuantizedTensor`.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weight matrix with the fitted number of columns.

        Returns
        -------
        qt : QuantizedTensor
            Codes, scales and honest size accounting; ``qt.dequantize()`` equals
            ``transform(W)``.
        """
        check_is_fitted(self)
        W = self._validate_W(W, reset=False)
        return self._tensor(self._encode(W), W.dtype)

    def pack(self, W):
        """Bit-packed codes of ``W``: ``n_bits_`` bits per weight.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weight matrix with the fitted number of columns.

        Returns
        -------
        packed : ndarray of uint8
            The bit stream (see :func:`skquant.pack_codes`).
        """
        return self.compress(W).pack()

    def unpack(self, packed, n_rows):
        """Recover the codes from :meth:`pack`: ``unpack(pack(W), n) == encode(W)``.

        Parameters
        ----------
        packed : ndarray of uint8
            Bytes from :meth:`pack`.
        n_rows : int
            Number of rows (``n_in``) of the packed matrix.

        Returns
        -------
        codes : ndarray of shape (n_rows, n_out)
            The codes, as :meth:`encode` returns them.
        """
        alphabet = self.alphabet_record_
        shape = (check_int(n_rows, "n_rows", low=0), self.n_features_in_)
        stored = unpack_codes(
            packed, self.n_bits_, alphabet.stored_qmin, shape, np.int64
        )
        return alphabet.from_stored(stored)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
