"""Layer-by-layer quantization of torch models (Linear and Conv2d layers)."""

import copy

import numpy as np
import torch
from sklearn.base import clone
from torch import nn

from .._datadriven import BaseDataQuantizer
from .._progress import progress
from ._layout import (
    check_supported,
    layer_inputs_matrix,
    matrix_to_weight,
    to_numpy,
    weight_to_matrix,
)


class _QuantMixin:
    """Buffers of a quantized layer: integer codes and per-channel scales."""

    def _attach(self, module, tensor):
        """Take ``module``'s bias, ``tensor``'s weights, codes and scales."""
        with torch.no_grad():
            self.weight.copy_(matrix_to_weight(tensor.dequantize(), module))
            if module.bias is not None:
                self.bias.copy_(module.bias)
        self.register_buffer(
            "weight_codes",
            torch.from_numpy(
                np.ascontiguousarray(tensor.codes.T).reshape(self.weight.shape)
            ),
        )
        self.register_buffer(
            "weight_scale", torch.from_numpy(np.ascontiguousarray(tensor.scale))
        )
        self.n_bits = tensor.n_bits
        self.alphabet = tensor.alphabet
        self.size_bits = tensor.size_bits
        return self


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with dequantized weights, ``weight_codes`` and ``weight_scale``.

    Built by :func:`quantize_model`; it computes exactly what an ``nn.Linear`` with
    the dequantized weights computes.
    """

    @classmethod
    def from_float(cls, module, tensor):
        """Copy ``module`` with the weights of ``tensor`` (a QuantizedTensor)."""
        new = cls(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        return new._attach(module, tensor)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with dequantized weights, ``weight_codes`` and ``weight_scale``.

    Built by :func:`quantize_model`.
    """

    @classmethod
    def from_float(cls, module, tensor):
        """Copy ``module`` with the weights of ``tensor`` (a QuantizedTensor)."""
        new = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        return new._attach(module, tensor)


