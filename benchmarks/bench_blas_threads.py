"""Data-driven fits on one BLAS thread against the BLAS libraries' own threads.

Each fit of :class:`~skquant.NullSpaceQuantizer` runs its BLAS calls on one
thread when its layer is small (``m * n_in * n_out`` below ``SMALL_FIT`` of
:mod:`skquant._kernels._threads`). This prints, per layer, a fit's seconds with
the BLAS libraries at their own thread counts (``SMALL_FIT`` set to 0) and
limited to one thread (``threadpool_limits``), the median of ``--repeat`` fits
each, and their ratio, for the null-space default and for GPFQ (which keeps
the libraries' threads): on VGG-8's layers (the inputs ``quantize_model`` hands
each layer, 1024 training images, 2 bits) and on square Gaussian layers with
as many rows as inputs (``--sizes``).

Run (all cores; the networks need ``get_data.sh``'s data):
    .venv/bin/python benchmarks/bench_blas_threads.py
"""

import argparse
import statistics
import time
import warnings

import numpy as np
from bench_nullspace_variants import capture
from threadpoolctl import threadpool_info, threadpool_limits

import skquant
from skquant import GreedyPathQuantizer, NullSpaceQuantizer
from skquant._kernels import _threads


def gaussian(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n)) @ (np.eye(n) + rng.standard_normal((n, n)) / 64)
    W = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    return W, X, X


def timed(make, W, Xq, Xf, one_thread, repeat):
    target = None if Xf is Xq else Xf
    runs = []
    for _ in range(repeat):
        limit = threadpool_limits(1, user_api="blas") if one_thread else None
        start = time.perf_counter()
        make().fit(W, activations=Xq, target_activations=target)
        runs.append(time.perf_counter() - start)
        if limit is not None:
            limit.restore_original_limits()
    return statistics.median(runs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--sizes", nargs="*", type=int, default=[1024, 2048])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-vgg", action="store_true")
    args = p.parse_args()
    skquant.set_config(progress=False)
    warnings.simplefilter("ignore")
    threads = sorted({d["num_threads"] for d in threadpool_info()})
    print(f"BLAS libraries' threads: {threads}", flush=True)
    layers = [] if args.no_vgg else [("vgg8", *t) for t in capture("vgg8", args.bits)]
    layers += [("gaussian", *gaussian(n)) for n in args.sizes]
    makers = {
        "null-space": lambda: NullSpaceQuantizer(n_bits=args.bits),
        "GPFQ": lambda: GreedyPathQuantizer(n_bits=args.bits),
    }
    saved = _threads.SMALL_FIT
    _threads.SMALL_FIT = 0  # (the libraries' own threads unless limited here)
    for source, W, Xq, Xf in layers:
        cells = []
        for name, make in makers.items():
            timed(make, W, Xq, Xf, False, 1)  # warm-up
            own = timed(make, W, Xq, Xf, False, args.repeat)
            one = timed(make, W, Xq, Xf, True, args.repeat)
            cells.append(f"{name} {own:.3f} s / {one:.3f} s ({own / one:.2f}x)")
        work = Xq.shape[0] * W.shape[0] * W.shape[1]
        print(
            f"{source} {W.shape[0]}x{W.shape[1]}, m={Xq.shape[0]} (m n_in n_out = "
            f"{work:.2e}{', below SMALL_FIT' if work < saved else ''}): own threads"
            f" / one thread: " + "; ".join(cells),
            flush=True,
        )
    _threads.SMALL_FIT = saved


if __name__ == "__main__":
    main()
