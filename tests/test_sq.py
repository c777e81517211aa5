"""Smart Quantization (Razani et al.): the regulariser's oracles and the trainer."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.datasets import load_digits  # noqa: E402

from skquant import BinaryQuantizer, TernaryQuantizer  # noqa: E402
from skquant.torch import SQRegularizer, train_baseline, train_sq  # noqa: E402
from skquant.torch._sq._regularizer import BETA_HIGH, BETA_LOW  # noqa: E402
from skquant.torch._sq._train import lambda_schedule  # noqa: E402


def _net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ).to(dtype)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16, dtype=torch.float32), torch.tensor(y)


def _with_beta(reg, beta):
    s = (beta - BETA_LOW) / (BETA_HIGH - BETA_LOW)
    with torch.no_grad():
        reg.theta.fill_(math.log(s / (1 - s)))
    return reg


def test_ternary_wells_at_pi_over_4():
    reg = SQRegularizer(_net(torch.float64))
    a = torch.tensor(0.7, dtype=torch.float64)
    beta = torch.tensor(BETA_LOW, dtype=torch.float64)
    w = torch.linspace(-2, 2, 40001, dtype=torch.float64)
    r = reg.wells(w, a, beta)
    zeros = w[r < 1e-12].numpy()
    # the minima (value 0) are exactly -a, 0 and a
    assert np.allclose(sorted(set(np.round(zeros, 6))), [-0.7, 0.0, 0.7])
    # the zero well wins below a/2
    inner = torch.tan(beta) * w.abs() ** 2
    assert torch.all((r == inner)[w.abs() < 0.35 - 1e-9])
    assert torch.all((r < inner)[w.abs() > 0.35 + 1e-9])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beta_stays_below_pi_over_2_in_its_dtype(dtype):
    """float32 rounds pi/4 + pi/4 sigmoid(theta) up past pi/2 for theta above
    about 17 (beta_init near pi/2): tan(beta) was -2.3e7, the penalty -1.6e8.
    beta is at most the largest number of its dtype below pi/2."""
    reg = SQRegularizer(_net(dtype), beta_init=math.pi / 2 - 1e-8)
    with torch.no_grad():
        reg.theta.fill_(40.0)
    beta = reg.beta()
    assert beta.dtype == dtype and bool((beta.double() < math.pi / 2).all())
    assert bool((torch.tan(beta) > 0).all())
    penalty = reg()
    assert torch.isfinite(penalty) and float(penalty) >= 0
    assert bool((reg.zero_well() >= 0).all())


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("beta", [BETA_LOW + 0.01, 1.0, 1.3, 1.5])
def test_zero_well_edge_formula(p, beta):
    reg = _with_beta(SQRegularizer(_net(torch.float64), p=p), beta)
    a = float(reg.scale()[0].detach())
    edge = float(reg.zero_well()[0])
    assert edge == pytest.approx(a / (1 + math.tan(beta) ** (1 / p)), rel=1e-9)
    # numerically: the two wells cross at the edge
    w = torch.tensor([edge * (1 - 1e-6), edge * (1 + 1e-6)], dtype=torch.float64)
    outer = (w - a).abs() ** p
    inner = math.tan(beta) * w**p
    assert inner[0] < outer[0] and inner[1] > outer[1]


def test_zero_well_closes_toward_pi_over_2():
    reg = SQRegularizer(_net(torch.float64))
    widths = []
    for theta in (0.0, 4.0, 8.0, 12.0):
        with torch.no_grad():
            reg.theta.fill_(theta)
        assert float(reg.beta()[0]) < math.pi / 2
        widths.append(float(reg.zero_well()[0] / reg.scale()[0]))
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[-1] < 0.01


def test_gradients_reach_weights_scale_and_switch():
    net = _net(torch.float64)
    reg = SQRegularizer(net, gamma=0.1, lam=0.5, p=2.0)
    w = net[0].weight

    def penalty(weight, log_a, theta):
        a = torch.exp(log_a)
        beta = BETA_LOW + (BETA_HIGH - BETA_LOW) * torch.sigmoid(theta)
        return reg.wells(weight, a[0], beta[0]).sum() + 0.1 / torch.tan(beta[0])

    ok = torch.autograd.gradcheck(
        penalty,
        (
            w.detach().clone().requires_grad_(),
            reg.log_a.detach().clone().requires_grad_(),
            reg.theta.detach().clone().requires_grad_(),
        ),
    )
    assert ok
    reg().backward()
    for t in (w, net[2].weight, reg.log_a, reg.theta):
        assert t.grad is not None and torch.all(torch.isfinite(t.grad))
        assert float(t.grad.abs().sum()) > 0


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("p", [0.5, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_penalty_equals_autograd_of_the_wells(p, dtype, parallel, monkeypatch):
    """The compiled one-pass sum (CPU) against autograd through ``wells`` (the
    path off the CPU), a weight at zero included: for p < 1 autograd's
    gradient there was NaN."""
    from skquant._kernels import _sq as kernels

    if parallel:  # the chunked kernel on these small layers
        monkeypatch.setattr(kernels, "PARALLEL_MIN_SIZE", 1)
    net = _net(dtype)
    with torch.no_grad():  # weights in both wells, one exactly at zero
        net[0].weight[0, 0] = 0.0
    reg = _with_beta(SQRegularizer(net, p=p, lam=0.7, gamma=0.2), 1.1)
    fused = reg.layer_penalties()
    a, beta = reg.scale(), reg.beta()
    ref = torch.stack(
        [reg.wells(m.weight, a[i], beta[i]).sum() for i, m in enumerate(reg._layers)]
    )
    tol = (
        dict(rtol=1e-5, atol=1e-6)
        if dtype == torch.float32
        else dict(rtol=1e-10, atol=1e-12)
    )
    torch.testing.assert_close(fused, ref, **tol)
    params = [net[0].weight, net[2].weight, reg.log_a, reg.theta]
    g_fused = torch.autograd.grad(fused.sum(), params)
    g_ref = torch.autograd.grad(ref.sum(), params)
    for gf, gr in zip(g_fused, g_ref):
        torch.testing.assert_close(gf, gr, **tol)


def test_gamma_pushes_beta_up_when_nothing_else_is_at_stake():
    reg = SQRegularizer(_net(), gamma=1.0, lam=0.0)
    opt = torch.optim.Adam([reg.theta], lr=0.05)
    start = reg.beta().detach().clone()
    for _ in range(100):
        opt.zero_grad()
        reg().backward()
        opt.step()
    assert torch.all(reg.beta() > start + 0.1)


def test_training_ends_on_the_layer_alphabets(digits):
    X, y = digits
    res = train_sq(_net(), (X, y), epochs=3, finetune_epochs=1, lr=1e-2, verbose=False)
    for name, alphabet in res.alphabets.items():
        layer = res.model.get_submodule(name)
        values = torch.unique(layer.weight)
        assert len(values) <= (2 if alphabet == "binary" else 3)
        assert torch.allclose(
            values.abs().max(),
            torch.tensor(
                res.regularizer.scale()[res.regularizer.layer_names.index(name)].item()
            ),
            rtol=1e-5,
        )
    # honest size: 1 or 2 bits per weight plus one float32 scale per layer
    bits = {"binary": 1, "ternary": 2}
    expect = sum(
        bits[a] * res.model.get_submodule(n).weight.numel() + 32
        for n, a in res.alphabets.items()
    )
    assert res.size_bits == expect
    assert [h["phase"] for h in res.history] == ["train"] * 3 + ["finetune"]
    assert set(res.history[0]["beta"]) == set(res.alphabets)


def test_training_is_deterministic_with_a_seed(digits):
    X, y = digits
    a = train_sq(
        _net(), (X, y), epochs=2, finetune_epochs=0, verbose=False, random_state=3
    )
    b = train_sq(
        _net(), (X, y), epochs=2, finetune_epochs=0, verbose=False, random_state=3
    )
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.history[-1]["beta"] == b.history[-1]["beta"]


def test_more_gamma_never_more_ternary_layers(digits):
    X, y = digits
    for seed in (0, 1):
        counts = []
        for gamma in (0.0, 1e-2, 1.0):
            res = train_sq(
                _net(seed=seed),
                (X, y),
                gamma=gamma,
                epochs=4,
                finetune_epochs=0,
                lr=1e-2,
                verbose=False,
                random_state=seed,
            )
            counts.append(sum(a == "ternary" for a in res.alphabets.values()))
        assert counts == sorted(counts, reverse=True)
        assert counts[0] > counts[-1]


def test_lambda_schedule():
    assert lambda_schedule(1.0, 4) == [0.5, 1.0, 1.0, 1.0]
    assert lambda_schedule([0.1, 0.2, 0.2], 3) == [0.1, 0.2, 0.2]
    with pytest.raises(ValueError, match="annealed up"):
        lambda_schedule([0.2, 0.1], 2)
    with pytest.raises(ValueError, match="one value per epoch"):
        lambda_schedule([0.2, 0.3], 3)


def test_bad_input(digits):
    X, y = digits
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        SQRegularizer(_net(), gamma=-1.0)
    with pytest.raises(ValueError, match="p must be a finite number > 0"):
        SQRegularizer(_net(), p=0)
    with pytest.raises(ValueError, match="beta_init must be in"):
        SQRegularizer(_net(), beta_init=2.0)
    with pytest.raises(ValueError, match="no nn.Linear"):
        SQRegularizer(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(ValueError, match="names layers"):
        SQRegularizer(_net(), layers=["7"])
    with pytest.raises(ValueError, match="annealed up"):
        train_sq(_net(), (X, y), lam=[0.2, 0.1], epochs=2, verbose=False)
    with pytest.raises(ValueError, match="below the model's 10 outputs"):
        train_sq(_net(), (X, y + 5), epochs=1, verbose=False)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train_sq(_net(), (X, y), epochs=0, verbose=False)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        train_sq(np.eye(3), (X, y), verbose=False)
    net = _net()
    with torch.no_grad():
        before = [p.clone() for p in net.parameters()]
    bad = X.clone()
    bad[5, 3] = float("nan")
    with pytest.raises(ValueError, match="in epoch 1 .*last good epoch"):
        train_sq(net, (bad, y), epochs=2, verbose=False)
    for p, q in zip(net.parameters(), before):
        assert torch.equal(p, q)  # the weights before the bad epoch


# ------------------------------------------------------------- baselines
@pytest.mark.parametrize("alphabet", ["binary", "ternary"])
def test_baseline_ends_on_its_rule_and_matches_its_training_forward(digits, alphabet):
    X, y = digits
    res = train_baseline(
        _net(), (X, y), alphabet=alphabet, epochs=3, lr=1e-2, verbose=False
    )
    assert res.regularizer is None and set(res.alphabets.values()) == {alphabet}
    assert res.binary_fraction == (1.0 if alphabet == "binary" else 0.0)
    cls, rule = {
        "binary": (BinaryQuantizer, "mean"),
        "ternary": (TernaryQuantizer, "twn"),
    }[alphabet]
    for name in res.alphabets:
        latent = res.trained.get_submodule(name).weight.detach().numpy()
        q = cls(granularity="per_tensor", scale=rule).fit(latent.T)
        stored = res.model.get_submodule(name).weight.detach().numpy()
        # the stored layer is the documented rule on the latent weights
        np.testing.assert_allclose(stored, q.transform(latent.T).T, rtol=1e-6)
        assert len(np.unique(stored)) <= (2 if alphabet == "binary" else 3)
        # and the level recorded in the last epoch is that rule's level
        assert res.history[-1]["a"][name] == pytest.approx(float(q.scale_[0]), rel=1e-5)
    bits = {"binary": 1, "ternary": 2}[alphabet]
    n = sum(res.model.get_submodule(k).weight.numel() for k in res.alphabets)
    assert res.n_weights == n
    assert res.size_bits == bits * n + 32 * len(res.alphabets)
    # the model that was trained (straight-through forward) is the one stored
    with torch.no_grad():
        Zq = res.model(X)
    assert (Zq.argmax(1) == y).float().mean() > 0.5


def test_float_baseline_counts_32_bits_and_training_helps(digits):
    X, y = digits
    net = _net()
    with torch.no_grad():
        before = (net(X).argmax(1) == y).float().mean()
    res = train_baseline(
        net, (X, y), alphabet="float", epochs=3, lr=1e-2, verbose=False
    )
    assert res.model is net and res.report is None
    assert res.size_bits == 32 * (64 * 32 + 32 * 10)
    assert res.bits_per_weight == 32.0
    with torch.no_grad():
        assert (net(X).argmax(1) == y).float().mean() > before + 0.3
    with pytest.raises(ValueError, match="needs a result of train_sq"):
        res.plot_beta()


def test_baseline_is_deterministic_and_cosine_schedule(digits):
    X, y = digits
    runs = [
        train_baseline(
            _net(),
            (X, y),
            alphabet="ternary",
            epochs=4,
            lr=4e-3,
            lr_schedule="cosine",
            verbose=False,
            random_state=5,
        )
        for _ in range(2)
    ]
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]
    lrs = [h["lr"] for h in runs[0].history]
    assert lrs[0] == pytest.approx(4e-3) and lrs[-1] == pytest.approx(4e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    # train_sq: one cosine over the training epochs, restarted for the fine-tune
    res = train_sq(
        _net(),
        (X, y),
        epochs=3,
        finetune_epochs=2,
        lr=1e-2,
        lr_schedule="cosine",
        finetune_lr=1e-3,
        verbose=False,
    )
    assert [h["lr"] for h in res.history] == pytest.approx(
        [1e-2, 5.05e-3, 1e-4, 1e-3, 1e-5]
    )
    assert [h["phase"] for h in res.history] == ["train"] * 3 + ["finetune"] * 2
    with pytest.raises(ValueError, match="finetune_lr must be a finite number > 0"):
        train_sq(_net(), (X, y), finetune_lr=0.0, verbose=False)


def test_baseline_bad_input(digits):
    X, y = digits
    with pytest.raises(ValueError, match="alphabet must be 'float', 'binary' or"):
        train_baseline(_net(), (X, y), alphabet="ternay", verbose=False)
    with pytest.raises(ValueError, match="lr_schedule must be 'constant' or 'cosine'"):
        train_baseline(_net(), (X, y), lr_schedule="step", verbose=False)
    with pytest.raises(ValueError, match="below the model's 10 outputs"):
        train_baseline(_net(), (X, y + 5), epochs=1, verbose=False)
    with pytest.raises(ValueError, match="no nn.Linear"):
        train_baseline(torch.nn.Sequential(torch.nn.ReLU()), (X, y), verbose=False)
    net = _net()
    with torch.no_grad():
        before = [p.clone() for p in net.parameters()]
    bad = X.clone()
    bad[7, 1] = float("inf")
    with pytest.raises(ValueError, match="in epoch 1 .*last good epoch"):
        train_baseline(net, (bad, y), alphabet="binary", epochs=2, verbose=False)
    for p, q in zip(net.parameters(), before):
        assert torch.equal(p, q)


# ------------------------------------------------------------- SQClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from skquant.torch import SQClassifier  # noqa: E402

_MODULE_PARAMS = (
    "module__<name> parameters (skorch's convention) arrive through **module_params; "
    "the check passes 'module_params' itself as a parameter name to set_params"
)


@parametrize_with_checks(
    [SQClassifier(max_epochs=20, finetune_epochs=2, random_state=0)],
    expected_failed_checks=lambda est: {
        "check_do_not_raise_errors_in_init_or_set_params": _MODULE_PARAMS,
    },
)
def test_sq_classifier_sklearn_checks(estimator, check):
    check(estimator)


def test_sq_classifier_pickles_clones_and_grid_searches(tmp_path):
    import pickle

    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    X, y = load_digits(return_X_y=True)
    X = X / 16
    clf = SQClassifier(max_epochs=8, module__hidden=(32,), random_state=0)
    assert clone(clf).get_params()["module__hidden"] == (32,)
    clf.fit(X[:1000], y[:1000])
    assert clf.score(X[1000:], y[1000:]) > 0.8
    assert clf.model_[0].weight.shape == (32, 64)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict(X), clf.predict(X))
    assert clf.size_bits_ == sum(
        {"binary": 1, "ternary": 2}[a] * clf.model_.get_submodule(n).weight.numel() + 32
        for n, a in clf.layer_alphabets_.items()
    )
    gs = GridSearchCV(
        SQClassifier(max_epochs=3, module__hidden=(16,), random_state=0),
        {"gamma": [0.0, 1.0]},
        cv=2,
    ).fit(X, y)
    assert gs.best_params_["gamma"] in (0.0, 1.0)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        SQClassifier(gamma=-1).fit(X, y)
    with pytest.raises(ValueError, match="3 outputs but y holds 10 classes"):
        SQClassifier(module=torch.nn.Linear(64, 3), max_epochs=1).fit(X, y)
    with pytest.raises(TypeError, match="module__<name>"):
        SQClassifier(hidden=3).fit(X, y)


def test_train_sq_names_its_bad_arguments_and_a_collapsed_level(digits):
    """validation_data=X failed in unpacking, beta_threshold=nan made every layer
    ternary, and a learning rate that drove a level to 0 ended in the internal
    BinaryQuantizer's 'scale' error, a parameter the user never set."""
    X, y = digits[0][:200], digits[1][:200]
    with pytest.raises(TypeError, match="validation_data must be a pair"):
        train_sq(_net(), (X, y), epochs=1, finetune_epochs=0, validation_data=X)
    with pytest.raises(ValueError, match="beta_threshold must be a number in"):
        train_sq(_net(), (X, y), epochs=1, finetune_epochs=0, beta_threshold=math.nan)
    with pytest.raises(ValueError, match=r"collapsed to 0.0 .*lr=1000.0"):
        train_sq(_net(), (X, y), epochs=2, finetune_epochs=0, lr=1e3)
    with pytest.raises(ValueError, match="max_epochs must be an int >= 1"):
        SQClassifier(max_epochs=1.5).fit(X.numpy(), y.numpy())
    with pytest.raises(ValueError, match="random_state must be an int >= 0 or None"):
        SQClassifier(random_state="x").fit(X.numpy(), y.numpy())
    # ("no" froze beta; "gpu" gave torch's error, naming nothing)
    with pytest.raises(TypeError, match="freeze_beta must be a bool, got"):
        train_sq(_net(), (X, y), epochs=1, finetune_epochs=0, freeze_beta="no")
    with pytest.raises(TypeError, match="verbose must be a bool, got verbose='no'"):
        train_baseline(_net(), (X, y), alphabet="binary", epochs=1, verbose="no")
    with pytest.raises(ValueError, match="device must be a torch device .*'gpu'"):
        train_sq(_net(), (X, y), epochs=1, finetune_epochs=0, device="gpu")
    bad = X.clone()
    bad[3, 2] = float("nan")  # (the error said: lower lr or lam)
    with pytest.raises(ValueError, match="inputs hold NaN or inf: clean"):
        train_sq(_net(), (bad, y), epochs=1, finetune_epochs=0, verbose=False)


