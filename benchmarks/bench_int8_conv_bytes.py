"""Bytes held by oneDNN's prepacked int8 convolution weights, against the estimate.

``nbytes_held`` of a convolution on oneDNN's quantized convolution counts
:func:`skquant.torch._int8.onednn_nbytes`. This script builds 32 such objects
(:class:`skquant.torch._int8.Int8Conv`, random 4-bit codes) per layer shape and
reads the bytes malloc has given out (glibc's ``mallinfo2``: in-use heap blocks
plus mmapped ones) before and after; it prints the bytes per object and the
estimate's ratio to them. Linux with glibc and a torch with oneDNN's quantized
convolution.

Run:
    .venv/bin/python benchmarks/bench_int8_conv_bytes.py
"""

import ctypes
import gc

import numpy as np

from skquant._tensor._qtensor import QuantizedTensor
from skquant.torch import _int8

#: (outputs, inputs, kernel, groups)
SHAPES = {
    "3x3 512 -> 512": (512, 512, 3, 1),
    "3x3 64 -> 64": (64, 64, 3, 1),
    "1x1 64 -> 256": (256, 64, 1, 1),
    "3x3 depthwise 1024": (1024, 1024, 3, 1024),
    "3x3 32 -> 64, groups=32": (64, 32, 3, 32),
    "7x7 3 -> 64": (64, 3, 7, 1),
    "1x1 16 -> 24": (24, 16, 1, 1),
    "3x3 3 -> 64": (64, 3, 3, 1),
}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def allocated():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def main(n=32):
    rng = np.random.default_rng(0)
    print(f"{'layer':24s} {'codes':>9s} {'bytes held':>11s} {'estimate':>9s} ratio")
    for name, (n_out, n_in, k, groups) in SHAPES.items():
        codes = rng.integers(-8, 8, (n_in // groups * k * k, n_out)).astype(np.int8)
        qt = QuantizedTensor(
            codes=codes, scale=np.full(n_out, 0.01), n_bits=4, qmin=-8, qmax=7
        )
        geometry = ((k, k), (1, 1), (1, 1), (1, 1))
        warm = [_int8.Int8Conv(qt, None, groups, geometry) for _ in range(2)]
        gc.collect()
        before = allocated()
        objs = [_int8.Int8Conv(qt, None, groups, geometry) for _ in range(n)]
        gc.collect()
        per = (allocated() - before) / n
        est = objs[0].nbytes
        print(f"{name:24s} {codes.size:9d} {per:11.0f} {est:9d} {est / per:5.2f}")
        del warm, objs


if __name__ == "__main__":
    main()
