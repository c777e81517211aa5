"""Speed of the null-space pre-processing (Maly & Saab) against GPFQ, per layer.

On one 784x500 layer (random weights, inputs from MNIST when its files are present,
else Gaussian) with m = 1024 calibration rows, times ``GreedyPathQuantizer`` and
``NullSpaceQuantizer`` at 4 bits with the same thread count, for several rank caps:
the whole ``fit``, the pre-processing alone (row space + walk), and the first read
of ``bound_``; prints seconds per layer (medians) and the ratios to GPFQ. Then
sweeps n_in (m = 256, Gaussian, rank = m) and m (n_in = 2048) and fits log-log
slopes; ``--plot`` draws them.

``--flops`` instead measures the walk's arithmetic rate: the floating-point
operations the walk counts as it does them (``walk_to_vertices(flops=...)``) over its
time, on the 784x500 layer (m = 1024) and on a 3136x128 layer (Gaussian inputs, m =
1024: the Fashion CNN's first linear layer), at several caps, against a float64 BLAS
GEMM (2048 x 2048, numpy) on the same thread count.

``--forms`` instead times the walk's two forms (the basis inverse kept, the
tableau; :mod:`skquant._kernels._nullspace`) on the same starts, one thread: on
the layers of LeNet-5, the Fashion CNN and VGG-8 as the default fits them (3 bits,
1024 images; ``get_data.sh``'s data), the data's leading right singular vectors
at caps from 8 to 200, the first 64 neurons, unguided, median of ``--repeat``;
prints both times, their ratio and how many neurons reach the same vertex (up to
1e-9 of a step; a move taken on the other side after round-off sends the rest of
a walk elsewhere).

``--walks NET [NET ...]`` instead replays the default's own walks, one thread:
each network is quantized by ``NullSpaceQuantizer(n_bits=--bits)`` on 1024
training images (seed 0), every call of the walk on its layers of at least 256
inputs is recorded (the ladder's caps on its neurons, the final fit; guided or
not, as the default walks them) and timed again ``--repeat`` times (median);
then each layer's whole fit is timed the same way and summed over the network.
The script uses only the library's functions, so that it runs on an earlier
commit unchanged (to compare kernels: copy it there).

Run: python benchmarks/bench_nullspace_speed.py [--threads 2] [--plot out.png]
     python benchmarks/bench_nullspace_speed.py --flops [--threads 1]
     python benchmarks/bench_nullspace_speed.py --forms
     python benchmarks/bench_nullspace_speed.py --walks lenet5 cnn --repeat 5
"""

import argparse
import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from skquant import GreedyPathQuantizer, NullSpaceQuantizer
from skquant._quantizers._nullspace import _Products
from skquant._quantizers._spectrum import row_space
from skquant.datasets import load_mnist, mnist_available


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def preprocess(est, W, X, rank):
    """The pre-processing of a fitted ``est`` alone: row space, then the walk."""
    est.components_ = row_space(X, rank)[0]
    return est._preprocess(W, X, X, _Products(W, X, X, est.components_))


def layer(n_in, n_out, m, rng, mnist=False):
    W = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
    if mnist:
        X = load_mnist("train", return_X_y=True)[0][:m].astype(np.float64)
    else:
        X = rng.standard_normal((m, n_in))
    return X, W


def gemm_rate(threads, n=2048, repeat=3):
    """Gflop/s of a float64 BLAS GEMM (n x n) on ``threads`` threads."""
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    with threadpool_limits(threads, user_api="blas"):
        A @ B
        return 2 * n**3 / best_of(lambda: A @ B, repeat) / 1e9


