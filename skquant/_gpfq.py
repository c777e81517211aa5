"""Greedy path following quantization, GPFQ (Lybrand & Saab)."""

import numpy as np
from sklearn.utils._param_validation import StrOptions

from ._datadriven import BaseDataQuantizer

__all__ = ["GreedyPathQuantizer"]


class GreedyPathQuantizer(BaseDataQuantizer):
    """Greedy path following quantization, GPFQ (Lybrand & Saab).

    Quantizes each neuron's weights one coordinate at a time, choosing each value so
    that the running error of the layer's output on the calibration data stays
    small::

        q_t = Q(<X_t, u_{t-1} + w_t X_t> / ||X_t||^2)
        u_t = u_{t-1} + w_t X_t - q_t X_t

    For Gaussian data the relative error decays like ``sqrt(m log n_in / n_in)``.
    In a network, layer ``l`` sees the quantized prefix's activations ``Xq`` and
    follows the float network's ``Xf`` (``target_activations``):
    ``u_t = u_{t-1} + w_t Xf_t - q_t Xq_t``.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    n_bits : int or {"ternary", "binary"}, default=4
        The alphabet, as for :class:`NullSpaceQuantizer`.
    scale : {"maxabs", "mse"}, default="maxabs"
        The scale per neuron: the max-abs step (level) of the alphabet, or the
        memoryless quantizer's squared-error optimum (MSE search for grids, the
        L2-optimal level for ternary and binary).
    n_jobs : int, default=None
        Number of numba threads (over neurons); ``None`` means 1, ``-1`` all.

    Attributes
    ----------
    scale_ : ndarray of shape (n_out,)
        Step (or level) of each neuron's alphabet.
    qmin_ : int
        Smallest code.
    qmax_ : int
        Largest code.
    n_bits_ : int
        Bits stored per weight.
    n_in_ : int
        Number of inputs of the layer (rows of ``W``).
    codes_ : ndarray of int of shape (n_in, n_out)
        Codes of the fitted weights (the calibration activations are not kept).
    calibration_error_ : ndarray of shape (n_out,)
        Relative error ``||Xf w - Xq q|| / ||Xf w||`` of each neuron.
    n_features_in_ : int
        Number of output channels (columns of ``W``).

    See Also
    --------
    NullSpaceQuantizer : Pre-processing in the data's null space, then MSQ.

    References
    ----------
    E. Lybrand and R. Saab, "A greedy algorithm for quantizing neural networks",
    JMLR 22 (2021).

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import GreedyPathQuantizer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((64, 256))
    >>> W = rng.standard_normal((256, 8)) / 16
    >>> q = GreedyPathQuantizer(n_bits=4).fit(W, activations=X)
    >>> bool(q.calibration_error_.max() < 0.1)
    True
    """

    _parameter_constraints: dict = {
        **BaseDataQuantizer._parameter_constraints,
        "scale": [StrOptions({"maxabs", "mse"})],
    }
    _parameter_constraints.pop("granularity")

    def __init__(self, n_bits=4, *, scale="maxabs", n_jobs=None):
        self.n_bits = n_bits
        self.scale = scale
        self.n_jobs = n_jobs

    def _fit_quantize(self, W, activations, target_activations):
        W, Xq, Xf = self._validate_fit(W, activations, target_activations)
        self._fit_alphabet(W, self.scale)
        W64 = W.astype(np.float64)
        codes, U = self._codes(W64, Xq, Xf)
        norm = np.linalg.norm(Xf @ W64, axis=0)
        self.calibration_error_ = np.linalg.norm(U, axis=1) / np.where(
            norm > 0, norm, 1
        )
        return codes, W.dtype

    def _codes(self, W, Xq, Xf):
        n, n_out = W.shape
        step = np.broadcast_to(self.scale_.astype(np.float64), (n_out,))
        idx = np.tile(np.arange(n, dtype=np.int64), (n_out, 1)).T.copy()
        U = np.zeros((n_out, Xq.shape[0]))
        codes = np.zeros((n, n_out))
        self._greedy_path(Xq, Xf, W, idx, U, step, codes)
        return self.alphabet_record_.final_codes(codes), U