def test_training_leaves_the_callers_generators_alone(digits):
    """The trainers seed torch in their own fork of its generators: what the
    caller draws afterwards is what it would have drawn without the call."""
    from skquant.torch import SQClassifier

    X, y = digits[0][:200], digits[1][:200]
    nets = [_net(), _net()]
    calls = [
        lambda: train_baseline(nets[0], (X, y), epochs=1, verbose=False),
        lambda: train_sq(nets[1], (X, y), epochs=1, verbose=False),
        lambda: SQClassifier(max_epochs=1).fit(X.numpy(), y.numpy()),
    ]
    for call in calls:
        torch.manual_seed(7)
        want = torch.rand(3)
        torch.manual_seed(7)
        call()
        assert torch.equal(torch.rand(3), want)


def test_class_scores_train_as_class_indices(digits):
    """One-hot float labels are what cross-entropy takes for class indices: the
    same training, and accuracy counted against their largest score."""
    X, y = digits[0][:300], digits[1][:300]
    one_hot = torch.nn.functional.one_hot(y, 10).float()
    runs = [
        train_baseline(
            _net(), (X, labels), epochs=2, verbose=False, validation_data=(X, labels)
        )
        for labels in (y, one_hot)
    ]
    for a, b in zip(runs[0].history, runs[1].history, strict=True):
        assert a["accuracy"] == b["accuracy"] and a["val_accuracy"] == b["val_accuracy"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


def test_other_losses_and_outputs_train_without_an_accuracy(digits):
    """A loss_fn of the caller's takes what the model gives and the targets as
    they are: a regression (no class, so no accuracy) and a tuple output."""
    X = digits[0][:200]
    target = X[:, :3].sum(1, keepdim=True)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    res = train_baseline(
        net, (X, target), loss_fn=torch.nn.MSELoss(), epochs=2, verbose=False
    )
    assert all(math.isnan(r["accuracy"]) for r in res.history)
    assert res.history[-1]["loss"] < res.history[0]["loss"]

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _net()

        def forward(self, x):
            out = self.body(x)
            return out, out.abs().mean()

    y = digits[1][:200]
    res = train_sq(
        Pair(),
        (X, y.int()),  # int32 labels too
        loss_fn=lambda out, t: torch.nn.functional.cross_entropy(out[0], t.long()),
        epochs=1,
        verbose=False,
    )
    assert set(res.alphabets.values()) <= {"binary", "ternary"}


def test_data_the_trainers_cannot_read_twice_is_refused_by_name(digits):
    X, y = digits[0][:64], digits[1][:64]
    batches = ((X[i : i + 32], y[i : i + 32]) for i in range(0, 64, 32))
    with pytest.raises(ValueError, match="no batch in epoch 2.*generator"):
        train_baseline(_net(), batches, epochs=2, verbose=False)
    with pytest.raises(ValueError, match="no batch in epoch 1"):
        train_baseline(_net(), [], epochs=1, verbose=False)
    for train in (train_sq, train_baseline):
        with pytest.raises(ValueError, match=r"layers=\[\] selects no layer"):
            train(_net(), (X, y), layers=[], epochs=1, verbose=False)
    res = train_baseline(_net(), (X, y), epochs=1, verbose=False, random_state=None)
    assert len(res.history) == 1


@pytest.mark.parametrize("kind", ["batchnorm", "float64"])
def test_sq_classifier_takes_batchnorm_and_float64_modules(kind):
    from skquant.torch import SQClassifier

    class Net(torch.nn.Module):
        def __init__(self, n_features, n_classes):
            super().__init__()
            layers = [torch.nn.Linear(n_features, 16)]
            if kind == "batchnorm":
                layers.append(torch.nn.BatchNorm1d(16))
            layers += [torch.nn.ReLU(), torch.nn.Linear(16, n_classes)]
            self.body = torch.nn.Sequential(*layers)
            if kind == "float64":
                self.double()

        def forward(self, x):
            return self.body(x)

    X, y = load_digits(return_X_y=True)
    X = X / 16
    clf = SQClassifier(module=Net, max_epochs=8, random_state=0).fit(X[:600], y[:600])
    np.testing.assert_allclose(clf.predict_proba(X[:5]).sum(axis=1), 1.0, rtol=1e-6)
    if kind == "float64":  # as the float32 module trains (the same start)
        kind = "float32"
        ref = SQClassifier(module=Net, max_epochs=8, random_state=0).fit(
            X[:600], y[:600]
        )
        assert abs(clf.score(X[600:], y[600:]) - ref.score(X[600:], y[600:])) <= 0.05
    else:
        assert clf.score(X[600:], y[600:]) > 0.5


def test_sq_classifier_leaves_x_alone_with_an_in_place_module():
    # a module that works in place (ReLU(inplace=True) first) wrote to the
    # caller's float32 X in fit (its first row) and in predict
    from skquant.torch import SQClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    net = torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Linear(6, 3))
    X0 = X.copy()
    clf = SQClassifier(module=net, max_epochs=1, finetune_epochs=1).fit(X, y)
    np.testing.assert_array_equal(X, X0)
    clf.predict(X)
    clf.predict_proba(X)
    np.testing.assert_array_equal(X, X0)


