"""The iterative adaptive-precision drivers (scikit-learn MLP and torch)."""

import copy
import re
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from skquant import (
    AdaptivePrecisionQuantizer,
    QuantizedMLP,
    UniformQuantizer,
    adaptive_quantize_mlp,
)
from skquant._network._dense import mlp_loss_gradient


@pytest.fixture(scope="module")
def digits_mlp():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((32,), max_iter=400, random_state=0).fit(X[:1200], y[:1200])
    return mlp, X, y


def _check_against_finite_differences(mlp, X, y, grads, rng, tol):
    """Three entries of every parameter: the gradient against central differences."""
    params = mlp.coefs_ + mlp.intercepts_
    for k, P in enumerate(params):
        for idx in [tuple(rng.integers(0, s) for s in P.shape) for _ in range(3)]:
            m2 = copy.deepcopy(mlp)
            p2 = m2.coefs_ + m2.intercepts_
            h = 1e-6
            p2[k][idx] += h
            up, _ = mlp_loss_gradient(m2, X, y)
            p2[k][idx] -= 2 * h
            down, _ = mlp_loss_gradient(m2, X, y)
            assert grads[k][idx] == pytest.approx((up - down) / (2 * h), abs=tol)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_mlp_gradient_matches_finite_differences(activation, n_classes):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5))
    y = rng.integers(0, n_classes, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(
            (7, 6), activation=activation, max_iter=50, random_state=0
        ).fit(X, y)
    loss, grads = mlp_loss_gradient(mlp, X, y)
    # the loss is scikit-learn's log-loss (without the L2 penalty)
    from sklearn.metrics import log_loss

    assert loss == pytest.approx(log_loss(y, mlp.predict_proba(X)), rel=1e-9)
    _check_against_finite_differences(mlp, X, y, grads, rng, 1e-7)


@pytest.mark.parametrize("n_outputs", [1, 2])
@pytest.mark.parametrize("loss_name", ["squared_error", "poisson"])
def test_regressor_gradient_matches_finite_differences(n_outputs, loss_name):
    from scipy.special import xlogy
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5))
    y = np.abs(X[:, :n_outputs] @ rng.standard_normal((n_outputs, n_outputs)))
    y = y.ravel() if n_outputs == 1 else y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPRegressor(
            loss=loss_name, hidden_layer_sizes=(7,), max_iter=50, random_state=0
        ).fit(X, y)
    loss, grads = mlp_loss_gradient(mlp, X, y)
    P, Y = mlp.predict(X).reshape(60, -1), y.reshape(60, -1)
    want = (
        ((P - Y) ** 2).sum() / 120
        if loss_name == "squared_error"
        else (xlogy(Y, Y / P) - Y + P).sum() / 60
    )
    assert loss == pytest.approx(want, rel=1e-9)
    _check_against_finite_differences(mlp, X, y, grads, rng, 1e-6)
    if n_outputs == 2:  # one target per sample for two outputs: refused
        with pytest.raises(ValueError, match="y must have 2 target"):
            mlp_loss_gradient(mlp, X, y[:, 0])
    # and the driver runs on it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = QuantizedMLP(mlp, AdaptivePrecisionQuantizer(budget=0.05)).fit(X, y)
    assert q.predict(X).shape == mlp.predict(X).shape


def test_driver_keeps_the_bound_and_shrinks_the_model(digits_mlp):
    mlp, X, y = digits_mlp
    res = adaptive_quantize_mlp(
        mlp, X[:1200], y[:1200], loss_bound=0.3, X_eval=X[1200:], y_eval=y[1200:]
    )
    h = res.history
    assert len(h) >= 2
    assert all(e["loss"] <= 1.3 * h[0]["loss"] + 1e-12 for e in h)
    assert h[-1]["total_bits"] < h[0]["total_bits"] / 3
    assert all(b["total_bits"] < a["total_bits"] for a, b in zip(h, h[1:]))
    assert h[-1]["accuracy"] > h[0]["accuracy"] - 0.02
    # the model holds fixed-point values: pruned weights are exact zeros
    bits = res.bits[0]
    assert np.all(res.model.coefs_[0][bits == 0] == 0)
    assert res.model.coefs_[0] is not mlp.coefs_[0]
    assert "stop_reason" in repr(res)


def test_predicted_increase_close_to_measured_for_small_budgets(digits_mlp):
    mlp, X, y = digits_mlp
    res = adaptive_quantize_mlp(
        mlp, X[:1200], y[:1200], loss_bound=0.01, max_iter=1, trust_region=0.01
    )
    step = res.history[1]
    # the linearisation |g|.|dw| bounds the first-order change; for a small budget
    # the measured change is of the same order and below the prediction
    assert 0 <= abs(step["measured_increase"]) <= step["predicted_increase"] * 1.5
    assert step["predicted_increase"] <= 0.01 * res.history[0]["loss"] + 1e-12


