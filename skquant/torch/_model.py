"""Layer-by-layer quantization of torch models (Linear, Conv1d and Conv2d layers)."""

import copy

import numpy as np
import torch
from torch import nn

from .._network._layers import quantize_layers
from .._tensor._io import tensor_from
from .._tensor._qtensor import QuantizedTensor
from ._layout import matrix_to_weight, to_numpy
from ._network import TorchNetwork


class QuantMixin:
    """What a quantized layer stores: packed codes and scales.

    Persistent state (``state_dict``): ``weight_packed`` (the bit-packed codes,
    ``uint8``), ``weight_scale`` (one scale per output channel, or one),
    ``weight_zero_point`` for affine grids, and the alphabet as extra state. The
    float ``weight`` that ``forward`` uses and the unpacked ``weight_codes`` are
    derived buffers, rebuilt when the state is loaded (a cached dequantized weight
    is faster on CPU than dequantizing in every forward; see the docs'
    performance page).
    """

    def _attach(self, module, tensor):
        """Take ``module``'s bias and ``tensor``'s codes and scales."""
        if module.bias is not None:
            with torch.no_grad():
                self.bias.copy_(module.bias)
        self._set_tensor(tensor)
        return self

    def _set_tensor(self, tensor):
        W = matrix_to_weight(tensor.dequantize(), self)
        device = W.device
        if "weight" in self._parameters:
            del self._parameters["weight"]
        self.register_buffer("weight", W, persistent=False)
        codes = np.ascontiguousarray(tensor.codes.T).reshape(tuple(W.shape))
        variable = tensor.precision_bits is not None
        # per-parameter precision has no fixed-width packing: its codes and bits
        # are the stored state (as int arrays)
        self.register_buffer(
            "weight_codes", torch.from_numpy(codes).to(device), persistent=variable
        )
        if variable:
            bits = np.ascontiguousarray(tensor.precision_bits.T).reshape(codes.shape)
            self.register_buffer("weight_bits", torch.from_numpy(bits).to(device))
        else:
            self.register_buffer(
                "weight_packed", torch.from_numpy(tensor.pack()).to(device)
            )
        self.register_buffer(
            "weight_scale",
            torch.from_numpy(np.ascontiguousarray(tensor.scale)).to(device),
        )
        if tensor.zero_point is not None:
            self.register_buffer(
                "weight_zero_point",
                torch.from_numpy(np.ascontiguousarray(tensor.zero_point)).to(device),
            )
        self._qmeta = {
            "alphabet": tensor.alphabet,
            "n_bits": int(tensor.n_bits),
            "qmin": int(tensor.qmin),
            "qmax": int(tensor.qmax),
            "codes_dtype": tensor.codes.dtype.str,
            "float_dtype": None
            if tensor.float_dtype is None
            else np.dtype(tensor.float_dtype).str,
        }
        if variable:
            self._qmeta["group_size"] = tensor.group_size
            self._qmeta["map_coder"] = tensor.map_coder
            self._qmeta["payload_coder"] = tensor.payload_coder
        self.n_bits = tensor.n_bits
        self.alphabet = tensor.alphabet
        self.size_bits = tensor.size_bits

    def quantized_tensor(self):
        """The layer's :class:`~skquant.QuantizedTensor` (``(n_in, n_out)`` layout).

        Returns
        -------
        qt : QuantizedTensor
            Codes unpacked from ``weight_packed``, with ``weight_scale``.
        """
        shape = tuple(self.weight.shape)
        if "weight_bits" in self._buffers:
            n_out = shape[0]
            return QuantizedTensor(
                codes=np.ascontiguousarray(
                    to_numpy(self.weight_codes).reshape(n_out, -1).T
                ),
                scale=to_numpy(self.weight_scale),
                n_bits=self._qmeta["n_bits"],
                qmin=self._qmeta["qmin"],
                qmax=self._qmeta["qmax"],
                alphabet=self._qmeta["alphabet"],
                precision_bits=np.ascontiguousarray(
                    to_numpy(self.weight_bits).reshape(n_out, -1).T
                ),
                group_size=self._qmeta.get("group_size"),
                map_coder=self._qmeta.get("map_coder", "auto"),
                payload_coder=self._qmeta.get("payload_coder", "range"),
            )
        meta = dict(self._qmeta, shape=[int(np.prod(shape[1:])), shape[0]])
        meta["zero_point"] = "weight_zero_point" in self._buffers
        arrays = {
            "codes": to_numpy(self.weight_packed),
            "scale": to_numpy(self.weight_scale),
        }
        if meta["zero_point"]:
            arrays["zero_point"] = to_numpy(self.weight_zero_point)
        return tensor_from(meta, arrays, f"{type(self).__name__}")

    def get_extra_state(self):
        """The alphabet (plain values: loads with ``weights_only=True``)."""
        return dict(self._qmeta)

    def set_extra_state(self, state):
        """Take the alphabet and rebuild ``weight`` and ``weight_codes``."""
        self._qmeta = dict(state)
        self._set_tensor(self.quantized_tensor())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the stored buffers may differ in size from this module's (another
        # n_bits), and a fresh module still has a float weight parameter
        if any(prefix + k in state_dict for k in ("weight_packed", "weight_bits")):
            for key in (
                "weight_packed",
                "weight_scale",
                "weight_zero_point",
                "weight_codes",
                "weight_bits",
            ):
                value = state_dict.get(prefix + key)
                if value is not None:
                    self.register_buffer(
                        key, torch.empty_like(value, device=self.weight.device)
                    )
            if "weight" in self._parameters:
                w = self._parameters.pop("weight")
                self.register_buffer("weight", w.detach(), persistent=False)
                self._qmeta = {}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class QuantLinear(QuantMixin, nn.Linear):
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


