"""skquant.theory: bounds hold on measured errors, rates as docs/nullspace.rst says."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skquant import (
    BinaryQuantizer,
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    UniformQuantizer,
)
from skquant.datasets import make_gaussian_layer
from skquant.theory import (
    error_decay,
    gpfq_bound,
    lp_scale_bound,
    max_subset_norm_bound,
    msq_bound,
    nullspace_bound,
    plot_error_decay,
    posterior_nullspace_bound,
    predicted_rate,
)


@pytest.mark.parametrize("seed", range(3))
def test_bounds_hold_for_each_method(seed):
    X, W = make_gaussian_layer(12, 300, 5, random_state=seed)
    for n_bits in (2, 4):
        msq = UniformQuantizer(n_bits=n_bits).fit(W)
        Q = msq.transform(W)
        for j in range(5):
            err = np.linalg.norm(X @ (W[:, j] - Q[:, j]))
            assert err <= msq_bound(X, msq.scale_[j])
        gp = GreedyPathQuantizer(n_bits=n_bits).fit(W, activations=X)
        Q = gp.transform(W)
        for j in range(5):
            # no clipping with max-abs steps on Gaussian data of this size
            assert np.linalg.norm(X @ (W[:, j] - Q[:, j])) <= gpfq_bound(
                X, gp.scale_[j]
            )
        ns = NullSpaceQuantizer(n_bits=n_bits, rounding="nearest").fit(W, activations=X)
        Q = ns.transform(W)
        for j in range(5):
            err = np.linalg.norm(X @ (W[:, j] - Q[:, j]))
            assert err <= nullspace_bound(X, ns.scale_[j]) * (1 + 1e-9)
    lp = NullSpaceQuantizer(n_bits="ternary", variant="lp", rounding="nearest")
    Q = lp.fit_transform(W, activations=X)
    for j in range(5):
        err = np.linalg.norm(X @ (W[:, j] - Q[:, j]))
        assert err <= nullspace_bound(X, lp.scale_[j], variant="ternary") * (1 + 1e-9)
        assert lp.scale_[j] <= lp_scale_bound(X, W[:, j]) * (1 + 1e-9)


@pytest.mark.parametrize("n_bits", [4, "ternary", "binary"])
def test_rank_capped_bound_holds_with_its_drift(n_bits):
    """With rank=k below rank(X) the pre-processing drifts off X w; the bound at
    rank=k carries that term (without it, 4 bits broke it in 14 of 80 neurons)."""
    rng = np.random.default_rng(1)
    variant = "grid" if n_bits == 4 else n_bits
    for _ in range(20):
        X = rng.standard_normal((32, 256))
        W = rng.standard_normal((256, 4)) / 16
        q = NullSpaceQuantizer(n_bits, rank=8, rounding="nearest")
        Q = q.fit_transform(W, activations=X)
        err = np.linalg.norm(X @ (W - Q), axis=0)
        for j, step in enumerate(np.broadcast_to(q.scale_, (4,))):
            assert err[j] <= nullspace_bound(X, float(step), rank=8, variant=variant)


def test_max_subset_norm_bound_is_an_upper_bound_by_brute_force():
    from itertools import combinations

    X = np.random.default_rng(0).standard_normal((4, 8))
    for r in (1, 2, 3):
        exact = max(np.linalg.norm(X[:, list(S)], 2) for S in combinations(range(8), r))
        assert exact <= max_subset_norm_bound(X, r) + 1e-12


def test_posterior_bound_by_hand_and_against_measured():
    X = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    # S = {0, 2}: X_S = [[1, 2], [0, 0]], ||X_S|| = sqrt(5); |z - q| = (0.1, 0.2)
    b = posterior_nullspace_bound(X, [0, 2], [0.4, 0.3], [0.5, 0.5])
    assert b == pytest.approx(np.sqrt(5) * np.sqrt(0.05))
    assert np.linalg.norm(X[:, [0, 2]] @ np.array([-0.1, -0.2])) <= b


def test_predicted_rate_slopes():
    n = np.array([100.0, 10000.0])
    slope = lambda r: np.log(r[1] / r[0]) / np.log(n[1] / n[0])  # noqa: E731
    assert slope(predicted_rate("msq", 16, n)) == 0
    assert slope(predicted_rate("grid", 16, n)) == pytest.approx(-0.5)
    assert -0.5 < slope(predicted_rate("gpfq", 16, n)) < -0.4
    assert -1.0 < slope(predicted_rate("lp", 16, n)) < -0.85
    with pytest.raises(ValueError, match="got method='gptq'"):
        predicted_rate("gptq", 16, n)


def test_error_decay_table_slopes_and_bounds():
    res = error_decay([64, 128, 256, 512], m=8, n_bits=(3,), n_out=4, n_test=200)
    rows = res["rows"]
    assert {r["method"] for r in rows} == {"msq", "gpfq", "grid", "lp"}
    assert all(r["error"] <= r["bound"] for r in rows)
    s = res["slopes"]
    assert s[("lp", "ternary")] < s[("grid", 3)] < s[("msq", 3)]
    assert s[("lp", "ternary")] < -0.7
    # held-out data: the data-driven methods lose their edge (m << n_in)
    big = {r["method"]: r for r in rows if r["n_in"] == 512}
    assert big["lp"]["test_error"] > 0.9
    assert big["grid"]["error"] < big["grid"]["test_error"]


def test_plot_error_decay(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    res = error_decay(
        [64, 128], m=8, n_bits=(4,), methods=("msq", "grid"), n_out=2, n_test=20
    )
    ax = plot_error_decay(res)
    assert len(ax.get_lines()) == 4  # two methods, each with its bound
    ax.figure.savefig(tmp_path / "decay.png")
    assert (tmp_path / "decay.png").stat().st_size > 1000


def test_bad_input():
    with pytest.raises(ValueError, match=r"X must be a non-empty 2-D array"):
        msq_bound(np.ones(3), 0.1)
    with pytest.raises(ValueError, match="methods must be among"):
        error_decay([16], m=4, methods=("nope",), n_test=2)


def test_bad_input_names_the_parameter():
    from skquant.theory import (
        gpfq_bound,
        lp_scale_bound,
        max_subset_norm_bound,
        nullspace_bound,
        posterior_nullspace_bound,
        predicted_rate,
    )

    X = np.random.default_rng(0).standard_normal((6, 10))
    for fn in (msq_bound, gpfq_bound, nullspace_bound):
        for step in (-0.1, 0.0, np.nan, np.inf, "a"):
            with pytest.raises(ValueError, match="step must be a finite number > 0"):
                fn(X, step)
    bad = X.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="X must be finite, got 1 NaN"):
        msq_bound(bad, 0.1)
    with pytest.raises(ValueError, match="variant must be 'grid', 'ternary' or"):
        nullspace_bound(X, 0.1, variant="lp")
    with pytest.raises(ValueError, match=r"rank must be at most min\(m, n_in\)=6"):
        nullspace_bound(X, 0.1, rank=8)
    with pytest.raises(ValueError, match=r"rank must be in \[0, n_in=10\]"):
        nullspace_bound(X, 0.1, rank=-1)
    with pytest.raises(TypeError, match="rank must be an integer"):
        nullspace_bound(X, 0.1, rank=2.5)
    with pytest.raises(ValueError, match=r"r must be in \[0, n_in=10\]"):
        max_subset_norm_bound(X, 11)
    with pytest.raises(ValueError, match="X is all zeros"):
        lp_scale_bound(np.zeros((3, 4)), np.ones(4))
    with pytest.raises(ValueError, match="w must be a finite vector of length"):
        lp_scale_bound(X, np.ones(3))
    with pytest.raises(ValueError, match=r"S must index columns of X in \[0, 9\]"):
        posterior_nullspace_bound(X, [12], [0.1], [0.0])
    with pytest.raises(ValueError, match="one value per index of S"):
        posterior_nullspace_bound(X, [1, 2], [0.1], [0.0])
    with pytest.raises(ValueError, match="drift must be a finite number >= 0"):
        posterior_nullspace_bound(X, [1], [0.1], [0.0], drift=-1.0)
    with pytest.raises(ValueError, match="m must be a number >= 1"):
        predicted_rate("grid", 0, 100)
    with pytest.raises(ValueError, match="n_in must be a number >= 1"):
        predicted_rate("grid", 4, [100, 0])
    for fn in (msq_bound, gpfq_bound):
        with pytest.raises(ValueError, match="variant must be 'grid', 'ternary' or"):
            fn(X, 0.1, variant="lp")
    for fn in (msq_bound, gpfq_bound, nullspace_bound):
        with pytest.raises(ValueError, match=r"step must be .* shape \(0,\)"):
            fn(X, [])
        with pytest.raises(TypeError, match="X must be real"):
            fn(X + 1j, 0.1)
        with pytest.raises(ValueError, match="the bound overflows float64"):
            fn(X * 1e200, 1e200)
    for m in ("16", True, None):
        with pytest.raises(TypeError, match=f"m must be a number >= 1, got m={m!r}"):
            predicted_rate("grid", m, 100)
    with pytest.raises(TypeError, match="result must be the dict error_decay returns"):
        plot_error_decay({})
    # squares below float64's normal range made every bound 0
    for fn in (msq_bound, gpfq_bound, nullspace_bound):
        with pytest.raises(ValueError, match="X holds values of at most .* underflow"):
            fn(X * 1e-170, 0.1)
    # entries whose squares overflow, where the bound does not: it is computed
    big = 2.0**700  # (exact: a power of two)
    assert gpfq_bound(X * big, 0.1) == pytest.approx(gpfq_bound(X, 0.1) * big)
    w = np.ones(X.shape[1])
    assert lp_scale_bound(X * big, w) == pytest.approx(lp_scale_bound(X, w))
    assert max_subset_norm_bound(X * big, 2) == pytest.approx(
        max_subset_norm_bound(X, 2) * big
    )
    # the edges that stay valid: no data signal gives a zero bound, not an error
    assert msq_bound(np.zeros((3, 4)), 0.1) == 0.0
    # rank=0 keeps no direction: nothing is off the alphabet, all is drift
    top = np.linalg.svd(X, compute_uv=False)[0]
    assert np.isclose(nullspace_bound(X, 0.1, rank=0), top * np.sqrt(10) * 0.1)


@pytest.mark.parametrize("name", ["z_S", "q_S"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_posterior_bound_needs_finite_values(name, bad):
    values = {"z_S": [0.25], "q_S": [0.5], name: [bad]}
    with pytest.raises(ValueError, match=f"{name} must be finite, got 1 NaN"):
        posterior_nullspace_bound(np.eye(3), [0], values["z_S"], values["q_S"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_in_values": 16}, TypeError, "n_in_values must be a sequence of ints"),
        ({"n_in_values": []}, ValueError, "n_in_values must not be empty"),
        ({"n_in_values": [16, 0]}, ValueError, r"n_in_values must hold ints >= 1"),
        ({"n_in_values": [16.5]}, ValueError, r"n_in_values must hold ints >= 1"),
        ({"n_bits": 4}, TypeError, "n_bits must be a sequence of bit-widths"),
        ({"n_bits": ()}, ValueError, "n_bits must not be empty"),
        ({"methods": "msq"}, TypeError, "methods must be a sequence of"),
        ({"methods": []}, ValueError, "methods must not be empty"),
        ({"n_test": 0}, ValueError, "n_test must be an int >= 1, got n_test=0"),
        ({"n_out": 1.5}, ValueError, "n_out must be an int >= 1, got n_out=1.5"),
        ({"m": 0}, ValueError, "m must be an int >= 1, got m=0"),
        ({"random_state": "x"}, ValueError, "random_state must be an int >= 0 or"),
        ({"random_state": -1}, ValueError, "random_state=-1"),
        # (ignored when no null-space method ran)
        ({"rounding": "bogus"}, ValueError, "rounding must be 'nearest' or 'greedy'"),
    ],
)
def test_error_decay_checks_its_arguments_by_name(kwargs, error, match):
    args = dict(n_in_values=[16, 32], m=4, n_bits=(4,), methods=("msq",), n_out=2)
    with pytest.raises(error, match=match):
        error_decay(**{**args, "n_test": 5, **kwargs})


def test_bounds_take_a_fitted_quantizers_per_column_steps():
    """Oracle: with ``scale_`` (one step per column) each bound is the scalar
    bound of that column's step, and it holds for that column's measured error
    (the bounds took one scalar step: a loop was needed)."""
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((50, 30)), rng.standard_normal((30, 6))
    q = UniformQuantizer(n_bits=4).fit(W)
    g = GreedyPathQuantizer(n_bits=4).fit(W, activations=X)
    for bound, est in ((msq_bound, q), (gpfq_bound, g)):
        b = bound(X, est.scale_)
        assert b.shape == (6,)
        for j, s in enumerate(est.scale_):
            assert b[j] == bound(X, float(s))
        err = np.linalg.norm(X @ (W - est.transform(W)), axis=0)
        assert np.all(err <= b)
    per = nullspace_bound(X, q.scale_, rank=10)
    assert per[2] == nullspace_bound(X, float(q.scale_[2]), rank=10)
    with pytest.raises(ValueError, match="step must be a finite number > 0 or a 1-D"):
        msq_bound(X, np.array([0.1, -0.1]))


def test_binary_bounds_allow_a_whole_step_a_coordinate():
    """{-a, a} moves a coordinate by up to a (not a / 2): X = I, w = (a, 0) puts
    the second coordinate at +-a, an error of a, above the grid's bound."""
    X, w = np.eye(2), np.array([[1.0], [0.0]])
    q = GreedyPathQuantizer(n_bits="binary").fit(w, activations=X)
    err = np.linalg.norm(X @ (w - q.transform(w)), axis=0)
    np.testing.assert_allclose(err, q.scale_)  # a whole step
    assert np.all(err > gpfq_bound(X, q.scale_))  # the grid's bound fails
    assert np.all(err <= gpfq_bound(X, q.scale_, variant="binary") * (1 + 1e-12))
    # MSQ at the max-abs level a (every |w| <= 2a): each coordinate moves by <= a
    rng = np.random.default_rng(1)
    X, W = rng.standard_normal((20, 64)), rng.standard_normal((64, 8))
    b = BinaryQuantizer(scale=np.abs(W).max(axis=0)).fit(W)
    err = np.linalg.norm(X @ (W - b.transform(W)), axis=0)
    assert np.all(err <= msq_bound(X, b.scale_, variant="binary") * (1 + 1e-12))
    # the one-coordinate case is tight: w = (0, ...) at level a moves by a
    X1, w1 = np.eye(1), np.array([[0.0]])
    b1 = BinaryQuantizer(scale=1.0).fit(w1)
    e1 = np.linalg.norm(X1 @ (w1 - b1.transform(w1)))
    assert e1 > msq_bound(X1, 1.0) and e1 <= msq_bound(X1, 1.0, variant="binary")