def test_fewer_bits_than_uniform_at_the_same_accuracy(digits_mlp):
    mlp, X, y = digits_mlp
    Xtr, ytr, Xte, yte = X[:1200], y[:1200], X[1200:], y[1200:]
    # the float training loss of this network is tiny (0.018): a loose relative bound
    # is still a small absolute one
    res = adaptive_quantize_mlp(mlp, Xtr, ytr, loss_bound=3.0, X_eval=Xte, y_eval=yte)
    acc = res.history[-1]["accuracy"]
    assert acc >= mlp.score(Xte, yte) - 0.01
    # the smallest uniform bit-width (per-channel MSQ) at least as accurate, sized
    # honestly like the adaptive model (codes + scales + float32 biases)
    for b in range(2, 17):
        q = QuantizedMLP(mlp, UniformQuantizer(n_bits=b), random_state=0).fit(Xtr)
        if q.score(Xte, yte) >= acc:
            break
    assert res.history[-1]["total_bits"] < q.size_bits_


def test_loss_bound_errors(digits_mlp):
    mlp, X, y = digits_mlp
    with pytest.raises(ValueError, match="loss_bound must be a finite number > 0"):
        adaptive_quantize_mlp(mlp, X, y, loss_bound=0.0)
    with pytest.raises(ValueError, match=re.escape("not above the current loss")):
        adaptive_quantize_mlp(mlp, X, y, loss_bound=1e-6, relative=False)


def test_torch_driver_and_gradients():
    torch = pytest.importorskip("torch")
    from skquant.torch import adaptive_quantize_model, loss_gradients

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3)
    )
    X, y = torch.randn(100, 6, dtype=torch.float64), torch.randint(0, 3, (100,))
    net = net.double()
    loss_fn = torch.nn.CrossEntropyLoss()
    loss, grads = loss_gradients(net, loss_fn, (X, y), batch_size=32)
    # batched mean equals the full-batch loss and gradient
    net.zero_grad()
    full = loss_fn(net(X), y)
    full.backward()
    assert loss == pytest.approx(float(full), rel=1e-12)
    np.testing.assert_allclose(
        grads["0.weight"], net[0].weight.grad.numpy(), rtol=1e-10
    )
    # finite differences on one weight
    w = net[0].weight
    with torch.no_grad():
        w[2, 3] += 1e-6
        up = float(loss_fn(net(X), y))
        w[2, 3] -= 2e-6
        down = float(loss_fn(net(X), y))
        w[2, 3] += 1e-6
    assert grads["0.weight"][2, 3] == pytest.approx((up - down) / 2e-6, abs=1e-8)
    res = adaptive_quantize_model(net, loss_fn, (X, y), loss_bound=0.2)
    assert res.history[-1]["loss"] <= 1.2 * res.history[0]["loss"] + 1e-12
    assert res.history[-1]["bits_per_param"] < 32
    assert type(res.model[0]) is torch.nn.Linear
    assert not torch.equal(res.model[0].weight, net[0].weight)


def test_history_plot(digits_mlp, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    mlp, X, y = digits_mlp
    res = adaptive_quantize_mlp(mlp, X[:600], y[:600], loss_bound=1.0, max_iter=2)
    ax = res.plot_history()
    assert len(ax.get_lines()) == 1 and len(ax.figure.axes) == 2  # loss + twin bits
    ax.figure.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_progress_bar_reports_loss_and_size(digits_mlp, capsys):
    mlp, X, y = digits_mlp
    adaptive_quantize_mlp(
        mlp, X[:600], y[:600], loss_bound=1.0, max_iter=2, verbose=True
    )
    err = capsys.readouterr().err
    assert "adaptive precision" in err and "bits/param" in err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"trust_region": -1}, "trust_region must be a finite number > 0"),
        ({"trust_region": 0.0}, "trust_region must be a finite number > 0"),
        ({"max_iter": 0}, "max_iter must be an int >= 1"),
        ({"random_state": "x"}, "random_state must be an int >= 0 or None"),
        (
            {"random_state": -1, "retrain": "ste", "retrain_batch_size": 4},
            "got random_state=-1 instead",
        ),
        ({"relative": "no"}, "relative must be a bool, got relative='no'"),
        ({"verbose": "no"}, "verbose must be a bool, got verbose='no'"),
    ],
)
def test_driver_parameter_errors(digits_mlp, kwargs, match):
    mlp, X, y = digits_mlp
    with pytest.raises((ValueError, TypeError), match=match):
        adaptive_quantize_mlp(mlp, X, y, **kwargs)
    torch = pytest.importorskip("torch")
    from skquant.torch import adaptive_quantize_model

    net = torch.nn.Linear(4, 3)
    data = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    with pytest.raises((ValueError, TypeError), match=match):
        adaptive_quantize_model(net, torch.nn.CrossEntropyLoss(), data, **kwargs)


