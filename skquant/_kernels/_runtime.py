"""Kernels of the runtime form: weight rows held as codes of 1, 2, 4 or 8 bits.

A weight row ``j`` (one output channel) holds the unsigned codes ``u[j, k]`` of its
``n_in`` inputs in ``bits`` bits each, in blocks of :data:`BLOCK` bytes: byte ``t`` of
block ``b`` holds, in its bit slot ``s`` (bits ``s * bits`` up), the code of input
``k = b * BLOCK * per + s * BLOCK + t`` with ``per = 8 // bits``. A slot of a block
thus covers :data:`BLOCK` consecutive inputs, so unpacking a slot gives a contiguous
run that multiplies a contiguous run of the input: the inner loops vectorise. Rows
are padded to whole blocks with code 0 (the input is padded with zeros to match).

:func:`packed_dot` fuses the unpacking with the dot products (for small batches,
where the weights' bytes are the cost); :func:`unpack_float_rows` dequantizes a tile
of rows into a float buffer for a BLAS product (large batches). The affine parts
(scale, offset of the codes) are applied by the caller.
"""

import numba as nb
import numpy as np

#: bytes per block of a row (one 256-bit vector)
BLOCK = 32


@nb.njit(cache=True, nogil=True, parallel=True)
def unpack_rows(packed, bits, n_in, out):  # pragma: no cover
    """The unsigned codes (n_out, n_in) of rows packed as the module says, into
    ``out``."""
    per = 8 // bits
    mask = (1 << bits) - 1
    for j in nb.prange(packed.shape[0]):
        for i in range(packed.shape[1]):
            blk = i // BLOCK
            t = i - blk * BLOCK
            byte = np.int64(packed[j, i])
            for s in range(per):
                k = blk * BLOCK * per + s * BLOCK + t
                if k < n_in:
                    out[j, k] = (byte >> (s * bits)) & mask


#: outputs a thread packs or unpacks at a time (reading a row of the
#: ``(n_in, n_out)`` codes runs along them)
_TILE = 64


@nb.njit(inline="always")
def _slot(k, per, bits):  # pragma: no cover
    """``(byte, bit shift)`` of input ``k``'s code in its row."""
    blk = k // (BLOCK * per)
    rest = k - blk * BLOCK * per
    s = rest // BLOCK
    return blk * BLOCK + rest - s * BLOCK, s * bits