def flop_rates(threads, repeat, use_mnist, rng):
    """The walk's counted flops over its time, against the BLAS GEMM's rate."""
    blas = gemm_rate(threads)
    print(
        f"float64 GEMM 2048x2048 on {threads} thread(s): {blas:.1f} Gflop/s "
        f"(median of {repeat})"
    )
    print(f"{'layer':<22}{'k':>5}{'walk s':>9}{'Gflop':>9}{'Gflop/s':>9}{'x GEMM':>8}")
    cases = [
        (
            "784x500 " + ("MNIST" if use_mnist else "Gauss"),
            784,
            500,
            use_mnist,
            (32, 64, 128, 0.99),
        ),
        ("3136x128 Gauss", 3136, 128, False, (102, 205, 410)),
    ]
    for label, n_in, n_out, mnist, ranks in cases:
        X, W = layer(n_in, n_out, 1024, rng, mnist=mnist)
        for rank in ranks:
            # compiled outside the timing
            NullSpaceQuantizer(n_bits=4, rank=8, n_jobs=threads).fit(
                W[:, :2], activations=X
            )
            est = NullSpaceQuantizer(n_bits=4, rank=rank, n_jobs=threads)
            est._fit_alphabet(W)
            est.components_ = row_space(X, rank)[0]
            pre = _Products(W, X, X, est.components_)
            flops = np.zeros(n_out)
            t = best_of(lambda: est._preprocess(W, X, X, pre, flops=flops), repeat)
            rate = flops.sum() / t / 1e9
            print(
                f"{label:<22}{est.components_.shape[1]:>5}{t:>9.3f}"
                f"{flops.sum() / 1e9:>9.2f}{rate:>9.2f}{rate / blas:>8.2f}"
            )


def forms(repeat):
    """The inverse form against the tableau on the benchmark networks' layers."""
    from bench_nullspace_variants import capture

    from skquant._quantizers._walk import INVERSE_RANK, walk_chunk, walk_to_vertices

    print(f"inverse form up to k = {INVERSE_RANK} by default; one thread")
    head = f"{'layer':<22}{'k':>5}{'tableau s':>11}{'inverse s':>11}"
    print(f"{head}{'ratio':>7}{'same':>8}")
    with threadpool_limits(1):
        for net in ("lenet5", "cnn", "vgg8"):
            for i, (W, Xq, _) in enumerate(capture(net, 3)):
                n, n_out = W.shape[0], min(W.shape[1], 64)
                if n < 64:
                    continue
                Vt = np.linalg.svd(Xq, full_matrices=False)[2]
                Z0 = np.asfortranarray(W[:, :n_out], dtype=np.float64)
                step = np.abs(Z0).max(axis=0) / 3
                lo = np.floor(Z0 / step) * step
                hi = lo + step
                order = np.argsort(-np.einsum("ij,ij->j", Xq, Xq), kind="stable")
                for k in (8, 16, 32, 64, 100, 200):
                    if k >= min(n, Vt.shape[0]):
                        continue
                    V = np.ascontiguousarray(Vt[:k].T)

                    def run(chunk):
                        return walk_to_vertices(V, Z0, lo, hi, order, chunk=chunk)[0]

                    times, points = [], []
                    for chunk in (walk_chunk(n, k), 0):  # the tableau, the inverse
                        points.append(run(chunk))  # (compiled outside the timing)
                        times.append(best_of(lambda c=chunk: run(c), repeat))
                    diff = np.abs(points[0] - points[1])
                    same = np.all(diff <= 1e-9 * step, axis=0).sum()
                    label = f"{net} {i} ({n}x{W.shape[1]})"
                    print(
                        f"{label:<22}{k:>5}{times[0]:>11.4f}{times[1]:>11.4f}"
                        f"{times[1] / times[0]:>7.2f}{same:>5}/{n_out}"
                    )


