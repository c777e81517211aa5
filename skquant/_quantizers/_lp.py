"""The LP variant's points: per neuron, a basic solution of
``min ||z||_inf s.t. V^T z = V^T z0`` (HiGHS), made exact on its basis.

The program is solved in its scaled form ``max s s.t. V^T u = s b, -1 <= u <= 1``
(``b = V^T z0``, ``z = u / s``): ``k`` equality rows over the ``n + 1``
variables, with the box as bounds, where the form in ``(z, t)`` needs ``2 n``
inequality rows ``-t <= z_i <= t`` beside them. The map ``(u, s) -> (u / s,
1 / s)`` takes the one's vertices to the other's (each active bound ``u_i = +-1``
is an active ``z_i = +-t``), so a vertex has the same coordinates at ``+-t``;
a 32 x 4096 layer's programs are 33x faster so (``benchmarks/bench_nullspace_lp.py``).
"""

import numpy as np
from scipy.optimize import linprog

from .._common._progress import run_in_batches

__all__ = ["basic_solutions"]

#: From this many equality rows on, HiGHS's interior point method (with its
#: crossover to a vertex) is faster than its dual simplex on Gaussian layers:
#: 1.6x at 512 x 1024, 6.5x at 1024 x 4096, the same vertices
#: (``bench_nullspace_lp.py``). Below, the simplex is about as fast, or faster:
#: 0.46 against 0.62 s a neuron on the MNIST layer of nullspace.rst (256 rows; a
#: one-off measurement at commit 638ffa5, not kept as a script).
IPM_ROWS = 512


def basic_solutions(V, Z0, seen, method=None):
    """One basic solution per column of ``Z0`` over the rows ``seen`` (a mask of
    the ``n`` rows of ``V``, ``(n, k)``); the other rows are ``Z0``'s. A copy.
    ``method``: HiGHS's (``None``: by :data:`IPM_ROWS`)."""
    Z = np.array(Z0, dtype=np.float64)
    V = V[seen]
    n, k = V.shape
    if k >= n:  # the equality fixes z: nothing to optimise
        return Z
    Z0 = Z[seen]
    Zs = np.empty_like(Z0)
    cost = np.zeros(n + 1)
    cost[-1] = -1.0  # maximise s
    bounds = np.zeros((n + 1, 2))
    bounds[:n] = -1.0, 1.0
    bounds[n] = 0.0, np.inf
    A_eq = np.empty((k, n + 1))
    A_eq[:, :n] = V.T
    zeros = np.zeros(k)
    noise = 64 * np.sqrt(k) * np.finfo(np.float64).eps  # round-off of V^T z0
    if method is None:
        method = "highs-ipm" if k >= IPM_ROWS else "highs"

    def solve(a, b):
        for j in range(a, b):
            b_eq = V.T @ Z0[:, j]
            size = np.abs(b_eq).max()
            if size <= noise * np.linalg.norm(Z0[:, j]):  # z0 in the null space
                Zs[:, j] = 0.0  # (to round-off): z = 0 is feasible
                continue
            # b at unit size: the solver's tolerances are absolute (a neuron of
            # weights near 1e-11 read as b = 0, an unbounded s)
            A_eq[:, n] = -b_eq / size
            res = linprog(cost, A_eq=A_eq, b_eq=zeros, bounds=bounds, method=method)
            if res.status != 0:  # pragma: no cover - HiGHS solves these LPs
                raise RuntimeError(f"linprog failed on neuron {j}: {res.message}")
            u, s = res.x[:n], res.x[n]
            Zs[:, j] = _exact_vertex(u * (size / s), V, b_eq)

    run_in_batches(solve, Z0.shape[1], "null-space LPs (neurons)")
    Z[seen] = Zs
    return Z


def _exact_vertex(z, V, b):
    """The basic solution ``z`` of ``min ||z||_inf s.t. V^T z = b`` (as the LP
    solver gives it, to its tolerance), solved exactly on its basis: the
    entries at ``+-||z||_inf`` (to 1e-6 of it) share one magnitude ``t``, and
    with the others (fewer than ``k``) they meet the ``k`` equalities to
    round-off. Without that, entries a few 1e-9 short of ``+-t`` read as off the
    grid. ``z`` as it is when its basis does not pin it down."""
    t = np.abs(z).max()
    if t == 0:
        return z
    top = np.abs(z) >= t * (1 - 1e-6)
    sign = np.sign(z[top])
    inner = np.flatnonzero(~top)
    if inner.size >= V.shape[1]:
        return z
    A = np.column_stack([V[inner].T, V[top].T @ sign])
    x, *_ = np.linalg.lstsq(A, b, rcond=None)
    out = z.copy()
    out[inner], out[top] = x[:-1], sign * x[-1]
    if x[-1] <= 0 or np.abs(out[inner]).max(initial=0) > x[-1] * (1 + 1e-9):
        return z
    return out
