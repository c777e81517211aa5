"""Bit-packing of integer codes: ``n_bits`` bits per code, a whole number of bytes."""

import math
import numbers

import numpy as np

from .._common._checks import check_int
from .._common._jobs import check_n_jobs
from .._kernels import _packing
from .._kernels._threads import numba_threads
from ._alphabets import code_dtype

__all__ = ["pack_codes", "packed_size", "unpack_codes"]


def _check_n_bits(n_bits):
    if (
        not isinstance(n_bits, numbers.Integral)
        or isinstance(n_bits, bool)
        or not 1 <= n_bits <= 16
    ):
        raise ValueError(
            f"n_bits must be an int in [1, 16], got n_bits={n_bits!r} instead."
        )
    return int(n_bits)


def _check_shape(shape):
    """``shape`` (an int or a sequence of them, each ``>= 0``) as a tuple."""
    dims = (shape,) if isinstance(shape, numbers.Integral) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        dims = None
    if dims is None or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0
        for s in dims
    ):
        raise ValueError(
            f"shape must be a tuple of ints >= 0, got shape={shape!r} instead."
        )
    return tuple(int(s) for s in dims)


def packed_size(n_codes, n_bits):
    """Bytes that :func:`pack_codes` writes for ``n_codes`` codes of ``n_bits`` bits."""
    return ((n_codes + 7) // 8) * n_bits


def pack_codes(codes, n_bits, qmin=None, *, n_jobs=None):
    """Pack integer codes into a bit stream of ``n_bits`` bits per code.

    Each code ``c`` is stored as the unsigned ``c - qmin``, least significant bit
    first, in C order. Eight codes fill exactly ``n_bits`` bytes; the last group is
    padded with zero bits.

    Parameters
    ----------
    codes : array-like of int
        The codes, of any shape; they are read in C order.
    n_bits : int
        Bits per code, 1 to 16.
    qmin : int, default=None
        Smallest representable code; ``None`` takes ``codes.min()`` (0 when empty).
        Every code must lie in ``[qmin, qmin + 2**n_bits - 1]``.
    n_jobs : int, default=None
        Number of numba threads; ``None`` means 1, ``-1`` all.

    Returns
    -------
    packed : ndarray of uint8 of shape (ceil(codes.size / 8) * n_bits,)
        The bit stream.

    See Also
    --------
    unpack_codes : The inverse.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import pack_codes, unpack_codes
    >>> codes = np.array([-1, 0, 1, 1, 0, -1], dtype=np.int8)
    >>> packed = pack_codes(codes, n_bits=2, qmin=-1)
    >>> packed.nbytes
    2
    >>> unpack_codes(packed, n_bits=2, qmin=-1, shape=codes.shape)
    array([-1,  0,  1,  1,  0, -1], dtype=int8)
    """
    n_bits = _check_n_bits(n_bits)
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError(
            f"codes must be an integer array, got codes.dtype={codes.dtype!s} instead."
        )
    qmin = check_int(qmin, "qmin", low=None, none=True)
    check_n_jobs(n_jobs)
    flat = np.ascontiguousarray(codes, dtype=codes.dtype.newbyteorder("=")).reshape(-1)
    if qmin is None:
        qmin = int(flat.min()) if flat.size else 0
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < qmin or hi > qmin + 2**n_bits - 1:
            raise ValueError(
                f"codes must lie in [qmin, qmin + 2**n_bits - 1] = "
                f"[{qmin}, {qmin + 2**n_bits - 1}], got values in [{lo}, {hi}] "
                "instead."
            )
    out = np.empty(packed_size(flat.size, n_bits), dtype=np.uint8)
    if n_jobs in (None, 1):
        _packing.pack_bits(flat, n_bits, qmin, out)
    else:
        with numba_threads(n_jobs):
            _packing.pack_bits_parallel(flat, n_bits, qmin, out)
    return out


def unpack_codes(packed, n_bits, qmin, shape, dtype=None, *, n_jobs=None):
    """Inverse of :func:`pack_codes`.

    Parameters
    ----------
    packed : array-like of uint8
        The bit stream.
    n_bits : int
        Bits per code, 1 to 16.
    qmin : int
        The ``qmin`` given to :func:`pack_codes`.
    shape : tuple of int
        Shape of the codes.
    dtype : dtype, default=None
        Integer dtype of the result; ``None`` takes the smallest that holds
        ``[qmin, qmin + 2**n_bits - 1]``.
    n_jobs : int, default=None
        Number of numba threads; ``None`` means 1, ``-1`` all.

    Returns
    -------
    codes : ndarray of shape `shape`
        The codes.

    See Also
    --------
    pack_codes : The packing.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import pack_codes, unpack_codes
    >>> codes = np.arange(-7, 8, dtype=np.int8).reshape(3, 5)
    >>> restored = unpack_codes(pack_codes(codes, 4, qmin=-7), 4, -7, codes.shape)
    >>> bool(np.array_equal(restored, codes))
    True
    """

    n_bits = _check_n_bits(n_bits)
    packed = np.ascontiguousarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise TypeError(
            "packed must be a 1-D uint8 array, got "
            f"packed.dtype={packed.dtype!s}, packed.ndim={packed.ndim} instead."
        )
    shape = _check_shape(shape)
    qmin = check_int(qmin, "qmin", low=None)
    check_n_jobs(n_jobs)
    n = math.prod(shape)  # (Python ints: np.prod wrapped around at 2**64)
    if packed.size != packed_size(n, n_bits):
        raise ValueError(
            f"packed must hold {packed_size(n, n_bits)} bytes for shape={shape} at "
            f"n_bits={n_bits}, got {packed.size} bytes instead."
        )
    qmax = qmin + 2**n_bits - 1
    # (codes in the machine's byte order: numba's kernels take no other)
    dtype = code_dtype(qmin, qmax) if dtype is None else np.dtype(dtype)
    dtype = dtype.newbyteorder("=") if dtype.byteorder in "<>" else dtype
    if dtype.kind not in "iu" or not (
        np.iinfo(dtype).min <= qmin and qmax <= np.iinfo(dtype).max
    ):
        raise ValueError(
            f"dtype must be an integer dtype that holds every code in [{qmin}, "
            f"{qmax}], got dtype={dtype} instead."
        )
    out = np.empty(n, dtype=dtype)
    if n_jobs in (None, 1):
        _packing.unpack_bits(packed, n_bits, qmin, out)
    else:
        with numba_threads(n_jobs):
            _packing.unpack_bits_parallel(packed, n_bits, qmin, out)
    return out.reshape(shape)


def code_bits(qmin, qmax):
    """Bits of the integer dtype that holds ``[qmin, qmax]``."""
    return code_dtype(qmin, qmax).itemsize * 8
