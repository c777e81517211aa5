"""Kernels that pack signed integer codes into a little-endian bit stream and back.

Codes ``c`` in ``[qmin, qmax]`` are stored as the unsigned ``u = c - qmin`` in
``n_bits`` bits each (``1 <= n_bits <= 16``), least significant bit first. Eight codes
always fill exactly ``n_bits`` bytes, so the stream is cut into independent blocks of
eight codes, which the ``*_parallel`` kernels handle concurrently. The last block is
padded with zero bits.
"""

import numba as nb
import numpy as np


@nb.njit(nogil=True)
def _pack_block(codes, start, n_bits, qmin, out):  # pragma: no cover
    buf = np.uint64(0)
    filled = 0
    pos = (start // 8) * n_bits
    mask = np.uint64((1 << n_bits) - 1)
    for t in range(8):
        idx = start + t
        u = np.uint64(0)
        if idx < codes.shape[0]:
            u = np.uint64(np.int64(codes[idx]) - qmin) & mask
        buf |= u << np.uint64(filled)
        filled += n_bits
        while filled >= 8:
            out[pos] = np.uint8(buf & np.uint64(0xFF))
            buf >>= np.uint64(8)
            filled -= 8
            pos += 1


@nb.njit(cache=True, nogil=True)
def pack_bits(codes, n_bits, qmin, out):  # pragma: no cover
    """Pack the 1-D integer ``codes`` into ``out``.

    Parameters
    ----------
    codes : 1-D signed integer ndarray, values in ``[qmin, qmin + 2**n_bits - 1]``
    n_bits : int, 1 to 16
    qmin : int
    out : uint8 ndarray of length ``ceil(len(codes) / 8) * n_bits``.
    """
    for b in range((codes.shape[0] + 7) // 8):
        _pack_block(codes, 8 * b, n_bits, qmin, out)


@nb.njit(cache=True, nogil=True, parallel=True)
def pack_bits_parallel(codes, n_bits, qmin, out):  # pragma: no cover
    """Block-parallel :func:`pack_bits` (same arguments, same result)."""
    for b in nb.prange((codes.shape[0] + 7) // 8):
        _pack_block(codes, 8 * b, n_bits, qmin, out)


@nb.njit(nogil=True)
def _unpack_block(packed, start, n_bits, qmin, out):  # pragma: no cover
    buf = np.uint64(0)
    filled = 0
    pos = (start // 8) * n_bits
    mask = np.uint64((1 << n_bits) - 1)
    for t in range(8):
        while filled < n_bits:
            buf |= np.uint64(packed[pos]) << np.uint64(filled)
            filled += 8
            pos += 1
        idx = start + t
        if idx < out.shape[0]:
            out[idx] = np.int64(buf & mask) + qmin
        buf >>= np.uint64(n_bits)
        filled -= n_bits


@nb.njit(cache=True, nogil=True)
def unpack_bits(packed, n_bits, qmin, out):  # pragma: no cover
    """Inverse of :func:`pack_bits`: fill the 1-D integer ``out`` from ``packed``.

    Parameters
    ----------
    packed : uint8 ndarray of length ``ceil(len(out) / 8) * n_bits``
    n_bits : int, 1 to 16
    qmin : int
    out : 1-D signed integer ndarray.
    """
    for b in range((out.shape[0] + 7) // 8):
        _unpack_block(packed, 8 * b, n_bits, qmin, out)


@nb.njit(cache=True, nogil=True, parallel=True)
def unpack_bits_parallel(packed, n_bits, qmin, out):  # pragma: no cover
    """Block-parallel :func:`unpack_bits` (same arguments, same result)."""
    for b in nb.prange((out.shape[0] + 7) // 8):
        _unpack_block(packed, 8 * b, n_bits, qmin, out)


@nb.njit(cache=True, nogil=True)
def pack_fields(fields, lengths, out):  # pragma: no cover
    """Pack unsigned fields of varying widths into one bit stream, LSB first.

    Parameters
    ----------
    fields : 1-D int64 ndarray, ``0 <= fields[i] < 2**lengths[i]``
    lengths : 1-D integer ndarray, widths 0 to 48 (0 writes nothing)
    out : uint8 ndarray of length ``ceil(sum(lengths) / 8)``, zero-padded at the end.
    """
    buf = 0
    filled = 0
    pos = 0
    for i in range(fields.shape[0]):
        n = np.int64(lengths[i])
        if n == 0:
            continue
        buf |= np.int64(fields[i]) << filled  # filled < 8, n <= 56: fits in 56 bits
        filled += n
        while filled >= 8:
            out[pos] = np.uint8(buf & 0xFF)
            buf >>= 8
            filled -= 8
            pos += 1
    if filled > 0:
        out[pos] = np.uint8(buf & 0xFF)


@nb.njit(cache=True, nogil=True)
def fixed_point_fields(
    codes, widths, n_max, group, max_width, fields, lengths, symbols
):  # pragma: no cover
    """The stored fields of fixed-point codes, column after column, in one pass.

    Parameters
    ----------
    codes : 2-D integer ndarray (n_rows, n_cols), codes on the step ``2^-n_max``
    widths : 2-D integer ndarray like ``codes``, stored bits of every entry
    n_max : int, fractional bits of the finest step
    group : int, rows per group (0: one precision per entry, the fewest bits)
    max_width : int, the widest precision stored
    fields : 1-D int64 ndarray of ``codes.size`` (written)
    lengths : 1-D int8 ndarray of ``codes.size`` (written): bits of every field
    symbols : 1-D uint8 ndarray (written): the widths, one per entry (``group=0``)
        or one per group

    Returns
    -------
    status : int
        0, or what is wrong: 1 a width above ``max_width``, 2 a code off the grid
        of its precision, 3 widths not the fewest that hold the codes, 4 widths
        not constant within a group, 5 a code that does not fit its group's
        precision.
    """
    n_rows, n_cols = codes.shape
    p = 0
    s = 0
    for j in range(n_cols):
        for i in range(n_rows):
            c = np.int64(codes[i, j])
            w = np.int64(widths[i, j])
            if w < 0 or w > max_width:
                return 1
            k = np.int64(0)
            if w > 0:
                shift = n_max - (w - 1)
                if shift < 0:
                    return 2
                k = c >> shift
                if (k << shift) != c:
                    return 2
            elif c != 0:
                return 2
            if group == 0:
                mag = abs(k)
                if (w >= 2 and mag % 2 == 0) or (w == 1 and mag != 1):
                    return 3
                fields[p] = np.int64(k < 0) | ((max(mag - 1, 0) >> 1) << 1)
                lengths[p] = w - 1 if w >= 2 else w
                symbols[p] = w
            else:
                if i % group == 0:
                    symbols[s] = w
                    s += 1
                elif w != symbols[s - 1]:
                    return 4
                if w > 0:
                    top = np.int64(1) << (w - 1)
                    if k < -top or k >= top:
                        return 5
                    fields[p] = k & ((np.int64(1) << w) - 1)
                else:
                    fields[p] = 0
                lengths[p] = w
            p += 1
    return 0


@nb.njit(cache=True, nogil=True)
def fixed_point_codes(fields, symbols, n_max, group, codes, widths):  # pragma: no cover
    """Inverse of :func:`fixed_point_fields`: ``codes`` and ``widths``
    (``(n_rows, n_cols)``, written) from the column-major ``fields`` and the
    ``symbols`` (one width per entry with ``group=0``, else one per group of
    ``group`` rows)."""
    n_rows, n_cols = codes.shape
    p = 0
    s = -1
    for j in range(n_cols):
        for i in range(n_rows):
            if group == 0:
                w = np.int64(symbols[p])
            else:
                if i % group == 0:
                    s += 1
                w = np.int64(symbols[s])
            f = np.int64(fields[p])
            c = np.int64(0)
            if w > 0:
                if group == 0:
                    mag = ((f >> 1) << 1) + 1 if w >= 2 else np.int64(1)
                    k = -mag if f & 1 else mag
                else:
                    top = np.int64(1) << (w - 1)
                    k = f - 2 * top if f >= top else f
                c = k << (n_max - (w - 1))
            codes[i, j] = c
            widths[i, j] = w
            p += 1


@nb.njit(cache=True, nogil=True)
def unpack_fields(packed, lengths, out):  # pragma: no cover
    """Inverse of :func:`pack_fields`: fill the int64 ``out`` from ``packed``.

    Parameters
    ----------
    packed : uint8 ndarray of length ``ceil(sum(lengths) / 8)``
    lengths : 1-D integer ndarray, widths 0 to 48
    out : 1-D int64 ndarray like ``lengths``.
    """
    buf = 0
    filled = 0
    pos = 0
    for i in range(lengths.shape[0]):
        n = np.int64(lengths[i])
        if n == 0:
            out[i] = 0
            continue
        while filled < n:
            buf |= np.int64(packed[pos]) << filled  # filled < n <= 48: fits in 55 bits
            filled += 8
            pos += 1
        out[i] = buf & ((np.int64(1) << n) - 1)
        buf >>= n
        filled -= n
