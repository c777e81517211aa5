"""The stored form of fixed-point tensors with per-parameter or per-group precision.

A fixed-point tensor (:class:`~skquant.AdaptivePrecisionQuantizer`) is a matrix of
shape ``(n_rows, n_cols)`` whose entries are integer codes on the finest step
``2^-N_max s``. Each entry, or each *group* of entries, has a precision: ``b``
stored bits (``N = b - 1`` fractional bits plus the sign; ``b = 0`` means pruned).
Groups run down each column (one output channel), ``group_size`` consecutive rows
at a time; the last group of a column is shorter when ``group_size`` does not
divide ``n_rows``.

What is written, column after column:

``payload``
    One bit stream (least significant bit first, zero-padded to a byte), and with
    ``payload_coder="range"`` a range-coded stream: the fields of each length up
    to :data:`MAX_CODED_FIELD` bits are coded with one categorical model per
    length (a table of ``2**L`` uint16 counts) where that is smaller than their raw
    bits, and the rest stay in the bit stream. With
    per-parameter precision the codes are stored with the fewest bits that hold them
    exactly, so a code with ``N >= 1`` fractional bits is odd: ``k = 2j + 1`` with
    its sign and ``j`` in ``N - 1`` bits, ``b - 1`` bits in all (a code with ``N =
    0`` is ``+-1``: its sign alone). With per-group precision every member of a
    group is stored in ``b`` bits, two's complement, ``k`` in ``[-2^N, 2^N - 1]``.
``map``
    The precisions (one per entry, or one per group), by one of the coders of
    :data:`MAP_CODERS`: ``"fixed"`` (a table of the levels present and a
    fixed-width index per symbol), ``"range"`` (the levels, their counts and a
    range-coded stream from ``constriction``, within a few bits of the empirical
    entropy), ``"lzma"`` or ``"zlib"`` (the standard library's compressors on one
    byte per symbol, a floor to compare against); ``"auto"`` keeps the smaller of
    ``"fixed"`` and ``"range"``.
``exponent``
    ``log2`` of the finest step, as an int16.

The counted size of the tensor is exactly these arrays' bytes.
"""

import lzma
import math
import zlib

import numpy as np

from .._kernels import _packing
from ._bits import pack_codes, unpack_codes

__all__ = [
    "MAP_CODERS",
    "decode",
    "decode_symbols",
    "encode",
    "encode_symbols",
    "group_starts",
    "widths_from_codes",
]

#: the coders of the precision map
MAP_CODERS = ("auto", "range", "fixed", "lzma", "zlib")
#: the widest field the bit packer takes (so the largest precision is 48 bits)
MAX_WIDTH = 48
#: the coders of the payload
PAYLOAD_CODERS = ("range", "raw")
#: payload fields up to this many bits can be range-coded (a table of 2**L counts)
MAX_CODED_FIELD = 12
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def check_group_size(group_size):
    """``None`` (per parameter), ``"channel"`` or a positive int, else ValueError."""
    if group_size is None or group_size == "channel":
        return group_size
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, int | np.integer)
        or group_size < 1
    ):
        raise ValueError(
            "group_size must be None (one precision per parameter), 'channel' or a "
            f"positive int, got group_size={group_size!r} instead."
        )
    return int(group_size)


def check_payload_coder(payload_coder):
    """One of :data:`PAYLOAD_CODERS`, else ValueError."""
    if payload_coder not in PAYLOAD_CODERS:
        raise ValueError(
            f"payload_coder must be one of {PAYLOAD_CODERS}, got "
            f"payload_coder={payload_coder!r} instead."
        )
    return payload_coder


def check_map_coder(map_coder):
    """One of :data:`MAP_CODERS`, else ValueError."""
    if map_coder not in MAP_CODERS:
        raise ValueError(
            f"map_coder must be one of {MAP_CODERS}, got map_coder={map_coder!r} "
            "instead."
        )
    return map_coder


def group_starts(n_rows, n_cols, group_size):
    """Start of every group in the column-major order of an ``(n_rows, n_cols)`` matrix.

    ``group_size=None`` makes every entry a group, ``"channel"`` every column; an
    int ``g`` cuts each column into ``ceil(n_rows / g)`` groups (the last one
    shorter when ``g`` does not divide ``n_rows``).
    """
    if group_size is None:
        return np.arange(n_rows * n_cols, dtype=np.int64)
    g = n_rows if group_size == "channel" else min(int(group_size), max(n_rows, 1))
    if n_rows == 0 or n_cols == 0:
        return np.zeros(0, dtype=np.int64)
    within = np.arange(0, n_rows, g, dtype=np.int64)
    return (np.arange(n_cols, dtype=np.int64)[:, None] * n_rows + within).ravel()


