"""Per-layer bit-widths: the exact integer allocation and Zhou et al.'s closed form.

Choosing one option per layer (a bit-width, an alphabet) so that the total size is
smallest under a noise target, or the total noise smallest under a size budget, is
a multiple-choice knapsack. A greedy marginal allocation is not exact when layers
differ in size; :func:`allocate_bits` solves it exactly as a small integer program
(scipy's HiGHS through :func:`scipy.optimize.milp`). Pure NumPy/SciPy.
"""

import contextlib
import functools
import heapq
import math
import numbers
import os
import sys
import time
import warnings
from fractions import Fraction

import numpy as np
from joblib import delayed
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix
from sklearn.exceptions import ConvergenceWarning

from .._common._checks import check_int, check_positive, float_array
from .._common._jobs import configured_n_jobs, run_tasks

__all__ = ["allocate_bits", "closed_form_bits", "greedy_bits", "pareto_choices"]


def _check_table(table, name):
    given = np.asarray(table) if isinstance(table, np.ndarray | list) else None
    if given is not None and given.dtype.kind in "iu" and given.size:
        if int(np.abs(given).max()) > 2**53:  # (float64 rounds them)
            raise ValueError(
                f"{name} holds integers above 2**53 (largest {int(given.max())}), "
                "which float64 cannot hold exactly: give them in larger units."
            )
    arr = float_array(table, name, "an array of numbers of shape (n_layers, n_choices)")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape (n_layers, n_choices) with at least one layer "
            f"and one choice, got {name}.shape={arr.shape} instead."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got NaN or infinity in {name}.")
    if np.any(arr < 0):
        raise ValueError(
            f"{name} must be non-negative, got {name}.min()={arr.min()!r} instead."
        )
    return arr


def _check_limit(value, name):
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
    ):
        raise ValueError(
            f"{name} must be a finite number, got {name}={value!r} instead."
        )
    return float(value)


