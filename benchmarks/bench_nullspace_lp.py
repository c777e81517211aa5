"""The LP variant's programs: the scaled form skquant solves against the form in
``(z, t)``, in one run on the same layers.

``NullSpaceQuantizer(variant="lp")`` solves, per neuron, ``min ||z||_inf s.t.
V^T z = V^T z0``. Written in ``(z, t)`` it has ``2 n_in`` inequality rows
``-t <= z_i <= t`` beside the ``k`` equalities (the form skquant solved up to
commit ``62a2698``); skquant now solves ``max s s.t. V^T u = s b, -1 <= u <= 1``
(``z = u / s``), ``k`` rows with the box as bounds. Both go to scipy's HiGHS and
through the same exact-on-its-basis step. Printed per layer (Gaussian ``X`` and
``W``, ``V`` the leading right singular vectors of ``X``): the median seconds of
``--rounds`` interleaved rounds over ``--n-out`` neurons of the form in
``(z, t)`` (on layers of at most ``--reference-rows`` rows: it is slow), of the
scaled form by HiGHS's dual simplex,
and of skquant's choice (the dual simplex below ``IPM_ROWS`` equality rows, the
interior point method with its crossover from there), skquant's ratios to both, the
largest relative difference of the optima ``c``, and the largest difference of the
points relative to ``c`` (0 where all reach the same vertex; a layer whose programs
have several optimal vertices may reach different ones).

Run (one thread; about 3 minutes, the second about 4):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_nullspace_lp.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_nullspace_lp.py \\
        --layers 1024x4096 --n-out 1 --rounds 1
"""

import argparse
import time

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from skquant._quantizers._lp import _exact_vertex, basic_solutions


def reference_solutions(V, Z0):
    """The same basic solutions from the program in ``(z, t)``."""
    n, k = V.shape
    Z = np.empty_like(Z0)
    eye = sparse.identity(n, format="csr")
    one = sparse.csr_matrix(np.ones((n, 1)))
    A_ub = sparse.vstack([sparse.hstack([eye, -one]), sparse.hstack([-eye, -one])])
    A_eq = sparse.hstack([sparse.csr_matrix(V.T), sparse.csr_matrix((k, 1))])
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    bounds = [(None, None)] * n + [(0, None)]
    for j in range(Z0.shape[1]):
        b = V.T @ Z0[:, j]
        res = linprog(
            cost,
            A_ub=A_ub.tocsr(),
            b_ub=np.zeros(2 * n),
            A_eq=A_eq.tocsr(),
            b_eq=b,
            bounds=bounds,
            method="highs",
        )
        Z[:, j] = _exact_vertex(res.x[:n], V, b)
    return Z


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--layers",
        nargs="+",
        default=["16x1024", "32x4096", "256x784", "256x2048", "512x1024"],
        help="calibration rows x inputs",
    )
    p.add_argument("--n-out", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--reference-rows",
        type=int,
        default=256,
        help="the (z, t) form only on layers with at most this many rows (slow)",
    )
    args = p.parse_args(argv)
    print(
        f"{'layer':>9} {'(z, t) s':>9} {'simplex s':>9} {'skquant s':>9} "
        f"{'vs (z, t)':>9} {'vs simplex':>10} {'max dc/c':>9} {'max dz/c':>9}"
    )
    for layer in args.layers:
        m, n = map(int, layer.split("x"))
        rng = np.random.default_rng(0)
        X = rng.standard_normal((m, n))
        W = rng.standard_normal((n, args.n_out)) / np.sqrt(n)
        V = np.linalg.svd(X, full_matrices=False)[2][: min(m, n)].T.copy()
        seen = np.ones(n, dtype=bool)
        runs = {
            "skquant": lambda: basic_solutions(V, W, seen),
            "simplex": lambda: basic_solutions(V, W, seen, method="highs"),
        }
        if V.shape[1] <= args.reference_rows:
            runs["ref"] = lambda: reference_solutions(V, W)
        times, Z = {k: [] for k in runs}, {}
        for _ in range(args.rounds):
            for key, run in runs.items():
                tic = time.perf_counter()
                Z[key] = run()
                times[key].append(time.perf_counter() - tic)
        t = {k: float(np.median(v)) for k, v in times.items()}
        c = {k: np.abs(z).max(0) for k, z in Z.items()}
        base = "ref" if "ref" in Z else "simplex"
        dc = max(np.max(np.abs(c[k] - c[base]) / c[base]) for k in Z)
        dz = max(np.max(np.abs(Z[k] - Z[base]) / c[base]) for k in Z)
        ref = f"{t['ref']:9.2f}" if "ref" in t else f"{'-':>9}"
        vs_ref = f"{t['ref'] / t['skquant']:8.1f}x" if "ref" in t else f"{'-':>9}"
        print(
            f"{layer:>9} {ref} {t['simplex']:9.2f} {t['skquant']:9.2f} {vs_ref} "
            f"{t['simplex'] / t['skquant']:9.1f}x {dc:9.1e} {dz:9.1e}"
        )


if __name__ == "__main__":
    main()
