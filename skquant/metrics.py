"""Quantization error and model-size metrics.

Weights have shape ``(n_in, n_out)`` and activations ``(m, n_in)``; a layer computes
``X @ W``.
"""

import numpy as np
from sklearn.utils import check_array

from ._tensor._packing import QuantizedTensor

__all__ = [
    "compression_ratio",
    "model_size_bits",
    "relative_error",
    "sqnr",
]


def _pair(W, Q):
    W = check_array(W, dtype=[np.float64, np.float32], input_name="W")
    Q = check_array(Q, dtype=[np.float64, np.float32], input_name="Q")
    if W.shape != Q.shape:
        raise ValueError(
            f"W and Q must have the same shape, got W.shape={W.shape} and "
            f"Q.shape={Q.shape} instead."
        )
    return W.astype(np.float64, copy=False), Q.astype(np.float64, copy=False)


def relative_error(W, Q, X=None):
    """Relative error of quantized weights, on a layer's output when ``X`` is given.

    ``||X (W - Q)||_F / ||X W||_F``, or ``||W - Q||_F / ||W||_F`` without ``X``.

    Parameters
    ----------
    W : array-like of shape (n_in, n_out)
        Original weights.
    Q : array-like of shape (n_in, n_out)
        Quantized weights.
    X : array-like of shape (m, n_in), default=None
        Activations entering the layer.

    Returns
    -------
    error : float
        The relative error (0 when ``Q == W``; ``inf`` when the reference is 0 and
        ``Q`` differs).

    See Also
    --------
    sqnr : The same comparison in decibels.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.metrics import relative_error
    >>> W = np.array([[3.0], [4.0]])
    >>> relative_error(W, np.array([[3.0], [3.0]]))
    0.2
    >>> relative_error(W, W, X=np.ones((5, 2)))
    0.0
    """
    W, Q = _pair(W, Q)
    D = W - Q
    if X is not None:
        X = check_array(X, dtype=[np.float64, np.float32], input_name="X")
        if X.shape[1] != W.shape[0]:
            raise ValueError(
                f"X must have W.shape[0]={W.shape[0]} columns, got X.shape={X.shape} "
                "instead."
            )
        X = X.astype(np.float64, copy=False)
        D, W = X @ D, X @ W
    num, den = np.linalg.norm(D), np.linalg.norm(W)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def sqnr(W, Q):
    """Signal-to-quantization-noise ratio in decibels.

    ``10 log10(||W||^2 / ||W - Q||^2)``.

    Parameters
    ----------
    W : array-like of shape (n_in, n_out)
        Original weights.
    Q : array-like of shape (n_in, n_out)
        Quantized weights.

    Returns
    -------
    sqnr_db : float
        The ratio in dB (``inf`` when ``Q == W``).

    See Also
    --------
    relative_error : The same comparison as a ratio of norms.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant.metrics import sqnr
    >>> round(sqnr(np.array([[10.0]]), np.array([[9.0]])), 6)
    20.0
    """
    W, Q = _pair(W, Q)
    noise = np.sum((W - Q) ** 2)
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(np.sum(W**2) / noise))


def _items(tensors):
    if isinstance(tensors, QuantizedTensor | np.ndarray):
        return [tensors]
    return list(tensors)


def model_size_bits(tensors, *, float_bits=32):
    """Count the bits that store a model: codes, scales, zero points, float arrays.

    Parameters
    ----------
    tensors : QuantizedTensor, ndarray, or iterable of them
        Quantized tensors count their :attr:`~skquant.QuantizedTensor.size_bits`
        (codes packed at ``n_bits`` each, padded to whole bytes, plus every scale at
        its dtype's width and every zero point); plain arrays (biases, unquantized
        layers) count ``float_bits`` per entry.
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
    total = 0
    for t in _items(tensors):
        if isinstance(t, QuantizedTensor):
            total += t.size_bits
        else:
            total += int(np.asarray(t).size) * int(float_bits)
    return total


def compression_ratio(tensors, *, float_bits=32):
    """Size of the model in float32 over its quantized size.

    ``32 * n_params / model_size_bits(tensors)``, where ``n_params`` counts every
    entry, quantized or not.

    Parameters
    ----------
    tensors : QuantizedTensor, ndarray, or iterable of them
        As in :func:`model_size_bits`.
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
    return 32 * n_params / model_size_bits(items, float_bits=float_bits)
