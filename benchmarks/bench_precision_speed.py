"""Water filling + per-parameter bits on 10^7 parameters: numba against NumPy.

The numba path (``skquant._precision._allocate.allocate_precision``: the O(n)
histogram water filling, then margins, bits and fixed-point rounding in one pass)
against a straightforward NumPy version (sort, cumulative sums, then vectorised margins,
rounding and stored widths), on the same weights and gradients, medians of --repeat
runs.

Run: PYTHONPATH=. python benchmarks/bench_precision_speed.py [--n 10000000]
"""

import argparse
import statistics
import time

import numpy as np

from skquant._precision._allocate import allocate_precision


def numpy_version(w, g, budget, delta):
    s = 2.0 ** (np.floor(np.log2(np.abs(w).max())) + 1)
    a = np.abs(g) * s
    b = np.sort(delta * a[a > 0])
    below = np.concatenate([[0.0], np.cumsum(b)])
    cnt = b.size - np.arange(b.size)
    kappa_t = (budget - below[:-1]) / cnt
    lo = np.concatenate([[0.0], b[:-1]])
    t = np.flatnonzero((kappa_t >= lo) & (kappa_t <= b))[0]
    kappa = kappa_t[t]
    with np.errstate(divide="ignore"):
        tau = np.where(a * delta <= kappa, delta, kappa / a)
    x = w / s
    n = np.clip(np.ceil(-np.log2(tau) - 1), 0, 24)
    p = np.exp2(n)
    qn = np.where(np.abs(x) <= tau, 0.0, np.rint(x * p) / p)
    # stored width: the fewest fractional bits that hold the value exactly
    m = n.copy()
    for _ in range(25):
        fits = (m > 0) & (qn * np.exp2(m - 1) == np.rint(qn * np.exp2(m - 1)))
        if not fits.any():
            break
        m = np.where(fits, m - 1, m)
    bits = np.where(qn == 0, 0, m + 1).astype(np.int8)
    return qn * s, bits, kappa


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(args.n) * 0.05
    g = rng.standard_normal(args.n) * np.exp(rng.standard_normal(args.n))
    delta = 0.05
    s = 2.0 ** (np.floor(np.log2(np.abs(w).max())) + 1)
    budget = 0.1 * delta * (np.abs(g) * s).sum()
    small = slice(0, 1000)
    for n_jobs in (None, args.threads):  # compile outside the timings
        allocate_precision(
            [w[small]], [g[small]], 1e-3, delta, stored=False, n_jobs=n_jobs
        )
    cands = {
        "numba (serial)": lambda: allocate_precision(
            [w], [g], budget, delta, stored=False
        ),
        f"numba ({args.threads} threads)": lambda: allocate_precision(
            [w], [g], budget, delta, stored=False, n_jobs=args.threads
        ),
        "NumPy (sort + vectorised)": lambda: numpy_version(w, g, budget, delta),
    }
    times = {k: [] for k in cands}
    for r in range(args.repeat):
        for k, f in cands.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    res = allocate_precision([w], [g], budget, delta, n_jobs=args.threads)
    q_np, bits_np, kappa_np = numpy_version(w, g, budget, delta)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["NumPy (sort + vectorised)"]
    print(f"n = {args.n:,} parameters, median of {args.repeat}")
    print(f"{'candidate':<28}{'median s':>10}{'NumPy / this':>14}")
    for k, v in med.items():
        print(f"{k:<28}{v:>10.3f}{ref / v:>14.2f}")
    print(
        f"kappa numba {res['kappa']:.12g} vs NumPy {kappa_np:.12g}; "
        f"bits equal: {np.array_equal(res['bits'][0], bits_np)}; "
        f"weights equal: {np.array_equal(res['quantized'][0], q_np)}"
    )
    best = max(ref / med[k] for k in med if k.startswith("numba"))
    print(
        f"[{'PASS' if best >= 3 else 'MISS'}] numba >= 3x faster than NumPy: "
        f"{best:.2f}x"
    )


if __name__ == "__main__":
    main()