def test_targets_and_options_that_give_no_loss_are_refused(digits_mlp):
    """NaN targets gave a result with loss=nan, negative Poisson targets a bare
    ZeroDivisionError, y=None and X_eval alone errors from inside scikit-learn,
    retrain_data=(X,) a signature error."""
    from sklearn.neural_network import MLPRegressor

    mlp, X, y = digits_mlp
    with pytest.raises(ValueError, match="y must be given"):
        adaptive_quantize_mlp(mlp, X, None)
    with pytest.raises(ValueError, match="X_eval and y_eval go together"):
        adaptive_quantize_mlp(mlp, X, y, X_eval=X)
    with pytest.raises(TypeError, match="retrain_data must be a pair .*tuple of 1"):
        adaptive_quantize_mlp(mlp, X, y, retrain="ste", retrain_data=(X,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0)
        reg.fit(X, y * 1.0)
        pois = MLPRegressor(
            hidden_layer_sizes=(8,), max_iter=20, random_state=0, loss="poisson"
        )
        pois.fit(X, y + 1.0)
    bad = y * 1.0
    bad[0] = np.nan
    with pytest.raises(ValueError, match="y contains NaN"):
        adaptive_quantize_mlp(reg, X, bad)
    with pytest.raises(ValueError, match="y must be >= 0 for an MLPRegressor"):
        adaptive_quantize_mlp(pois, X, -(y + 1.0))
    torch = pytest.importorskip("torch")
    from skquant.torch import adaptive_quantize_model

    Xt = torch.randn(16, 4)
    Xt[0, 0] = float("nan")
    data = (Xt, torch.randint(0, 3, (16,)))
    with pytest.raises(ValueError, match="loss of the float model on the data is nan"):
        adaptive_quantize_model(
            torch.nn.Linear(4, 3), torch.nn.CrossEntropyLoss(), data
        )


def test_driver_label_errors(digits_mlp):
    mlp, X, y = digits_mlp
    with pytest.raises(ValueError, match=re.escape("one label per row of X")):
        adaptive_quantize_mlp(mlp, X, y[:-3])
    with pytest.raises(ValueError, match=re.escape("labels [42] that the MLP was not")):
        adaptive_quantize_mlp(mlp, X, np.where(np.arange(len(y)) == 0, 42, y))


def test_a_torch_model_is_pointed_to_the_torch_functions():
    torch = pytest.importorskip("torch")
    from skquant import measure_sensitivity

    X, y = np.ones((4, 3)), np.zeros(4)
    with pytest.raises(TypeError, match="use skquant.torch.adaptive_quantize_model"):
        adaptive_quantize_mlp(torch.nn.Linear(3, 2), X, y)
    with pytest.raises(TypeError, match="a fitted MLPClassifier.*measure_sensitivity"):
        measure_sensitivity(torch.nn.Linear(3, 2), X, y)


def test_torch_driver_reads_datasets_in_batches_and_evaluates_in_eval_mode():
    """A Dataset's samples are read in batches of ``batch_size`` (the same run
    as the pair of tensors), and ``evaluate`` gets the model in eval mode, as
    the loss is measured, whatever mode the caller's model is in."""
    torch = pytest.importorskip("torch")
    from skquant.torch import adaptive_quantize_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(16, 3),
    ).train()
    X, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    seen = []

    def evaluate(model):
        seen.append([m.training for m in model.modules()])
        with torch.no_grad():
            return float((model(X).argmax(1) == y).float().mean())

    loss_fn = torch.nn.CrossEntropyLoss()
    kwargs = {"loss_bound": 0.2, "max_iter": 2, "batch_size": 32}
    pair = adaptive_quantize_model(net, loss_fn, (X, y), evaluate=evaluate, **kwargs)
    dataset = torch.utils.data.TensorDataset(X, y)
    from_set = adaptive_quantize_model(net, loss_fn, dataset, **kwargs)
    assert seen and not any(any(modes) for modes in seen)
    want = evaluate(net.eval())  # the float model's accuracy, no dropout
    net.train()
    assert pair.history[0]["accuracy"] == want
    for a, b in zip(pair.history, from_set.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert all(m.training for m in net.modules())  # the caller's modes


def test_torch_driver_takes_skip_for_layers_it_does_not_quantize():
    """A model with an embedding: refused with the advice skip=[...], which
    the driver now takes (it had no such parameter); the embedding's weights
    are then the loop's other parameters (their own precision, as biases)."""
    torch = pytest.importorskip("torch")
    from skquant.torch import adaptive_quantize_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Embedding(50, 8),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 3),
    )
    X, y = torch.randint(0, 50, (64, 4)), torch.randint(0, 3, (64,))
    loss = torch.nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"skip=\['0'\]"):
        adaptive_quantize_model(net, loss, (X, y))
    res = adaptive_quantize_model(net, loss, (X, y), skip=[torch.nn.Embedding])
    assert res.history[-1]["loss"] <= res.history[0]["loss"] + 0.1 * abs(
        res.history[0]["loss"]
    )
    assert res.model(X).shape == (64, 3)
