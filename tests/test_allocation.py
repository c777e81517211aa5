"""Per-layer bit allocation: the exact integer program and the closed form."""

import itertools
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from skquant import allocate_bits, closed_form_bits
from skquant._layerbits._allocation import greedy_bits


@st.composite
def tables(draw):
    n = draw(st.integers(1, 4))
    k = draw(st.integers(1, 4))
    elems = st.floats(0, 100, allow_nan=False, width=32)
    cost = draw(hnp.arrays(np.float64, (n, k), elements=elems))
    size = draw(hnp.arrays(np.float64, (n, k), elements=elems))
    return cost, size


def _fits(values, limit):
    """Whether the exact sum of ``values`` is at most ``limit``."""
    return sum(map(Fraction, np.asarray(values, float).tolist())) <= Fraction(limit)


def _brute(cost, size, limit, by_budget):
    best = None
    rows = np.arange(cost.shape[0])
    for pick in itertools.product(range(cost.shape[1]), repeat=cost.shape[0]):
        pick = np.array(pick)
        c, s = cost[rows, pick].sum(), size[rows, pick].sum()
        if _fits((size if by_budget else cost)[rows, pick], limit):
            value = c if by_budget else s
            if best is None or value < best:
                best = value
    return best


@settings(max_examples=150, deadline=None)
@given(data=st.data(), by_budget=st.booleans())
def test_exact_allocation_equals_brute_force(data, by_budget):
    cost, size = data.draw(tables())
    if by_budget:
        lo, hi = size.min(axis=1).sum(), size.max(axis=1).sum()
        if hi - lo < 1e-6:
            return
        limit = data.draw(st.floats(lo, hi, exclude_max=True))
        kind, limit_row, objective = "budget", size, cost
    else:
        lo = cost.min(axis=1).sum()
        limit = data.draw(st.floats(lo, lo + 200))
        kind, limit_row, objective = "max_cost", cost, size
    best = _brute(cost, size, limit, by_budget)
    if best is None:  # (the smallest exact total is over the limit)
        with pytest.raises(ValueError, match="below the"):
            allocate_bits(cost, size, **{kind: limit})
        return
    choice = allocate_bits(cost, size, **{kind: limit})
    assert _fits(limit_row[np.arange(len(choice)), choice], limit)
    got = objective[np.arange(len(choice)), choice].sum()
    assert got == pytest.approx(best, rel=1e-6, abs=1e-6)


def _noise_table(log_p, n_params, bits, header=0.0):
    """Zhou's noise model ``p 4^-b`` and sizes ``n b`` (plus a header)."""
    cost = 10.0 ** np.array(log_p)[:, None] * 4.0 ** -bits[None, :]
    return cost, np.array(n_params, float)[:, None] * bits[None, :] + header


