"""LayerBitAllocator: measured sensitivity, exact per-layer bit-widths, mapping."""

import re
import warnings

import numpy as np
import pytest
from sklearn.base import clone

from skquant import (
    GreedyPathQuantizer,
    LayerBitAllocator,
    NullSpaceQuantizer,
    QuantizedMLP,
    UniformQuantizer,
)


@pytest.fixture(scope="module")
def fitted(digits_mlp):
    mlp, X, y = digits_mlp
    return LayerBitAllocator(mlp, bits=("ternary", 3, 4, 5, 6, 8)).fit(
        X[1200:], y[1200:]
    )


def test_allocation_meets_zhous_condition_at_least_size(fitted):
    res = fitted.sensitivity_
    rows = np.arange(3)
    cost = res.noise / res.t_margin[:, None]
    assert fitted.predicted_cost_ <= 1.0
    assert fitted.predicted_cost_ == pytest.approx(
        cost[rows, fitted.choice_index_].sum()
    )
    # no allocation with cost <= 1 is smaller (brute force over 6^3 choices)
    sizes = []
    for c in np.ndindex(6, 6, 6):
        c = list(c)
        if cost[rows, c].sum() <= 1.0:
            sizes.append(res.size[rows, c].sum())
    best = min(sizes)
    assert fitted.size_bits_ == best
    assert set(fitted.bits_) == {"layer_0", "layer_1", "layer_2"}


def test_the_mapping_drives_quantized_mlp_with_the_predicted_size(digits_mlp, fitted):
    mlp, X, y = digits_mlp
    qmlp = QuantizedMLP(mlp, fitted.quantizers()).fit(X[:1200])
    weights = sum(r["size_bits"] for r in qmlp.report_.rows)
    assert weights == fitted.size_bits_
    assert [t.n_bits for t in qmlp.tensors_] == [
        2 if b == "ternary" else b for b in fitted.bits_.values()
    ]
    # Zhou's condition aims at a drop of about `tolerance` (0.5 point)
    assert qmlp.score(X[1200:], y[1200:]) >= mlp.score(X[1200:], y[1200:]) - 0.02


def test_reallocation_is_monotone_in_the_budget(fitted):
    a = clone(fitted)  # unfitted copy keeps the parameters only
    assert not hasattr(a, "bits_")
    res = fitted.sensitivity_
    lo, hi = res.size.min(axis=1).sum(), res.size.max(axis=1).sum()
    costs, sizes = [], []
    for budget in [*np.linspace(lo, hi, 12), 10 * hi]:  # the last two bind not
        fitted.allocate(budget=budget)
        assert fitted.size_bits_ <= budget
        costs.append(fitted.predicted_cost_)
        sizes.append(fitted.size_bits_)
    assert all(a >= b - 1e-12 for a, b in zip(costs, costs[1:]))
    front = fitted.pareto_front(20)
    assert len(front["size"]) >= 4 and len(front["bits"]) == len(front["size"])
    # every point is Pareto-optimal: nothing within its size is cheaper
    for size, cost, bits in zip(front["size"], front["cost"], front["bits"]):
        rows = np.arange(3)
        picked = [res.choices.index(bits[n]) for n in fitted.layer_names_]
        assert res.size[rows, picked].sum() == size
        fitted.allocate(budget=size)
        assert fitted.predicted_cost_ == pytest.approx(cost, rel=1e-9)
    fitted.allocate(max_cost=1.0)  # back to the fitted condition


def test_one_layer_network_gets_the_best_equal_bit_width():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 4)
    X = torch.randn(500, 20)
    alloc = LayerBitAllocator(model, bits=(2, 3, 4, 6, 8), criterion="noise").fit(X)
    cost = alloc.cost_[0]
    ok = [j for j in range(5) if cost[j] <= 1.0]
    expect = min(ok, key=lambda j: alloc.sensitivity_.size[0, j])
    assert alloc.choice_index_.tolist() == [expect]


@pytest.mark.parametrize(
    "quantizer", [GreedyPathQuantizer(), NullSpaceQuantizer(rank=0.9)]
)
def test_torch_models_with_data_driven_quantizers(quantizer):
    torch = pytest.importorskip("torch")
    from skquant.torch import quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 5),
    )
    X = torch.randn(200, 1, 8, 8)
    alloc = LayerBitAllocator(
        model,
        quantizer,
        bits=("ternary", 3, 4, 8),
        criterion="sqnr",
        budget=3.5 * 36 + 3.5 * 720 + 32 * 9,
    ).fit(X)
    q, report = quantize_model(model, alloc.quantizers(), X, return_report=True)
    assert report.size_bits == alloc.size_bits_
    method = type(quantizer).__name__.replace("Quantizer", "")
    assert [r["method"] for r in report.rows] == [method, method]


