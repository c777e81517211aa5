"""Argument checks and the covered layers, shared by the regulariser and the loop."""

from .._network import TorchNetwork


def covered_layers(model, layers, skip):
    """The model's weight layers chosen as in ``quantize_model`` (``layers``,
    ``skip``): the walk's adapter and the names, in forward order."""
    network = TorchNetwork(model, skip=skip)
    names = list(network.layer_names)
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        network.check_layer_names(layers, "layers")
        names = [n for n in names if n in layers]
        if not names:
            raise ValueError(f"layers={layers!r} selects no layer of the model.")
    return network, names