def _optimal_within_budget(cost, size, where):
    """``(choice, budget, optimum)`` under the budget ``where`` of the way from
    the smallest total size to the largest, the choice checked to fit and to
    cost no more than brute force's optimum."""
    lo, hi = size.min(axis=1).sum(), size.max(axis=1).sum()
    budget = lo + where * (hi - lo)
    choice = allocate_bits(cost, size, budget=budget)
    at = np.arange(len(choice))
    assert _fits(size[at, choice], budget)
    best = _brute(cost, size, budget, True)
    assert cost[at, choice].sum() <= best * (1 + 1e-9)
    return choice, budget, best


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-3, 3), min_size=2, max_size=4),
    st.lists(st.integers(10, 10**6), min_size=4, max_size=4),
    st.floats(0, 1),
)
def test_exact_allocation_is_optimal_at_tiny_costs(log_p, n_params, where):
    """Zhou's noise model up to 16 bits: totals far below HiGHS's absolute gap
    (1e-6), which once stopped it at 15x the optimal noise."""
    bits = np.array([2, 3, 4, 6, 8, 10, 12, 16])
    n = len(log_p)
    cost, size = _noise_table(log_p, n_params[:n], bits)
    best = _optimal_within_budget(cost, size, where)[2]
    target = best * 1.5  # and the smallest size that meets a tiny noise target
    choice = allocate_bits(cost, size, max_cost=target)
    assert _fits(cost[np.arange(n), choice], target)
    assert size[np.arange(n), choice].sum() == _brute(cost, size, target, False)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.floats(-6, 6), min_size=2, max_size=5),
    st.lists(st.integers(1, 10**6), min_size=5, max_size=5),
    st.sets(st.integers(1, 16), min_size=2, max_size=4),
    st.floats(0, 1),
)
def test_exact_allocation_is_optimal_where_costs_span_many_decades(
    log_p, n_params, bits, where
):
    """One layer's low-bit noise 1e9 times the others': scaled to its largest
    entry, the objective hid the others' differences in HiGHS' gap (4e-4 above
    the optimum, and above greedy's answer, on 213 of 28,640 random tables)."""
    n = len(log_p)
    cost, size = _noise_table(log_p, n_params[:n], np.array(sorted(bits)), 32.0)
    choice, budget, _ = _optimal_within_budget(cost, size, where)
    greedy = greedy_bits(cost, size, budget=budget)
    assert cost[np.arange(n), choice].sum() <= cost[np.arange(n), greedy].sum()


def test_exact_allocation_on_a_table_where_a_binary_layer_hid_the_others():
    """A table the random search above rarely draws (0.7% of such tables): five
    layers at 1, 11, 12 or 16 bits, one layer's 1-bit noise 1e9 times the
    others' 11-bit noise. The solver gave [3 2 1 3 3], 3.6e-4 above the optimum
    [3 2 2 3 3] (brute force), which greedy found."""
    bits = np.array([1, 11, 12, 16])
    p = np.array([323.03, 2.7026, 0.088957, 184909.6, 3996.8])
    cost = p[:, None] * 4.0 ** -bits[None, :]
    size = np.array([6058, 8391, 8836, 3120, 886])[:, None] * bits[None, :] + 32.0
    budget = 372231.76
    choice = allocate_bits(cost, size, budget=budget)
    assert _fits(size[np.arange(5), choice], budget)
    assert cost[np.arange(5), choice].sum() <= _brute(cost, size, budget, True) * (
        1 + 1e-12
    )


