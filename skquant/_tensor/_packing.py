"""Bit-packing of integer codes and honest model-size accounting."""

import numbers
from dataclasses import dataclass, field

import numpy as np

from .._kernels import _packing
from .._kernels._threads import numba_threads

__all__ = ["QuantizedTensor", "pack_codes", "unpack_codes"]


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
    flat = np.ascontiguousarray(codes).reshape(-1)
    if qmin is None:
        qmin = int(flat.min()) if flat.size else 0
    qmin = int(qmin)
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
    from ._alphabets import code_dtype

    n_bits = _check_n_bits(n_bits)
    packed = np.ascontiguousarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise TypeError(
            "packed must be a 1-D uint8 array, got "
            f"packed.dtype={packed.dtype!s}, packed.ndim={packed.ndim} instead."
        )
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    n = int(np.prod(shape))
    if packed.size != packed_size(n, n_bits):
        raise ValueError(
            f"packed must hold {packed_size(n, n_bits)} bytes for shape={shape} at "
            f"n_bits={n_bits}, got {packed.size} bytes instead."
        )
    qmin = int(qmin)
    dtype = code_dtype(qmin, qmin + 2**n_bits - 1) if dtype is None else np.dtype(dtype)
    out = np.empty(n, dtype=dtype)
    if n_jobs in (None, 1):
        _packing.unpack_bits(packed, n_bits, qmin, out)
    else:
        with numba_threads(n_jobs):
            _packing.unpack_bits_parallel(packed, n_bits, qmin, out)
    return out.reshape(shape)


