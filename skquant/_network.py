"""Layer-by-layer quantization of a sequence of dense layers (framework-free).

Layer ``l`` is quantized on the activations of the already quantized prefix
(``Xq``), aiming at the float network's output of that layer (``Xf @ W``), as GPFQ
does; memoryless quantizers just see ``W``.
"""

from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone

from ._datadriven import BaseDataQuantizer
from ._progress import progress

__all__ = ["NetworkQuantization", "quantize_network"]


def _identity(Z):
    return Z


def _relu(Z):
    return np.maximum(Z, 0)


def _logistic(Z):
    return 1.0 / (1.0 + np.exp(-Z))


ACTIVATIONS = {
    "identity": _identity,
    "relu": _relu,
    "tanh": np.tanh,
    "logistic": _logistic,
    None: _identity,
}


def _activation(act, index):
    if callable(act):
        return act
    if act in ACTIVATIONS:
        return ACTIVATIONS[act]
    raise ValueError(
        f"layers[{index}] has activation={act!r}; expected a callable or one of "
        f"{sorted(k for k in ACTIVATIONS if k)} instead."
    )


@dataclass
class NetworkQuantization:
    """What :func:`quantize_network` returns.

    Attributes
    ----------
    quantizers : list of estimators
        The fitted quantizer of every layer.
    tensors : list of QuantizedTensor
        Codes and scales of every layer.
    weights : list of ndarray
        Dequantized weights of every layer.
    layer_errors : list of float
        ``||Xq_l Q_l - Xf_l W_l|| / ||Xf_l W_l||`` on the calibration data: the
        relative error of each layer's output, its input already perturbed by the
        quantized prefix.
    """

    quantizers: list = field(default_factory=list)
    tensors: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    layer_errors: list = field(default_factory=list)


def _check_layers(layers):
    if len(layers) == 0:
        raise ValueError("layers must hold at least one (W, b, activation) triple.")
    checked = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, tuple | list) or len(layer) != 3:
            raise TypeError(
                f"layers[{i}] must be a (W, b, activation) triple, got {layer!r:.80} "
                "instead."
            )
        W, b, act = layer
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(
                f"layers[{i}] must have a 2-D weight matrix (n_in, n_out), got "
                f"W.shape={W.shape} instead."
            )
        b = np.zeros(W.shape[1], W.dtype) if b is None else np.asarray(b)
        if b.shape != (W.shape[1],):
            raise ValueError(
                f"layers[{i}] has a bias of shape {b.shape}; expected ({W.shape[1]},) "
                "instead."
            )
        if i and checked[-1][0].shape[1] != W.shape[0]:
            raise ValueError(
                f"layers[{i}] takes {W.shape[0]} inputs but layers[{i - 1}] gives "
                f"{checked[-1][0].shape[1]} outputs."
            )
        checked.append((W, b, _activation(act, i)))
    return checked


def quantize_network(layers, quantizer, X, *, verbose=False):
    """Quantize dense layers in order, each on the quantized prefix's activations.

    Parameters
    ----------
    layers : list of (W, b, activation)
        ``W`` of shape ``(n_in, n_out)``, bias ``b`` of shape ``(n_out,)`` (or
        ``None``), and the activation applied after the layer: a callable or one of
        ``"identity"``, ``"relu"``, ``"tanh"``, ``"logistic"``.
    quantizer : estimator or list of estimators
        An unfitted weight quantizer, cloned for every layer, or one per layer.
        Data-driven quantizers get ``activations`` (the quantized prefix's) and
        ``target_activations`` (the float network's).
    X : array-like of shape (m, n_in)
        Calibration inputs of the first layer.
    verbose : bool, default=False
        Show a progress bar.

    Returns
    -------
    result : NetworkQuantization
        Fitted quantizers, quantized tensors, dequantized weights and per-layer
        errors.

    See Also
    --------
    QuantizedMLP : The same for scikit-learn's MLPs, as an estimator.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import GreedyPathQuantizer
    >>> from skquant._network import quantize_network
    >>> rng = np.random.default_rng(0)
    >>> layers = [(rng.standard_normal((20, 30)) / 5, np.zeros(30), "relu"),
    ...           (rng.standard_normal((30, 3)) / 5, np.zeros(3), "identity")]
    >>> res = quantize_network(layers, GreedyPathQuantizer(n_bits=4),
    ...                        rng.standard_normal((64, 20)))
    >>> [w.shape for w in res.weights]
    [(20, 30), (30, 3)]
    """
    layers = _check_layers(layers)
    Xf = np.asarray(X, dtype=np.float64)
    if Xf.ndim != 2 or Xf.shape[1] != layers[0][0].shape[0]:
        raise ValueError(
            f"X must have shape (m, {layers[0][0].shape[0]}) for the first layer, got "
            f"X.shape={Xf.shape} instead."
        )
    if not np.all(np.isfinite(Xf)):
        raise ValueError("X contains NaN or infinity.")
    quantizers = list(quantizer) if isinstance(quantizer, list | tuple) else None
    if quantizers is not None and len(quantizers) != len(layers):
        raise ValueError(
            f"quantizer must be one estimator or one per layer ({len(layers)}), got "
            f"{len(quantizers)} instead."
        )
    Xq = Xf
    result = NetworkQuantization()
    for i in progress(range(len(layers)), desc="layers", enabled=verbose):
        W, b, act = layers[i]
        est = clone(quantizers[i] if quantizers is not None else quantizer)
        if isinstance(est, BaseDataQuantizer):
            Q = est.fit_transform(W, activations=Xq, target_activations=Xf)
        else:
            Q = est.fit(W).transform(W)
        result.quantizers.append(est)
        result.tensors.append(est._tensor_of(Q))
        result.weights.append(Q)
        ref = Xf @ W
        den = np.linalg.norm(ref)
        result.layer_errors.append(
            float(np.linalg.norm(Xq @ Q - ref) / den) if den > 0 else 0.0
        )
        Xf = act(ref + b)
        Xq = act(Xq @ Q + b)
    return result
