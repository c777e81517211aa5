"""How often ``skquant.allocate_bits`` finds the optimum, and its time on a hard table.

Three checks, each printed as counts:

* small tables (1 to 6 layers, 1 to 4 choices; uniform, integer, bit-width,
  offset sizes of 1e6 to 1e15 plus small integers, and wide-range entries
  spanning 1e-300 to 1e300) against brute force over every allocation, at
  exactly reachable totals, the smallest total and random limits, for
  ``--seconds`` seconds;
* 10 to 40 layers x 8 bit-widths with integer limit rows against an exact
  dynamic program, for ``--seconds`` seconds;
* the 40 x 8 table whose 1-bit noise is 1e9 times the rest at a target 30% of
  the way up: the time of one call under the default ``time_limit`` and the
  answer against greedy's.

"optimal" means no worse than the reference (relative 1e-9); a limit is met
where the chosen entries' exact sum is at most it.

Run: .venv/bin/python benchmarks/check_allocation.py [--seconds 60] [--seed 0]
"""

import argparse
import collections
import itertools
import time
import warnings
from fractions import Fraction

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from skquant import allocate_bits
from skquant._layerbits._allocation import greedy_bits

BITS = np.array([1, 2, 3, 4, 5, 6, 8, 16])


def small_table(rng, kind, n, k):
    if kind == "uniform":
        return rng.random((n, k)), rng.random((n, k))
    if kind == "integer":
        return (rng.integers(0, 4, (n, k)).astype(float) for _ in range(2))
    if kind == "bit-width":
        bits = np.sort(rng.choice(BITS, k, replace=False))
        p = rng.integers(1, 10**7, (n, 1)).astype(float)
        cost = 10.0 ** rng.uniform(-3, 3, (n, 1)) * p * 4.0**-bits
        if rng.random() < 0.3:  # binary layers far noisier than the rest
            cost[:, 0] *= 10.0 ** rng.uniform(0, 9, n)
        return cost, p * bits
    if kind == "offset":  # a large common part: little room above the smallest
        base = 10.0 ** rng.uniform(6, 15)
        return rng.random((n, k)), base + rng.integers(0, 5, (n, k)).astype(float)
    # wide-range
    cost = 10.0 ** rng.uniform(-300, 300, (n, k))
    size = 10.0 ** rng.uniform(-20, 20, (n, k))
    cost[rng.random((n, k)) < 0.1] = 0.0
    return cost, size


def at_most(values, limit):
    """Whether the exact sum of ``values`` is at most ``limit``."""
    return sum(map(Fraction, values)) <= Fraction(limit)


def brute(objective, limit_row, limit, picks):
    at = np.arange(objective.shape[0])
    chosen = limit_row[at, picks]
    sums = chosen.sum(axis=1)  # (exact where far from the limit: within a
    margin = 4 * chosen.shape[1] * np.finfo(float).eps * sums  # bound of its
    fits = sums < limit - margin  # rounding, summed in fractions)
    near = np.flatnonzero(~fits & ~(sums > limit + margin))
    fits[near] = [at_most(chosen[i].tolist(), limit) for i in near]
    if not fits.any():  # (the limit is below the smallest exact total)
        return None
    return objective[at, picks][fits].sum(axis=1).min()


def dynamic_program(objective, limit_row, limit):
    """Smallest objective with an integer limit row summing to at most limit."""
    top = int(limit)
    best = np.full(top + 1, np.inf)
    best[0] = 0.0
    for i in range(objective.shape[0]):
        new = np.full(top + 1, np.inf)
        for j in range(objective.shape[1]):
            s = int(limit_row[i, j])
            if s <= top:
                np.minimum(new[s:], best[: top + 1 - s] + objective[i, j], out=new[s:])
        best = new
    return best.min()


def verdict(cost, size, mode, limit, reference):
    at = np.arange(cost.shape[0])
    objective, limit_row = (cost, size) if mode == "budget" else (size, cost)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            choice = allocate_bits(cost, size, **{mode: limit})
    except ValueError:
        return "none fits: refused" if reference is None else "refused"
    warned = " (with a ConvergenceWarning)" if caught else ""
    if reference is None:
        return "none fits: answered"
    if not at_most(limit_row[at, choice], limit):
        return "over the limit"
    got = objective[at, choice].sum()
    optimal = got <= reference + 1e-9 * abs(reference)
    return ("optimal" if optimal else "above") + warned