def replay_walks(nets, bits, repeat):
    """The default's walks and layer fits on whole networks, replayed."""
    from bench_nullspace_variants import capture

    import skquant._quantizers._nullspace as ns

    recorded, walk = [], ns.walk_to_vertices

    def record(*args, **kwargs):
        recorded.append((args, kwargs))
        return walk(*args, **kwargs)

    with threadpool_limits(1):
        for net in nets:
            layers = capture(net, bits)
            fits = 0.0
            for W, Xq, Xf in layers:
                target = None if Xf is Xq or np.array_equal(Xf, Xq) else Xf
                recorded.clear()
                ns.walk_to_vertices = record
                try:
                    NullSpaceQuantizer(n_bits=bits)._fit_quantize(W, Xq, target)
                finally:
                    ns.walk_to_vertices = walk
                fits += best_of(
                    lambda W=W, Xq=Xq, target=target: NullSpaceQuantizer(
                        n_bits=bits
                    )._fit_quantize(W, Xq, target),
                    repeat,
                )
                if W.shape[0] < 256:
                    continue
                for args, kwargs in recorded:
                    V, Z0 = args[0], args[1]
                    t = best_of(lambda a=args, k=kwargs: walk(*a, **k), repeat)
                    guided = "guided" if kwargs.get("X") is not None else "unguided"
                    print(
                        f"{net} {W.shape[0]}x{W.shape[1]}, {bits} bits: walk at "
                        f"k = {V.shape[1]}, {Z0.shape[1]} neurons, {guided}: "
                        f"{1e3 * t:.1f} ms",
                        flush=True,
                    )
            print(f"{net}, {bits} bits: layer fits {fits:.3f} s in all", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--plot", default=None)
    p.add_argument(
        "--flops", action="store_true", help="the walk's flop rate against BLAS"
    )
    p.add_argument(
        "--forms", action="store_true", help="the walk's inverse form vs its tableau"
    )
    p.add_argument("--walks", nargs="+", metavar="NET", help="see the docstring")
    p.add_argument("--bits", type=int, default=3, help="with --walks")
    args = p.parse_args(argv)
    if args.walks:
        import skquant

        skquant.set_config(progress=False)
        warnings.simplefilter("ignore")
        replay_walks(args.walks, args.bits, args.repeat)
        return
    if args.forms:
        import skquant

        skquant.set_config(progress=False)
        warnings.simplefilter("ignore")
        forms(args.repeat)
        return
    rng = np.random.default_rng(0)
    warnings.simplefilter("ignore", UserWarning)
    use_mnist = mnist_available()
    if args.flops:
        flop_rates(args.threads, args.repeat, use_mnist, rng)
        return
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
    print(
        "fit: what NullSpaceQuantizer.fit costs (row space, walk, greedy rounding, "
        "diagnostics but the bound);\nwalk: the pre-processing alone (row space of "
        "X + the walk of every neuron); bound: first read of bound_"
    )
    print(
        f"{'method':<28}{'k':>5}{'fit s':>8}{'x GPFQ':>8}{'walk s':>8}{'x GPFQ':>8}"
        f"{'bound s':>9}"
    )
    print(f"{'GPFQ 4-bit':<28}{'-':>5}{t_gpfq:>8.3f}{1.0:>8.2f}")
    by_rank = []  # (k, fit, walk)
    for rank in (32, 64, 128, 0.99, None):
        est = NullSpaceQuantizer(n_bits=4, rank=rank, n_jobs=args.threads)
        t_fit = best_of(lambda: est.fit(W, activations=X), args.repeat)
        t_walk = best_of(lambda: preprocess(est, W, X, rank), args.repeat)
        by_rank.append((est.rank_, t_fit, t_walk))
        t = time.perf_counter()
        est.bound_
        t_bound = time.perf_counter() - t
        print(
            f"{'null-space 4-bit rank=' + str(rank):<28}{est.rank_:>5}{t_fit:>8.3f}"
            f"{t_fit / t_gpfq:>8.2f}{t_walk:>8.3f}{t_walk / t_gpfq:>8.2f}"
            f"{t_bound:>9.3f}"
        )
    # scaling
    sweep_n = [256, 512, 1024, 2048, 4096]
    sweep_m = [32, 64, 128, 256, 512]
    res = {"n_in": {"null-space": [], "GPFQ": []}, "m": {"null-space": [], "GPFQ": []}}
    for n in sweep_n:
        X, W = layer(n, 64, 256, rng)
        res["n_in"]["null-space"].append(
            best_of(
                lambda: NullSpaceQuantizer(
                    n_bits=4, rank=None, n_jobs=args.threads
                ).fit(W, activations=X),
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
                lambda: NullSpaceQuantizer(
                    n_bits=4, rank=None, n_jobs=args.threads
                ).fit(W, activations=X),
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
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        ks, fits, walks = map(list, zip(*sorted(by_rank)))
        ax = axes[0]
        ax.plot(ks, fits, "o-", label="null-space fit")
        ax.plot(ks, walks, "s-", label="null-space walk (row space + walk)")
        ax.axhline(t_gpfq, color="C2", label="GPFQ fit")
        ax.axhline(2 * t_gpfq, color="C2", ls="--", label="2 x GPFQ (target)")
        ax.set_title("784x500 MNIST layer, m = 1024")
        ax.set_xlabel("kept directions k (rank cap)")
        ax.set_ylabel("seconds per layer")
        ax.legend(fontsize=8)
        for ax, (axis, values) in zip(axes[1:], (("n_in", sweep_n), ("m", sweep_m))):
            for meth, ts in res[axis].items():
                ax.loglog(values, ts, "o-", label=meth)
            ax.set_xticks(values)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(axis)
            ax.set_title(
                "Gaussian, 64 neurons, k = m, "
                + ("m = 256" if axis == "n_in" else "n_in = 2048")
            )
            ax.set_ylabel("seconds per layer")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