@nb.njit(cache=True, nogil=True, parallel=True)
def pack_columns(codes, base, mult, bits, out):  # pragma: no cover
    """Rows of ``u = (codes - base) // mult`` packed as the module says, into
    ``out`` (n_out, n_bytes, overwritten), from ``codes`` of shape (n_in, n_out)
    as a QuantizedTensor holds them, without a transposed copy: each thread
    takes :data:`_TILE` outputs and reads the codes along their rows."""
    per = 8 // bits
    n_in, n_out = codes.shape
    for tile in nb.prange((n_out + _TILE - 1) // _TILE):
        j0 = tile * _TILE
        j1 = min(j0 + _TILE, n_out)
        out[j0:j1, :] = 0
        for k in range(n_in):
            i, shift = _slot(k, per, bits)
            for j in range(j0, j1):
                u = (np.int64(codes[k, j]) - base) // mult
                out[j, i] |= np.uint8(u << shift)


@nb.njit(cache=True, nogil=True, parallel=True)
def unpack_columns(packed, bits, mult, base, out):  # pragma: no cover
    """Inverse of :func:`pack_columns`: ``out`` (n_in, n_out) gets the codes
    ``u * mult + base`` (in its own dtype)."""
    per = 8 // bits
    mask = (1 << bits) - 1
    n_in, n_out = out.shape
    for tile in nb.prange((n_out + _TILE - 1) // _TILE):
        j0 = tile * _TILE
        j1 = min(j0 + _TILE, n_out)
        for k in range(n_in):
            i, shift = _slot(k, per, bits)
            for j in range(j0, j1):
                u = (np.int64(packed[j, i]) >> shift) & mask
                out[k, j] = u * mult + base


@nb.njit(inline="always", fastmath=True)
def _dot_row(x, row, j, per, bits, mult, off_j, acc, out):  # pragma: no cover
    """``out[:, j]`` from row ``row``: its codes are peeled off each byte in float.

    A byte ``f`` holds ``per`` codes: ``q = floor(f / 2**bits)`` leaves the lowest
    code ``f - q 2**bits`` (exact in float32), and ``q`` holds the others. Float
    arithmetic keeps every step in 32-bit vector lanes (no integer widening).
    """
    radix = np.float32(1 << bits)
    inv = np.float32(1.0 / (1 << bits))
    n_blocks = row.shape[0] // BLOCK
    for i in range(x.shape[0]):
        xi = x[i]
        acc[:] = 0
        for b in range(n_blocks):
            base = b * BLOCK * per
            off = b * BLOCK
            for t in range(BLOCK):
                f = np.float32(row[off + t])
                for s in range(per):
                    q = np.floor(f * inv)
                    code = (f - q * radix) * mult + off_j
                    f = q
                    acc[t] += code * xi[base + s * BLOCK + t]
        out[i, j] = acc.sum()


# one kernel per width: the width is a constant in each, so the slot loop unrolls


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def packed_dot1(x, packed, mult, offset, out):  # pragma: no cover
    """:func:`packed_dot` for 1-bit codes."""
    fm = np.float32(mult)
    for j in nb.prange(packed.shape[0]):
        acc = np.zeros(BLOCK, dtype=np.float32)
        _dot_row(x, packed[j], j, 8, 1, fm, offset[j], acc, out)


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def packed_dot2(x, packed, mult, offset, out):  # pragma: no cover
    """:func:`packed_dot` for 2-bit codes."""
    fm = np.float32(mult)
    for j in nb.prange(packed.shape[0]):
        acc = np.zeros(BLOCK, dtype=np.float32)
        _dot_row(x, packed[j], j, 4, 2, fm, offset[j], acc, out)


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def packed_dot4(x, packed, mult, offset, out):  # pragma: no cover
    """:func:`packed_dot` for 4-bit codes."""
    fm = np.float32(mult)
    for j in nb.prange(packed.shape[0]):
        acc = np.zeros(BLOCK, dtype=np.float32)
        _dot_row(x, packed[j], j, 2, 4, fm, offset[j], acc, out)


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def packed_dot8(x, packed, mult, offset, out):  # pragma: no cover
    """:func:`packed_dot` for 8-bit codes."""
    fm = np.float32(mult)
    for j in nb.prange(packed.shape[0]):
        acc = np.zeros(BLOCK, dtype=np.float32)
        _dot_row(x, packed[j], j, 1, 8, fm, offset[j], acc, out)


_PACKED_DOT = {1: packed_dot1, 2: packed_dot2, 4: packed_dot4, 8: packed_dot8}


def packed_dot(x, packed, bits, mult, offset, out):
    """``out[i, j] = sum_k (mult u[j, k] + offset[j]) x[i, k]`` from the packed rows.

    The signed codes are formed inside the product (no large sums that cancel).
    ``x`` is float32 (m, n_pad) with ``n_pad = n_bytes * 8 // bits`` (zero padded),
    ``offset`` float32 (n_out,), ``out`` float32 (m, n_out); accumulation is in
    float32, per lane of a block. Each input row re-reads the packed rows: it
    pays for a few rows (a batch of one to a few), not for large batches.
    """
    _PACKED_DOT[bits](x, packed, mult, offset, out)


@nb.njit(cache=True, nogil=True, parallel=True)
def unpack_float_rows(
    packed, bits, start, mult, offset, scale, out
):  # pragma: no cover
    """Rows ``start ..`` dequantized: ``(mult u[j, k] + offset[j]) scale[j]``.

    ``out`` is (n_rows, n_pad); ``scale`` and ``offset`` have one entry per row of
    ``packed`` (``j = start + r``); padded inputs get ``offset * scale`` (their input
    is zero). No fast-math: the value is the very product of
    :meth:`QuantizedTensor.dequantize` (an exact integer times the scale).
    """
    per = 8 // bits
    mask = (1 << bits) - 1
    n_blocks = packed.shape[1] // BLOCK
    for r in nb.prange(out.shape[0]):
        j = start + r
        row = packed[j]
        sj = scale[j]
        oj = offset[j]
        dst = out[r]
        for b in range(n_blocks):
            base = b * BLOCK * per
            off = b * BLOCK
            for s in range(per):
                shift = s * bits
                xo = base + s * BLOCK
                for t in range(BLOCK):
                    dst[xo + t] = (mult * ((row[off + t] >> shift) & mask) + oj) * sj
