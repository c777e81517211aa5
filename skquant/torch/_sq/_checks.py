"""Argument checks and the covered layers, shared by the regulariser and the loop."""

import math
import numbers

from .._network import TorchNetwork


def positive(value, name, allow_zero=False):
    """``value`` as a float, or a ``ValueError`` unless finite and ``> 0``
    (``>= 0`` with ``allow_zero``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"{name} must be a finite number {bound}, got {name}={value!r}."
        )
    return float(value)


def covered_layers(model, layers, skip):
    """The model's weight layers chosen as in ``quantize_model`` (``layers``,
    ``skip``): the walk's adapter and the names, in forward order."""
    network = TorchNetwork(model, skip=skip)
    names = list(network.layer_names)
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        network.check_layer_names(layers, "layers")
        names = [n for n in names if n in layers]
    return network, names
