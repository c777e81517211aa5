"""The runtime form of a quantized weight matrix: its codes, held to compute with.

A :class:`~skquant.QuantizedTensor` is the exchange form (codes as integers of their
dtype, in the ``(n_in, n_out)`` matrix layout). :class:`RuntimeWeights` is what a
quantized layer holds while it runs: one row per output, the unsigned codes at 1, 2,
4 or 8 bits each (see :mod:`skquant._kernels._runtime`), one float32 scale and one
offset per output. Nothing else: no float copy of the weights. Its products with
float inputs are computed from the codes, and :meth:`RuntimeWeights.tensor` gives the
:class:`~skquant.QuantizedTensor` back, code for code.
"""

import numpy as np

from .._common._blocks import row_blocks
from .._kernels import _runtime as _k
from .._kernels._threads import numba_threads
from ._alphabets import SCALE_DTYPE, Alphabet, safe_scale
from ._bits import pack_codes
from ._io import _tensor_entry, tensor_from

__all__ = [
    "RUNTIME_BITS",
    "CodeMatrix",
    "InputGrid",
    "RuntimeWeights",
    "WideWeights",
    "runtime_bits",
]

#: the code widths the kernels hold (sub-byte widths are bit-packed)
RUNTIME_BITS = (1, 2, 4, 8)

#: batches of at most this many rows use the fused unpack-and-dot kernel; larger
#: ones dequantize tiles of rows into a small buffer and call BLAS (on a 4096 x
#: 4096 layer, 2 threads, the fused kernel is ahead of float BLAS up to 8 rows)
SMALL_BATCH = 8

#: float entries of a dequantized tile (4 MiB of float32)
TILE_ENTRIES = 1 << 20


def _levels(qt):
    """``(n_levels - 1, mult, base)``: codes are ``mult * u + base``, ``u >= 0``."""
    if qt.precision_bits is not None:
        return int(qt.qmax) - int(qt.qmin), 1, int(qt.qmin)
    record = qt.alphabet_record
    if record.is_binary:
        return 1, 2, -1
    return int(qt.qmax) - int(qt.qmin), 1, int(qt.qmin)


def runtime_bits(qt):
    """The narrowest runtime width that holds every code of ``qt``, or ``None``.

    Parameters
    ----------
    qt : QuantizedTensor
        The tensor.

    Returns
    -------
    bits : int or None
        1, 2, 4 or 8; ``None`` when its codes span more than 256 values (a
        per-parameter precision finer than 8 bits, or a grid of 9+ bits).
    """
    span = _levels(qt)[0]
    for bits in RUNTIME_BITS:
        if span < (1 << bits):
            return bits
    return None