def _batches(data, batch_size):
    """Input batches from a tensor, an array, or an iterable of batches/(x, y)."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    for batch in data:
        yield batch[0] if isinstance(batch, tuple | list) else batch


@torch.no_grad()
def capture_inputs(model, modules, data, *, batch_size=256, device=None):
    """Inputs of the given layers (as matrices, conv patches as rows) on ``data``.

    Parameters
    ----------
    model : torch.nn.Module
        The model to run.
    modules : dict of {str: torch.nn.Module}
        Layers (Linear or Conv2d) of ``model`` whose inputs to capture, by name.
    data : torch.Tensor, ndarray or iterable
        Inputs, or an iterable of batches (tensors or ``(x, y)`` pairs).
    batch_size : int, default=256
        Batch size when ``data`` is a tensor or an array.
    device : torch.device, default=None
        Where to run; the model's device when ``None``.

    Returns
    -------
    inputs : dict of {str: torch.Tensor}
        For each name, a ``(n_rows, n_in)`` tensor on the CPU: one row per sample
        (Linear) or per output position (Conv2d).

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import capture_inputs
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4 * 6 * 6, 2))
    >>> got = capture_inputs(net, {"0": net[0], "2": net[2]}, torch.ones(5, 1, 8, 8))
    >>> tuple(got["0"].shape), tuple(got["2"].shape)
    ((180, 9), (5, 144))
    """
    device = device or next(model.parameters()).device
    store = {}  # filled in the order the layers run

    def hook(module, args, name):
        store.setdefault(name, []).append(layer_inputs_matrix(module, args[0]).cpu())

    hooks = [
        mod.register_forward_pre_hook(lambda m, args, name=name: hook(m, args, name))
        for name, mod in modules.items()
    ]
    was_training = model.training
    try:
        model.eval()
        for x in _batches(data, batch_size):
            x = torch.as_tensor(x)
            try:
                model(x.to(device))
            except RuntimeError as exc:
                raise ValueError(
                    f"calibration data of shape {tuple(x.shape)} (one batch) does not "
                    f"fit the model: {exc}"
                ) from exc
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    missing = [name for name in modules if name not in store]
    if missing:
        raise ValueError(
            f"layers {missing} did not run on the calibration data; quantize_model "
            "needs every Linear/Conv2d layer to run in forward (or name it in skip)."
        )
    return {name: torch.cat(rows) for name, rows in store.items()}


def quantize_model(
    model,
    quantizer,
    calibration_data,
    *,
    max_rows=4096,
    skip=(),
    batch_size=256,
    random_state=0,
    verbose=False,
):
    """Quantize the Linear and Conv2d layers of a torch model, in order.

    Each layer is quantized with a clone of ``quantizer``, on its inputs computed by
    the already quantized layers before it (``activations``) and aiming at the float
    model's (``target_activations``), as GPFQ does. Conv layers see im2col patches,
    sub-sampled to at most ``max_rows`` rows (the same rows for both). Layers run in
    the order of a forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        The float model (left unchanged).
    quantizer : estimator
        An unfitted skquant weight quantizer; data-driven ones get activations.
    calibration_data : torch.Tensor, ndarray or iterable
        Calibration inputs, or an iterable of batches (tensors or ``(x, y)``).
    max_rows : int, default=4096
        Largest number of rows (samples or patches) per layer.
    skip : sequence of str, default=()
        Names of layers to leave in float.
    batch_size : int, default=256
        Batch size when ``calibration_data`` is a tensor or an array.
    random_state : int, default=0
        Seed of the row sub-sampling.
    verbose : bool, default=False
        Show a progress bar.

    Returns
    -------
    qmodel : torch.nn.Module
        A copy of ``model`` whose layers are :class:`QuantLinear` /
        :class:`QuantConv2d`, each with ``weight_codes``, ``weight_scale`` and
        ``size_bits``.

    Examples
    --------
    >>> import torch
    >>> from skquant import GreedyPathQuantizer
    >>> from skquant.torch import quantize_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(),
    ...                           torch.nn.Linear(16, 3))
    >>> qnet = quantize_model(net, GreedyPathQuantizer(n_bits=4), torch.randn(256, 20))
    >>> type(qnet[0]).__name__, qnet[0].weight_codes.dtype
    ('QuantLinear', torch.int8)
    """
    layers = {}
    for name, mod in model.named_modules():
        if name in skip:
            continue
        if check_supported(name, mod):
            layers[name] = mod
    if not layers:
        raise ValueError("model has no nn.Linear or nn.Conv2d layer to quantize.")
    if not isinstance(calibration_data, torch.Tensor | np.ndarray):
        calibration_data = list(calibration_data)  # iterated once per layer
    float_inputs = capture_inputs(
        model, layers, calibration_data, batch_size=batch_size
    )
    order = list(float_inputs)  # the order of a forward pass
    rng = np.random.default_rng(random_state)
    rows = {}
    for name, X in float_inputs.items():
        n = X.shape[0]
        rows[name] = (
            np.sort(rng.choice(n, max_rows, replace=False))
            if n > max_rows
            else np.arange(n)
        )
    qmodel = copy.deepcopy(model)
    qlayers = dict(qmodel.named_modules())
    for name in progress(order, desc="quantize_model", enabled=verbose):
        module = qlayers[name]
        Xf = to_numpy(float_inputs[name][rows[name]]).astype(np.float64)
        Xq = to_numpy(
            capture_inputs(
                qmodel, {name: module}, calibration_data, batch_size=batch_size
            )[name][rows[name]]
        )
        W = weight_to_matrix(module)
        est = clone(quantizer)
        if isinstance(est, BaseDataQuantizer):
            Q = est.fit_transform(
                W, activations=Xq.astype(np.float64), target_activations=Xf
            )
        else:
            Q = est.fit(W).transform(W)
        tensor = est._tensor_of(Q)
        cls = QuantLinear if isinstance(module, nn.Linear) else QuantConv2d
        new = cls.from_float(module, tensor)
        parent, _, attr = name.rpartition(".")
        setattr(qlayers[parent] if parent else qmodel, attr, new)
        qlayers[name] = new
    return qmodel
