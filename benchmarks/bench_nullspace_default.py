"""The null-space default against GPFQ on a 4096 x 4096 layer with m = 4096 rows.

``NullSpaceQuantizer()`` (``rank="auto"``) and ``GreedyPathQuantizer`` at 3 and 2
bits on one layer: ``X = Z (I + G / 64)`` with ``Z`` and ``G`` standard normal
4096 x 4096 (seed 0, correlated inputs), ``W`` from ``N(0, 1/4096)`` in float32.
Prints each fit's seconds, the ratio to GPFQ's, the cap chosen, the caps the
ladder tried, and the seconds the null-space fit spent in LAPACK's SVD (the row
spaces), in the walk and in the diagnostics (from a profile of the fit).

Run (one thread, about 4 minutes):
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/bench_nullspace_default.py
"""

import argparse
import cProfile
import pstats
import time
import warnings

import numpy as np

import skquant
from skquant import GreedyPathQuantizer, NullSpaceQuantizer


def layer(n=4096, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, n))
    G = rng.standard_normal((n, n))
    X = Z @ (np.eye(n) + G / 64)
    W = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    return X, W


def phases(profile):
    """Seconds of the fit inside the SVD, the walk and the diagnostics."""
    stats = pstats.Stats(profile).stats
    out = {"svd": 0.0, "walk": 0.0, "diagnostics": 0.0}
    for (_, _, name), (_, _, tottime, cumtime, _) in stats.items():
        if name == "svd":
            out["svd"] += tottime
        elif name in ("nullspace_walk", "nullspace_walk_parallel"):
            out["walk"] += tottime
        elif name == "_diagnostics":
            out["diagnostics"] += cumtime
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", nargs="+", default=["3", "2"])
    p.add_argument("--n", type=int, default=4096)
    args = p.parse_args()
    skquant.set_config(progress=False)
    warnings.simplefilter("ignore")
    X, W = layer(args.n)
    for b in args.bits:
        bits = int(b) if b.isdigit() else b
        start = time.perf_counter()
        GreedyPathQuantizer(n_bits=bits).fit(W, activations=X)
        t_gpfq = time.perf_counter() - start
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        q = NullSpaceQuantizer(n_bits=bits).fit(W, activations=X)
        profile.disable()
        t_ns = time.perf_counter() - start
        ph = phases(profile)
        print(
            f"{b} bits: GPFQ {t_gpfq:.1f} s, NullSpaceQuantizer() {t_ns:.1f} s "
            f"({t_ns / t_gpfq:.1f}x GPFQ); cap {q.rank_}, caps tried "
            f"{sorted(q.rank_scores_)}; SVD {ph['svd']:.1f} s, walk "
            f"{ph['walk']:.1f} s, diagnostics {ph['diagnostics']:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
