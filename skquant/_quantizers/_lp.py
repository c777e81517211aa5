"""The LP variant's points: per neuron, a basic solution of
``min ||z||_inf s.t. V^T z = V^T z0`` (HiGHS), made exact on its basis."""

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from .._common._progress import run_in_batches

__all__ = ["basic_solutions"]


def basic_solutions(V, Z0):
    """One basic solution per column of ``Z0`` (``V``: ``(n, k)``, ``k < n``)."""
    n, k = V.shape
    Z = np.empty_like(Z0)
    eye = sparse.identity(n, format="csr")
    one = sparse.csr_matrix(np.ones((n, 1)))
    A_ub = sparse.vstack([sparse.hstack([eye, -one]), sparse.hstack([-eye, -one])])
    A_eq = sparse.hstack([sparse.csr_matrix(V.T), sparse.csr_matrix((k, 1))])
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    bounds = [(None, None)] * n + [(0, None)]
    A_ub, A_eq = A_ub.tocsr(), A_eq.tocsr()

    def solve(a, b):
        for j in range(a, b):
            b_eq = V.T @ Z0[:, j]
            res = linprog(
                cost,
                A_ub=A_ub,
                b_ub=np.zeros(2 * n),
                A_eq=A_eq,
                b_eq=b_eq,
                bounds=bounds,
                method="highs",
            )
            if res.status != 0:  # pragma: no cover - HiGHS solves these LPs
                raise RuntimeError(f"linprog failed on neuron {j}: {res.message}")
            Z[:, j] = _exact_vertex(res.x[:n], V, b_eq)

    run_in_batches(solve, Z0.shape[1], "null-space LPs (neurons)")
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