#: tables whose optimum lies exactly at the limit (a target that is a reachable
#: total), which HiGHS' presolve cut off (by tolerance, or by a bound tightened
#: below it), or of extreme magnitudes that overflowed the scaling
AT_THE_LIMIT = [
    (
        [[22003398.992302377, 0.003562258818243587, 0.0002226411761402242],
         [672.6602823935214, 4.602003390477717e-06, 2.876252119048573e-07],
         [520.4162036562561, 0.00011891775704177413, 7.432359815110883e-06]],
        [[862897.0, 5177382.0, 6903176.0], [174317.0, 1045902.0, 1394536.0],
         [813929.0, 4883574.0, 6511432.0]],
        {"max_cost": 22003919.40850632},
    ),
    (
        [[0.4867411735067967, 0.37418670809377874],
         [0.9528434968358851, 0.8486063457753799],
         [0.44157502192807196, 0.8277087155700561]],
        [[0.159624314641721, 0.28861316145001814],
         [0.38130461978012786, 0.4315404388257722],
         [0.3881093047742662, 0.6787189659907059]],
        {"max_cost": 1.7769225412102485},
    ),
    (
        [[2.4725034033356287e-05, 1.819887732413643e-12],
         [4.81338385562957e-05, 0.5424274133253025],
         [0.004821276194941865, 1.765427578768005e-09]],
        [[95402046867.62978, 75568823143.59668],
         [9.569230405604035, 5025.25692397398],
         [1.5931838666074365, 313.13195006837225]],
        {"budget": 75568823466.29785},
    ),
    (
        [[0.08727981014315765, 7.226786430141012e-05],
         [0.0015916619040582175, 0.00023694665796345957],
         [535444500.406757, 0.3516238359833451],
         [6965.605458168605, 1.3123633021284788]],
        [[265965.0, 531930.0], [32335.0, 64670.0], [298775.0, 597550.0],
         [435040.0, 870080.0]],
        {"max_cost": 535451466.01252437},
    ),
    ([[0.0, 1e-290, 1e100]], [[3.0, 2.0, 1.0]], {"budget": 2.0}),
    # sizes of 1e15 plus small integers: the room above the smallest total (3)
    # was below the rounding of the sums, and the answer fell back to greedy's
    (
        [[0.28026558351518016, 0.34970269716520663,
          0.6925279613486232, 0.6865781592059041],
         [0.0538307811046721, 0.12490594224592688,
          0.3780212478484173, 0.6981995532138703],
         [0.41845526158751434, 0.13702035047487604,
          0.8666663256130867, 0.7174129745075478],
         [0.4545342826983002, 0.22170350814220696,
          0.6511531448153225, 0.5650430214495664],
         [0.5862027880931978, 0.07382746718628963,
          0.27161101627155526, 0.4184466678984886],
         [0.8527879445512486, 0.3605614082668225,
          0.7037668272240081, 0.45241465586047835]],
        (1e15 + np.array([[5, 4, 5, 8], [7, 7, 5, 7], [6, 6, 8, 7], [6, 8, 6, 7],
                          [7, 6, 5, 6], [4, 5, 7, 5]])).tolist(),
        {"budget": 6e15 + 33},
    ),
    # a table whose plain sums' best fits only as they round (its exact total
    # is 3e-5 over the budget): the exact optimum is another
    (
        [[0.34715885201908014, 0.8985632748977526,
          0.12580739529798746, 0.06155791579411107],
         [0.14936063062196814, 0.218806826579783,
          0.023185572339393667, 0.9762091110148952],
         [0.32204581054981396, 0.7637276549678981,
          0.004751012714284131, 0.6614691991209609]],
        [[247216264756.8116, 247216264758.8116, 247216264755.8116, 247216264755.8116],
         [247216264759.8116, 247216264755.8116, 247216264759.8116, 247216264757.8116],
         [247216264755.8116, 247216264756.8116, 247216264756.8116, 247216264756.8116]],
        {"budget": 741648794272.4348},
    ),
    # one layer: scaled to greedy's answer (2.6e8), the optimum's 1.2e-10 and
    # the next best's 3.4e-10 were within HiGHS' gap
    (
        [[3.7183069405235065e+256, 3.069334549492938e+230, 7.57604641125805e-209,
          1.6231001407617335e-107]],
        [[253694800.019312, 1.228875508854499e-10, 258575189.22690904,
          3.3694395115502697e-10]],
        {"max_cost": 1.0541611387713427e+256},
    ),
    # no room in exact arithmetic (a smaller choice fits as plain sums round)
    (
        [[1.0115611545360003e+69, 3.519451135054865e+171, 1.3648403238563318e-12],
         [1.6039462163304858e-284, 1.4221304178487392e+22, 0.0]],
        [[454538706277860.75, 1126150644601106.5, 3.1461197858561864e+18],
         [2.6736481704100056e-15, 4.1219290090295047e-16, 5765995037652549.0]],
        {"max_cost": 1.3648403238563318e-12},
    ),
    (
        [[4.197041787920743e+90, 7.5074390423926e+160],
         [8.433369143019054e+196, 5.420788391719341e+116]],
        [[7069917379271559.0, 486.0665422266313],
         [3.569473906775851e-18, 5.846126903039458e-18]],
        {"budget": 486.0665422266313},
    ),
    # HiGHS' presolve reported 0.44 as optimal (an answer within its tolerance
    # of the limit cost 0); the optimum is 0.30
    (
        [[0.4408426703871855, 0.576312511204544, 0.4067990806772449,
          0.14184914369904755],
         [0.19362157204196462, 0.6610716613797037, 0.8398335212072909,
          0.0765195093413138],
         [0.8234946148704172, 0.10544337627965827, 0.4519050053195772,
          0.5483416280881289],
         [0.8509967607028385, 0.5640933687955462, 0.3818053211684218,
          0.5080550668276858],
         [0.7104382487238, 0.9645670822548067, 0.3255900176629758,
          0.08553983185279856]],
        (214179029.5090429 + np.array([[0, 2, 4, 3], [4, 2, 2, 2], [3, 4, 4, 3],
                                       [2, 2, 2, 2], [3, 4, 2, 1]])).tolist(),
        {"budget": 1070895159.5452144},
    ),
]  # fmt: skip


