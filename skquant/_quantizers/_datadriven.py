"""Shared machinery of the data-driven weight quantizers (null-space, GPFQ).

They quantize a layer ``X @ W`` so that its output on calibration activations ``X``
(shape ``(m, n_in)``) is preserved, instead of rounding every weight on its own.
The alphabet and its scales come from the memoryless quantizers (one piece of code
per idea): :class:`UniformQuantizer`, :class:`TernaryQuantizer`,
:class:`BinaryQuantizer`.
"""

import hashlib
import numbers

import numpy as np
from sklearn.base import _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from .._common._blocks import row_blocks
from .._common._checks import Interval, check_matrix, check_squares
from .._kernels import _rounding
from .._kernels._threads import numba_threads
from .._tensor._alphabets import kernel_for, stored_scale
from ._base import BaseWeightQuantizer
from ._uniform import UniformQuantizer, level_quantizer

N_BITS_CONSTRAINT = [
    Interval(numbers.Integral, 2, 16, closed="both"),
    StrOptions({"ternary", "binary"}),
]


def check_activations(activations, n_in, cls_name, name="activations", order=None):
    """Validate calibration activations: 2-D, finite, ``n_in`` columns, ``m >= 1``
    (float64, in memory ``order`` when given: ``"F"`` for readers by column)."""
    if activations is None:
        raise ValueError(
            f"{cls_name}.fit requires calibration data: pass {name}=X with X of shape "
            f"(n_samples, {n_in}); got {name}=None instead."
        )
    X = check_matrix(activations, name, dtype=np.float64, order=order)
    if X.shape[1] != n_in:
        raise ValueError(
            f"{name} must have W.shape[0]={n_in} columns (one per input of the "
            f"layer), got {name}.shape={X.shape} instead."
        )
    # sums of m squares must stay finite (Gram matrices, norms) and normal:
    # beyond, the fits returned zero codes or NaN errors without a word, and
    # below, errors and bounds of 0 and round-to-nearest codes
    check_squares(
        X,
        name,
        "rescale them (activations and target_activations by the same factor: "
        "the fits do not depend on a common scale of the data).",
    )
    return X


def _string_names(obj, attr):
    """``obj``'s labels ``attr`` (a data frame's ``index`` or ``columns``) as a
    list where all are strings (names, as scikit-learn's
    ``feature_names_in_``), else ``None``."""
    labels = getattr(obj, attr, None)
    if labels is None or callable(labels) or isinstance(labels, str | bytes):
        return None  # (a list's or an array's method of that name)
    try:
        labels = list(labels)
    except TypeError:
        return None
    return labels if labels and all(isinstance(v, str) for v in labels) else None


def _fingerprint(W, dtype=None, rows=1 << 20):
    """Shape, dtype and digest of ``W``'s values: which weights were fitted.

    The values are hashed in ``W``'s own dtype (``dtype``: converted to that one
    first), in slices of about ``rows`` entries (a converted copy of a slice at a
    time, not of the whole matrix), the digest being that of the whole C-ordered
    array. Estimators fitted before the dtype was recorded hold
    ``(shape, digest)`` of the float64 values: ``dtype=np.float64`` and the last
    two entries dropped give that one (see :func:`_same_weights`).
    """
    W = np.asarray(W)
    dtype = W.dtype if dtype is None else np.dtype(dtype)
    h = hashlib.blake2b(digest_size=16)
    for block in row_blocks(W.shape, rows):  # W is 2-D: validated
        h.update(np.ascontiguousarray(W[block], dtype=dtype).data)
    return W.shape, dtype.str, h.hexdigest()


def _same_weights(W, fingerprint):
    """Whether ``W`` holds the values of the fitted weights of ``fingerprint``
    (:func:`_fingerprint`'s), whatever the dtype it holds them in."""
    if len(fingerprint) == 2:  # (shape, float64 digest): an older estimator's
        shape, dtype, digest = _fingerprint(W, np.float64)
        return (shape, digest) == tuple(fingerprint)
    shape, dtype, _ = fingerprint
    if W.shape != tuple(shape):
        return False
    if W.dtype.str != dtype:  # the same values in another dtype, or not
        with np.errstate(over="ignore"):  # (a value out of range: not the same)
            cast = W.astype(dtype)
        if not np.array_equal(cast.astype(W.dtype), W):
            return False
        W = cast
    return _fingerprint(W) == tuple(fingerprint)


