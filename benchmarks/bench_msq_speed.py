"""Speed of per-channel 4-bit MSQ: the numba kernel against NumPy, torch and a memcpy.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/bench_msq_speed.py [--size 4096] [--repeat 30]
        [--threads N_CORES] [--json PATH]

One float32, C-ordered ``(size, size)`` matrix from a seeded RNG is quantized to the
per-channel (one scale per column) 4-bit grid ``scale * {-7, ..., 7}`` learned once by
``UniformQuantizer(n_bits=4)``. Every candidate is warmed up first (JIT compilation,
torch's first call and the first page faults stay outside the timing), then the
candidates are timed with ``time.perf_counter`` round-robin, one call each per
repeat (the starting candidate rotates), so that drift on a noisy machine hits them
all alike. The table gives the median in ms and the ratio to the parallel numba
kernel; the three targets of the benchmark are checked at the end:

* the kernel is at least 3x faster than the straightforward NumPy expression (a);
* the kernel is faster than ``torch.fake_quantize_per_channel_affine`` (b), both
  running ``--threads`` threads;
* the kernel is within 2x of ``np.copyto`` of the same bytes (c), the physical floor
  of a pass that reads the matrix once and writes it once into preallocated memory.

The allocating estimator path, ``UniformQuantizer.transform``, is reported next to
its own floor, the allocating copy ``W.copy()``.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numba
import numpy as np

from skquant import UniformQuantizer
from skquant._kernels import _msq
from skquant._kernels._threads import numba_threads

QMIN, QMAX = -7, 7


def _n_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _loadavg():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on Unix
        return float("nan")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=4096, help="matrix is size x size")
    parser.add_argument(
        "--repeat", type=int, default=30, help="timed calls per candidate"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=_n_cores(),
        help="threads of the parallel kernel, the estimator and torch (default: cores)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the RNG")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    return parser.parse_args(argv)


def build_candidates(W, q, threads):
    """Return ``(candidates, checks)``: name -> zero-argument callable, and facts."""
    import torch

    f32 = np.float32
    scale = q.scale_.astype(np.float32)  # (n_out,), float32
    inv = (f32(1) / scale).astype(np.float32)  # the kernel's and NumPy's inv_step
    zero = np.zeros_like(scale)
    qmin, qmax = f32(QMIN), f32(QMAX)
    out = np.empty_like(W)
    dst = np.empty_like(W)

    torch.set_num_threads(threads)
    W_t = torch.from_numpy(W)  # shares memory, no copy
    # torch's per-channel fake-quantize accepts only a float32 (or bfloat16) scale and
    # an int32 (or float) zero point, even for float64 input.
    scale_t = torch.from_numpy(scale)
    zero_point_t = torch.zeros(scale.shape[0], dtype=torch.int32)

    def kernel_parallel():
        _msq.fake_quantize_parallel(W, inv, scale, zero, qmin, qmax, out)
        return out

    def kernel_serial():
        _msq.fake_quantize(W, inv, scale, zero, qmin, qmax, out)
        return out

    def transform():
        return q.transform(W)

    def numpy_expr():
        return np.clip(np.rint(W * inv), QMIN, QMAX) * scale

    def torch_op():
        return torch.fake_quantize_per_channel_affine(
            W_t, scale_t, zero_point_t, axis=1, quant_min=QMIN, quant_max=QMAX
        )

    def copyto():
        np.copyto(dst, W)
        return dst

    def copy():
        return W.copy()

    candidates = {
        "numba kernel (parallel)": kernel_parallel,
        "numba kernel (serial, 1 thread)": kernel_serial,
        "UniformQuantizer.transform": transform,
        "(a) NumPy clip(rint(W*inv))*scale": numpy_expr,
        "(b) torch fake_quantize_per_channel": torch_op,
        "(c) np.copyto(dst, W)": copyto,
        "(c') W.copy()": copy,
    }

    # Correctness, once, before any timing (this also compiles every kernel).
    with numba_threads(threads):
        ref = kernel_parallel().copy()
        serial = kernel_serial().copy()
        est = transform()
    assert ref.dtype == np.float32 and ref.flags.c_contiguous
    assert np.array_equal(serial, ref), "serial and parallel kernels differ"
    assert np.array_equal(est, ref), "transform differs from the kernel"
    np_out = numpy_expr()
    assert np_out.dtype == np.float32
    # Same float32 inv = 1/scale, same half-to-even rounding: equal values. Not equal
    # bits: the kernel adds the zero point (0) after rint, turning rint's -0.0 into
    # +0.0, where the NumPy expression keeps -0.0.
    assert np.array_equal(np_out, ref), "NumPy expression differs from the kernel"
    torch_out = torch_op().numpy()
    diff = np.abs(torch_out.astype(np.float64) - ref.astype(np.float64))
    checks = {
        "numpy_equals_kernel": True,
        "numpy_bit_equal": bool(
            np.array_equal(np_out.view(np.uint32), ref.view(np.uint32))
        ),
        "numpy_negative_zeros": int(
            np.count_nonzero((np_out == 0) & np.signbit(np_out))
        ),
        "torch_max_abs_diff": float(diff.max()),
        "torch_n_differing": int(np.count_nonzero(diff)),
        "torch_bit_equal": bool(
            np.array_equal(torch_out.view(np.uint32), ref.view(np.uint32))
        ),
        "torch_scale_dtype": "float32 required (float64 scale raises)",
        "torch_zero_point_dtype": "int32 (int64 raises)",
    }
    return candidates, checks


def time_round_robin(candidates, repeat, threads, warmup=2):
    names = list(candidates)
    times = {name: [] for name in names}
    with numba_threads(threads):
        for _ in range(warmup):
            for name in names:
                candidates[name]()
        for r in range(repeat):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn = candidates[name]
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def verdicts(med, ref="numba kernel (parallel)"):
    k = med[ref]
    a = med["(a) NumPy clip(rint(W*inv))*scale"] / k
    b = med["(b) torch fake_quantize_per_channel"] / k
    c = k / med["(c) np.copyto(dst, W)"]
    return [
        {
            "target": "kernel >= 3x faster than (a) NumPy",
            "value": a,
            "pass": a >= 3.0,
            "text": f"NumPy / kernel = {a:.2f}x (need >= 3.00x)"
            + ("" if a >= 3.0 else f", short by a factor {3.0 / a:.2f}"),
        },
        {
            "target": "kernel faster than (b) torch, same threads",
            "value": b,
            "pass": b > 1.0,
            "text": f"torch / kernel = {b:.2f}x (need > 1.00x)"
            + ("" if b > 1.0 else f", kernel slower by a factor {1.0 / b:.2f}"),
        },
        {
            "target": "kernel within 2x of (c) np.copyto",
            "value": c,
            "pass": c <= 2.0,
            "text": f"kernel / copyto = {c:.2f}x (need <= 2.00x)"
            + ("" if c <= 2.0 else f", over by a factor {c / 2.0:.2f}"),
        },
    ]


def main(argv=None):
    args = parse_args(argv)
    import torch

    rng = np.random.default_rng(args.seed)
    W = rng.standard_normal((args.size, args.size), dtype=np.float32)
    assert W.flags.c_contiguous
    q = UniformQuantizer(n_bits=4, n_jobs=args.threads).fit(W)

    candidates, checks = build_candidates(W, q, args.threads)
    load_before = _loadavg()
    times = time_round_robin(candidates, args.repeat, args.threads)
    load_after = _loadavg()
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    ref = "numba kernel (parallel)"

    mib = W.nbytes / 2**20
    print(
        f"per-channel 4-bit MSQ of a {args.size}x{args.size} float32 matrix "
        f"({mib:.0f} MiB in, {mib:.0f} MiB out); threads={args.threads}, "
        f"repeat={args.repeat}, numba {numba.__version__} "
        f"({numba.threading_layer()}), numpy {np.__version__}, "
        f"torch {torch.__version__}"
    )
    w = max(len(n) for n in med) + 2
    print(f"{'candidate':<{w}}{'median ms':>10}{'min ms':>9}{'x kernel':>10}")
    for name, m in med.items():
        lo = min(times[name]) * 1e3
        print(f"{name:<{w}}{m:>10.2f}{lo:>9.2f}{m / med[ref]:>10.2f}")
    gb = 2 * W.nbytes / 1e9
    print(
        f"effective bandwidth (read + write {gb * 1e3:.0f} MB): kernel "
        f"{gb / (med[ref] / 1e3):.1f} GB/s, copyto "
        f"{gb / (med['(c) np.copyto(dst, W)'] / 1e3):.1f} GB/s"
    )
    print(
        f"NumPy == kernel in value: {checks['numpy_equals_kernel']} (asserted); "
        f"bit for bit: {checks['numpy_bit_equal']} "
        f"({checks['numpy_negative_zeros']} entries -0.0 in NumPy, +0.0 in the kernel)"
    )
    print(
        f"torch vs kernel: max |diff| = {checks['torch_max_abs_diff']:.3g}, "
        f"{checks['torch_n_differing']} entries differ, bit for bit: "
        f"{checks['torch_bit_equal']}; torch needs a float32 scale, int32 zero point"
    )
    print(
        f"1-min load average before/after timing: {load_before:.2f}/{load_after:.2f} "
        f"on {_n_cores()} cores (others' work on the machine inflates the medians)"
    )
    est = med["UniformQuantizer.transform"] / med["(c') W.copy()"]
    print(f"estimator path: transform / W.copy() = {est:.2f}x (informational)")
    results = verdicts(med, ref)
    for v in results:
        print(f"[{'PASS' if v['pass'] else 'MISS'}] {v['target']}: {v['text']}")

    if args.json:
        payload = {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "args": vars(args),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "n_cores": _n_cores(),
            "loadavg_1min_before_after": [load_before, load_after],
            "versions": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "numba": numba.__version__,
                "numba_threading_layer": numba.threading_layer(),
                "torch": torch.__version__,
            },
            "median_ms": med,
            "min_ms": {n: min(ts) * 1e3 for n, ts in times.items()},
            "times_ms": {n: [t * 1e3 for t in ts] for n, ts in times.items()},
            "ratio_vs_kernel": {n: m / med[ref] for n, m in med.items()},
            "checks": checks,
            "targets": results,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