def test_greedy_solver_and_accuracy_criterion(digits_mlp):
    mlp, X, y = digits_mlp
    exact = LayerBitAllocator(mlp, criterion="accuracy", tolerance=0.01).fit(
        X[1200:], y[1200:]
    )
    from sklearn.exceptions import NotFittedError
    from sklearn.frozen import FrozenEstimator

    with pytest.raises(NotFittedError, match="FrozenEstimator"):
        clone(exact).fit(X[1200:], y[1200:])  # clone unfits the MLP
    frozen = exact.set_params(estimator=FrozenEstimator(mlp))
    greedy = clone(frozen).set_params(solver="greedy").fit(X[1200:], y[1200:])
    for a in (exact, greedy):
        assert a.predicted_cost_ <= 0.01 + 1e-12
    assert exact.size_bits_ <= greedy.size_bits_


def test_allocator_errors(digits_mlp, fitted):
    mlp, X, y = digits_mlp
    with pytest.raises(ValueError, match="estimator must be a fitted"):
        LayerBitAllocator().fit(X, y)
    with pytest.raises(ValueError, match="at most one of budget and max_cost"):
        LayerBitAllocator(mlp, budget=1e4, max_cost=1.0).fit(X, y)
    with pytest.raises(ValueError, match="give budget"):
        LayerBitAllocator(mlp, criterion="sqnr").fit(X, y)
    with pytest.raises(ValueError, match="hessian=True needs"):
        LayerBitAllocator(mlp, criterion="hessian", budget=1e5).fit(X)
    with pytest.raises(ValueError, match="below the smallest possible total size"):
        LayerBitAllocator(mlp, budget=10.0).fit(X, y)
    with pytest.raises(ValueError, match="max_cost=1e-09 is below") as given:
        LayerBitAllocator(mlp, max_cost=1e-9).fit(X, y)
    assert "was not given" not in str(given.value)
    with pytest.raises(ValueError, match="max_cost was not given: its default"):
        LayerBitAllocator(mlp, bits=(2, 3)).fit(X[1200:], y[1200:])
    with pytest.raises(ValueError, match=re.escape("criterion")):
        LayerBitAllocator(mlp, criterion="fast").fit(X, y)
    with pytest.raises(ValueError, match="at least one row"):
        LayerBitAllocator(mlp).fit(X[:0], y[:0])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LayerBitAllocator(mlp).quantizers()
    with pytest.raises(ValueError, match="layers"):
        QuantizedMLP(mlp, {"layer_7": UniformQuantizer()}).fit(X)
    with pytest.raises(ValueError, match=re.escape("names layers ['layer_7']")):
        fitted.quantizers({"layer_7": 4})


def test_allocator_argument_errors_name_the_argument(digits_mlp, fitted):
    mlp, X, y = digits_mlp
    # skip leaves torch modules float: an MLP has none, so it is refused, not ignored
    with pytest.raises(ValueError, match=r"got skip=\['layer_0'\] instead"):
        LayerBitAllocator(mlp, skip=["layer_0"]).fit(X[1200:], y[1200:])
    with pytest.raises(ValueError, match=r"got skip=<class 'skquant\..*'> instead"):
        LayerBitAllocator(mlp, skip=UniformQuantizer).fit(X[1200:], y[1200:])
    for n in (-1, 0, 2.5, "3"):
        with pytest.raises(
            ValueError, match=f"n_points must be an int >= 1, got n_points={n!r}"
        ):
            fitted.pareto_front(n)
    for b in (99, 1, 4.0, "quaternary", None):
        with pytest.raises(
            ValueError, match=f"got {re.escape(repr(b))} for layer 'layer_0'"
        ):
            fitted.quantizers({"layer_0": b})
    with pytest.raises(TypeError, match="bits must be a dict"):
        fitted.quantizers(["layer_0"])
    assert len(fitted.pareto_front(1)["size"]) == 1


def test_column_vector_labels_are_raveled(digits_mlp):
    from sklearn.exceptions import DataConversionWarning

    mlp, X, y = digits_mlp

    def alloc():  # (clone would unfit the MLP)
        return LayerBitAllocator(mlp, bits=(4, 8), max_samples=200)

    ref = alloc().fit(X[1200:], y[1200:])
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        col = alloc().fit(X[1200:], y[1200:, None])
    assert col.bits_ == ref.bits_
    np.testing.assert_array_equal(col.cost_, ref.cost_)
    with pytest.raises(ValueError, match=r"got y.shape=\(597, 10\) instead"):
        alloc().fit(X[1200:], np.eye(10)[y[1200:]])


