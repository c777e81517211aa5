"""Quantization error and model-size metrics.

Weights have shape ``(n_in, n_out)`` and activations ``(m, n_in)``; a layer computes
``X @ W``.
"""

from collections.abc import Mapping

import numpy as np

from ._common._checks import check_int
from ._tensor._errors import relative_error, sqnr
from ._tensor._qtensor import QuantizedTensor

__all__ = [
    "compression_ratio",
    "model_size_bits",
    "relative_error",
    "sqnr",
]


def _holds_tensors(t):
    """Whether ``t`` is a list or tuple that holds a QuantizedTensor, at any depth."""
    return isinstance(t, list | tuple) and any(
        isinstance(u, QuantizedTensor) or _holds_tensors(u) for u in t
    )


def _items(tensors):
    if isinstance(tensors, QuantizedTensor | np.ndarray):
        items = [tensors]
    elif isinstance(tensors, Mapping):  # a state dict: its tensors, not its names
        items = list(tensors.values())
    elif isinstance(tensors, str | bytes) or not hasattr(tensors, "__iter__"):
        items = None  # (a string counted one float a character)
    else:
        items = list(tensors)
    if items is None or not all(
        isinstance(t, QuantizedTensor)
        or (not _holds_tensors(t) and np.asarray(t).dtype.kind in "biuf")
        for t in items
    ):  # (a nested list of tensors counted one float for each tensor, or their
        # dequantized values: np.asarray reads a QuantizedTensor's floats)
        raise TypeError(
            "tensors must be a QuantizedTensor, an array, or a list or dict of "
            f"them, got {tensors!r:.80} instead."
        )
    return items


def model_size_bits(tensors, *, float_bits=32):
    """Count the bits that store a model: codes, scales, zero points, float arrays.

    Parameters
    ----------
    tensors : QuantizedTensor, ndarray, or iterable or dict of them
        Quantized tensors count their :attr:`~skquant.QuantizedTensor.size_bits`
        (codes packed at ``n_bits`` each in blocks of 8 codes, ``n_bits`` bytes a
        block, the last block padded, plus every scale at its dtype's width and
        every zero point); plain arrays (biases, unquantized
        layers) count ``float_bits`` per entry. A dict counts its values.
    float_bits : int, default=32
        Bits per entry of a plain array.

    Returns
    -------
    n_bits : int
        Total bits.

    See Also
    --------
    compression_ratio : Against float32 storage.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import quantize
    >>> from skquant.metrics import model_size_bits
    >>> W = np.ones((100, 10), dtype=np.float32)
    >>> model_size_bits([quantize(W, n_bits=4), np.zeros(10)])
    4640
    """
    float_bits = check_int(float_bits, "float_bits")
    total = 0
    for t in _items(tensors):
        if isinstance(t, QuantizedTensor):
            total += t.size_bits
        else:
            total += int(np.asarray(t).size) * float_bits
    return total


def compression_ratio(tensors, *, float_bits=32):
    """Size of the model in float32 over its quantized size.

    ``32 * n_params / model_size_bits(tensors)``, where ``n_params`` counts every
    entry, quantized or not.

    Parameters
    ----------
    tensors : QuantizedTensor, ndarray, or iterable or dict of them
        As in :func:`model_size_bits`; at least one entry.
    float_bits : int, default=32
        Bits per entry of a plain array.

    Returns
    -------
    ratio : float
        The compression ratio.

    See Also
    --------
    model_size_bits : The quantized size.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import quantize
    >>> from skquant.metrics import compression_ratio
    >>> W = np.ones((1000, 10), dtype=np.float32)
    >>> round(compression_ratio(quantize(W, n_bits=8)), 3)
    3.984
    """
    items = _items(tensors)
    n_params = sum(
        t.n_params if isinstance(t, QuantizedTensor) else np.asarray(t).size
        for t in items
    )
    if n_params == 0:
        raise ValueError(
            "tensors must hold at least one entry, got tensors="
            f"{tensors!r:.80} instead."
        )
    return 32 * n_params / model_size_bits(items, float_bits=float_bits)
