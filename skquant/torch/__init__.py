"""PyTorch adapter: layouts, activation capture, model quantization, fake quantization.

Importing it requires PyTorch; ``import skquant`` never imports this sub-package.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "skquant.torch requires PyTorch; install it with `pip install skquant[torch]`."
    ) from exc

from .._network._adapters import register_adapter
from ._fake import FakeQuantize, fake_quantize_ste
from ._gradients import adaptive_quantize_model, check_autograd, loss_gradients
from ._io import load_into, save_model
from ._layout import matrix_to_weight, weight_to_matrix
from ._model import (
    QuantConv1d,
    QuantConv2d,
    QuantLinear,
    capture_inputs,
    quantize_model,
)
from ._network import TorchNetwork
from ._sensitivity import measure_sensitivity
from ._sq import SQRegularizer, SQResult, train_baseline, train_sq
from ._sqestimator import SQClassifier

__all__ = [
    "FakeQuantize",
    "SQClassifier",
    "SQRegularizer",
    "SQResult",
    "TorchNetwork",
    "adaptive_quantize_model",
    "loss_gradients",
    "QuantConv1d",
    "QuantConv2d",
    "QuantLinear",
    "capture_inputs",
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
