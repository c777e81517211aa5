"""Speed of the null-space pre-processing (Maly & Saab) against GPFQ, per layer.

On one 784x500 layer (weights of a random MLP's first layer, inputs from MNIST when
its files are present, else Gaussian) with m = 1024 calibration rows, times
``NullSpaceQuantizer`` (walk + greedy rounding + diagnostics, several rank caps) and
``GreedyPathQuantizer`` at 4 bits, with the same thread count, and prints seconds
per layer and the ratio. Then sweeps n_in (m = 256, Gaussian, rank = m) and m
(n_in = 2048) and fits log-log slopes; ``--plot`` draws them.

Run: python benchmarks/bench_nullspace_speed.py [--threads 2] [--plot out.png]
"""

import argparse
import time
import warnings

import numpy as np

from skquant import GreedyPathQuantizer, NullSpaceQuantizer
from skquant.datasets import load_mnist, mnist_available


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def layer(n_in, n_out, m, rng, mnist=False):
    W = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
    if mnist:
        X = load_mnist("train", return_X_y=True)[0][:m].astype(np.float64)
    else:
        X = rng.standard_normal((m, n_in))
    return X, W


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    warnings.simplefilter("ignore", UserWarning)
    use_mnist = mnist_available()
    X, W = layer(784, 500, 1024, rng, mnist=use_mnist)
    # compile once, outside the timings
    NullSpaceQuantizer(n_bits=4, rank=8, n_jobs=args.threads).fit(
        W[:, :2], activations=X
    )
    GreedyPathQuantizer(n_bits=4, n_jobs=args.threads).fit(W[:, :2], activations=X)
    print(
        f"784x500 layer, m=1024, {'MNIST' if use_mnist else 'Gaussian'} inputs, "
        f"{args.threads} threads, median of {args.repeat}"
    )
    t_gpfq = best_of(
        lambda: GreedyPathQuantizer(n_bits=4, n_jobs=args.threads).fit(
            W, activations=X
        ),
        args.repeat,
    )
    print(f"{'method':<34}{'s/layer':>9}{'x GPFQ':>8}{'rank':>6}")
    print(f"{'GPFQ 4-bit':<34}{t_gpfq:>9.3f}{1.0:>8.2f}{'-':>6}")
    for rank in (32, 64, 128, 0.99):
        est = NullSpaceQuantizer(n_bits=4, rank=rank, n_jobs=args.threads)
        t = best_of(lambda: est.fit(W, activations=X), args.repeat)
        print(
            f"{'null-space 4-bit rank=' + str(rank):<34}{t:>9.3f}{t / t_gpfq:>8.2f}"
            f"{est.rank_:>6}"
        )
    # scaling
    sweep_n = [256, 512, 1024, 2048, 4096]
    sweep_m = [32, 64, 128, 256, 512]
    res = {"n_in": {"null-space": [], "GPFQ": []}, "m": {"null-space": [], "GPFQ": []}}
    for n in sweep_n:
        X, W = layer(n, 64, 256, rng)
        res["n_in"]["null-space"].append(
            best_of(
                lambda: NullSpaceQuantizer(n_bits=4, n_jobs=args.threads).fit(
                    W, activations=X
                ),
                1,
            )
        )
        res["n_in"]["GPFQ"].append(
            best_of(
                lambda: GreedyPathQuantizer(n_bits=4, n_jobs=args.threads).fit(
                    W, activations=X
                ),
                1,
            )
        )
    for m in sweep_m:
        X, W = layer(2048, 64, m, rng)
        res["m"]["null-space"].append(
            best_of(
                lambda: NullSpaceQuantizer(n_bits=4, n_jobs=args.threads).fit(
                    W, activations=X
                ),
                1,
            )
        )
        res["m"]["GPFQ"].append(
            best_of(
                lambda: GreedyPathQuantizer(n_bits=4, n_jobs=args.threads).fit(
                    W, activations=X
                ),
                1,
            )
        )
    for axis, values in (("n_in", sweep_n), ("m", sweep_m)):
        fixed = "m=256" if axis == "n_in" else "n_in=2048"
        print(f"\nscaling with {axis} ({fixed}, 64 neurons, Gaussian, rank = m):")
        print(f"{axis:>8}" + "".join(f"{v:>9}" for v in values) + "   slope")
        for meth, ts in res[axis].items():
            slope = np.polyfit(np.log(values), np.log(ts), 1)[0]
            print(
                f"{meth:>8}"[:8]
                + "".join(f"{t:>9.3f}" for t in ts)
                + f"   {slope:+.2f}"
            )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (axis, values) in zip(axes, (("n_in", sweep_n), ("m", sweep_m))):
            for meth, ts in res[axis].items():
                ax.loglog(values, ts, "o-", label=meth)
            ax.set_xlabel(axis)
            ax.set_ylabel("seconds per layer (64 neurons)")
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