@pytest.mark.parametrize("cost, size, limit", AT_THE_LIMIT)
def test_exact_allocation_at_the_limit_and_at_extreme_magnitudes(cost, size, limit):
    cost, size = np.array(cost), np.array(size)
    ((kind, value),) = limit.items()
    by_budget = kind == "budget"
    if _brute(cost, size, value, by_budget) is None:  # (over in exact sums)
        with pytest.raises(ValueError, match="summed exactly"):
            allocate_bits(cost, size, **limit)
        return
    choice = allocate_bits(cost, size, **limit)
    at = np.arange(len(choice))
    assert _fits((size if by_budget else cost)[at, choice], value)
    got = (cost if by_budget else size)[at, choice].sum()
    assert got == _brute(cost, size, value, by_budget)


def test_never_worse_than_greedy_as_a_user_sums_it():
    """Compared by row-shifted sums, the answer was one ulp above greedy's."""
    cost = np.array(
        [[2e-08, 1e-08, 2e-08], [2e-08, 3e-08, 2e-08], [2e-08, 1e-08, 2e-08]]
    )
    size = np.array([[5e3, 4e3, 1e3], [3e3, 3e3, 4e3], [1e3, 2e3, 4e3]])
    at = np.arange(3)
    choice = allocate_bits(cost, size, budget=8000.0)
    greedy = greedy_bits(cost, size, budget=8000.0)
    assert size[at, choice].sum() <= 8000.0
    assert cost[at, choice].sum() <= cost[at, greedy].sum()


def _hard_table():
    """40 layers at 1 to 16 bits, the 1-bit noise 1e9 times the rest: HiGHS
    takes over a minute to prove the best answer at a tight target."""
    rng = np.random.default_rng(0)
    bits = np.array([1, 2, 3, 4, 5, 6, 8, 16])
    p = rng.integers(10**3, 10**7, (40, 1)).astype(float)
    cost = p * 4.0**-bits
    cost[:, 0] *= 1e9
    lo, hi = cost.min(axis=1).sum(), cost.max(axis=1).sum()
    return cost, p * bits, lo + 0.3 * (hi - lo)


def test_time_limit_returns_the_best_answer_found_with_a_warning():
    from sklearn.exceptions import ConvergenceWarning

    cost, size, target = _hard_table()
    at = np.arange(len(cost))
    with pytest.warns(ConvergenceWarning, match=r"time_limit=0\.5 s"):
        choice = allocate_bits(cost, size, max_cost=target, time_limit=0.5)
    greedy = greedy_bits(cost, size, max_cost=target)
    assert _fits(cost[at, choice], target)
    assert size[at, choice].sum() <= size[at, greedy].sum()


def test_pareto_sweep_checks_the_solver_and_passes_the_time_limit():
    from sklearn.exceptions import ConvergenceWarning

    from skquant._layerbits._allocation import pareto_choices

    cost, size, target = _hard_table()
    with pytest.raises(ValueError, match="solver='Exact'"):
        pareto_choices(cost, size, solver="Exact")
    with pytest.warns(ConvergenceWarning, match=r"time_limit=0\.2 s"):
        pareto_choices(cost, size, targets=[target], time_limit=0.2)


@pytest.mark.parametrize("time_limit", [0, -1.0, float("nan"), "10"])
def test_time_limit_errors(time_limit):
    cost = np.array([[1.0, 0.5], [1.0, 0.25]])
    size = np.array([[100.0, 200.0], [50.0, 100.0]])
    with pytest.raises(ValueError, match="time_limit must be a finite number > 0"):
        allocate_bits(cost, size, budget=250.0, time_limit=time_limit)


def test_monotone_in_the_budget():
    rng = np.random.default_rng(0)
    bits = np.arange(2, 9)
    n_params = rng.integers(100, 10000, size=(8, 1))
    p = rng.uniform(0.5, 2, size=(8, 1))
    cost = p * 4.0**-bits
    size = n_params * bits
    budgets = np.linspace(size.min(axis=1).sum(), size.max(axis=1).sum() - 1, 12)
    totals = [
        cost[np.arange(8), allocate_bits(cost, size, budget=b)].sum() for b in budgets
    ]
    assert all(a >= b - 1e-15 for a, b in zip(totals, totals[1:]))
    assert totals[-1] < totals[0]


def test_one_layer_is_the_best_equal_bit_width():
    bits = np.array([2, 3, 4, 8])
    cost = (4.0**-bits)[None, :]
    size = (1000 * bits)[None, :]
    # the largest width that fits the budget
    assert allocate_bits(cost, size, budget=4500).tolist() == [2]
    # the smallest width that meets the noise target
    assert allocate_bits(cost, size, max_cost=4.0**-3).tolist() == [1]


def test_beats_equal_bit_width_when_layers_differ():
    bits = np.array([2, 3, 4, 5, 6])
    n_params = np.array([[100000], [1000]])
    p = np.array([[0.1], [10.0]])  # the large layer tolerates more noise
    cost, size = p * 4.0**-bits, n_params * bits
    equal = 10.1 * 4.0**-4  # both layers at 4 bits: the best equal width
    choice = allocate_bits(cost, size, max_cost=equal)
    assert cost[[0, 1], choice].sum() <= equal
    assert size[[0, 1], choice].sum() < 0.6 * size[:, 2].sum()


def test_closed_form_meets_the_lagrange_condition():
    rng = np.random.default_rng(1)
    p, t = rng.uniform(0.1, 3, 6), rng.uniform(0.5, 2, 6)
    n = rng.integers(100, 5000, 6).astype(float)
    alpha = math.log(4)
    b = closed_form_bits(p, t, n, target=0.05, alpha=alpha)
    noise = (p / t) * np.exp(-alpha * b)
    assert noise.sum() == pytest.approx(0.05)
    # n_i / (alpha (p_i / t_i) exp(-alpha b_i)) is the same multiplier for every layer
    lam = n / (alpha * noise)
    assert np.allclose(lam, lam[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budget": 10.0}, "below the smallest possible total size"),
        ({"max_cost": -1.0}, "below the lowest possible total cost"),
        ({}, "exactly one of budget and max_cost"),
        ({"budget": 100.0, "max_cost": 1.0}, "exactly one of budget and max_cost"),
        ({"budget": float("nan")}, "budget must be a finite number"),
    ],
)
def test_allocation_errors(kwargs, match):
    cost = np.array([[1.0, 0.5], [1.0, 0.25]])
    size = np.array([[100.0, 200.0], [50.0, 100.0]])
    with pytest.raises(ValueError, match=re.escape(match)):
        allocate_bits(cost, size, **kwargs)


