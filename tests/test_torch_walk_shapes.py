"""The walk on containers that are not plain sequences, modules under two names,
and tied layers: each layer gets the inputs its forward really gives it."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skquant import (  # noqa: E402
    ActivationQuantizer,
    GreedyPathQuantizer,
    UniformQuantizer,
)
from skquant.torch import TorchNetwork, capture_inputs, quantize_model  # noqa: E402


class Residual(nn.Sequential):
    """A Sequential with its own forward: ``x + children(x)``."""

    def forward(self, x):
        return x + super().forward(x)


def _hooked():
    block = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    block.register_forward_hook(lambda m, args, out: 5.0 * out)
    return block


def _twice():
    lin = nn.Linear(8, 8)
    return nn.Sequential(lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(8, 3))


MODELS = {
    "sequential_subclass": lambda: nn.Sequential(
        nn.Linear(8, 8), Residual(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 3)
    ),
    "hooked_container": lambda: nn.Sequential(
        nn.Linear(8, 8), _hooked(), nn.Linear(8, 3)
    ),
    "module_twice": _twice,
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS)
def test_walk_inputs_are_the_forwards_inputs(make):
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(64, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # module_twice: a shared weight
        net = TorchNetwork(model)
        real = capture_inputs(model, dict(net._modules), x)
        seen = []
        for step in net.walk(x):
            Xq, Xf = step.inputs()
            np.testing.assert_allclose(Xf, real[step.name].double().numpy(), atol=1e-6)
            np.testing.assert_array_equal(Xq, Xf)  # nothing quantized
            step.quantized = step.weight
            seen.append(step.name)
    assert seen == list(net._modules)


def test_a_module_under_two_names_is_quantized_at_both():
    torch.manual_seed(0)
    model, x = _twice().eval(), torch.randn(64, 8)
    with pytest.warns(UserWarning, match="share their weight"):
        q = quantize_model(model, GreedyPathQuantizer(n_bits=4), x)
    assert q[0] is q[2] and type(q[0]).__name__ == "QuantLinear"
    # the function: the quantized layer at both places
    W0 = q[0].weight.detach()
    h = torch.relu(x @ W0.T + q[0].bias)
    h = torch.relu(h @ W0.T + q[0].bias)
    want = h @ q[4].weight.detach().T + q[4].bias
    torch.testing.assert_close(q(x).detach(), want.detach(), rtol=1e-5, atol=1e-5)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("activations", ["dynamic", ActivationQuantizer(n_bits=8)])
def test_a_tied_layer_gets_its_input_grid(activations):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="share their weight"):
        q = quantize_model(
            Tied(),
            UniformQuantizer(n_bits=4),
            torch.randn(64, 6),
            activations=activations,
        )
    assert q.a.activation_bits == 8 and q.b.activation_bits == 8


def test_a_module_under_two_names_saves_and_loads(tmp_path):
    from skquant.torch import load_into, save_model

    torch.manual_seed(0)
    model, x = _twice().eval(), torch.randn(16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(model, UniformQuantizer(n_bits=4))
    save_model(q, tmp_path / "m.skq")
    back = load_into(_twice(), tmp_path / "m.skq")
    assert back[0] is back[2] and type(back[2]).__name__ == "QuantLinear"
    torch.testing.assert_close(back(x), q(x), rtol=0, atol=0)


class _Chain(nn.Module):
    """Not a Sequential: its layers' inputs are met in a pass, batch by batch."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _sequences(short_first, seed=0):
    """Two batches of 4 sequences, of 3 and of 500 positions; feature 0 numbers
    the 2012 rows in their order."""
    g = torch.Generator().manual_seed(seed)
    short, long = torch.randn(4, 3, 6, generator=g), torch.randn(4, 500, 6, generator=g)
    batches = [short, long] if short_first else [long, short]
    at = 0
    for x in batches:
        x[..., 0] = torch.arange(at, at + x.shape[0] * x.shape[1]).reshape(x.shape[:2])
        at += x.shape[0] * x.shape[1]
    return batches


def _first_rows(net, data, max_rows, seed):
    steps = TorchNetwork(net).walk(data, max_rows=max_rows, random_state=seed)
    shapes = []
    for i, step in enumerate(steps):
        Xq, Xf = step.inputs()
        np.testing.assert_array_equal(Xq, Xf)  # the same rows in both
        shapes.append(Xf.shape[0])
        if i == 0:
            ids = Xf[:, 0].copy()
        step.quantized = step.weight
    return ids, shapes


@pytest.mark.parametrize("short_first", [True, False])
@pytest.mark.parametrize("make", [_Chain, lambda: nn.Sequential(*_Chain().children())])
def test_max_rows_draws_from_sequences_of_several_lengths(short_first, make):
    torch.manual_seed(0)
    net = make().eval()
    ids, shapes = _first_rows(net, _sequences(short_first), 100, 0)
    assert shapes == [100, 100]  # max_rows of the 2012 rows, in every layer
    assert len(np.unique(ids)) == 100 and np.all(np.diff(ids) > 0)
    # uniform over all rows: the 12 short-sequence rows hold 100 * 12 / 2012 of
    # the draw on average, the 2000 others the rest (with the first batch's
    # rows per sample taken for all, the long-first draw kept about 50 rows)
    short = 0
    for seed in range(150):
        ids, _ = _first_rows(net, _sequences(short_first, seed), 100, seed)
        short += np.sum(ids < 12) if short_first else np.sum(ids >= 2000)
    assert 50 <= short <= 150, short  # 89.5 expected, sd about 9.4


def test_a_module_under_two_names_through_output(tmp_path):
    from skquant.torch import load_into

    torch.manual_seed(0)
    model, x = _twice().eval(), torch.randn(16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = quantize_model(model, GreedyPathQuantizer(n_bits=4), x)
        quantize_model(
            model, GreedyPathQuantizer(n_bits=4), x, output=tmp_path / "m.skq"
        )
    back = load_into(_twice(), tmp_path / "m.skq")
    assert back[0] is back[2] and type(back[0]).__name__ == "QuantLinear"
    torch.testing.assert_close(back(x), want(x), rtol=0, atol=0)


def test_grouped_convolutions_report_their_error_and_one_warning_each():
    from skquant import NoFreedomWarning, NullSpaceQuantizer

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(8, 16, 3, groups=4, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, groups=16, padding=1),
    ).eval()
    x = torch.randn(8, 8, 8, 8)  # 512 rows a layer: all kept
    with pytest.warns(NoFreedomWarning) as caught:
        q, report = quantize_model(
            net, NullSpaceQuantizer(n_bits=4, rank=None), x, return_report=True
        )
    [w] = [w for w in caught if issubclass(w.category, NoFreedomWarning)]
    assert "in 2 of 2 layers (0 (18 inputs), 2 (9 inputs))" in str(w.message)
    # the first layer's error on its input, from the convolutions themselves
    conv = nn.functional.conv2d
    with torch.no_grad():
        want = conv(x, net[0].weight, padding=1, groups=4)
        got = conv(x, q[0].weight, padding=1, groups=4)
    err = float((got - want).norm() / want.norm())
    row = {r["name"]: r for r in report.rows}
    np.testing.assert_allclose(row["0"]["calibration_error"], err, rtol=1e-5)
    assert np.isfinite(row["2"]["calibration_error"])
    # the default rank="auto" chose every direction on held-out rows: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoFreedomWarning)
        auto = quantize_model(net, NullSpaceQuantizer(n_bits=4), x)
    assert type(auto[0]).__name__ == "QuantConv2d"