class BaseDataQuantizer(BaseWeightQuantizer):
    """Base of the quantizers fitted on a weight matrix and calibration activations.

    ``fit(W, activations=X)`` learns the scales and the codes of ``W`` and keeps
    the codes, not the data; ``transform(W)`` of the fitted ``W`` returns them
    dequantized. Subclasses implement ``_fit_quantize``.
    """

    _fit_requires = "data"

    _parameter_constraints: dict = {
        **BaseWeightQuantizer._parameter_constraints,
        "n_bits": N_BITS_CONSTRAINT,
    }

    def _fit_alphabet(self, W, scale="maxabs"):
        """Scales, code range and alphabet of ``W`` from the memoryless quantizer."""
        n_bits = self.n_bits
        if isinstance(n_bits, str):  # an alphabet's name (the constraint checked it)
            cls = level_quantizer(n_bits)
            if scale == "maxabs":  # the level is the largest |w|: nothing is clipped
                # (an all-zero column: the step eps, as the memoryless quantizers
                # give it, not 1, which made its binary codes +-1)
                msq = cls(scale=stored_scale(np.abs(W).max(axis=0)))
            else:  # the memoryless quantizer's own L2-optimal level
                msq = cls(n_jobs=self.n_jobs)
        else:
            msq = UniformQuantizer(n_bits=n_bits, scale=scale, n_jobs=self.n_jobs)
        msq.fit(W)
        # the stored (float32) scales: every code below is computed against them
        self.scale_ = msq.scale_
        self._fit_dtype = msq._fit_dtype
        self.qmin_, self.qmax_, self.n_bits_ = msq.qmin_, msq.qmax_, msq.n_bits_
        self._alphabet = msq._alphabet
        return msq

    def _greedy_path(self, Xq, Xf, targets, idx, U, step, codes, XqT=None):
        """Greedy path following over ``idx`` (the numba kernel), in place
        (``XqT``: ``Xq.T`` contiguous, when the caller holds it already)."""
        zp, inv, cmin, cmax = self.alphabet_record_.code_grid(step)
        XqT = np.ascontiguousarray(Xq.T) if XqT is None else XqT
        XfT = XqT if Xf is Xq else np.ascontiguousarray(Xf.T)
        if not targets.flags.f_contiguous:  # (F order: each column read in place)
            targets = np.ascontiguousarray(targets)
        with numba_threads(self.n_jobs):
            kernel_for(_rounding, "greedy_path", self.n_jobs)(
                XqT,
                XfT,
                targets,
                idx,
                U,
                np.ascontiguousarray(inv),
                zp,
                cmin,
                cmax,
                codes,
            )

    def _validate_fit(self, W, activations, target_activations, order=None):
        rows = _string_names(W, "index")
        for data, what in (
            (activations, "activations"),
            (target_activations, "target_activations"),
        ):
            names = _string_names(data, "columns")
            if rows is not None and names is not None and names != rows:
                raise ValueError(  # (used by position: the inputs mixed up)
                    f"{what}' columns must be W's row names (the layer's inputs), "
                    f"in W's order ({rows[:8]}), got {names[:8]} instead: pass "
                    f"{what}[W.index]."
                )
        W = self._validate_W(W, reset=True)
        self.n_in_ = W.shape[0]
        name = type(self).__name__
        Xq = check_activations(activations, W.shape[0], name, order=order)
        if target_activations is None:
            Xf = Xq
        else:
            Xf = check_activations(
                target_activations, W.shape[0], name, "target_activations", order
            )
            if Xf.shape != Xq.shape:
                raise ValueError(
                    "target_activations must have the shape of activations "
                    f"{Xq.shape}, got target_activations.shape={Xf.shape} instead."
                )
        return W, Xq, Xf

    def _check_n_in(self, W):
        if W.shape[0] != self.n_in_:
            raise ValueError(
                f"W must have {self.n_in_} rows (the layer's inputs seen in fit), got "
                f"W.shape={W.shape} instead."
            )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, W, y=None, *, activations=None, target_activations=None):
        """Learn scales and codes of ``W`` from calibration activations.

        The codes are kept (not the activations): :meth:`transform`,
        :meth:`encode`, :meth:`compress` and :meth:`pack` of the fitted ``W`` reuse
        them without redoing the work, and the fitted quantizer's size does not
        grow with the number of calibration rows (but for the null-space
        quantizer's ``components_``: see its attributes).

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weight matrix, one column per output channel.
        y : None
            Ignored.
        activations : array-like of shape (m, n_in)
            Calibration inputs of the layer, as the quantized network computes them
            (a data frame whose columns are named, where ``W``'s rows are too:
            in ``W``'s order).
        target_activations : array-like of shape (m, n_in), default=None
            Inputs of the float network, whose output ``target_activations @ W`` the
            quantized layer should reproduce; ``None`` means ``activations``.

        Returns
        -------
        self : object
            Fitted quantizer.
        """
        self._fit_and_keep(W, activations, target_activations)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, W, y=None, *, activations=None, target_activations=None):
        """Fit on ``W`` and the activations, and return the quantized ``W``.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weight matrix, one column per output channel.
        y : None
            Ignored.
        activations : array-like of shape (m, n_in)
            Calibration inputs of the layer.
        target_activations : array-like of shape (m, n_in), default=None
            Inputs of the float network; ``None`` means ``activations``.

        Returns
        -------
        W_q : ndarray of shape (n_in, n_out)
            The quantized weights, in ``W``'s dtype.
        """
        codes, dtype = self._fit_and_keep(W, activations, target_activations)
        return self._tensor(codes, dtype).dequantize()

    def _fit_and_keep(self, W, activations, target_activations):
        codes, dtype = self._fit_quantize(W, activations, target_activations)
        self.codes_ = codes
        self._fingerprint = _fingerprint(self._validate_W(W, reset=False))
        return codes, dtype

    def transform(self, W):
        """The quantized weights of the ``W`` seen in :meth:`fit`.

        A data-driven quantizer keeps the codes it computed, not its calibration
        data, so it transforms the fitted weights only (use :meth:`fit_transform`
        or refit for other weights).

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            The fitted weight matrix.

        Returns
        -------
        W_q : ndarray of shape (n_in, n_out)
            The quantized weights, in ``W``'s dtype.
        """
        check_is_fitted(self)
        W = self._validate_W(W, reset=False)
        return self._tensor(self._encode(W), W.dtype).dequantize()

    def _encode(self, W):
        self._check_n_in(W)
        if not _same_weights(W, self._fingerprint):
            raise ValueError(
                f"{type(self).__name__} quantizes the W it was fitted on (it keeps "
                "its codes, not its calibration data); got a W that differs from "
                "the fitted one. Refit with fit(W, activations=X) instead."
            )
        return self.codes_.copy()

    def _fit_quantize(self, W, activations, target_activations):
        raise NotImplementedError

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags
