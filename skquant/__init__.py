"""skquant: adaptive quantization of neural-network weights and activations.

Quantizers follow scikit-learn's ``fit``/``transform`` contract over weight matrices of
shape ``(n_in, n_out)`` (one column per output channel) and activation matrices of
shape ``(n_samples, n_features)``. numba kernels do the numerics; the optional
:mod:`skquant.torch` adapter (never imported here) brings PyTorch models.
"""

from ._common._config import config_context, get_config, set_config
from ._compat import install as _install_old_paths
from ._layerbits._allocation import allocate_bits, closed_form_bits
from ._layerbits._law import SensitivityResult
from ._precision._estimator import AdaptivePrecisionQuantizer
from ._quantizers._activation import ActivationQuantizer
from ._quantizers._functional import quantize
from ._quantizers._gpfq import GreedyPathQuantizer
from ._quantizers._gptq import GPTQQuantizer
from ._quantizers._nullspace import NoFreedomWarning, NullSpaceQuantizer
from ._quantizers._uniform import BinaryQuantizer, TernaryQuantizer, UniformQuantizer
from ._sklearn._adaptive import adaptive_quantize_mlp
from ._sklearn._layerbits import LayerBitAllocator
from ._sklearn._mlp import QuantizedMLP
from ._sklearn._sensitivity import measure_sensitivity
from ._tensor._bits import pack_codes, unpack_codes
from ._tensor._io import load, save
from ._tensor._qtensor import QuantizedTensor

_install_old_paths()  # pickles made before the sub-packages name the old paths

__version__ = "0.1.0.dev0"

__all__ = [
    "ActivationQuantizer",
    "AdaptivePrecisionQuantizer",
    "BinaryQuantizer",
    "GreedyPathQuantizer",
    "GPTQQuantizer",
    "LayerBitAllocator",
    "NoFreedomWarning",
    "NullSpaceQuantizer",
    "QuantizedMLP",
    "QuantizedTensor",
    "SensitivityResult",
    "TernaryQuantizer",
    "UniformQuantizer",
    "__version__",
    "adaptive_quantize_mlp",
    "allocate_bits",
    "closed_form_bits",
    "config_context",
    "get_config",
    "load",
    "measure_sensitivity",
    "pack_codes",
    "quantize",
    "save",
    "set_config",
    "unpack_codes",
]
