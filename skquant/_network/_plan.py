"""Which quantizer each layer gets, and how a layer's quantizer is fitted and encoded.

The network layer knows a quantizer only through what it declares: ``fit_requires``
(``"weights"``, ``"data"`` or ``"gradient"``), ``network_error()`` (why it cannot
quantize a layer of a network, or ``None``) and ``compress``.
"""

from collections.abc import Mapping

import numpy as np
from sklearn.base import clone

from .._tensor._qtensor import QuantizedTensor
from ._protocol import LayerStep

__all__ = ["resolve_quantizers"]


#: the key of a per-layer quantizer mapping that names the default quantizer
DEFAULT_KEY = "*"


#: what a layer quantizer's ``fit`` may need besides the weights
FIT_REQUIRES = ("weights", "data", "gradient")


def _check_quantizer(est, where):
    if isinstance(est, type):
        raise TypeError(
            f"{where} must be a quantizer, got the class {est.__name__}: pass an "
            f"instance, such as {est.__name__}()."
        )
    if getattr(est, "_fit_requires", None) not in FIT_REQUIRES or not hasattr(
        est, "compress"
    ):
        raise TypeError(
            f"{where} must be a skquant weight quantizer (UniformQuantizer, "
            "TernaryQuantizer, BinaryQuantizer, GreedyPathQuantizer, GPTQQuantizer, "
            "NullSpaceQuantizer or AdaptivePrecisionQuantizer), got "
            f"{est!r:.80} instead."
        )
    return est


def resolve_quantizers(layer_names, quantizer):
    """One unfitted quantizer (or ``None`` for float) per layer name.

    Parameters
    ----------
    layer_names : list of str
        The network's layers.
    quantizer : estimator, mapping or sequence
        One quantizer (cloned per layer); a mapping from layer name to quantizer
        (layers not named stay float, unless the key ``"*"`` gives a default;
        ``None`` as a value leaves a layer float); or one quantizer per layer.

    Returns
    -------
    plan : dict of {str: estimator or None}
        Clones, in ``layer_names`` order.
    """
    if isinstance(quantizer, Mapping):
        if not quantizer:
            raise ValueError(
                "quantizer is an empty mapping: name at least one layer (or give "
                f"a default under {DEFAULT_KEY!r}); the layers are {layer_names}."
            )
        unknown = [k for k in quantizer if k != DEFAULT_KEY and k not in layer_names]
        if unknown:
            raise ValueError(
                f"quantizer names layers {unknown} that are not among the layers to "
                "quantize (not in the model, or left out by skip); they are "
                f"{layer_names}."
            )
        default = quantizer.get(DEFAULT_KEY)
        plan = {}
        for name in layer_names:
            est = quantizer.get(name, default)
            plan[name] = (
                None
                if est is None
                else clone(_check_quantizer(est, f"quantizer[{name!r}]"))
            )
        return plan
    if isinstance(quantizer, list | tuple):
        if len(quantizer) != len(layer_names):
            raise ValueError(
                f"quantizer must be one estimator or one per layer "
                f"({len(layer_names)}), got {len(quantizer)} instead."
            )
        return {
            name: None if q is None else clone(_check_quantizer(q, f"quantizer[{i}]"))
            for i, (name, q) in enumerate(zip(layer_names, quantizer))
        }
    _check_quantizer(quantizer, "quantizer")
    return {name: clone(quantizer) for name in layer_names}


def method_name(est):
    if est is None:
        return "float"
    return type(est).__name__.replace("Quantizer", "")


def _concat_tensors(tensors):
    """One tensor of several column blocks quantized on the same alphabet."""
    first = tensors[0]
    return QuantizedTensor(
        codes=np.hstack([t.codes for t in tensors]),
        scale=np.concatenate(
            [np.broadcast_to(t.scale, (t.shape[1],)) for t in tensors]
        ),
        n_bits=first.n_bits,
        qmin=first.qmin,
        qmax=first.qmax,
        alphabet=first.alphabet,
        float_dtype=first.float_dtype,
    )


def group_slices(W, groups):
    """``(inputs, outputs)`` slices of each group of a grouped layer: its
    columns of the layer's input rows and of ``W`` (``(n_in, n_out)``, the
    group's own inputs)."""
    n_in, n_out = W.shape[0], W.shape[1] // groups
    return [
        (slice(g * n_in, (g + 1) * n_in), slice(g * n_out, (g + 1) * n_out))
        for g in range(groups)
    ]


def _fit_data_driven(est, W, Xq, Xf, groups):
    """Fit a data-driven quantizer (per input group) and return its tensor."""
    if groups == 1:
        est.fit(W, activations=Xq, target_activations=Xf)
        return est, est.compress(W)
    fitted, tensors = [], []
    for rows, cols in group_slices(W, groups):
        e = clone(est).fit(
            W[:, cols], activations=Xq[:, rows], target_activations=Xf[:, rows]
        )
        fitted.append(e)
        tensors.append(e.compress(W[:, cols]))
    return fitted, _concat_tensors(tensors)


def _plain_steps(network, names):
    """Steps without a calibration pass (memoryless quantizers need none)."""
    for name in names:
        yield LayerStep(name, network.weight(name), None, network.groups(name))


def requires(est, what):
    """Whether quantizer ``est`` (``None``: a float layer) fits on ``what``."""
    return est is not None and est._fit_requires == what


def layer_steps(network, data=None, *, max_rows=None, random_state=0):
    """The layers in forward order: the calibration walk over ``data``, or, with
    ``data=None``, the weights alone (no forward pass)."""
    if data is None:
        return _plain_steps(network, network.layer_names)
    return network.walk(data, max_rows=max_rows, random_state=random_state)


def fit_layer(est, W, *, inputs=None, gradient=None, groups=1):
    """Fit ``est`` on one layer with what it declares it needs, and encode it.

    Parameters
    ----------
    est : estimator
        An unfitted layer quantizer.
    W : ndarray of shape (n_in, n_out)
        The layer's weights.
    inputs : tuple of ndarray, default=None
        ``(Xq, Xf)``: the layer's inputs from the quantized and the float prefix
        (quantizers that fit on ``"data"``).
    gradient : ndarray, default=None
        The loss gradient of ``W`` (quantizers that fit on ``"gradient"``).
    groups : int, default=1
        Input groups of a grouped convolution (data-driven quantizers fit each).

    Returns
    -------
    fitted : estimator or list of estimators
        The fitted quantizer (one per group for grouped data-driven fits).
    tensor : QuantizedTensor
        ``W`` encoded.
    """
    if est._fit_requires == "data":
        Xq, Xf = inputs
        return _fit_data_driven(est, W, Xq, Xf, groups)
    if est._fit_requires == "gradient":
        est.fit(W, gradient=gradient)
    else:
        est.fit(W)
    return est, est.compress(W)
