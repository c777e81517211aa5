"""The quantized tensor: integer codes, scales and alphabet, and their stored size."""

from dataclasses import dataclass, field

import numpy as np

from .._common._checks import check_float_dtype, check_int
from .._kernels import _msq
from . import _fixedpoint
from ._alphabets import GRID_KINDS, Alphabet, safe_scale
from ._bits import code_bits, pack_codes, packed_size
from ._errors import relative_error, sqnr

__all__ = ["QuantizedTensor"]


@dataclass(frozen=True, eq=False, repr=False)
class QuantizedTensor:
    """A quantized weight matrix: integer codes plus per-channel scales.

    Made by a fitted quantizer's ``compress`` method or by :func:`skquant.quantize`.
    ``dequantize()`` gives the same floats as the quantizer's ``transform``, and
    :attr:`size_bits` counts what storing it really takes: the packed codes (in
    blocks of 8 codes, ``n_bits`` bytes a block, the last one padded) plus every
    scale (and zero point) at its dtype's width.

    The fields are checked when the tensor is made (a ``ValueError`` or
    ``TypeError`` names the field): integer 2-D codes within ``[qmin, qmax]``,
    float scales of length 1 or ``n_cols``, a known alphabet.

    Parameters
    ----------
    codes : ndarray of int of shape (n_rows, n_cols)
        Integer codes, in ``[qmin, qmax]``.
    scale : ndarray of float of shape (n_scales,)
        One scale per column (``n_scales = n_cols``) or per tensor (``n_scales = 1``).
    n_bits : int
        Bits stored per code, 1 to 16 (any int >= 1 for ``"fixed_point"``).
    qmin, qmax : int
        Range of the codes.
    alphabet : str
        ``"uniform"``, ``"binary"``, ``"ternary"`` or ``"affine"`` (or
        ``"fixed_point"``, with ``precision_bits``).
    zero_point : ndarray of shape (n_scales,), default=None
        Affine zero points (``None`` for symmetric grids).
    float_dtype : dtype, default=None
        Float dtype of the dequantized values; ``None`` takes ``scale.dtype``.
    precision_bits : ndarray of int of shape (n_rows, n_cols), default=None
        Precision of every code (alphabet ``"fixed_point"``: fractional bits plus
        the sign, 0 = pruned). The tensor is then stored as a variable-width
        payload, an entropy-coded precision map and the exponent of its step (see
        :mod:`skquant._tensor._fixedpoint`), and its size is those bytes.
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

    def __post_init__(self):
        # every way of making a tensor passes here (the quantizers, load, the
        # torch layers): the O(1) checks first, then one min and one max of codes
        for name in ("codes", "scale"):
            if not isinstance(getattr(self, name), np.ndarray):
                object.__setattr__(self, name, np.asarray(getattr(self, name)))
            value = getattr(self, name)
            if not value.dtype.isnative:  # (numba's kernels take native order)
                object.__setattr__(
                    self, name, value.astype(value.dtype.newbyteorder("="))
                )
        fixed = self.precision_bits is not None
        if self.alphabet not in (*GRID_KINDS, "fixed_point") or fixed != (
            self.alphabet == "fixed_point"
        ):
            raise ValueError(
                f"alphabet must be one of {', '.join(map(repr, GRID_KINDS))} (or "
                "'fixed_point', which goes with precision_bits), got "
                f"alphabet={self.alphabet!r} with "
                f"{'' if fixed else 'no '}precision_bits instead."
            )
        for name, low in (("qmin", None), ("qmax", None), ("n_bits", 1)):
            # (as Python ints: NumPy's int8 qmax - qmin wrapped around)
            object.__setattr__(
                self, name, int(check_int(getattr(self, name), name, low=low))
            )
        if self.n_bits > 16 and not fixed:
            raise ValueError(
                f"n_bits must be at most 16, got n_bits={self.n_bits!r} instead."
            )
        if self.qmin > self.qmax:
            raise ValueError(
                f"qmin must be at most qmax, got qmin={self.qmin!r} and "
                f"qmax={self.qmax!r} instead."
            )
        # (binary codes -1, +1 are stored as one bit: its sign)
        if self.alphabet_record.is_binary and (self.qmin, self.qmax) != (-1, 1):
            raise ValueError(
                "a binary tensor's codes are -1 and +1 (qmin=-1, qmax=1), got "
                f"qmin={self.qmin!r} and qmax={self.qmax!r} instead."
            )
        wide = self.qmax - self.qmin >= 1 << self.n_bits
        if wide and not fixed and not self.alphabet_record.is_binary:
            raise ValueError(
                f"n_bits={self.n_bits!r} cannot hold the codes of [qmin, qmax]="
                f"[{self.qmin}, {self.qmax}]: they need "
                f"{int(self.qmax - self.qmin).bit_length()} bits."
            )
        record, scale = self.alphabet_record, self.scale
        codes = record.check_codes(self.codes, "QuantizedTensor", values=False)
        if codes.ndim != 2:
            raise ValueError(
                "codes must be a 2-D array of shape (n_rows, n_cols), got "
                f"codes.shape={codes.shape} instead."
            )
        n_cols = codes.shape[1]
        if fixed and np.shape(self.precision_bits) != codes.shape:
            raise ValueError(
                f"precision_bits must have the codes' shape {codes.shape}, got "
                f"precision_bits.shape={np.shape(self.precision_bits)} instead."
            )
        if fixed:  # (said here, not at the first encoding: repr raised then)
            group = _fixedpoint.check_group_size(self.group_size)
            object.__setattr__(self, "group_size", group)  # (a NumPy int: an int)
            _fixedpoint.check_map_coder(self.map_coder)
            _fixedpoint.check_payload_coder(self.payload_coder)
        if (
            scale.dtype not in (np.float32, np.float64)
            or scale.ndim > 1
            or scale.size not in (1, n_cols)
        ):
            raise ValueError(
                f"scale must hold 1 or n_cols={n_cols} float32 or float64 values, "
                f"got scale.dtype={scale.dtype!s}, scale.shape={scale.shape} instead."
            )
        # (a NaN or negative step was made eps when the codes were dequantized)
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError(
                "scale must hold finite steps > 0, got "
                f"{scale[~(np.isfinite(scale) & (scale > 0))][:4].tolist()} instead."
            )
        self._check_zero_point(n_cols, fixed)
        check_float_dtype(self.float_dtype, "float_dtype")
        record.check_codes(codes, "QuantizedTensor")  # the one pass over the codes

    def _check_zero_point(self, n_cols, fixed):
        """ValueError unless the zero point is ``None``, or integers in ``[qmin,
        qmax]``, one or one per column (a file stores them as codes)."""
        zp = self.zero_point
        if zp is None:
            return
        if fixed:  # (the fixed-point form has none: a file would drop it)
            raise ValueError(
                "zero_point must be None for a fixed_point tensor, got "
                f"zero_point={zp!r:.80} instead."
            )
        arr = np.asarray(zp)
        ok = (
            arr.dtype.kind in "iuf"
            and arr.ndim <= 1
            and arr.size in (1, n_cols)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
            and np.all((arr >= self.qmin) & (arr <= self.qmax))
        )
        if not ok:
            raise ValueError(
                f"zero_point must be integers in [qmin, qmax]=[{self.qmin}, "
                f"{self.qmax}], one or one per column ({n_cols}), got "
                f"zero_point={zp!r:.80} instead."
            )

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
        """The :class:`~skquant._tensor._alphabets.Alphabet` of the codes."""
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
            Payload, precision map and exponent (see
            :mod:`skquant._tensor._fixedpoint`): what :func:`skquant.save` writes.
        """
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

    def dequantize(self, columns=None):
        """Return the floats the codes stand for, equal to ``transform``.

        Parameters
        ----------
        columns : slice, default=None
            Only these columns (``W[:, columns]``, without the whole float
            matrix: a large tensor a block at a time).

        Returns
        -------
        W : ndarray of shape (n_rows, n_cols)
            Dequantized values.

        Examples
        --------
        >>> import numpy as np
        >>> from skquant import quantize
        >>> W = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
        >>> qt = quantize(W, n_bits=4)
        >>> bool(np.array_equal(qt.dequantize(slice(2, 5)), qt.dequantize()[:, 2:5]))
        True
        """
        if columns is None:
            columns = slice(None)
        if not isinstance(columns, slice) or columns.step not in (None, 1):
            raise TypeError(
                "columns must be None or a slice of step 1, got "
                f"columns={columns!r} instead."
            )
        dtype = np.dtype(self.float_dtype or self.scale.dtype)
        n_cols = self.codes.shape[1]
        level = np.broadcast_to(safe_scale(self.scale, dtype), (n_cols,))[columns]
        zp = np.zeros(n_cols, dtype=dtype)
        if self.zero_point is not None:
            zp[:] = np.broadcast_to(np.asarray(self.zero_point, dtype=dtype), (n_cols,))
        zp = np.ascontiguousarray(zp[columns])
        codes = self.codes[:, columns]
        out = np.empty(codes.shape, dtype=dtype)
        _msq.dequantize(codes, np.ascontiguousarray(level), zp, out)
        return out

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(qt)``: the dequantized values (as :meth:`dequantize`), so
        that NumPy functions take a tensor where they take its floats.

        Always a new array: ``copy=False`` raises ``ValueError``, as NumPy asks of
        an object that cannot give a view.

        Examples
        --------
        >>> import numpy as np
        >>> from skquant import quantize
        >>> W = np.random.default_rng(0).standard_normal((16, 8))
        >>> qt = quantize(W, n_bits=8)
        >>> bool(np.allclose(qt, W, atol=0.05)), np.asarray(qt).dtype.name
        (True, 'float64')
        """
        if copy is False:
            raise ValueError(
                "copy=False: a QuantizedTensor holds codes, not its float values; "
                "np.asarray(qt) dequantizes them into a new array."
            )
        out = self.dequantize()
        return out if dtype is None else out.astype(dtype, copy=False)

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