@given(
    hnp.arrays(np.float64, (4, 3), elements=st.integers(0, 5).map(float)),
    hnp.arrays(np.float64, (4, 3), elements=st.integers(1, 9).map(float)),
)
def test_a_budget_that_constrains_nothing_takes_the_cheapest_choices(cost, size):
    """At or above the largest total size every layer takes its cheapest choice,
    the smallest of equally cheap ones; no budget gives a lower total cost."""
    largest = size.max(axis=1).sum()
    choice = allocate_bits(cost, size, budget=largest)
    assert np.array_equal(choice, allocate_bits(cost, size, budget=1e9))
    rows = np.arange(4)
    assert np.array_equal(cost[rows, choice], cost.min(axis=1))
    for i in rows:
        cheapest = cost[i] == cost[i].min()
        assert size[i, choice[i]] == size[i, cheapest].min()
    tight = allocate_bits(cost, size, budget=(largest + size.min(axis=1).sum()) / 2)
    assert cost[rows, tight].sum() >= cost[rows, choice].sum()


def test_table_errors():
    good = np.ones((2, 3))
    with pytest.raises(ValueError, match="cost must be finite"):
        allocate_bits(np.full((2, 3), np.nan), good, budget=4)
    with pytest.raises(ValueError, match="cost must be non-negative"):
        allocate_bits(-good, good, budget=4)
    with pytest.raises(ValueError, match=re.escape("size must have shape (n_layers")):
        allocate_bits(good, np.ones(3), budget=4)
    with pytest.raises(ValueError, match="same shape"):
        allocate_bits(good, np.ones((3, 2)), budget=4)
    with pytest.raises(ValueError, match="at least one layer"):
        allocate_bits(np.ones((0, 3)), np.ones((0, 3)), budget=4)
    with pytest.raises(ValueError, match="p must be positive"):
        closed_form_bits([0.0, 1.0], [1.0, 1.0], [1, 1], target=1.0)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), by_budget=st.booleans())
def test_greedy_is_feasible_and_never_beats_the_exact_allocation(data, by_budget):
    from skquant._layerbits._allocation import greedy_bits

    cost, size = data.draw(tables())
    rows = np.arange(cost.shape[0])
    if by_budget:
        lo, hi = size.min(axis=1).sum(), size.max(axis=1).sum()
        if hi - lo < 1e-6:
            return
        limit = data.draw(st.floats(lo, hi, exclude_max=True))
        kind, limit_row, objective = "budget", size, cost
    else:
        lo = cost.min(axis=1).sum()
        limit = data.draw(st.floats(lo, lo + 200))
        kind, limit_row, objective = "max_cost", cost, size
    g = greedy_bits(cost, size, **{kind: limit})  # (its plain sums' rounding)
    assert limit_row[rows, g].sum() <= limit * (1 + 1e-12) + 1e-9
    if _brute(cost, size, limit, by_budget) is None:  # (over in exact sums)
        with pytest.raises(ValueError, match="summed exactly"):
            allocate_bits(cost, size, **{kind: limit})
        return
    e = allocate_bits(cost, size, **{kind: limit})
    if _fits(limit_row[rows, g], limit):
        assert objective[rows, e].sum() <= objective[rows, g].sum() + 1e-6


def test_greedy_misses_the_optimum_when_layers_differ_in_size():
    from skquant._layerbits._allocation import greedy_bits

    # layer 0 (100 weights) buys a large drop with a large upgrade; layer 1 (1
    # weight) a slightly better drop per bit; greedy takes layer 1 first and then
    # cannot afford layer 0's upgrade
    cost = np.array([[10.0, 0.0], [1.0, 0.0]])
    size = np.array([[100.0, 200.0], [1.0, 10.0]])
    g = greedy_bits(cost, size, budget=201.0)
    e = allocate_bits(cost, size, budget=201.0)
    assert e.tolist() == [1, 0] and g.tolist() == [0, 1]


