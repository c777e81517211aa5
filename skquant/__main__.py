"""Command line: ``python -m skquant demo [--dataset mnist] [--plot out.png]``."""

import argparse
import sys


def main(argv=None):
    """Entry point of ``python -m skquant``."""
    parser = argparse.ArgumentParser(prog="python -m skquant")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small MLP, quantize it, print a table")
    demo.add_argument(
        "--dataset", choices=["digits", "mnist", "fashion-mnist"], default="digits"
    )
    demo.add_argument(
        "--hidden",
        default=None,
        help="hidden layer sizes, comma separated (e.g. 500,300)",
    )
    demo.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="write accuracy against bits per weight to this file",
    )
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from ._demo import run_demo
        from .datasets import get_data_home, mnist_available

        if args.dataset != "digits" and not mnist_available(args.dataset):
            print(
                f"{args.dataset} files not found under "
                f"{get_data_home()}/{args.dataset}. Fetch them with "
                "`bash benchmarks/get_data.sh` (or point SKQUANT_DATA at a folder "
                "holding them).",
                file=sys.stderr,
            )
            return 2
        hidden = None
        if args.hidden:
            try:
                hidden = tuple(int(h) for h in args.hidden.split(","))
            except ValueError:
                parser.error(
                    f"--hidden must be comma-separated ints, got {args.hidden!r}"
                )
        from ._kernels import cache_is_warm

        if not cache_is_warm():
            print(
                "Compiling skquant's numba kernels: once per install (about a "
                "minute); later runs load them from numba's cache.",
                file=sys.stderr,
                flush=True,
            )
        run_demo(
            dataset=args.dataset, hidden=hidden, plot=args.plot, random_state=args.seed
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