@dataclass(frozen=True, eq=False, repr=False)
class QuantizedTensor:
    """A quantized weight matrix: integer codes plus per-channel scales.

    Made by a fitted quantizer's ``compress`` method or by :func:`skquant.quantize`.
    ``dequantize()`` gives the same floats as the quantizer's ``transform``, and
    :attr:`size_bits` counts what storing it really takes: the packed codes (padded
    to whole bytes) plus every scale (and zero point) at its dtype's width.

    Parameters
    ----------
    codes : ndarray of int of shape (n_rows, n_cols)
        Integer codes.
    scale : ndarray of shape (n_scales,)
        One scale per column (``n_scales = n_cols``) or per tensor (``n_scales = 1``).
    n_bits : int
        Bits stored per code.
    qmin, qmax : int
        Range of the codes.
    alphabet : str
        ``"uniform"``, ``"binary"``, ``"ternary"`` or ``"affine"``.
    zero_point : ndarray of shape (n_scales,), default=None
        Affine zero points (``None`` for symmetric grids).
    float_dtype : dtype, default=None
        Float dtype of the dequantized values; ``None`` takes ``scale.dtype``.
    precision_bits : ndarray of int of shape (n_rows, n_cols), default=None
        Precision of every code (alphabet ``"fixed_point"``: fractional bits plus
        the sign, 0 = pruned). The tensor is then stored as a variable-width
        payload, an entropy-coded precision map and the exponent of its step (see
        :mod:`skquant._fixedpoint`), and its size is those bytes.
    group_size : None, "channel" or int, default=None
        With ``precision_bits``: one precision per entry (``None``), per column, or
        per ``group_size`` consecutive rows of a column.
    map_coder : {"auto", "range", "fixed", "lzma", "zlib"}, default="auto"
        With ``precision_bits``: how the precision map is coded.
    payload_coder : {"range", "raw"}, default="range"
        With ``precision_bits``: whether short payload fields are range-coded.

    Attributes
    ----------
    shape : tuple of int
        Shape of the tensor.
    n_params : int
        Number of quantized entries.
    size_bits : int
        Bits to store codes, scales and zero points.
    bits_per_param : float
        ``size_bits / n_params``.
    compression_ratio : float
        ``32 * n_params / size_bits``: against float32 storage.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import quantize
    >>> W = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    >>> qt = quantize(W, n_bits=4)
    >>> qt.size_bits == 256 * 64 * 4 + 64 * 32
    True
    >>> print(qt)  # doctest: +ELLIPSIS
    QuantizedTensor(shape=(256, 64), alphabet='uniform', n_bits=4, ...
    """

    codes: np.ndarray
    scale: np.ndarray
    n_bits: int
    qmin: int
    qmax: int
    alphabet: str = "uniform"
    zero_point: np.ndarray = field(default=None)
    float_dtype: np.dtype = field(default=None)
    precision_bits: np.ndarray = field(default=None)
    group_size: object = field(default=None)
    map_coder: str = field(default="auto")
    payload_coder: str = field(default="range")

    @property
    def shape(self):
        """Shape of the tensor."""
        return self.codes.shape

    @property
    def n_params(self):
        """Number of quantized entries."""
        return int(self.codes.size)

    @property
    def alphabet_record(self):
        """The :class:`~skquant._alphabets.Alphabet` of the codes."""
        from ._alphabets import Alphabet

        return Alphabet(self.alphabet, self.qmin, self.qmax, self.n_bits)

    def _storage(self):
        return self.alphabet_record.stored(self.codes)

    def pack(self):
        """Bit-packed codes.

        Returns
        -------
        packed : ndarray of uint8
            ``n_bits`` bits per code, see :func:`pack_codes`.
        """
        if self.precision_bits is not None:
            raise ValueError(
                "a QuantizedTensor with per-parameter precision (alphabet="
                f"{self.alphabet!r}) has variable-width codes: pack() writes fixed "
                "widths only; encoded() gives its stored arrays."
            )
        codes, qmin = self._storage()
        return pack_codes(codes, self.n_bits, qmin)

    @property
    def n_max(self):
        """Fractional bits of the finest step (alphabet ``"fixed_point"``)."""
        return int(self.qmax).bit_length() - 1

    def encoded(self):
        """The stored arrays of a tensor with ``precision_bits``, and their header.

        Returns
        -------
        meta : dict
            ``map_coder`` (the coder used) and ``payload_bits``.
        arrays : dict of ndarray
            Payload, precision map and exponent (see :mod:`skquant._fixedpoint`):
            what :func:`skquant.save` writes.
        """
        from . import _fixedpoint

        if self.precision_bits is None:
            raise ValueError(
                "encoded() is for tensors with precision_bits (alphabet "
                "'fixed_point'); use pack() for fixed-width codes."
            )
        cached = self.__dict__.get("_encoded")
        if cached is None:
            if self.scale.size != 1:
                raise ValueError(
                    "a fixed-point tensor has one scale (its finest step), got "
                    f"{self.scale.size}."
                )
            cached = _fixedpoint.encode(
                self.codes,
                self.precision_bits,
                self.n_max,
                float(self.scale[0]),
                _fixedpoint.check_group_size(self.group_size),
                _fixedpoint.check_map_coder(self.map_coder),
                _fixedpoint.check_payload_coder(self.payload_coder),
            )
            object.__setattr__(self, "_encoded", cached)
        return cached[0], dict(cached[1])

    @property
    def size_bits(self):
        """Bits to store the packed codes, the scales and the zero points."""
        if self.precision_bits is not None:
            return 8 * sum(a.nbytes for a in self.encoded()[1].values())
        bits = 8 * packed_size(self.n_params, self.n_bits)
        bits += self.scale.size * self.scale.dtype.itemsize * 8
        if self.zero_point is not None:
            zp = np.asarray(self.zero_point)
            bits += zp.size * code_bits(self.qmin, self.qmax)
        return int(bits)

    @property
    def bits_per_param(self):
        """Stored bits per quantized entry, scales included."""
        return self.size_bits / max(self.n_params, 1)

    @property
    def compression_ratio(self):
        """``32 * n_params / size_bits``."""
        return 32 * self.n_params / self.size_bits

    def dequantize(self):
        """Return the floats the codes stand for, equal to ``transform``.

        Returns
        -------
        W : ndarray of shape (n_rows, n_cols)
            Dequantized values.
        """
        from .._kernels import _msq
        from ._alphabets import safe_scale

        dtype = np.dtype(self.float_dtype or self.scale.dtype)
        n_cols = self.codes.shape[1]
        level = np.broadcast_to(safe_scale(self.scale, dtype), (n_cols,)).copy()
        zp = np.zeros(n_cols, dtype=dtype)
        if self.zero_point is not None:
            zp[:] = np.broadcast_to(np.asarray(self.zero_point, dtype=dtype), (n_cols,))
        out = np.empty(self.codes.shape, dtype=dtype)
        _msq.dequantize(self.codes, level, zp, out)
        return out

    def summary(self, W=None, X=None):
        """Size and, given the original weights, the quantization error.

        Parameters
        ----------
        W : array-like of shape (n_rows, n_cols), default=None
            The weights that were quantized.
        X : array-like of shape (n_samples, n_rows), default=None
            Activations; with them the error is measured on the layer's output.

        Returns
        -------
        summary : dict
            ``shape``, ``alphabet``, ``n_bits``, ``size_bits``, ``bits_per_param``,
            ``compression_ratio`` and, with ``W``, ``relative_error`` and ``sqnr_db``.
        """
        from ..metrics import relative_error, sqnr

        out = {
            "shape": self.shape,
            "alphabet": self.alphabet,
            "n_bits": self.n_bits,
            "n_scales": int(self.scale.size),
            "size_bits": self.size_bits,
            "bits_per_param": self.bits_per_param,
            "compression_ratio": self.compression_ratio,
        }
        if W is not None:
            Q = self.dequantize()
            out["relative_error"] = relative_error(W, Q, X)
            out["sqnr_db"] = sqnr(W, Q)
        return out

    def __repr__(self):
        return (
            f"QuantizedTensor(shape={self.shape}, alphabet={self.alphabet!r}, "
            f"n_bits={self.n_bits}, n_scales={self.scale.size}, "
            f"size_bits={self.size_bits}, bits_per_param={self.bits_per_param:.3f}, "
            f"compression_ratio={self.compression_ratio:.2f})"
        )


def code_bits(qmin, qmax):
    """Bits of the integer dtype that holds ``[qmin, qmax]``."""
    from ._alphabets import code_dtype

    return code_dtype(qmin, qmax).itemsize * 8
