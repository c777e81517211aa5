"""Functional shortcuts for scripting; they call the estimators and add no math."""

from ._uniform import UniformQuantizer, level_quantizer

__all__ = ["quantize"]


def quantize(
    W,
    n_bits=4,
    *,
    alphabet="uniform",
    granularity="per_channel",
    scale=None,
    n_jobs=None,
):
    """Quantize a weight matrix in one call.

    Parameters
    ----------
    W : array-like of shape (n_in, n_out)
        Weight matrix, one column per output channel.
    n_bits : int, default=4
        Bits per weight for ``alphabet="uniform"`` (2 to 16); ignored otherwise.
    alphabet : {"uniform", "ternary", "binary"}, default="uniform"
        Which quantizer: :class:`UniformQuantizer`, :class:`TernaryQuantizer` or
        :class:`BinaryQuantizer`.
    granularity : {"per_channel", "per_tensor"}, default="per_channel"
        One scale per output channel or per tensor.
    scale : str, float or array-like, default=None
        The quantizer's ``scale`` parameter; ``None`` takes its default.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    qt : QuantizedTensor
        Codes and scales; ``qt.dequantize()`` gives the quantized weights.

    See Also
    --------
    UniformQuantizer : The estimator behind ``alphabet="uniform"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import quantize
    >>> W = np.random.default_rng(0).standard_normal((64, 8))
    >>> qt = quantize(W, n_bits=3)
    >>> qt.codes.dtype, qt.codes.min() >= -3, qt.codes.max() <= 3
    (dtype('int8'), np.True_, np.True_)
    """
    params = {"granularity": granularity, "n_jobs": n_jobs}
    if isinstance(alphabet, str) and alphabet == "uniform":
        cls = UniformQuantizer
        params["n_bits"] = n_bits
    else:
        try:
            cls = level_quantizer(alphabet)
        except ValueError:
            raise ValueError(
                "alphabet must be one of ['binary', 'ternary', 'uniform'], got "
                f"alphabet={alphabet!r} instead."
            ) from None
    if scale is not None:
        params["scale"] = scale
    return cls(**params).fit(W).compress(W)
