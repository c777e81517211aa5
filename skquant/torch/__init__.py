"""PyTorch adapter: layouts, activation capture, model quantization, fake quantization.

Importing it requires PyTorch; ``import skquant`` never imports this sub-package.

Its modules import one way, up this list (a module imports only modules of the
lines before its own, never a module of its own line, this package or
``skquant``); ``pyproject.toml``'s import-linter contract holds the same list:

1. ``_state`` (a model given back as it was), ``_layout`` (weight tensors as
   ``(n_in, n_out)`` matrices), ``_data`` (data as mini-batches), ``_fake`` (fake
   quantization with autograd), ``_checkpoint`` (safetensors checkpoints read a
   tensor at a time, state slots filled and emptied);
2. ``_rows`` (a layer's input rows: conv patches, sampled), ``_gradients`` (loss
   gradients on a model, grad mode and flags), ``_qstate`` (a quantized layer's
   stored form: its tensor, file entry and ``state_dict``);
3. ``_capture`` (forward passes handing layers' inputs to a callback);
4. ``_int8`` (torch's int8 kernels), ``_graph`` (runs on a model's ``torch.fx``
   graph: a layer's outputs from it on, the walk of a traced module, the
   layers whose outputs it views);
5. ``_network`` (:class:`TorchNetwork`: the adapter and its walk), ``_qlayers``
   (the quantized layers and their runtimes), ``_fold`` (BatchNorm folded into
   the convolution before it);
6. ``_model`` (:func:`quantize_model`), ``_chain`` (:func:`chain_int8`: int8
   convolutions that pass codes to the next layer), ``_adaptive``
   (:func:`adaptive_quantize_model`), ``_sensitivity``
   (:func:`measure_sensitivity`), ``_onnxcheck`` (an exported file run in ONNX
   Runtime against the model);
7. ``_io`` (quantized models in skquant files), ``_onnx`` (:func:`export_onnx`);
8. ``_sq/`` (Smart Quantization: the regulariser and the trainers);
9. ``_sqestimator`` (:class:`SQClassifier`).
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "skquant.torch requires PyTorch; install it with `pip install skquant[torch]`."
    ) from exc

from .._network._adapters import register_adapter
from ._adaptive import adaptive_quantize_model
from ._capture import capture_inputs
from ._chain import chain_int8
from ._checkpoint import Checkpoint
from ._fake import FakeQuantize, fake_quantize_ste
from ._fold import FoldedBatchNorm
from ._gradients import check_autograd, loss_gradients
from ._io import load_into, save_model
from ._layout import matrix_to_weight, weight_to_matrix
from ._model import QuantConv1d, QuantConv2d, QuantLinear, quantize_model
from ._network import TorchNetwork
from ._onnx import export_onnx
from ._qlayers import RuntimeFallbackWarning
from ._sensitivity import measure_sensitivity
from ._sq._baseline import train_baseline
from ._sq._regularizer import SQRegularizer
from ._sq._result import SQResult
from ._sq._train import train_sq
from ._sqestimator import SQClassifier

__all__ = [
    "Checkpoint",
    "FakeQuantize",
    "FoldedBatchNorm",
    "SQClassifier",
    "SQRegularizer",
    "SQResult",
    "TorchNetwork",
    "adaptive_quantize_model",
    "loss_gradients",
    "QuantConv1d",
    "QuantConv2d",
    "QuantLinear",
    "RuntimeFallbackWarning",
    "capture_inputs",
    "chain_int8",
    "export_onnx",
    "fake_quantize_ste",
    "load_into",
    "matrix_to_weight",
    "measure_sensitivity",
    "quantize_model",
    "save_model",
    "train_baseline",
    "train_sq",
    "weight_to_matrix",
]

# the network layer finds the torch front ends through this, never by importing us
register_adapter(
    lambda model: isinstance(model, torch.nn.Module),
    measure_sensitivity=measure_sensitivity,
    check_autograd=check_autograd,
)