def group_lengths(starts, n):
    return np.diff(np.append(starts, n))


def widths_from_codes(codes, n_max):
    """Fewest stored bits of every code (0 for a zero code; sign included).

    A code ``c`` on the finest step ``2^-n_max`` with ``t`` trailing zero bits has
    ``n_max - t`` fractional bits; ``|c| = 2^n_max`` (the value ``+-s``) has none.
    """
    c = np.abs(np.asarray(codes, dtype=np.int64))
    if c.size and int(c.max()) > 2**n_max:
        raise ValueError(
            f"codes must lie in [-2**n_max, 2**n_max] = [-{2**n_max}, {2**n_max}], "
            f"got a code of magnitude {int(c.max())} instead."
        )
    low = c & -c  # lowest set bit (0 for a zero code)
    tz = np.frexp(low.astype(np.float64))[1] - 1  # exact: powers of two
    width = np.where(c == 0, 0, n_max - np.minimum(tz, n_max) + 1)
    return width.astype(np.int8)


# ------------------------------------------------------------------ the map
def encode_symbols(symbols, coder):
    """The arrays that store the symbols (0 to 255) by ``coder`` (not ``"auto"``).

    Used for the precision map, and by the benchmarks for uniform codes.
    """
    symbols = np.ascontiguousarray(symbols, dtype=np.uint8)
    if coder in ("lzma", "zlib"):
        raw = symbols.tobytes()
        blob = (
            lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            if coder == "lzma"
            else zlib.compress(raw, 9)
        )
        return {"map": np.frombuffer(blob, dtype=np.uint8).copy()}
    # the levels present, their counts, and each symbol's index among them (one
    # byte a symbol: np.unique's inverse would take eight and a sort)
    every = np.zeros(256, dtype=np.int64)
    for start in range(0, symbols.size, 1 << 20):  # bincount counts in int64s
        every += np.bincount(symbols[start : start + (1 << 20)], minlength=256)
    levels = np.flatnonzero(every).astype(np.uint8)
    counts = every[levels]
    arrays = {"map_levels": levels}
    if levels.size <= 1:  # one level: the table says it all
        return arrays
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[levels] = np.arange(levels.size, dtype=np.uint8)
    index = lookup[symbols]
    if coder == "fixed":
        width = math.ceil(math.log2(levels.size))
        arrays["map"] = pack_codes(index, width, 0)
        return arrays
    import constriction

    model = constriction.stream.model.Categorical(
        counts.astype(np.float64), perfect=False
    )
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(index.astype(np.int32), model)
    arrays["map_counts"] = counts.astype(np.uint32)
    arrays["map"] = np.asarray(encoder.get_compressed(), dtype=np.uint32)
    return arrays


