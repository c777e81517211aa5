"""The safetensors layout skquant reads and writes: dtype names, header checks.

A safetensors file is an 8-byte little-endian header length, a JSON header naming
each tensor's dtype, shape and ``data_offsets``, then the data. skquant files are
such files (:mod:`._io`), and :class:`skquant.torch.Checkpoint` reads
checkpoints in this format; both check a header with :func:`layout`.
"""

import numpy as np

__all__ = ["MAX_HEADER", "ST_DTYPES", "ST_ITEMSIZE", "FileFormatError", "layout"]

#: safetensors' own limit on the JSON header's length
MAX_HEADER = 100 * 2**20


class FileFormatError(ValueError):
    """A file that is not a valid skquant file (truncated, corrupted, foreign)."""


#: safetensors' names of the NumPy dtypes a file holds
ST_DTYPES = {
    "b1": "BOOL",
    "u1": "U8",
    "i1": "I8",
    "u2": "U16",
    "i2": "I16",
    "f2": "F16",
    "u4": "U32",
    "i4": "I32",
    "f4": "F32",
    "u8": "U64",
    "i8": "I64",
    "f8": "F64",
}

#: bytes per element of safetensors' dtypes (bfloat16 too, which NumPy lacks)
ST_ITEMSIZE = {v: np.dtype(k).itemsize for k, v in ST_DTYPES.items()} | {"BF16": 2}


def layout(raw, data_size, where):
    """``{name: (dtype name, shape, begin, end)}`` of a safetensors header (its
    parsed JSON; offsets from the start of the data), checked as safetensors
    checks them: well-formed entries, byte counts that match the shapes (for the
    dtypes of :data:`ST_ITEMSIZE`), and entries that tile the ``data_size`` data
    bytes with no gap. ``where`` starts the error messages (a file's name)."""
    bad = FileFormatError
    out = {}
    for name, info in raw.items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"{where} is corrupted: entry {name!r} is malformed.") from exc
        count = int(np.prod(shape, dtype=np.int64))
        size = ST_ITEMSIZE.get(dtype)
        if min(shape, default=0) < 0 or (
            size is not None and end - begin != count * size
        ):
            raise bad(f"{where} is corrupted: entry {name!r} has the wrong size.")
        out[name] = (dtype, shape, begin, end)
    at = 0
    for name, (_, _, begin, end) in sorted(out.items(), key=lambda e: e[1][2:]):
        if begin != at or end < begin:
            raise bad(f"{where} is corrupted: entry {name!r} starts at {begin}.")
        at = end
    if at != data_size:
        raise bad(
            f"{where} is truncated or corrupted: its entries end at data byte {at}, "
            f"it has {data_size} data bytes."
        )
    return out
