"""Forward time of a quantized model in grad mode against under ``torch.no_grad()``.

In grad mode the output of every trainable layer needs gradients (its bias's), so
each layer after the first gets an input that needs gradients. A small CNN (two
3x3 convolutions, two Linear layers; 64 images of 3x16x16), 4-bit weights, weight
only / dynamic 8-bit / static 7-bit activations; medians of ``--rounds`` forwards
of each, taken in turn, one torch thread. Prints both times and their ratio.

Run: ``PYTHONPATH=. python benchmarks/bench_grad_mode.py``; to compare with an
older checkout, the same with ``PYTHONPATH`` at it.
"""

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

from skquant import ActivationQuantizer, UniformQuantizer
from skquant.torch import quantize_model


def net():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16 * 16, 64), nn.ReLU(),
        nn.Linear(64, 10),
    ).eval()  # fmt: skip


def median_ms(fns, rounds):
    """Medians (ms) of ``fns``' times, taken in turn ``rounds`` times (a drift in
    the machine's load reaches all alike)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, got in zip(fns, times):
            start = time.perf_counter()
            fn()
            got.append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=51)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, x = net(), torch.randn(64, 3, 16, 16)
    print(f"{'activations':<14}{'grad mode':>11}{'no_grad':>10}{'ratio':>8}")
    for name, acts in (
        ("none", None),
        ("dynamic", "dynamic"),
        ("static 7-bit", ActivationQuantizer(n_bits=7)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = quantize_model(model, UniformQuantizer(n_bits=4), x, activations=acts)

        def plain(q=q):
            return q(x)

        def frozen(q=q):
            with torch.no_grad():
                return q(x)

        grad, no_grad = median_ms([plain, frozen], args.rounds)
        print(f"{name:<14}{grad:>9.2f}ms{no_grad:>8.2f}ms{grad / no_grad:>7.2f}x")


if __name__ == "__main__":
    main()
