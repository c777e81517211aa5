"""Time of the exact per-layer bit allocation (``skquant.allocate_bits``).

Random instances of 100 layers x 10 choices (bit-widths 1..10, layer sizes 1e3..1e6
parameters, noise ``p_i 4^-b``), under a size budget halfway between the smallest
and the largest total size and under a noise target; median of ``--repeats`` solves
each, and the greedy marginal allocation's total for comparison (the exact one is
never worse).

Run: .venv/bin/python benchmarks/bench_allocation.py [--repeats 20]
"""

import argparse
import time

import numpy as np

from skquant import allocate_bits
from skquant._layerbits._allocation import greedy_bits


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    bits = np.arange(1, 11)
    times_b, times_c, ratios = [], [], []
    for _ in range(args.repeats):
        n_params = rng.integers(1000, 1_000_000, size=(100, 1))
        noise = rng.uniform(0.01, 10, size=(100, 1)) * 4.0**-bits
        size = n_params * bits
        budget = (size.min(axis=1).sum() + size.max(axis=1).sum()) / 2
        t = time.perf_counter()
        c = allocate_bits(noise, size, budget=budget)
        times_b.append(time.perf_counter() - t)
        g = greedy_bits(noise, size, budget=budget)
        rows = np.arange(100)
        ratios.append(noise[rows, g].sum() / noise[rows, c].sum())
        target = noise[rows, 5].sum()  # what 6 bits everywhere gives
        t = time.perf_counter()
        allocate_bits(noise, size, max_cost=target)
        times_c.append(time.perf_counter() - t)
    print("100 layers x 10 choices, median of", args.repeats, "instances:")
    print(f"  under a size budget:  {1e3 * np.median(times_b):.1f} ms")
    print(f"  under a noise target: {1e3 * np.median(times_c):.1f} ms")
    print(
        f"  greedy total noise / exact: median {np.median(ratios):.4f}, "
        f"max {np.max(ratios):.4f} (>= 1: the exact allocation is never worse)"
    )


if __name__ == "__main__":
    main()
