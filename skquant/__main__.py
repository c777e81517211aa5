"""Command line: ``python -m skquant demo [--dataset mnist] [--plot out.png]``."""

import argparse
import os
import sys


def _hidden_sizes(text):
    """``--hidden``: comma-separated layer sizes, each an int >= 1 (none: the
    dataset's default)."""
    if not text:
        return None
    try:
        sizes = tuple(int(h) for h in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"--hidden must be comma-separated ints >= 1, got {text!r}"
        )
    return sizes


def _seed(text):
    """``--seed``: an int >= 0."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"--seed must be an int >= 0, got {text!r}")
    return seed


def _plot_path(path):
    """``--plot``: a file in a folder that exists and can be written to (checked
    before the demo runs, not after)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(
            f"--plot's folder {folder!r} does not exist, got {path!r}"
        )
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(
            f"--plot's folder {folder!r} cannot be written to, got {path!r}"
        )
    return path


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
        type=_hidden_sizes,
        default=None,
        help="hidden layer sizes, comma separated (e.g. 500,300)",
    )
    demo.add_argument(
        "--plot",
        type=_plot_path,
        default=None,
        metavar="PNG",
        help="write accuracy against bits per weight to this file",
    )
    demo.add_argument("--seed", type=_seed, default=0)
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
        from ._kernels import cache_is_warm

        if not cache_is_warm():
            print(
                "Compiling skquant's numba kernels: once per install (about a "
                "minute); later runs load them from numba's cache.",
                file=sys.stderr,
                flush=True,
            )
        run_demo(
            dataset=args.dataset,
            hidden=args.hidden,
            plot=args.plot,
            random_state=args.seed,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