def test_lp_scale_bound_is_certified_on_rank_deficient_data():
    """X = [[1, 0, 0], [0, e, e]], w = e_2: X z = X w asks z_1 = 0 and z_2 + z_3 =
    1, so c = 1/2 whatever e > 0. At e = 1e-16 the second singular value is below
    numpy's rank cut-off: the bound divided only by the first gave 1e-16."""
    w = np.array([0.0, 1.0, 0.0])
    for eps in (1e-3, 1e-12, 1e-16):
        X = np.array([[1.0, 0.0, 0.0], [0.0, eps, eps]])
        assert lp_scale_bound(X, w) >= 0.5
    X = np.array([[1.0, 0.0, 0.0], [0.0, 1e-16, 1e-16]])
    assert lp_scale_bound(X, np.array([2.0, 0.0, 0.0])) == pytest.approx(2.0)
    # never above max |w| (z = w is feasible): ||Xw|| / sigma_min was 1e4 times it
    X = np.diag([1.0, 1e-4])
    w = np.array([1.0, 0.0])
    assert lp_scale_bound(X, w) == 1.0


def _lp_scale(X, w):
    """``min ||z||_inf`` subject to ``X z = X w``, by scipy's LP solver."""
    from scipy.optimize import linprog

    m, n = X.shape
    eye, ones = np.eye(n), np.ones((n, 1))
    res = linprog(
        np.r_[np.zeros(n), 1.0],
        A_ub=np.block([[eye, -ones], [-eye, -ones]]),
        b_ub=np.zeros(2 * n),
        A_eq=np.c_[X, np.zeros(m)],
        b_eq=X @ w,
        bounds=[(None, None)] * n + [(0, None)],
    )
    assert res.status == 0
    return res.x[-1]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6), st.integers(2, 40), st.integers(0, 2**32 - 1), st.floats(0, 3)
)
def test_lp_scale_bound_is_certified(m, n, seed, spread):
    """The bound is at least the LP scale, with columns of X of norms spread
    over 10^(2 spread) (the column term divides by the largest)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n)) * 10.0 ** rng.uniform(-spread, spread, n)
    w = rng.standard_normal(n)
    assert _lp_scale(X, w) <= lp_scale_bound(X, w) * (1 + 1e-7) + 1e-12


def test_lp_scale_bound_falls_with_the_width_as_the_lp_scale_does():
    """On wide Gaussian data the LP scale falls as about 1/n_in; ||X w|| over
    sigma_min alone did not fall (5.2 at n_in = 512 and 2048 here), the column
    term does (1.7 and 0.9)."""
    rng = np.random.default_rng(0)
    got = {}
    for n in (512, 2048):
        X, w = rng.standard_normal((16, n)), rng.standard_normal(n)
        bound = lp_scale_bound(X, w)
        s_min = np.linalg.svd(X, compute_uv=False)[-1]
        assert bound < 0.4 * np.linalg.norm(X @ w) / s_min  # (1.7 and 0.9 of 5.2)
        got[n] = bound
    assert _lp_scale(X, w) <= bound
    assert got[2048] < 0.6 * got[512]


def test_theory_inputs_are_refused_by_name():
    """Strings, sparse matrices, repeated values and wrong types raise errors
    naming the parameter (NumPy's conversion errors named none; repeated widths
    gave a slope fitted on one width, a non-int bit-width ran)."""
    sparse = pytest.importorskip("scipy.sparse")
    X = np.random.default_rng(0).standard_normal((6, 10))
    for bad in (sparse.csr_matrix(X), [["a"] * 10] * 6):
        with pytest.raises(TypeError, match="X must be a dense array of real numbers"):
            msq_bound(bad, 0.1)
    with pytest.raises(TypeError, match="step must be a dense array"):
        msq_bound(X, ["0.1", "a"])
    with pytest.raises(TypeError, match="w must be a dense array"):
        lp_scale_bound(X, ["a"] * 10)
    assert lp_scale_bound(X, np.full(10, 1e308)) <= 1e308  # (capped at max |w|:
    # ||Xw|| / sigma_min overflowed)
    with pytest.raises(ValueError, match="S must be a 1-D sequence of distinct"):
        posterior_nullspace_bound(X, [1, 1], [0.1, 0.1], [0.0, 0.0])
    with pytest.raises(TypeError, match="n_in must be a number or a 1-D array"):
        predicted_rate("grid", 4, "100")
    with pytest.raises(ValueError, match="n_in must be a number >= 1 or a 1-D"):
        predicted_rate("grid", 4, [[100]])
    small = dict(m=4, n_out=2, n_test=5)
    for kwargs, match in (
        (dict(n_in_values=[16, 16]), "n_in_values must not repeat"),
        (dict(n_in_values=[16, 32], methods=("msq", "msq")), "methods must not"),
        (dict(n_in_values=[16, 32], n_bits=("ternary",)), "n_bits must hold ints"),
        (dict(n_in_values=[16, 32], n_bits=(1,)), "n_bits must hold ints >= 2"),
    ):
        with pytest.raises(ValueError, match=match):
            error_decay(**kwargs, **small)
    with pytest.raises(TypeError, match="verbose must be a bool"):
        error_decay([16, 32], verbose="yes", **small)
    res = error_decay([16, 32], n_bits=(4,), methods=("msq",), **small)
    with pytest.raises(TypeError, match="test must be a bool"):
        plot_error_decay(res, test="yes")
    with pytest.raises(ValueError, match=r"result\['rows'\] must hold"):
        plot_error_decay({**res, "rows": [{"method": "msq"}]})


def test_a_0d_array_step_is_its_number():
    """A 0-d array step (np.float64(0.5) kept as an array) is the number it
    holds: it was refused as 'got step=array(0.5)'."""
    X = np.random.default_rng(0).standard_normal((8, 16))
    assert msq_bound(X, np.array(0.5)) == msq_bound(X, 0.5)