@contextlib.contextmanager
def _quiet_c_stdout():
    """Silence writes to file descriptor 1 (HiGHS' MIP solver prints debug lines)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real stdout: nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def allocate_bits(cost, size, *, budget=None, max_cost=None, time_limit=10.0):
    """The exactly optimal choice per layer under a size budget or a noise target.

    With ``x[i, j] = 1`` when layer ``i`` takes choice ``j`` (one per layer), either
    minimise the total cost ``sum cost[i, j] x[i, j]`` subject to the total size
    ``sum size[i, j] x[i, j] <= budget``, or minimise the total size subject to the
    total cost ``<= max_cost``, the limited total summed exactly (a plain sum
    of large entries rounds: it may fall a little below the limit where the
    exact sum is above it). Solved as an integer program (HiGHS), so the
    answer is optimal, not greedy (to HiGHS' tolerances, scaled to 1e-12 of
    what a feasible answer takes; never worse than :func:`greedy_bits` where
    greedy's answer fits), unless ``time_limit`` ends the search first.

    Parameters
    ----------
    cost : array-like of shape (n_layers, n_choices)
        Non-negative cost (e.g. normalised noise ``p_i exp(-alpha b_j) / t_i``) of
        each layer at each choice.
    size : array-like of shape (n_layers, n_choices)
        Non-negative size (bits) of each layer at each choice.
    budget : float, default=None
        Largest total size. Give exactly one of ``budget`` and ``max_cost``.
    max_cost : float, default=None
        Largest total cost.
    time_limit : float or None, default=10.0
        Seconds the call may take, counted from its start (a solve under way
        stops when they are spent). A table of 100 layers and 10 choices takes
        about a tenth of a second; a hard one (tens of layers with nearly equal
        trade-offs) can take ten seconds or more to prove optimal. When the
        time runs out, the best answer found so far (never worse than
        :func:`greedy_bits`' where that fits) is returned with a
        ``ConvergenceWarning`` that gives HiGHS' remaining gap. ``None``: no
        limit.

    Returns
    -------
    choice : ndarray of int of shape (n_layers,)
        The chosen column of every layer.

    Raises
    ------
    ValueError
        For invalid tables, a budget below the smallest possible total size, or a
        cost target that no choice meets. (A budget of at least the largest total
        size constrains nothing: every layer takes its cheapest choice.)

    Warns
    -----
    ConvergenceWarning
        When ``time_limit`` ends the search before the answer is proven optimal.

    See Also
    --------
    closed_form_bits : Zhou et al.'s real-valued bit-widths.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import allocate_bits
    >>> bits = np.array([2, 4, 8])
    >>> n_params = np.array([[1000], [10]])          # a large and a small layer
    >>> noise = np.array([[1.0], [1.0]]) * 4.0 ** -bits
    >>> allocate_bits(noise, n_params * bits, budget=2 * 1000 + 8 * 10)
    array([0, 2])
    """
    cost = _check_table(cost, "cost")
    size = _check_table(size, "size")
    if cost.shape != size.shape:
        raise ValueError(
            f"cost and size must have the same shape, got cost.shape={cost.shape} "
            f"and size.shape={size.shape} instead."
        )
    if (budget is None) == (max_cost is None):
        raise ValueError(
            "give exactly one of budget and max_cost, got "
            f"budget={budget!r}, max_cost={max_cost!r} instead."
        )
    if time_limit is not None:
        time_limit = check_positive(time_limit, "time_limit")
    deadline = None if time_limit is None else time.monotonic() + time_limit
    n, k = cost.shape
    if budget is not None:
        budget = _check_limit(budget, "budget")
        if not _at_most(size.min(axis=1), budget):
            raise ValueError(
                f"budget={budget!r} is below the smallest possible total size "
                f"{math.fsum(size.min(axis=1))!r} (summed exactly): no choice fits."
            )
        if _at_most(size.max(axis=1), budget):  # it constrains nothing: each
            # layer's cheapest choice (the smallest of equally cheap ones)
            return np.lexsort((size, cost), axis=1)[:, 0]
        objective, limit_row, limit = cost, size, budget
    else:
        max_cost = _check_limit(max_cost, "max_cost")
        if not _at_most(cost.min(axis=1), max_cost):
            raise ValueError(
                f"max_cost={max_cost!r} is below the lowest possible total cost "
                f"{math.fsum(cost.min(axis=1))!r} (summed exactly): no choice meets it."
            )
        objective, limit_row, limit = size, cost, max_cost
    rows = np.repeat(np.arange(n), k)
    one_each = coo_matrix((np.ones(n * k), (rows, np.arange(n * k))), shape=(n, n * k))
    at = np.arange(n)

    def fits(c):  # (the chosen entries' exact sum)
        return _at_most(limit_row[at, c], limit)

    # HiGHS accepts violations within a tolerance (1e-6, of its own scaling of
    # the rows): the limit row, less each row's smallest value (the room left
    # above the smallest total, summed exactly: sizes of 1e15 plus small
    # integers left a room below the rounding of a plain sum), is scaled to
    # make that room (and a little: ``top``) 1e6; a choice that alone would
    # take more than twice it is in no feasible answer, and is given twice it
    # (scaled to its largest entry instead, one layer's binary noise hid the
    # others' differences at an exactly reachable target)
    base = limit_row.min(axis=1, keepdims=True)
    room = math.fsum([limit, *(-base.ravel())])
    if room <= 0:  # (the smallest total only: each layer's smallest choice)
        return np.lexsort((objective, limit_row), axis=1)[:, 0]
    above = limit_row - base
    # (with room to spare, 1e-9 of it and its last digits: HiGHS' presolve, on
    # at the time, cut off optima exactly at the limit; an answer over it is
    # cut off below)
    top = room + 1e-9 * room + 4 * (n + 1) * float(np.spacing(room))
    step = _integer_step(above)
    if step:  # totals in whole steps (sizes in bits): the top half a step
        # above the last whole one (a room of 4 less 3e-9 let every total of
        # 4 in, each cut off in turn)
        top = math.floor(room / step) * step + step / 2
    flat = (np.minimum(above, 2 * top) / top * 1e6).ravel()
    bound = 1e6

    # HiGHS also stops within an absolute gap (1e-6) of the best bound: with
    # objective values far below it (the noise of layers at 10 to 16 bits) it
    # stopped at 15x the optimal noise. Each layer takes one choice, so less its
    # row's smallest value the objective changes by a constant. A feasible
    # answer (greedy's, or each layer's cheapest-limit choice: the better)
    # bounds the optimum: a choice whose objective alone is above twice its
    # total is in no answer as good, and is given twice that total (no better
    # answer changes), and the objective is scaled to make that total 1e6:
    # what the gap ignores is below 1e-12 of it (scaled to its largest entry
    # instead, a binary layer's noise 1e9 times the others' hid their
    # differences: 4e-4 above the optimum, and above greedy's answer; held at
    # 0 by bounds instead, HiGHS' presolve missed optima at the limit)
    def total(c):  # (as a user sums it: the shifted sums' rounding differs)
        return objective[at, c].sum()

    shifted = objective - objective.min(axis=1, keepdims=True)
    safe = np.lexsort((shifted, limit_row), axis=1)[:, 0]
    try:  # (its plain sums may round past a limit the exact ones meet)
        greedy = greedy_bits(cost, size, budget=budget, max_cost=max_cost)
    except ValueError:
        greedy = safe
    if fits(greedy):
        safe = min(safe, greedy, key=total)
    best = float(shifted[at, safe].sum())
    if best == 0.0:  # (the lowest objective there is)
        return safe
    scaled = np.minimum(shifted, 2 * best) / best * 1e6

    one_each = LinearConstraint(one_each, lb=np.ones(n), ub=np.ones(n))
    cuts = []
    for _ in range(_SOLVES):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            _warn_time(time_limit, None)
            return safe
        rows = [one_each, LinearConstraint(flat.reshape(1, -1), ub=bound), *cuts]
        with _quiet_c_stdout():
            res = _solve(scaled, rows, n * k, left)
        if res.status == 1:  # (the time ran out: HiGHS' best answer, if any)
            _warn_time(time_limit, getattr(res, "mip_gap", None))
        elif res.status != 0:  # (every answer left cut off)
            return safe
        if res.x is None:
            return safe
        choice = np.argmax(res.x.reshape(n, k), axis=1)
        fit = fits(choice)
        if fit and total(choice) <= total(safe):
            safe = choice
        if not fit:
            # HiGHS accepts violations within its feasibility and integrality
            # tolerances (a 0-1 variable 1e-7 off, times an entry of 1e6), and
            # the bound has room to spare: of the answers one layer's change
            # away, the best that fits; then this answer is cut off (a cut
            # that only it violates) and the bound comes down to half its
            # excess (every answer as far over is over too: of integer sizes
            # near 1e12, the spare let dozens in)
            for i, j in np.ndindex(n, k):
                near = choice.copy()
                near[i] = j
                if total(near) < total(safe) and fits(near):
                    safe = near
            picked = np.zeros(n * k)
            picked[at * k + choice] = 1.0
            cuts.append(LinearConstraint(picked.reshape(1, -1), ub=n - 1))
            over = math.fsum([*above[at, choice], -room])
            bound = min(bound, (room + over / 2) / top * 1e6)
        now = float(shifted[at, safe].sum())
        if res.status == 1 or now == 0.0:
            return safe
        if now < best / 2:  # scaled to an answer far above the optimum, the
            # gap hid differences near it (one layer's 1e-10 against greedy's
            # 1e8): scaled again to the better answer, solved again
            best = now
            scaled = np.minimum(shifted, 2 * best) / best * 1e6
        elif fit:
            return safe
    warnings.warn(
        f"allocate_bits stopped after {_SOLVES} solves that gave answers over "
        f"the limit {limit!r}: its answer, the best of those that fit, may not be "
        "optimal.",
        ConvergenceWarning,
        stacklevel=2,
    )
    return safe


def _integer_step(above):
    """The greatest common divisor of ``above``'s entries where they are whole
    numbers below 2**53 (not all zero), else 0."""
    if not np.all(above == np.floor(above)) or above.max() >= 2.0**53:
        return 0
    return int(np.gcd.reduce(above.astype(np.int64).ravel()))


def _at_most(values, limit):
    """Whether the exact sum of ``values`` is at most ``limit`` (``math.fsum``
    rounds it correctly: a tie is settled in fractions)."""
    total = math.fsum(values)
    if total != limit:
        return total < limit
    return sum(map(Fraction, values)) <= Fraction(limit)


#: most solves of :func:`allocate_bits` (each answer over the limit is cut
#: off, and the bound comes down, before the next)
_SOLVES = 64


def _warn_time(time_limit, gap):
    found = "" if gap is None else f" (HiGHS' relative gap: {gap:.2g})"
    warnings.warn(
        f"allocate_bits reached time_limit={time_limit!r} s before proving its "
        f"answer optimal{found}; it returns the best answer found, never worse "
        "than greedy_bits' where that fits. Give a larger time_limit, or None for "
        "no limit.",
        ConvergenceWarning,
        stacklevel=3,
    )


def greedy_bits(cost, size, *, budget=None, max_cost=None):
    """Greedy marginal allocation: the comparison for :func:`allocate_bits`.

    Under a size ``budget``, every layer starts at its smallest choice and the
    upgrade with the largest cost drop per added bit is taken while it fits. Under
    a cost target ``max_cost`` (the accuracy-sweep allocators, such as automatic
    mixed precision, work this way), every layer starts at its cheapest choice (the
    largest of equally cheap ones) and the downgrade with the smallest cost
    increase per saved bit is taken while the total cost stays within
    ``max_cost``. Choices are visited in order of size.
    Not exact when layers differ in size.

    Parameters
    ----------
    cost, size : array-like of shape (n_layers, n_choices)
        As for :func:`allocate_bits`.
    budget : float, default=None
        Largest total size. Give exactly one of ``budget`` and ``max_cost``.
    max_cost : float, default=None
        Largest total cost.

    Returns
    -------
    choice : ndarray of int of shape (n_layers,)
        The chosen column of every layer.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant._layerbits._allocation import greedy_bits
    >>> bits = np.array([2, 4, 8])
    >>> noise = np.array([[1.0], [1.0]]) * 4.0 ** -bits
    >>> greedy_bits(noise, np.array([[1000], [10]]) * bits, budget=2080)
    array([0, 2])
    """
    cost = _check_table(cost, "cost")
    size = _check_table(size, "size")
    if cost.shape != size.shape or (budget is None) == (max_cost is None):
        raise ValueError(
            "cost and size must have the same shape and exactly one of budget and "
            f"max_cost be given, got shapes {cost.shape}, {size.shape}, "
            f"budget={budget!r}, max_cost={max_cost!r} instead."
        )
    n = cost.shape[0]
    rows = np.arange(n)
    order = np.argsort(size, axis=1, kind="stable")
    up = budget is not None
    limit = _check_limit(budget if up else max_cost, "budget" if up else "max_cost")
    # walk each layer's choices by size: up from the smallest, or down from the
    # cheapest (of equally cheap choices, the largest: measured costs often tie at
    # zero, and the downgrade path should start from the most accurate)
    if up:
        start = np.zeros(n, dtype=int)
    else:
        by_size = cost[rows[:, None], order]
        cheapest = by_size == by_size.min(axis=1, keepdims=True)
        start = size.shape[1] - 1 - np.argmax(cheapest[:, ::-1], axis=1)
    pos = start.copy()
    used = float((size if up else cost)[rows, order[rows, pos]].sum())
    if used > limit:
        raise ValueError(
            f"{'budget' if up else 'max_cost'}={limit!r} is below the smallest "
            f"possible total {used!r}: no choice fits."
        )
    # the next step of each layer in a heap by its ratio (then by layer: the
    # first of equal ones), ``(drop per bit, layer)`` up (negated: the largest
    # first), ``(rise per bit, layer)`` down; a step that does not fit waits
    # until the total falls (a downgrade may lower the cost)
    values = (size if up else cost).tolist()
    sizes, costs, order = size.tolist(), cost.tolist(), order.tolist()
    pos = pos.tolist()
    k = size.shape[1]

    def step(i):
        nxt = pos[i] + 1 if up else pos[i] - 1
        if not 0 <= nxt < k:
            return None
        a, b = order[i][pos[i]], order[i][nxt]
        d_size = abs(sizes[i][b] - sizes[i][a])
        if d_size <= 0:
            return None
        d_cost = costs[i][a] - costs[i][b] if up else costs[i][b] - costs[i][a]
        ratio = d_cost / d_size  # (an overflow is inf: the largest)
        return (-ratio if up else ratio), i

    heap = [entry for i in range(n) if (entry := step(i)) is not None]
    heapq.heapify(heap)
    waiting = []
    while heap:
        key, i = heapq.heappop(heap)
        a, b = order[i][pos[i]], order[i][pos[i] + 1 if up else pos[i] - 1]
        extra = values[i][b] - values[i][a]
        if used + (abs(extra) if up else extra) > limit:
            waiting.append((key, i))
            continue
        if up and -key <= 0:
            break
        used += extra
        pos[i] += 1 if up else -1
        if extra < 0 and waiting:  # (the total fell: they may fit now)
            for entry in waiting:
                heapq.heappush(heap, entry)
            waiting = []
        if (entry := step(i)) is not None:
            heapq.heappush(heap, entry)
    return np.array(order)[rows, pos]


def pareto_choices(
    cost,
    size,
    *,
    n_points=30,
    targets=None,
    solver="exact",
    n_jobs=None,
    time_limit=10.0,
):
    """Allocations along the size-cost trade-off, by increasing size.

    The smallest allocation under each of a sweep of cost targets: ``n_points``
    targets spaced geometrically from the lowest possible total cost to the cost
    of every layer's smallest choice (each exact solve is then a point of the
    Pareto front), or the given ``targets``. Repeated allocations are kept once.

    Parameters
    ----------
    cost, size : array-like of shape (n_layers, n_choices)
        As for :func:`allocate_bits`.
    n_points : int, default=30
        Targets of the geometric sweep.
    targets : sequence of float, default=None
        Cost targets to use instead.
    solver : {"exact", "greedy"}, default="exact"
        :func:`allocate_bits` or :func:`greedy_bits`.
    n_jobs : int, default=None
        Solve the targets as joblib tasks on this many workers (any joblib
        backend, Dask's included); ``None`` takes the ``n_jobs`` of a
        ``joblib.parallel_config`` in force, else solves them here, one after
        another.
        The allocations are the same.
    time_limit : float or None, default=10.0
        Seconds each exact solve may take (:func:`allocate_bits`).

    Returns
    -------
    choices : list of ndarray of int
        One chosen column per layer for each distinct allocation, by increasing
        total size.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant._layerbits._allocation import pareto_choices
    >>> bits = np.array([2, 4, 8])
    >>> noise = np.array([[1.0], [1.0]]) * 4.0 ** -bits
    >>> [c.tolist() for c in pareto_choices(noise, np.array([[1000], [10]]) * bits)]
    [[0, 0], [0, 1], [1, 1], [1, 2], [2, 2]]
    """
    if solver not in ("exact", "greedy"):
        raise ValueError(
            f"solver must be 'exact' or 'greedy', got solver={solver!r} instead."
        )
    if time_limit is not None:
        time_limit = check_positive(time_limit, "time_limit")
    if solver == "exact":
        solve = functools.partial(allocate_bits, time_limit=time_limit)
    else:
        solve = greedy_bits
    cost = _check_table(cost, "cost")
    size = _check_table(size, "size")
    if targets is None:
        n_points = check_int(n_points, "n_points")
        rows = np.arange(cost.shape[0])
        high = cost[rows, np.argmin(size, axis=1)].sum()
        low = max(cost.min(axis=1).sum(), high * 1e-12)
        # (1 + 1e-9): the lowest target stays feasible under rounding
        targets = np.geomspace(low, max(high, low), n_points) * (1 + 1e-9)
    n_jobs = configured_n_jobs(n_jobs)  # (None: a parallel_config's)
    tasks = (delayed(solve)(cost, size, max_cost=float(m)) for m in targets)
    seen = {}
    for choice in run_tasks(tasks, n_jobs):
        seen.setdefault(tuple(int(c) for c in choice), choice)
    rows = np.arange(cost.shape[0])
    return sorted(seen.values(), key=lambda c: size[rows, c].sum())


def _solve(objective, constraints, n_vars, time_limit=None):
    # exact, not within HiGHS' default 0.01%; no presolve: it reported an
    # answer as optimal (0.44) where one within HiGHS' tolerance of the limit
    # (its rows scaled: 0.2% of the room) cost 0, and the optimum 0.30 (a 5 x 4
    # table, sizes 2.1e8 plus small integers); without it, the 40 x 8 table of
    # benchmarks/check_allocation.py is proven optimal in 10 s
    options = {"mip_rel_gap": 0.0, "presolve": False}
    if time_limit is not None:
        options["time_limit"] = time_limit
    return milp(
        objective.ravel(),
        constraints=constraints,
        integrality=np.ones(n_vars),
        bounds=Bounds(0, 1),
        options=options,
    )


def closed_form_bits(p, t, n_params, target, *, alpha=math.log(4)):
    """Zhou et al.'s real-valued bit-widths from the Lagrange condition.

    Minimises the model size ``sum_i n_i b_i`` subject to the normalised noise
    ``sum_i (p_i / t_i) exp(-alpha b_i) = target``; the Lagrange condition
    ``n_i = lambda alpha (p_i / t_i) exp(-alpha b_i)`` gives
    ``b_i = ln(alpha lambda p_i / (t_i n_i)) / alpha`` with
    ``lambda = sum_i n_i / (alpha target)``.

    Parameters
    ----------
    p : array-like of shape (n_layers,)
        Noise power of each layer at 0 bits (``p_i`` of ``p_i exp(-alpha b)``).
    t : array-like of shape (n_layers,)
        Tolerated noise of each layer.
    n_params : array-like of shape (n_layers,)
        Parameters per layer.
    target : float
        Total normalised noise.
    alpha : float, default=ln 4
        Noise decay per bit.

    Returns
    -------
    bits : ndarray of shape (n_layers,)
        Real-valued bit-widths (may be negative for layers that tolerate much).

    See Also
    --------
    allocate_bits : The exact integer allocation.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import closed_form_bits
    >>> b = closed_form_bits([1.0, 1.0], [1.0, 1.0], [1000, 10], target=0.01)
    >>> bool(b[1] > b[0])                   # the small layer gets more bits
    True
    """
    p = np.asarray(p, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    s = np.asarray(n_params, dtype=np.float64)
    for name, a in (("p", p), ("t", t), ("n_params", s)):
        if a.ndim != 1 or a.shape != p.shape or a.size == 0:
            raise ValueError(
                f"{name} must be a non-empty 1-D array like p (shape {p.shape}), got "
                f"{name}.shape={a.shape} instead."
            )
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"{name} must be positive and finite, got {name}={a!r}.")
    target = check_positive(target, "target")
    alpha = check_positive(alpha, "alpha")
    lam = s.sum() / (alpha * target)
    return np.log(alpha * lam * p / (t * s)) / alpha