class QuantConvMixin(QuantMixin):
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


class QuantConv1d(QuantConvMixin, nn.Conv1d):
    """``nn.Conv1d`` with dequantized weights, ``weight_codes`` and ``weight_scale``.

    Built by :func:`quantize_model`.
    """


class QuantConv2d(QuantConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with dequantized weights, ``weight_codes`` and ``weight_scale``.

    Built by :func:`quantize_model`.
    """


_QUANT_CLASSES = (
    (nn.Linear, QuantLinear),
    (nn.Conv1d, QuantConv1d),
    (nn.Conv2d, QuantConv2d),
)


def quantized_module(module, tensor):
    """The quantized twin of a Linear/Conv1d/Conv2d layer holding ``tensor``."""
    for float_cls, quant_cls in _QUANT_CLASSES:
        if isinstance(module, float_cls):
            return quant_cls.from_float(module, tensor)
    raise TypeError(f"no quantized layer for {type(module).__name__}.")


def quantize_model(
    model,
    quantizer,
    calibration_data=None,
    *,
    max_rows=4096,
    skip=(),
    batch_size=256,
    random_state=0,
    loss_fn=None,
    targets=None,
    return_report=False,
    verbose=False,
):
    """Quantize the Linear, Conv1d and Conv2d layers of a torch model, in order.

    Each layer is quantized with its quantizer. Data-driven quantizers
    (:class:`~skquant.GreedyPathQuantizer`, :class:`~skquant.NullSpaceQuantizer`)
    see the layer's inputs computed by the already quantized layers before it
    (``activations``) and aim at the float model's (``target_activations``);
    rows (samples, or conv output positions) are sampled to at most ``max_rows``
    per layer as they are produced. Memoryless quantizers need no calibration
    data and run no forward pass. Weightless layers (BatchNorm, pooling, ...)
    pass through; grouped and depthwise convolutions are quantized group by group.

    Parameters
    ----------
    model : torch.nn.Module
        The float model (left unchanged).
    quantizer : estimator or dict
        An unfitted skquant weight quantizer, cloned per layer, or a dict from
        layer name (``model.named_modules()`` names) to quantizer: layers not
        named stay float unless the key ``"*"`` gives a default.
    calibration_data : torch.Tensor, ndarray or iterable, default=None
        Calibration inputs (cast to the model's dtype and device), or an iterable
        of batches (tensors or ``(x, y)`` pairs, as a ``DataLoader`` gives).
        Needed by data-driven quantizers.
    max_rows : int, default=4096
        Largest number of rows (samples or patches) per layer.
    skip : sequence of str, default=()
        Names of modules to leave float, with all their children.
    batch_size : int, default=256
        Batch size when ``calibration_data`` is a tensor or an array.
    random_state : int, default=0
        Seed of the row sub-sampling.
    loss_fn : callable, default=None
        Loss for :class:`~skquant.AdaptivePrecisionQuantizer`'s gradients
        (``None``: cross-entropy).
    targets : tensor or ndarray, default=None
        Labels of ``calibration_data``, needed by
        :class:`~skquant.AdaptivePrecisionQuantizer` only.
    return_report : bool, default=False
        Also return the per-layer :class:`~skquant._network.QuantizationReport`.
    verbose : bool, default=False
        Show a progress bar.

    Returns
    -------
    qmodel : torch.nn.Module
        A copy of ``model`` whose quantized layers are :class:`QuantLinear`,
        :class:`QuantConv1d` or :class:`QuantConv2d`, each with ``weight_codes``,
        ``weight_scale`` and ``size_bits``.
    report : QuantizationReport
        Only with ``return_report=True``.

    Examples
    --------
    >>> import torch
    >>> from skquant import GreedyPathQuantizer, UniformQuantizer
    >>> from skquant.torch import quantize_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(),
    ...                           torch.nn.Linear(16, 3))
    >>> qnet = quantize_model(net, GreedyPathQuantizer(n_bits=4), torch.randn(256, 20))
    >>> type(qnet[0]).__name__, qnet[0].weight_codes.dtype
    ('QuantLinear', torch.int8)
    >>> qnet, report = quantize_model(net, {"2": UniformQuantizer(n_bits=8)},
    ...                               return_report=True)
    >>> [row["method"] for row in report.rows]
    ['float', 'Uniform']
    """
    network = TorchNetwork(model, skip=skip, loss_fn=loss_fn, batch_size=batch_size)

    def gradients():
        if calibration_data is None or targets is None:
            raise ValueError(
                "AdaptivePrecisionQuantizer needs loss gradients: pass "
                "calibration_data and targets (and loss_fn) to quantize_model."
            )
        data = (
            torch.as_tensor(calibration_data),
            torch.as_tensor(targets),
        )
        _, grads = network.loss_gradients(data)
        out = {}
        for name in network.layer_names:
            g = grads[f"{name}.weight"]
            out[name] = np.ascontiguousarray(g.reshape(g.shape[0], -1).T)
        return out

    res = quantize_layers(
        network,
        quantizer,
        calibration_data,
        max_rows=max_rows,
        random_state=random_state,
        gradients=gradients,
        verbose=verbose,
    )
    qmodel = copy.deepcopy(model)
    qlayers = dict(qmodel.named_modules())
    replace = dict(res.tensors)
    replace.update(
        {
            t: res.tensors[first]
            for t, first in network.tied.items()
            if first in res.tensors
        }
    )
    for name, tensor in replace.items():
        new = quantized_module(qlayers[name], tensor)
        if name == "":  # the model is itself one layer
            qmodel = new
            continue
        parent, _, attr = name.rpartition(".")
        setattr(qlayers[parent] if parent else qmodel, attr, new)
    return (qmodel, res.report) if return_report else qmodel
