"""The LP variant's programs: the scaled form skquant solves against the form in
``(z, t)``, in one run on the same layers.

``NullSpaceQuantizer(variant="lp")`` solves, per neuron, ``min ||z||_inf s.t.
V^T z = V^T z0``. Written in ``(z, t)`` it has ``2 n_in`` inequality rows
``-t <= z_i <= t`` beside the ``k`` equalities (the form skquant solved up to
commit ``62a2698``); skquant now solves ``max s s.t. V^T u = s b, -1 <= u <= 1``
(``z = u / s``), ``k`` rows with the box as bounds. Both go to scipy's HiGHS and
through the same exact-on-its-basis step. Printed per layer (Gaussian ``X`` and
``W``, ``V`` the leading right singular vectors of ``X``): the median seconds of
``--rounds`` interleaved rounds of each form over ``--n-out`` neurons, their
ratio, the largest relative difference of the optima ``c``, and the largest
difference of the points relative to ``c`` (0 where the two forms reach the same
vertex; a layer whose programs have several optimal vertices, for instance one
with an input that is zero on every calibration row, may reach different ones).

Run (one thread):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_nullspace_lp.py
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
        default=["16x1024", "32x4096", "256x784"],
        help="calibration rows x inputs",
    )
    p.add_argument("--n-out", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(
        f"{'layer':>9} {'(z, t) s':>9} {'scaled s':>9} {'ratio':>6} "
        f"{'max dc/c':>9} {'max dz/c':>9}"
    )
    for layer in args.layers:
        m, n = map(int, layer.split("x"))
        rng = np.random.default_rng(0)
        X = rng.standard_normal((m, n))
        W = rng.standard_normal((n, args.n_out)) / np.sqrt(n)
        V = np.linalg.svd(X, full_matrices=False)[2][: min(m, n)].T.copy()
        times = {"ref": [], "new": []}
        for _ in range(args.rounds):
            tic = time.perf_counter()
            Zr = reference_solutions(V, W)
            times["ref"].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            Zn = basic_solutions(V, W, np.ones(n, dtype=bool))
            times["new"].append(time.perf_counter() - tic)
        tr, tn = np.median(times["ref"]), np.median(times["new"])
        c_r, c_n = np.abs(Zr).max(0), np.abs(Zn).max(0)
        print(
            f"{layer:>9} {tr:9.2f} {tn:9.2f} {tr / tn:5.1f}x "
            f"{np.max(np.abs(c_r - c_n) / c_r):9.1e} "
            f"{np.max(np.abs(Zr - Zn) / c_r):9.1e}"
        )


if __name__ == "__main__":
    main()