def check_small(rng, seconds):
    tally = collections.Counter()
    picks = {}
    kinds = ["uniform", "integer", "bit-width", "offset", "wide-range"]
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        kind = kinds[rng.integers(len(kinds))]
        n, k = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        if k**n > 5000:
            continue
        if (n, k) not in picks:
            picks[n, k] = np.array(list(itertools.product(range(k), repeat=n)))
        pick = picks[n, k]
        cost, size = small_table(rng, kind, n, k)
        mode = ("budget", "max_cost")[rng.integers(2)]
        objective, limit_row = (cost, size) if mode == "budget" else (size, cost)
        at = np.arange(n)
        r = rng.random()
        if r < 0.5:  # an exactly reachable total
            limit = float(limit_row[at, pick[rng.integers(len(pick))]].sum())
        elif r < 0.6:
            limit = float(limit_row.min(axis=1).sum())
        else:
            low, high = limit_row.min(axis=1).sum(), limit_row.max(axis=1).sum()
            limit = float(rng.uniform(low, high))
        reference = brute(objective, limit_row, limit, pick)
        tally[kind, verdict(cost, size, mode, limit, reference)] += 1
    return tally


def check_large(rng, seconds):
    tally = collections.Counter()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        n = int(rng.integers(10, 41))
        mode = ("budget", "max_cost")[rng.integers(2)]
        noise = np.exp(rng.normal(0, 0.1, (n, len(BITS))))
        if mode == "budget":  # sizes in units of 1 to 200 parameters
            p = rng.integers(1, 200, (n, 1))
            size = (p * BITS).astype(float)
            cost = 10.0 ** rng.uniform(-3, 3, (n, 1)) * p * 4.0**-BITS * noise
            if rng.random() < 0.3:
                cost[:, 0] *= 10.0 ** rng.uniform(0, 9, n)
            limit_row, objective = size, cost
        else:  # costs in integer units (a measured loss rise, rounded)
            size = (10.0 ** rng.uniform(3, 7, (n, 1))).round() * BITS
            scale = rng.uniform(0, 50, (n, 1)) * 64
            cost = np.round(scale * 4.0 ** -(BITS - 1) * noise**2)
            limit_row, objective = cost, size
        low, high = limit_row.min(axis=1).sum(), limit_row.max(axis=1).sum()
        frac = rng.choice([0.01, 0.05, 0.2, 0.5])
        limit = float(np.round(rng.uniform(low, low + (high - low) * frac)))
        if rng.random() < 0.5:  # an exactly reachable total
            at = np.arange(n)
            limit = max(float(limit_row[at, rng.integers(0, len(BITS), n)].sum()), low)
        if limit > 3e5:
            continue
        reference = dynamic_program(objective, limit_row, limit)
        tally[mode, verdict(cost, size, mode, limit, reference)] += 1
    return tally


def hard_table():
    rng = np.random.default_rng(0)
    p = rng.integers(10**3, 10**7, (40, 1)).astype(float)
    cost = p * 4.0**-BITS
    cost[:, 0] *= 1e9
    low, high = cost.min(axis=1).sum(), cost.max(axis=1).sum()
    return cost, p * BITS, low + 0.3 * (high - low)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for name, tally in (
        ("small tables against brute force", check_small(rng, args.seconds)),
        (
            "10 to 40 layers x 8 against a dynamic program",
            check_large(rng, args.seconds),
        ),
    ):
        print(f"{name}: {sum(tally.values())} tables")
        for key, count in sorted(tally.items()):
            print(f"  {' / '.join(key)}: {count}")
    cost, size, target = hard_table()
    at = np.arange(40)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        choice = allocate_bits(cost, size, max_cost=target)
    took = time.perf_counter() - start
    greedy = greedy_bits(cost, size, max_cost=target)
    print(
        f"hard 40 x 8 table: {took:.1f} s, {len(caught)} ConvergenceWarning; size "
        f"{size[at, choice].sum():.0f} against greedy's {size[at, greedy].sum():.0f}"
    )
    for w in caught:
        print("  ", w.message)


if __name__ == "__main__":
    main()