def test_alphabet_threshold_is_checked_by_name():
    reg = SQRegularizer(_net(torch.float64))
    assert set(reg.alphabets(0.0).values()) == {"binary"}  # beta >= 0 always
    for bad in (float("nan"), -1.0):  # (NaN made every layer ternary in silence)
        with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
            reg.alphabets(bad)
        with pytest.raises(ValueError, match="threshold must be"):
            reg.quantizers(bad)


def test_token_ids_stay_integers_and_a_last_row_joins_its_batch():
    """A model that takes token ids (an embedding) trains: the ids are not made
    floats (they were, and the embedding refused them); with BatchNorm, a last
    batch of one row joins the one before (BatchNorm refused it, in 1 of 64
    fold sizes of a grid search)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Embedding(30, 4),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 3),
    )
    X = torch.randint(0, 30, (33, 3))  # (33 = 2 batches of 16 and a row)
    y = torch.randint(0, 3, (33,))
    for train, more in ((train_sq, {"finetune_epochs": 0}), (train_baseline, {})):
        res = train(
            net,
            (X, y),
            epochs=1,
            **more,
            batch_size=16,
            skip=[torch.nn.Embedding],
            validation_data=(X, y),
            verbose=False,
        )
        assert set(res.alphabets) == {"2", "5"}
        assert res.model(X).shape == (33, 3)