def decode_symbols(coder, arrays, n):
    """The ``n`` symbols of :func:`encode_symbols` (ValueError when they do not
    decode)."""
    if coder in ("lzma", "zlib"):
        blob = arrays["map"].tobytes()
        try:
            raw = (
                lzma.decompress(blob, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
                if coder == "lzma"
                else zlib.decompress(blob)
            )
        except (lzma.LZMAError, zlib.error) as exc:
            raise ValueError(f"the precision map does not decode: {exc}") from exc
        symbols = np.frombuffer(raw, dtype=np.uint8)
        if symbols.size != n:
            raise ValueError(
                f"the precision map holds {symbols.size} symbols, expected {n}."
            )
        return symbols.copy()
    levels = arrays["map_levels"]
    if levels.size == 0 and n == 0:
        return np.zeros(0, dtype=np.uint8)
    if levels.size == 1:
        return np.full(n, levels[0], dtype=np.uint8)
    if coder == "fixed":
        width = math.ceil(math.log2(levels.size))
        index = unpack_codes(arrays["map"], width, 0, (n,), np.uint8)
    else:
        import constriction

        counts = arrays["map_counts"]
        if counts.size != levels.size or not np.all(counts > 0):
            raise ValueError("the precision map's counts do not match its levels.")
        model = constriction.stream.model.Categorical(
            counts.astype(np.float64), perfect=False
        )
        words = np.ascontiguousarray(arrays["map"], dtype=np.uint32)
        try:
            index = constriction.stream.queue.RangeDecoder(words).decode(model, n)
        except (AssertionError, ValueError, RuntimeError) as exc:
            raise ValueError(f"the precision map does not decode: {exc}") from exc
        index = np.asarray(index)
        if not np.array_equal(np.bincount(index, minlength=levels.size), counts):
            raise ValueError("the decoded precision map does not match its counts.")
    if index.size and int(index.max()) >= levels.size:
        raise ValueError("the precision map indexes a level it does not have.")
    return levels[index]


# ------------------------------------------------------------- the payload
def _table(counts):
    """Counts as uint16 (scaled down when larger, every nonzero count kept >= 1)."""
    top = int(counts.max(initial=0))
    if top > 65535:
        counts = np.where(counts > 0, np.maximum(counts * 65535 // top, 1), 0)
    return counts.astype(np.uint16)


def _range_model(table):
    import constriction

    return constriction.stream.model.Categorical(
        table.astype(np.float64), perfect=False
    )


def _encode_payload(fields, lengths, coder):
    """Arrays of the payload: raw fields, and range-coded classes of fields.

    With ``coder="range"``, the fields of every length ``L <= MAX_CODED_FIELD``
    whose range-coded size (a table of ``2**L`` uint16 counts included) is below
    their raw ``L`` bits each are coded with one categorical model per length, in
    one stream; the rest stay raw.
    """
    coded = np.zeros(lengths.size, dtype=bool)
    classes, tables = [], []
    if coder == "range":
        for L in range(1, MAX_CODED_FIELD + 1):
            sel = lengths == L
            n_L = int(sel.sum())
            if n_L < 2**L:  # the table alone would cost more than it saves
                continue
            counts = np.bincount(fields[sel], minlength=2**L)
            table = _table(counts)
            p = table / table.sum()
            cost = -float(np.sum(counts[counts > 0] * np.log2(p[counts > 0])))
            if cost + 16 * 2**L + 64 < n_L * L:
                classes.append(L)
                tables.append(table)
                coded |= sel
    raw = np.where(coded, 0, lengths)
    payload = np.zeros((int(raw.sum()) + 7) // 8, dtype=np.uint8)
    _packing.pack_fields(fields, raw, payload)
    arrays = {"payload": payload}
    if classes:
        import constriction

        encoder = constriction.stream.queue.RangeEncoder()
        for L, table in zip(classes, tables):
            encoder.encode(fields[lengths == L].astype(np.int32), _range_model(table))
        arrays["payload_classes"] = np.array(classes, dtype=np.uint8)
        arrays["payload_counts"] = np.concatenate(tables)
        arrays["payload_words"] = np.asarray(encoder.get_compressed(), dtype=np.uint32)
    return arrays


def _decode_payload(arrays, lengths):
    """Inverse of :func:`_encode_payload` (ValueError when it does not decode)."""
    classes = arrays.get("payload_classes", np.zeros(0, np.uint8)).astype(np.int64)
    if classes.size and (
        np.any(np.diff(classes) <= 0) or classes[0] < 1 or classes[-1] > MAX_CODED_FIELD
    ):
        raise ValueError(f"the payload's coded classes {classes.tolist()} are invalid.")
    coded = np.isin(lengths, classes)
    raw = np.where(coded, 0, lengths)
    payload = arrays["payload"]
    if payload.size != (int(raw.sum()) + 7) // 8:
        raise ValueError(
            f"the payload holds {payload.size} bytes, its map asks for "
            f"{(int(raw.sum()) + 7) // 8}."
        )
    fields = np.empty(lengths.size, dtype=np.int64)
    _packing.unpack_fields(payload, raw, fields)
    if classes.size:
        import constriction

        tables = arrays["payload_counts"]
        if tables.dtype != np.uint16 or tables.size != int(np.sum(2**classes)):
            raise ValueError("the payload's count tables do not match its classes.")
        words = np.ascontiguousarray(arrays["payload_words"], dtype=np.uint32)
        decoder = constriction.stream.queue.RangeDecoder(words)
        start = 0
        for L in classes:
            table = tables[start : start + 2**L]
            start += 2**L
            sel = lengths == L
            try:
                values = decoder.decode(_range_model(table), int(sel.sum()))
            except (AssertionError, ValueError, RuntimeError) as exc:
                raise ValueError(f"the payload does not decode: {exc}") from exc
            fields[sel] = np.asarray(values, dtype=np.int64)
    return fields


# -------------------------------------------------------------- the tensor
def encode(codes, widths, n_max, step, group_size, map_coder, payload_coder="range"):
    """Arrays (payload, map, exponent, ...) and the header fields of one tensor.

    Parameters
    ----------
    codes : ndarray of int of shape (n_rows, n_cols)
        Codes on the finest step.
    widths : ndarray of int of shape (n_rows, n_cols)
        Stored bits of every entry: the fewest that hold it
        (:func:`widths_from_codes`) with ``group_size=None``, one value per group
        otherwise.
    n_max : int
        Fractional bits of the finest step.
    step : float
        The finest step, a power of two.
    group_size : None, "channel" or int
        The groups.
    map_coder : str
        One of :data:`MAP_CODERS`.
    payload_coder : str, default="range"
        One of :data:`PAYLOAD_CODERS`.

    Returns
    -------
    meta : dict
        ``map_coder`` (the one used), ``payload_coder`` and ``payload_bits`` (the
        bits of the payload's arrays).
    arrays : dict of ndarray
        What is stored; its bytes are the tensor's size.
    """
    codes, widths = np.asarray(codes), np.asarray(widths)
    if widths.shape != codes.shape or codes.ndim != 2:
        raise ValueError(
            f"precision_bits must have the codes' shape {codes.shape}, got "
            f"{widths.shape} instead."
        )
    n_rows, n_cols = codes.shape
    if group_size is None:
        group, n_symbols = 0, codes.size
    else:
        group = n_rows if group_size == "channel" else min(group_size, max(n_rows, 1))
        n_symbols = n_cols * -(-n_rows // group) if n_rows else 0
    # one pass, column after column, in narrow arrays: 10 bytes an entry
    fields = np.empty(codes.size, dtype=np.int64)
    lengths = np.empty(codes.size, dtype=np.int8)
    symbols = np.empty(n_symbols, dtype=np.uint8)
    status = _packing.fixed_point_fields(
        codes, widths, n_max, group, MAX_WIDTH, fields, lengths, symbols
    )
    if status:
        worst = int(widths.max()) if widths.max() > MAX_WIDTH else int(widths.min())
        raise ValueError(
            {
                1: f"precisions must lie in [0, {MAX_WIDTH}] bits, got {worst}.",
                2: "the codes do not lie on the grids of their precisions.",
                3: "the widths are not the fewest that hold the codes.",
                4: "the precisions are not constant within each group.",
                5: "a code does not fit its group's precision.",
            }[status]
        )
    payload = _encode_payload(fields, lengths, payload_coder)
    payload_bits = 8 * sum(a.nbytes for a in payload.values())
    mantissa, e = math.frexp(float(step))
    if mantissa != 0.5 or not -16000 < e < 16000:
        raise ValueError(f"step must be a power of two, got step={step!r} instead.")
    exponent = np.array([e - 1], dtype=np.int16)
    if map_coder == "auto":
        options = [encode_symbols(symbols, "fixed"), encode_symbols(symbols, "range")]
        sizes = [sum(a.nbytes for a in o.values()) for o in options]
        coder = ("fixed", "range")[int(sizes[1] < sizes[0])]
        arrays = options[int(sizes[1] < sizes[0])]
    else:
        coder, arrays = map_coder, encode_symbols(symbols, map_coder)
    arrays = {**payload, **arrays, "exponent": exponent}
    meta = {
        "map_coder": coder,
        "payload_coder": payload_coder,
        "payload_bits": payload_bits,
    }
    return meta, arrays


def decode(meta, arrays, shape, n_max, group_size, dtype=np.int64):
    """Inverse of :func:`encode`: the codes (in ``dtype``, which must hold
    ``[-2**n_max, 2**n_max]``), the per-entry widths and the step.

    Raises ValueError when the arrays do not decode to a tensor of ``shape``.
    """
    n_rows, n_cols = shape
    n = n_rows * n_cols
    starts = group_starts(n_rows, n_cols, group_size)
    symbols = decode_symbols(meta["map_coder"], arrays, starts.size)
    if symbols.size and int(symbols.max()) > min(n_max + 1, MAX_WIDTH):
        raise ValueError(
            f"the precision map holds {int(symbols.max())} bits, above the "
            f"finest step's {n_max + 1}."
        )
    if group_size is None:
        group = 0
        lengths = np.where(symbols >= 2, symbols - 1, symbols)
    else:
        group = n_rows if group_size == "channel" else min(group_size, max(n_rows, 1))
        lengths = np.repeat(symbols, group_lengths(starts, n))
    fields = _decode_payload(arrays, lengths)
    del lengths
    exponent = arrays["exponent"]
    if exponent.dtype != np.int16 or exponent.size != 1:
        raise ValueError("the tensor's exponent is not one int16.")
    step = math.ldexp(1.0, int(exponent[0]))
    codes = np.empty(shape, dtype=dtype)
    widths = np.empty(shape, dtype=np.int8)
    _packing.fixed_point_codes(fields, symbols, n_max, group, codes, widths)
    return codes, widths, step
