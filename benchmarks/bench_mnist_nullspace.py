"""Real MNIST: MSQ, GPFQ and the null-space method on an MLP and LeNet-5.

Trains (once, cached under ~/skquant_data/models, fixed seed) a 784-500-300-10 MLP and
a LeNet-5 with torch, then quantizes every Linear/Conv2d layer with
``skquant.torch.quantize_model`` at 2, 3, 4 bits and ternary, with calibration sets of
256, 1024 and 4096 training images, and prints the test accuracy table.

Run: python benchmarks/bench_mnist_nullspace.py [--models mlp lenet5]
Fetch MNIST first with: bash benchmarks/get_data.sh
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _models import accuracy, trained  # noqa: E402

from skquant import (  # noqa: E402
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant.datasets import mnist_available  # noqa: E402
from skquant.torch import quantize_model  # noqa: E402


def methods(b, rank):
    name = f"{b}-bit" if isinstance(b, int) else b
    msq = (
        UniformQuantizer(n_bits=b)
        if isinstance(b, int)
        else TernaryQuantizer(scale="optimal")
    )
    return [
        ("MSQ", name, msq, False),
        ("GPFQ", name, GreedyPathQuantizer(n_bits=b), True),
        ("null-space", name, NullSpaceQuantizer(n_bits=b, rank=rank, n_jobs=-1), True),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["mlp", "lenet5"])
    p.add_argument("--calib", nargs="+", type=int, default=[256, 1024, 4096])
    p.add_argument("--bits", nargs="+", default=["4", "3", "2", "ternary"])
    p.add_argument(
        "--rank",
        type=float,
        default=0.99,
        help="null-space rank cap (fraction of energy, or an int)",
    )
    p.add_argument("--max-rows", type=int, default=4096)
    args = p.parse_args(argv)
    if not mnist_available():
        print("MNIST not found: run `bash benchmarks/get_data.sh` first.")
        return 2
    rank = int(args.rank) if args.rank >= 1 else args.rank
    bits = [int(b) if b.isdigit() else b for b in args.bits]
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(2)
    for name in args.models:
        model, (Xtr, ytr, Xte, yte) = trained(name)
        float_acc = accuracy(model, Xte, yte)
        print(
            f"\n{name}: float test accuracy {float_acc:.4f} "
            f"(error {100 * (1 - float_acc):.2f}%)"
        )
        header = (
            f"{'method':<12}{'bits':<9}"
            + "".join(f"{'m=' + str(c):>10}" for c in args.calib)
            + "   s/run"
        )
        print(header)
        rng = np.random.default_rng(0)
        calib = {
            c: Xtr[np.sort(rng.choice(len(Xtr), c, replace=False))] for c in args.calib
        }
        for b in bits:
            for meth, bname, q, data_driven in methods(b, rank):
                accs, times = [], []
                for c in args.calib:
                    if not data_driven and accs:
                        accs.append(accs[0])  # memoryless: no calibration data used
                        continue
                    t = time.perf_counter()
                    qmodel = quantize_model(model, q, calib[c], max_rows=args.max_rows)
                    times.append(time.perf_counter() - t)
                    accs.append(accuracy(qmodel, Xte, yte))
                print(
                    f"{meth:<12}{bname:<9}"
                    + "".join(f"{a:>10.4f}" for a in accs)
                    + f"   {np.mean(times):.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