def test_greedy_errors():
    from skquant._layerbits._allocation import greedy_bits

    with pytest.raises(ValueError, match="exactly one of budget and max_cost"):
        greedy_bits([[1.0]], [[1.0]])
    with pytest.raises(ValueError, match="below the smallest possible total"):
        greedy_bits([[1.0, 0.0]], [[1.0, 2.0]], budget=0.5)
    with pytest.raises(ValueError, match="NaN"):
        greedy_bits([[np.nan]], [[1.0]], budget=1.0)


def test_pareto_sweep_on_workers_is_the_serial_sweep():
    from skquant._layerbits._allocation import pareto_choices

    rng = np.random.default_rng(3)
    bits = np.array([2, 3, 4, 6, 8])
    cost = rng.uniform(0.5, 2.0, (6, 1)) * 4.0**-bits
    size = rng.integers(100, 5000, (6, 1)) * bits
    serial = pareto_choices(cost, size, n_points=15)
    parallel = pareto_choices(cost, size, n_points=15, n_jobs=2)
    assert len(serial) > 3
    assert [c.tolist() for c in parallel] == [c.tolist() for c in serial]
    with pytest.raises(ValueError, match="n_jobs must be None or a non-zero int"):
        pareto_choices(cost, size, n_jobs=0)


@pytest.mark.parametrize("alpha", [np.nan, np.inf, 0.0, -1.0, "x", None])
def test_closed_form_bits_checks_alpha(alpha):
    with pytest.raises(
        ValueError, match=r"alpha must be a finite number > 0, got alpha="
    ):
        closed_form_bits([1, 1], [1, 1], [10, 100], 0.1, alpha=alpha)


@pytest.mark.parametrize("target", [np.nan, 0.0, -1.0, "x"])
def test_closed_form_bits_checks_target(target):
    with pytest.raises(ValueError, match=r"target must be a finite number > 0, got"):
        closed_form_bits([1, 1], [1, 1], [10, 100], target)


def test_a_budget_met_only_at_the_floor_takes_the_cheapest_of_its_choices():
    """Hypothesis's find: with sizes of 0, 0, 1 and 2e-16 and a budget of 0,
    HiGHS's tolerance admitted the 2e-16 choice, the tightened bound could not
    move, and the fallback took the first size-0 choice (cost 1), not the
    cheaper one (cost 0)."""
    cost = np.array([[1.0, 0.0, 0.0, 0.0]])
    size = np.array([[0.0, 0.0, 1.0, 2.220446049250313e-16]])
    assert allocate_bits(cost, size, budget=0.0).tolist() == [1]


@pytest.mark.parametrize("by_budget", [True, False])
def test_a_limit_met_in_exact_sums_where_greedys_plain_sums_round_over(by_budget):
    """1e16 plus six 3s is 1e16 + 18 exactly, within a limit of 1e16 + 20, but
    its plain sum rounds to 1e16 + 24: greedy_bits' refusal escaped."""
    size = np.array([[1e16, 2e16]] + [[3.0, 5.0]] * 6)
    cost = np.array([[1.0, 0.0]] + [[1.0, 0.0]] * 6)
    limit = 1e16 + 20
    if by_budget:
        choice = allocate_bits(cost, size, budget=limit)
        limit_row, objective = size, cost
    else:
        choice = allocate_bits(size, cost, max_cost=limit)
        limit_row, objective = size, cost
    at = np.arange(7)
    assert _fits(limit_row[at, choice], limit)
    assert objective[at, choice].sum() == 6.0  # (one layer moves up by 2)


def test_integers_float64_cannot_hold_are_refused():
    """int64 sizes above 2**53 were rounded to float64: 2**53 + 1 became 2**53,
    and an answer over an integer budget was returned."""
    size = np.array([[2**53 + 1, 2**53]], dtype=np.int64)
    with pytest.raises(ValueError, match=r"size holds integers above 2\*\*53"):
        allocate_bits(np.array([[0.0, 1.0]]), size, budget=2**53)