class RuntimeWeights:
    """A weight matrix held as its codes, with products computed from them.

    Parameters
    ----------
    qt : QuantizedTensor
        The quantized matrix, ``(n_in, n_out)``.
    bits : {1, 2, 4, 8}, default=None
        Bits held per code; ``None`` takes :func:`runtime_bits`.

    Attributes
    ----------
    bits : int
        Bits held per code.
    n_in, n_out : int
        Shape of the matrix.
    packed : ndarray of uint8 of shape (n_out, n_bytes)
        The codes, rows padded to whole 32-byte blocks.
    nbytes : int
        Bytes held: the codes, the per-output scales and offsets and, for a tensor
        with per-parameter precision, its encoded form (what :meth:`tensor` gives
        back).

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import quantize
    >>> from skquant._tensor._runtime import RuntimeWeights
    >>> W = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
    >>> qt = quantize(W, n_bits=4)
    >>> rt = RuntimeWeights(qt)
    >>> rt.bits, rt.packed.shape
    (4, (64, 160))
    >>> x = np.ones((2, 300), dtype=np.float32)
    >>> bool(np.allclose(rt.matmul(x), x @ qt.dequantize(), rtol=1e-5, atol=1e-4))
    True
    >>> bool(np.array_equal(rt.tensor().codes, qt.codes))
    True
    """

    def __init__(self, qt, bits=None):
        span, mult, base = _levels(qt)
        if bits is None:
            bits = runtime_bits(qt)
            if bits is None:
                raise ValueError(
                    f"codes in [{qt.qmin}, {qt.qmax}] span more than 256 values: the "
                    "integer kernels hold at most 8 bits per code."
                )
        if bits not in RUNTIME_BITS or span >= (1 << bits):
            raise ValueError(
                f"bits must be one of {RUNTIME_BITS} and hold {span + 1} code values, "
                f"got bits={bits!r} instead."
            )
        self.bits = int(bits)
        self.n_in, self.n_out = (int(s) for s in qt.shape)
        self.mult = mult
        self._base = base
        dtype = np.dtype(qt.float_dtype or qt.scale.dtype)
        self.float_dtype = dtype
        scale = np.broadcast_to(safe_scale(qt.scale, dtype), (self.n_out,))
        self.scale = np.ascontiguousarray(scale, dtype=SCALE_DTYPE)
        zp = np.zeros(self.n_out)
        if qt.zero_point is not None:
            zp[:] = np.broadcast_to(np.asarray(qt.zero_point, np.float64), zp.shape)
        self.offset = (base - zp).astype(np.float32)
        per = 8 // self.bits
        width = -(-self.n_in // (_k.BLOCK * per)) * _k.BLOCK
        # the unsigned codes packed straight from the tensor's (n_in, n_out)
        # layout (no transposed work copy)
        self.packed = np.empty((self.n_out, width), dtype=np.uint8)
        with numba_threads(-1):
            _k.pack_columns(
                np.ascontiguousarray(qt.codes), base, mult, self.bits, self.packed
            )
        # (a fixed-width grid's codes are packed from these when stored)
        self._meta, self._arrays = _tensor_entry(qt, codes=False)

    @property
    def n_pad(self):
        """Inputs per row including the padding to whole blocks."""
        return self.packed.shape[1] * 8 // self.bits

    @property
    def nbytes(self):
        """Bytes held (codes, scales, offsets, stored arrays)."""
        extra = sum(a.nbytes for a in self._arrays.values())
        return int(self.packed.nbytes + self.scale.nbytes + self.offset.nbytes + extra)

    def codes(self):
        """The integer codes, ``(n_in, n_out)``, as a QuantizedTensor holds them
        (a fixed-width grid's, in their dtype; worked out a tile of outputs at a
        time)."""
        out = np.empty((self.n_in, self.n_out), np.dtype(self._meta["codes_dtype"]))
        with numba_threads(-1):
            _k.unpack_columns(self.packed, self.bits, self.mult, self._base, out)
        return out

    def tensor(self):
        """The :class:`~skquant.QuantizedTensor` these codes came from."""
        return tensor_from(*self.entry(), "a runtime weight")

    def entry(self):
        """``(header entry, arrays)`` of these codes as a file stores them
        (``Writer.entry``): the codes packed once, from this layout."""
        if self._meta.get("alphabet") == "fixed_point":
            return self._meta, self._arrays
        m = self._meta
        record = Alphabet(m["alphabet"], m["qmin"], m["qmax"], m["n_bits"])
        stored, qmin = record.stored(self.codes())
        return m, {"codes": pack_codes(stored, record.n_bits, qmin), **self._arrays}

    def dequantize_rows(self, start, stop, dtype=np.float32, out=None):
        """Rows ``start:stop`` of the float matrix, ``(stop - start, n_pad)``.

        Entries past ``n_in`` (the padding) are not weights: they meet zero inputs.
        """
        if out is None:
            out = np.empty((stop - start, self.n_pad), dtype=dtype)
        with numba_threads(-1):
            _k.unpack_float_rows(
                self.packed,
                self.bits,
                start,
                np.float64(self.mult),
                self.offset.astype(dtype),
                self.scale.astype(dtype),
                out,
            )
        return out

    def dequantize(self, dtype=None):
        """The float matrix ``(n_in, n_out)``, equal to ``tensor().dequantize()``."""
        dtype = self.float_dtype if dtype is None else np.dtype(dtype)
        rows = self.dequantize_rows(0, self.n_out, dtype)
        return np.ascontiguousarray(rows[:, : self.n_in].T)

    def matmul(self, x, out=None, gemm=np.matmul):
        """``x @ W`` for ``x`` of shape ``(m, n_in)``, computed from the codes.

        float32 batches of at most :data:`SMALL_BATCH` rows run the fused kernel;
        others dequantize tiles of at most 4 MiB and multiply them with BLAS (in
        ``x``'s dtype).

        Parameters
        ----------
        x : ndarray of float32 or float64 of shape (m, n_in)
            Inputs.
        out : ndarray of shape (m, n_out), default=None
            Where to write.
        gemm : callable, default=np.matmul
            ``gemm(a, b)`` returns ``a @ b`` (the float product of the tiles; the
            torch layers pass torch's, so that their results do not depend on
            NumPy's BLAS).

        Returns
        -------
        y : ndarray of shape (m, n_out), in ``x``'s dtype
        """
        x = np.asarray(x)
        m = x.shape[0]
        if out is None:
            out = np.empty((m, self.n_out), dtype=x.dtype)
        if x.dtype == np.float32 and m <= SMALL_BATCH:
            # the fused kernel reads whole blocks: a few rows padded with zeros
            padded = np.zeros((m, self.n_pad), dtype=x.dtype)
            padded[:, : self.n_in] = x
            with numba_threads(-1):
                _k.packed_dot(
                    padded, self.packed, self.bits, self.mult, self.offset, out
                )
            out *= self.scale
            return out
        # large batches are read in place: the tiles drop their padding columns
        x = np.ascontiguousarray(x)
        blocks, tile = _output_tiles(self.n_out, self.n_pad)
        # the weights are those of dequantize(), in the tensor's float dtype
        buf = np.empty((tile, self.n_pad), dtype=self.float_dtype)
        for rows in blocks:
            w = self.dequantize_rows(
                rows.start, rows.stop, self.float_dtype, buf[: rows.stop - rows.start]
            )
            out[:, rows] = gemm(x, w[:, : self.n_in].T.astype(x.dtype, copy=False))
        return out

    def int_matmul(self, a):
        """``a @ (codes - zero_point)`` for integer ``a`` ``(m, n_in)``, exactly.

        Accumulates in int32 (int64 when ``n_in`` times the largest products
        could pass 2**31); the code rows are unpacked a tile at a time.
        """
        a = np.asarray(a)
        bound = int(np.abs(a).max(initial=0)) * 255 * max(self.n_in, 1)
        acc = np.int32 if bound < 2**31 else np.int64
        a = np.ascontiguousarray(a, dtype=acc)
        out = np.empty((a.shape[0], self.n_out), dtype=acc)
        blocks, tile = _output_tiles(self.n_out, self.n_in)
        u = np.empty((tile, self.n_in), dtype=np.int64)
        with numba_threads(-1):
            for rows in blocks:
                t = u[: rows.stop - rows.start]
                _k.unpack_rows(self.packed[rows], self.bits, self.n_in, t)
                d = self.mult * t + self.offset[rows, None]
                out[:, rows] = a @ d.astype(acc).T
        return out


def _output_tiles(n_out, width):
    """Slices of ``n_out`` outputs of ``width`` entries each, a tile of about
    :data:`TILE_ENTRIES` entries each, and the longest tile's length."""
    blocks = list(row_blocks((n_out, width), TILE_ENTRIES))
    return blocks, (blocks[0].stop if blocks else 0)


class WideWeights:
    """A weight matrix whose codes span more than 256 values (a grid of 9+ bits,
    or a per-parameter precision finer than 8 bits): the integer kernels do not
    hold it, so it keeps the :class:`~skquant.QuantizedTensor` (its codes in
    their own integer dtype) and dequantizes them in every product.

    Parameters
    ----------
    qt : QuantizedTensor
        The quantized matrix, ``(n_in, n_out)``.
    """

    bits = None

    def __init__(self, qt):
        self.qt = qt
        self.n_in, self.n_out = (int(s) for s in qt.shape)

    @property
    def nbytes(self):
        """Bytes held: the codes, scales, zero points and precisions."""
        arrays = (
            self.qt.codes,
            self.qt.scale,
            self.qt.zero_point,
            self.qt.precision_bits,
        )
        return int(sum(np.asarray(a).nbytes for a in arrays if a is not None))

    def dequantize(self, dtype=None):
        """The float matrix ``(n_in, n_out)``, equal to ``qt.dequantize()``."""
        W = self.qt.dequantize()
        return W if dtype is None else W.astype(dtype, copy=False)

    def matmul(self, x):
        """``x @ W`` in ``x``'s dtype, from the codes dequantized for the call."""
        x = np.asarray(x)
        return x @ self.dequantize(x.dtype)


class InputGrid:
    """The grid a layer's input is put on before an integer product.

    ``InputGrid.dynamic()``: 8 bits, unsigned, one scale per row computed at run
    time from the row's range (widened to contain 0). ``InputGrid(scale,
    zero_point, qmin, qmax)``: a static grid (a fitted
    :class:`~skquant.ActivationQuantizer`'s ``scale_``, ``zero_point_``, ``qmin_``
    and ``qmax_``; one scale, or one per feature).

    Parameters
    ----------
    scale, zero_point : ndarray of shape (1,) or (n_features,), default=None
        The static grid (``None``: dynamic).
    qmin, qmax : int, default=0, 255
        Range of the codes.
    """

    def __init__(self, scale=None, zero_point=None, qmin=0, qmax=255):
        self.dynamic = scale is None
        self.scale = None if scale is None else np.asarray(scale, np.float64).ravel()
        self.zero_point = (
            None if zero_point is None else np.asarray(zero_point, np.int64).ravel()
        )
        self.qmin, self.qmax = int(qmin), int(qmax)

    @property
    def n_bits(self):
        """Bits of the codes."""
        return int(self.qmax - self.qmin).bit_length()

    @property
    def integer(self):
        """Whether the product can run on integers (one scale per row)."""
        return self.dynamic or self.scale.size == 1

    def encode(self, x):
        """``(a, s)``: integers ``a = q - zero_point`` and scales, ``x ~ s a``.

        ``s`` is ``(m, 1)`` (dynamic: per row) or a scalar (static).
        """
        x = np.asarray(x, dtype=np.float64)
        if self.dynamic:
            lo = np.minimum(x.min(axis=1, keepdims=True), 0.0)
            hi = np.maximum(x.max(axis=1, keepdims=True), 0.0)
            s = (hi - lo) / (self.qmax - self.qmin)
            s = np.where(s > 0, s, 1.0)
            zp = np.clip(np.rint(self.qmin - lo / s), self.qmin, self.qmax)
        else:
            s, zp = self.scale, self.zero_point
        q = np.clip(np.rint(x / s) + zp, self.qmin, self.qmax)
        return (q - zp).astype(np.int32), s

    def fake(self, x):
        """``x`` put on the grid, as floats."""
        a, s = self.encode(x)
        return a * s


class CodeMatrix:
    """A weight matrix that stands in for an ndarray in ``x @ W``, computed from codes.

    It holds a :class:`RuntimeWeights` (no float copy). ``x @ W`` is the float
    product from the codes, or, with an :class:`InputGrid`, the integer product:
    ``x`` on its grid as integers, times the integer codes, accumulated in int32,
    then scaled. ``np.asarray(W)`` gives the dequantized floats. Codes that span
    more than 256 values are held as a :class:`WideWeights` instead: dequantized
    in every product, the inputs put on their grid in float.

    Parameters
    ----------
    qt : QuantizedTensor
        The quantized matrix, ``(n_in, n_out)``.
    grid : InputGrid, default=None
        The input's grid (``None``: float inputs).
    dtype : dtype, default=np.float64
        Dtype of the products (and of ``np.asarray(W)``).
    """

    __array_ufunc__ = None  # ndarray @ CodeMatrix defers to __rmatmul__
    ndim = 2

    def __init__(self, qt, grid=None, dtype=np.float64):
        wide = runtime_bits(qt) is None
        self.runtime = WideWeights(qt) if wide else RuntimeWeights(qt)
        self.grid = grid
        self.dtype = np.dtype(dtype)

    @property
    def shape(self):
        """``(n_in, n_out)``."""
        return (self.runtime.n_in, self.runtime.n_out)

    @property
    def nbytes(self):
        """Bytes held (see :attr:`RuntimeWeights.nbytes`)."""
        return self.runtime.nbytes

    def __array__(self, dtype=None, copy=None):
        # the floats of QuantizedTensor.dequantize(), then cast
        return self.runtime.dequantize().astype(dtype or self.dtype)

    def __rmatmul__(self, x):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.shape[0]:
            raise ValueError(
                f"x must have shape (n_samples, {self.shape[0]}), got {x.shape}."
            )
        rt = self.runtime
        if self.grid is None:
            return rt.matmul(x.astype(self.dtype, copy=False))
        if not self.grid.integer or rt.bits is None:  # no integer product
            return rt.matmul(self.grid.fake(x).astype(self.dtype))
        a, s = self.grid.encode(x)
        y = rt.int_matmul(a).astype(np.float64)
        y *= s
        y *= rt.scale
        return y.astype(self.dtype, copy=False)