def test_plots_draw_and_check_their_axes(fitted, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = fitted.sensitivity_.plot()
    assert len(ax.get_lines()) >= 3  # each layer's measured noise at least
    ax = fitted.plot_pareto()
    ax.figure.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    # ax="x" raised AttributeError from the first drawing call
    for plot in (fitted.sensitivity_.plot, fitted.plot_pareto):
        with pytest.raises(TypeError, match="ax must be a matplotlib Axes or None"):
            plot(ax="x")


def test_a_torch_regressor_with_several_outputs_is_no_classifier(digits_mlp):
    """Float targets of the outputs' shape make a regressor (its argmax was
    taken for decisions); LayerBitAllocator takes classifier= for a torch
    model without targets (it had none), and refuses it for an MLP."""
    torch = pytest.importorskip("torch")
    from skquant.torch import measure_sensitivity

    torch.manual_seed(0)
    X = torch.randn(200, 10)
    Y = X[:, :3] * 2
    net = torch.nn.Sequential(
        torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    assert measure_sensitivity(net, X, Y, bits=(2, 4)).reference_accuracy is None
    assert measure_sensitivity(net, X, bits=(2, 4)).reference_accuracy == 1.0
    with pytest.raises(ValueError, match="regression model: give budget"):
        LayerBitAllocator(net, bits=(2, 4), classifier=False).fit(X)
    fitted = LayerBitAllocator(net, bits=(2, 4), classifier=False, budget=1500).fit(X)
    assert fitted.sensitivity_.reference_accuracy is None
    mlp, Xd, yd = digits_mlp
    with pytest.raises(ValueError, match="classifier is for torch models"):
        LayerBitAllocator(mlp, classifier=True).fit(Xd, yd)


def test_a_shuffling_loader_gives_the_same_table_for_a_seed():
    """The subsample draws rows of the gathered data, in the order a shuffling
    DataLoader gives them: that order is now seeded by random_state (two fits
    gave 6.95 and 6.01), and the caller's generator is left as it was."""
    torch = pytest.importorskip("torch")
    from skquant.torch import measure_sensitivity

    torch.manual_seed(0)
    X, y = torch.randn(300, 6), torch.randint(0, 3, (300,))
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3)
    )
    data = torch.utils.data.TensorDataset(X, y)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    state = torch.get_rng_state()
    runs = [
        measure_sensitivity(net, loader, bits=(2, 4), max_samples=100, random_state=3)
        for _ in range(2)
    ]
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(runs[0].noise, runs[1].noise)


@pytest.mark.parametrize(
    "quantizer, name",
    [
        (UniformQuantizer(scale="bogus"), "scale"),
        (UniformQuantizer(granularity="per_row"), "granularity"),
        (UniformQuantizer(n_jobs="2"), "n_jobs"),
        (NullSpaceQuantizer(rank=-5), "rank"),
        (GreedyPathQuantizer(scale="MSE"), "scale"),
    ],
)
def test_the_quantizers_parameters_are_checked(digits_mlp, quantizer, name):
    """The allocator checks its quantizer's parameters, as QuantizedMLP does: its
    fit skips nested checks, and a misspelt scale was fitted as 'mse' (a grid
    search then chose the misspelling)."""
    from sklearn.utils._param_validation import InvalidParameterError

    mlp, X, y = digits_mlp
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of"):
        LayerBitAllocator(mlp, quantizer, bits=(2, 4)).fit(X[1200:], y[1200:])


def test_sparse_data_gives_the_dense_datas_table_and_bits(digits_mlp):
    """SciPy sparse X (which the MLP takes) is measured on the rows the dense X
    gives: the same table, the same bits."""
    import scipy.sparse as sp

    from skquant import measure_sensitivity

    mlp, X, y = digits_mlp
    dense = measure_sensitivity(mlp, X[1200:], y[1200:], bits=(2, 4), max_samples=300)
    for fmt in (sp.csr_matrix, sp.csc_array):
        got = measure_sensitivity(
            mlp, fmt(X[1200:]), y[1200:], bits=(2, 4), max_samples=300
        )
        np.testing.assert_array_equal(got.noise, dense.noise)
    budget = 3.5 * sum(c.size for c in mlp.coefs_)
    a = LayerBitAllocator(mlp, bits=(2, 3, 4), budget=budget).fit(X[1200:], y[1200:])
    b = LayerBitAllocator(mlp, bits=(2, 3, 4), budget=budget).fit(
        sp.csr_matrix(X[1200:]), y[1200:]
    )
    assert a.bits_ == b.bits_


def test_a_solver_set_after_fit_is_checked(fitted):
    """allocate() checks the solver set after fit (a misspelt one ran greedy)."""
    alloc = clone(fitted).set_params(solver="bogus")
    alloc.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    with pytest.raises(ValueError, match="got solver='bogus' instead"):
        alloc.allocate(max_cost=1.0)


def test_the_time_limit_reaches_each_allocation(fitted):
    """time_limit bounds allocate() and pareto_front() (each exact solve): a
    limit spent before the first solve returns the best answer known, with a
    warning naming it; None lifts it."""
    from sklearn.exceptions import ConvergenceWarning

    alloc = clone(fitted).set_params(time_limit=1e-9)
    alloc.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    target = 0.5 * alloc.cost_.max(axis=1).sum()
    with pytest.warns(ConvergenceWarning, match="time_limit=1e-09"):
        alloc.allocate(max_cost=target)
    with pytest.warns(ConvergenceWarning, match="time_limit=1e-09"):
        alloc.pareto_front(n_points=3)
    alloc.set_params(time_limit=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert alloc.allocate(max_cost=1.0) == fitted.bits_
