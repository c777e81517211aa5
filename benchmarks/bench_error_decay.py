"""Gaussian single layer: relative error of MSQ, GPFQ and both null-space variants.

m fixed (32), n_in from 64 to 4096, 2 and 4 bits (the LP variant is ternary): the
relative error on the calibration data and on held-out Gaussian data, the a-priori
bound, and the log-log slopes against n_in (expected: MSQ flat, GPFQ and the grid
variant near -1/2, the LP variant near -1).

Run: python benchmarks/bench_error_decay.py [--m 32] [--n-out 8] [--plot decay.png]
"""

import argparse
import time

from skquant.theory import error_decay


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, default=32)
    p.add_argument(
        "--n-in", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096]
    )
    p.add_argument("--n-out", type=int, default=8)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--rounding", default="nearest", choices=["nearest", "greedy"])
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    t = time.perf_counter()
    res = error_decay(
        args.n_in,
        m=args.m,
        n_bits=(2, 4),
        n_out=args.n_out,
        n_test=args.n_test,
        rounding=args.rounding,
        verbose=True,
    )
    print(
        f"m={args.m}, {args.n_out} neurons per layer, held-out n={args.n_test}, "
        f"rounding={args.rounding} ({time.perf_counter() - t:.0f}s)"
    )
    keys = list(dict.fromkeys((r["method"], r["n_bits"]) for r in res["rows"]))
    for what in ("error", "test_error", "bound"):
        title = {
            "error": "relative error on the calibration data",
            "test_error": "relative error on held-out data",
            "bound": "a-priori bound (relative)",
        }[what]
        print(f"\n{title}")
        print(
            f"{'method':<16}"
            + "".join(f"{n:>8}" for n in args.n_in)
            + ("   slope" if what == "error" else "")
        )
        for key in keys:
            rows = [r for r in res["rows"] if (r["method"], r["n_bits"]) == key]
            line = f"{key[0] + ' ' + str(key[1]):<16}" + "".join(
                f"{r[what]:>8.4f}" for r in rows
            )
            if what == "error":
                line += f"   {res['slopes'][key]:+.2f}"
            print(line)
    bad = [r for r in res["rows"] if r["error"] > r["bound"]]
    print(f"\nmeasured error above its bound: {len(bad)} of {len(res['rows'])}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from skquant.theory import plot_error_decay

        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        plot_error_decay(res, ax=axes[0])
        plot_error_decay(res, ax=axes[1], test=True)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
