"""Speed of the data-driven layer quantizers on real layer shapes, against GPTQ.

For every weight layer of MNIST LeNet-5, the Fashion-MNIST CNN and VGG-8 (their
shapes ``n_in x n_out``, with the calibration rows a whole-model run gives them
from 1024 images: 4096 sampled patches for a conv layer, 1024 rows for a linear
one) and for a 4096 x 4096 projection with m = 4096 rows, times ``fit`` of

* ``gptq``: :class:`~skquant.GPTQQuantizer` (blocks of 128), the reference;
* ``gpfq``: :class:`~skquant.GreedyPathQuantizer` as it runs (the Gram form over
  all neurons when it is cheaper, see ``use_gram``);
* ``gpfq-path``: the per-neuron numba path forced (the former implementation);
* ``ns``: :class:`~skquant.NullSpaceQuantizer` (``rank=None``) and ``ns-64``
  (``rank=64``), 3 bits.

Gaussian data of each shape (the speed depends on the shapes and on the rank,
which Gaussian rows share with real ones: full up to ``min(m, n_in)``). Medians
of ``--repeat`` runs (one for the 4096 layer), 2 threads where a method uses
threads (BLAS for GPTQ and the Gram form; numba's for the per-neuron kernels,
``n_jobs=2``). Prints seconds and the ratio to GPTQ in the same run.

Run: ``python benchmarks/bench_layer_kernels.py`` (``--no-big`` leaves out the
4096 x 4096 layer).

``--crossover`` times instead GPFQ's two forms, each forced, on layers around
the cost rule's boundary (``use_gram``: ``n_in (m + n_out) < GRAM_RATIO m
n_out``; a 3x3 convolution of C -> C channels on m = 4096 rows has ``9 (1 + C /
4096)``), and prints the path's time over the Gram form's next to the rule's
choice.
"""

import argparse
import statistics
import time
import warnings

import numpy as np

import skquant._quantizers._gpfq as gpfq_module
from skquant import GPTQQuantizer, GreedyPathQuantizer, NullSpaceQuantizer

LAYERS = {
    "LeNet-5": [
        (25, 6, 4096),
        (150, 16, 4096),
        (400, 120, 1024),
        (120, 84, 1024),
        (84, 10, 1024),
    ],
    "Fashion CNN": [(9, 32, 4096), (288, 64, 4096), (3136, 128, 1024), (128, 10, 1024)],
    "VGG-8": [
        (9, 16, 4096),
        (144, 16, 4096),
        (144, 32, 4096),
        (288, 32, 4096),
        (288, 64, 4096),
        (576, 64, 4096),
        (576, 128, 1024),
        (128, 10, 1024),
    ],
}
BIG = ("LLM projection", [(4096, 4096, 4096)])


def methods(with_ns):
    out = {
        "gptq": lambda: GPTQQuantizer(n_bits=3),
        "gpfq": lambda: GreedyPathQuantizer(n_bits=3, n_jobs=2),
        "gpfq-path": lambda: GreedyPathQuantizer(n_bits=3, n_jobs=2),
    }
    if with_ns:
        out["ns"] = lambda: NullSpaceQuantizer(n_bits=3, rank=None, n_jobs=2)
        out["ns-64"] = lambda: NullSpaceQuantizer(n_bits=3, rank=64, n_jobs=2)
    return out


#: (n_in, n_out, m) around the Gram rule's boundary: 3x3 and 1x1 convolutions,
#: projections, classifier heads
CROSSOVER = [
    (144, 16, 4096),
    (288, 32, 4096),
    (576, 64, 4096),
    (1152, 128, 4096),
    (2304, 256, 4096),
    (4608, 512, 4096),
    (576, 32, 4096),
    (1152, 64, 4096),
    (2304, 128, 4096),
    (1152, 32, 4096),
    (2304, 64, 4096),
    (4608, 128, 4096),
    (3136, 128, 1024),
    (1024, 64, 1024),
    (2048, 64, 1024),
    (4096, 128, 1024),
]


def time_fit(make, W, X, forced_path, forced_gram=False):
    original = gpfq_module.use_gram
    if forced_path or forced_gram:
        gpfq_module.use_gram = lambda *a: forced_gram
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            start = time.perf_counter()
            make().fit(W, activations=X)
            return time.perf_counter() - start
    finally:
        gpfq_module.use_gram = original


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-big", action="store_true")
    p.add_argument(
        "--big-ns",
        action="store_true",
        help="also run the null-space method on the 4096 layer",
    )
    p.add_argument(
        "--crossover",
        action="store_true",
        help="time GPFQ's two forms around the Gram rule's boundary",
    )
    args = p.parse_args()
    if args.crossover:
        return crossover(args.repeat)
    groups = list(LAYERS.items()) + ([] if args.no_big else [BIG])
    rng = np.random.default_rng(0)
    # warm the numba caches and BLAS
    Xw, Ww = rng.standard_normal((16, 32)), rng.standard_normal((32, 4))  # freedom
    for make in methods(True).values():
        time_fit(make, Ww, Xw, False)
        time_fit(make, Ww, Xw, True)
    print(f"{'layer':<28}" + "".join(f"{m:>16}" for m in methods(True)))
    for net, shapes in groups:
        big = net == BIG[0]
        for n_in, n_out, m in shapes:
            X = rng.standard_normal((m, n_in))
            W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
            cells, ref = [], None
            for name, make in methods(not big or args.big_ns).items():
                reps = 1 if big else args.repeat
                t = statistics.median(
                    time_fit(make, W, X, name == "gpfq-path") for _ in range(reps)
                )
                ref = t if name == "gptq" else ref
                cells.append(f"{t:8.3f}s {t / ref:5.2f}x")
            label = f"{net} {n_in}x{n_out} m={m}"
            print(f"{label:<28}" + "".join(f"{c:>16}" for c in cells), flush=True)


def crossover(repeat):
    """GPFQ's per-neuron path against its Gram form on :data:`CROSSOVER`."""
    rng = np.random.default_rng(0)
    make = methods(False)["gpfq"]
    Xw, Ww = rng.standard_normal((16, 32)), rng.standard_normal((32, 4))
    time_fit(make, Ww, Xw, True)
    time_fit(make, Ww, Xw, False, True)
    print(
        f"{'layer':<24}{'cost ratio':>11}{'rule':>6}{'Gram':>9}{'path':>9}"
        f"{'path/Gram':>11}"
    )
    for n_in, n_out, m in CROSSOVER:
        X = rng.standard_normal((m, n_in))
        W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        gram = statistics.median(
            time_fit(make, W, X, False, True) for _ in range(repeat)
        )
        path = statistics.median(time_fit(make, W, X, True) for _ in range(repeat))
        rule = "Gram" if gpfq_module.use_gram(m, n_in, n_out) else "path"
        ratio = n_in * (m + n_out) / (m * n_out)
        label = f"{n_in}x{n_out} m={m}"
        print(
            f"{label:<24}{ratio:>11.1f}{rule:>6}{gram:>8.3f}s{path:>8.3f}s"
            f"{path / gram:>10.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
