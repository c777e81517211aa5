"""The torch adapter of the network layer: walks, capture, supported layers, errors."""

import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from numpy.testing import assert_allclose, assert_array_equal  # noqa: E402
from torch import nn  # noqa: E402

from skquant import (  # noqa: E402
    ActivationQuantizer,
    AdaptivePrecisionQuantizer,
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    UniformQuantizer,
)
from skquant._network._dense import MLPNetwork  # noqa: E402
from skquant._network._layers import quantize_layers  # noqa: E402
from skquant.torch import (  # noqa: E402
    QuantConv1d,
    QuantConv2d,
    QuantLinear,
    TorchNetwork,
    _graph,  # noqa: E402
    quantize_model,
)
from skquant.torch._model import _copy_but  # noqa: E402
from skquant.torch._rows import gather_rows, rows_per_sample  # noqa: E402


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 12, 3, stride=2, dilation=2, padding=2, padding_mode="reflect"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


class Generic(nn.Module):
    """The layers of :func:`cnn`, called from a forward that is not a Sequential."""

    def __init__(self, seq):
        super().__init__()
        self.body = nn.ModuleDict({str(i): m for i, m in enumerate(seq)})

    def forward(self, x):
        for i in range(len(self.body)):
            x = self.body[str(i)](x)
        return x


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Conv2d(3, 4, (3, 2), dilation=(2, 1), padding="same"),
        nn.Conv2d(3, 4, 3, padding=2, padding_mode="circular"),
        nn.Conv2d(4, 6, 3, groups=2, padding=1),
        nn.Conv1d(3, 4, 5, stride=2, padding=2, padding_mode="replicate"),
    ],
    ids=["strided", "dilated-same", "circular", "groups", "conv1d"],
)
def test_gathered_rows_are_unfold_rows(conv):
    torch.manual_seed(0)
    shape = (2, conv.in_channels, 9, 11) if conv.weight.dim() == 4 else (2, 3, 13)
    x = torch.randn(shape)
    n = x.shape[0] * rows_per_sample(conv, x)
    rows = torch.tensor([0, 3, n // 2, n - 1])
    got = gather_rows(conv, x, rows)
    if isinstance(conv, nn.Conv1d):
        # the layer's output from the gathered rows is the convolution's
        out = conv(x).transpose(1, 2).reshape(-1, conv.out_channels)
        W = conv.weight.reshape(conv.out_channels, -1).T
        assert_allclose(
            (got @ W + conv.bias).detach(), out[rows].detach(), rtol=1e-5, atol=1e-6
        )
    else:
        assert torch.equal(got, _unfold_rows(conv, x)[rows])


def _unfold_rows(conv, x):
    """A Conv2d's patch rows by ``torch.nn.functional.unfold`` (the reference)."""
    padding = conv.padding
    if conv.padding_mode != "zeros" or isinstance(padding, str):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = nn.functional.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    cols = nn.functional.unfold(
        x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride
    )
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@pytest.mark.parametrize(
    "quantizer", [GreedyPathQuantizer(n_bits=3), NullSpaceQuantizer(n_bits=3, rank=8)]
)
def test_generic_walk_equals_sequential_walk(quantizer):
    seq = cnn()
    x = torch.rand(64, 1, 16, 16)
    a = quantize_model(seq, quantizer, x, max_rows=300)
    b = quantize_model(Generic(cnn()), quantizer, x, max_rows=300)
    for i, m in enumerate(a):
        if hasattr(m, "weight_codes"):
            assert torch.equal(m.weight, b.body[str(i)].weight)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_every_layer_kind_is_quantized_and_passes_through():
    net = cnn()
    x = torch.rand(32, 1, 16, 16)
    qnet, report = quantize_model(
        net, GreedyPathQuantizer(n_bits=4), x, return_report=True
    )
    assert [type(qnet[i]) for i in (0, 4, 5, 8, 10)] == [
        QuantConv2d,
        QuantConv2d,
        QuantConv2d,
        QuantLinear,
        QuantLinear,
    ]
    assert type(qnet[1]) is nn.BatchNorm2d
    assert [r["name"] for r in report.rows] == ["0", "4", "5", "8", "10"]
    # depthwise: each channel's 9 weights on that channel's grid
    codes = qnet[4].weight_codes.reshape(8, -1)
    assert codes.abs().max() <= 7
    with torch.no_grad():
        ref, out = net.eval()(x), qnet.eval()(x)
    assert float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref)) < 0.2
    assert all(
        np.isfinite(r["calibration_error"]) for r in report.rows if r["name"] != "4"
    )


def test_conv1d_model():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 20, 3)
    )
    x = torch.randn(40, 2, 20)
    qnet = quantize_model(net, GreedyPathQuantizer(n_bits=4), x)
    assert type(qnet[0]) is QuantConv1d
    with torch.no_grad():
        err = torch.linalg.norm(qnet(x) - net(x)) / torch.linalg.norm(net(x))
    assert float(err) < 0.15


def test_memoryless_quantizers_run_no_calibration_pass():
    calls = []
    net = cnn()
    net[0].register_forward_hook(lambda *a: calls.append(1))
    qnet = quantize_model(net, UniformQuantizer(n_bits=4), torch.rand(8, 1, 16, 16))
    assert calls == []
    assert type(qnet[0]) is QuantConv2d
    # and no data is needed at all
    qnet = quantize_model(net, UniformQuantizer(n_bits=4))
    assert type(qnet[10]) is QuantLinear


def test_data_driven_needs_data():
    with pytest.raises(ValueError, match="need calibration data"):
        quantize_model(cnn(), GreedyPathQuantizer())


@pytest.mark.parametrize("kind", ["array64", "dataloader", "pairs", "list"])
def test_calibration_data_formats_agree(kind):
    net = cnn()
    x = torch.rand(48, 1, 16, 16)
    ref = quantize_model(net, GreedyPathQuantizer(n_bits=3), x, batch_size=16)
    if kind == "array64":
        data = x.numpy().astype(np.float64)  # cast to the model's float32
    elif kind == "dataloader":
        ds = torch.utils.data.TensorDataset(x, torch.zeros(48))
        data = torch.utils.data.DataLoader(ds, batch_size=16)
    elif kind == "pairs":
        data = [(x[i : i + 16], torch.zeros(16)) for i in range(0, 48, 16)]
    else:
        data = [x[i : i + 16] for i in range(0, 48, 16)]
    got = quantize_model(net, GreedyPathQuantizer(n_bits=3), data, batch_size=16)
    for a, b in zip(ref.state_dict().values(), got.state_dict().values()):
        assert a == b if isinstance(a, dict) else torch.equal(a, b)


def test_bfloat16_model():
    net = cnn().to(torch.bfloat16)
    x = torch.rand(32, 1, 16, 16)  # float32 data: cast to bfloat16
    qnet = quantize_model(net, GreedyPathQuantizer(n_bits=4), x)
    assert qnet[0].weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = qnet.eval()(x.to(torch.bfloat16))
    assert torch.isfinite(out.float()).all()


class WithAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        h, _ = self.att(h, h, h)
        return self.out(h)


def test_skip_a_module_skips_its_children():
    torch.manual_seed(0)
    net = WithAttention()
    x = torch.randn(16, 5, 4)
    with pytest.raises(ValueError, match=re.escape("with skip=['att']")):
        quantize_model(net, GreedyPathQuantizer(), x)
    qnet = quantize_model(net, GreedyPathQuantizer(), x, skip=["att"])
    assert type(qnet.inp) is QuantLinear and type(qnet.out) is QuantLinear
    assert type(qnet.att.out_proj) is not QuantLinear
    with pytest.raises(ValueError, match=re.escape("skip names modules ['atn']")):
        quantize_model(net, GreedyPathQuantizer(), x, skip=["atn"])


def test_skip_by_class_skips_every_instance():
    torch.manual_seed(0)
    net = nn.Sequential(WithAttention(), nn.Linear(2, 3), WithAttention().att)
    x = torch.randn(16, 5, 4)
    message = re.escape("or every MultiheadAttention with skip=[nn.MultiheadAttention]")
    with pytest.raises(ValueError, match=message):
        quantize_model(net[:2], UniformQuantizer(), x)
    by_class = quantize_model(net[:2], UniformQuantizer(), skip=[nn.MultiheadAttention])
    by_name = quantize_model(net[:2], UniformQuantizer(), skip=["0.att"])
    assert type(by_class[0].att.out_proj) is not QuantLinear
    assert type(by_class[1]) is QuantLinear
    with torch.no_grad():
        torch.testing.assert_close(by_class(x), by_name(x), rtol=0, atol=0)
    # a module under two names is skipped under both
    alias = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    alias.extra = alias[0]
    assert TorchNetwork(alias, skip=[nn.ReLU, "2"]).skip == ("2", "1")
    with pytest.raises(ValueError, match=re.escape("skip=['0', '2', 'extra']")):
        TorchNetwork(alias, skip=[nn.Linear])
    # a bare class, and a class no module is an instance of
    network = TorchNetwork(net, skip=nn.MultiheadAttention)
    assert network.skip == ("0.att", "2")
    assert TorchNetwork(net[1:2], skip=[nn.Conv2d]).skip == ()
    with pytest.raises(TypeError, match=re.escape("skip=[<class 'int'>]")):
        TorchNetwork(net, skip=[int])


class _CalledTwice(nn.Module):
    """``shared`` runs twice, its second call on inputs 10x the first's."""

    def __init__(self):
        super().__init__()
        self.shared, self.out = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.shared(x))
        return self.out(torch.relu(self.shared(10 * h)))


def test_a_layer_called_twice_has_a_static_grid_for_every_call():
    torch.manual_seed(0)
    net, X = _CalledTwice().eval(), torch.randn(64, 8)
    seen = []
    hook = net.shared.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        net(X)
    hook.remove()
    with warnings.catch_warnings():  # memoryless: no warning
        warnings.filterwarnings("error", message=".*more than once")
        qnet = quantize_model(
            net, UniformQuantizer(n_bits=8), X, activations=ActivationQuantizer()
        )
    layer = qnet.shared
    top = (layer._act_meta["qmax"] - layer.input_zero_point[0]) * layer.input_scale[0]
    bottom = (layer._act_meta["qmin"] - layer.input_zero_point[0]) * layer.input_scale[
        0
    ]
    assert float(top) >= float(seen[1].max()) * (1 - 1e-2)  # the second call's
    assert float(bottom) <= float(seen[0].min())
    with torch.no_grad():
        want = net(X)
        err = (qnet(X) - want).norm() / want.norm()
    assert err < 0.05  # (0.59 with the first call's grid)


def test_a_data_driven_layer_called_twice_is_warned_about():
    torch.manual_seed(0)
    net, X = _CalledTwice().eval(), torch.randn(64, 8)
    with pytest.warns(
        UserWarning, match=re.escape("layers {'shared': 2} (name: calls)")
    ):
        quantize_model(net, GreedyPathQuantizer(n_bits=4), X)
    with warnings.catch_warnings():  # "shared" left float
        warnings.filterwarnings("error", message=".*more than once")
        quantize_model(net, {"out": GreedyPathQuantizer(n_bits=4)}, X)


def test_layer_that_does_not_run():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(ValueError, match=re.escape("layers ['b'] did not run")):
        quantize_model(Unused(), GreedyPathQuantizer(), torch.randn(8, 4))


class KeywordCall(nn.Module):
    """A layer called as ``layer(input=x)``."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(input=torch.relu(self.fc1(x)))


def test_a_layer_called_with_a_keyword(monkeypatch):
    """``layer(input=x)``: its input is captured (it crashed on ``args[0]``), on
    the traced graph and by stopped passes alike."""
    torch.manual_seed(0)
    model, x = KeywordCall().eval(), torch.randn(16, 6)
    walked = quantize_model(model, GreedyPathQuantizer(n_bits=3), x, batch_size=8)
    monkeypatch.setattr(_graph, "trace", lambda block, sample: None)
    stopped = quantize_model(model, GreedyPathQuantizer(n_bits=3), x, batch_size=8)
    assert type(walked.fc2) is QuantLinear
    with torch.no_grad():
        assert torch.equal(walked(x), stopped(x))


def test_few_rows_leave_some_batches_without_a_row():
    """With fewer sampled rows than batches, a conv layer's batch may give none:
    the walk goes on (it crashed reshaping the empty gather)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    ).eval()
    x = torch.randn(10, 3, 8, 8)
    qnet, report = quantize_model(
        model,
        GreedyPathQuantizer(n_bits=3),
        x,
        max_rows=2,
        batch_size=2,
        return_report=True,
    )
    assert type(qnet[0]) is QuantConv2d and type(qnet[3]) is QuantLinear
    rows = gather_rows(model[0], x[:2], torch.zeros(0, dtype=torch.int64))
    assert rows.shape == (0, 3 * 3 * 3)


def test_tied_weights_quantized_once_counted_once():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    net[2].weight = net[0].weight
    with pytest.warns(UserWarning, match="share their weight"):
        qnet, report = quantize_model(
            net, UniformQuantizer(n_bits=4), return_report=True
        )
    assert [r["name"] for r in report.rows] == ["0"]
    assert torch.equal(qnet[0].weight, qnet[2].weight)
    assert type(qnet[2]) is QuantLinear
    with pytest.warns(UserWarning, match="share their weight"):
        with pytest.raises(ValueError, match=r"names layers \['2'\] whose weight"):
            quantize_model(net, {"2": UniformQuantizer(n_bits=4)})


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "quantized"])
def test_layers_whose_weight_is_computed_are_not_taken_as_tied(wrap):
    """A weight computed when read (a parametrization, a quantized layer) is a
    new tensor each time, freed at once: its ``id`` says nothing about ties
    (it is reused by the next layer's), and each layer keeps its own codes."""
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    net = nn.Sequential(
        *[m for _ in range(3) for m in (nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())]
    ).eval()
    x = torch.randn(8, 4, 6, 6)
    if wrap == "quantized":
        net = quantize_model(net, UniformQuantizer(n_bits=8), x)
    else:
        for i in (0, 2, 4):
            net[i] = getattr(parametrizations, wrap)(net[i]).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tie is announced
        qnet = quantize_model(net, UniformQuantizer(n_bits=8), x)
    for i in (0, 2, 4):
        W = net[i].weight.detach()
        assert float((qnet[i].weight - W).norm() / W.norm()) < 0.01
    with torch.no_grad():
        ref = net(x)
        assert float((qnet(x) - ref).norm() / ref.norm()) < 0.02


def test_quantized_copy_shares_no_tensor_with_the_float_model():
    """The quantized model is built from a copy that does not copy the weights it
    drops (a second float model, held through the build), and keeps none of the
    float model's tensors: a weight tied to a layer left float is copied."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.Embedding(6, 6))
    net[3].weight = net[2].weight  # an embedding (left float) tied to a Linear
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copied = _copy_but(net, {"0", "2"})
    assert copied[0].weight is net[0].weight  # dropped: shared, not copied
    assert copied[0].bias is not net[0].bias
    assert copied[2].weight is not net[2].weight  # the embedding keeps it
    assert copied[3].weight is copied[2].weight  # tied in the copy too
    qnet = quantize_model(net, UniformQuantizer(n_bits=4), skip=["3"])
    assert type(qnet[0]) is QuantLinear and type(qnet[2]) is QuantLinear
    ours = {id(t) for t in [*net.parameters(), *net.buffers()]}
    assert not ours & {id(t) for t in [*qnet.parameters(), *qnet.buffers()]}
    with torch.no_grad():
        qnet[3].weight.add_(1.0)
        qnet[0].bias.add_(1.0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_mapping_per_layer_and_unknown_names():
    net = cnn()
    x = torch.rand(16, 1, 16, 16)
    qnet, report = quantize_model(
        net,
        {"0": GreedyPathQuantizer(n_bits=4), "10": UniformQuantizer(n_bits=8)},
        x,
        return_report=True,
    )
    assert [r["method"] for r in report.rows] == [
        "GreedyPath",
        "float",
        "float",
        "float",
        "Uniform",
    ]
    assert type(qnet[5]) is nn.Conv2d
    with pytest.raises(ValueError, match=re.escape("names layers ['fc']")):
        quantize_model(net, {"fc": UniformQuantizer()}, x)


def test_adaptive_precision_in_quantize_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    qnet, report = quantize_model(
        net, AdaptivePrecisionQuantizer(budget=0.05), x, targets=y, return_report=True
    )
    assert type(qnet[0]) is QuantLinear
    assert all(r["method"] == "AdaptivePrecision" for r in report.rows)
    with pytest.raises(ValueError, match="pass calibration_data and targets"):
        quantize_model(net, AdaptivePrecisionQuantizer(), x)


def test_the_two_adapters_agree_in_float64():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X[:300] / 16
    y = y[:300]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((12, 8), max_iter=30, random_state=0).fit(X, y)
    layers = []
    for i, (W, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        lin = nn.Linear(*W.shape, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, nn.ReLU()] if i < len(mlp.coefs_) - 1 else [lin]
    tnet = TorchNetwork(nn.Sequential(*layers))
    snet = MLPNetwork(mlp)
    # the same layer inputs, in both models, along a quantizing walk
    steps_t = tnet.walk(torch.from_numpy(X), max_rows=None)
    steps_s = snet.walk(X)
    for st, ss in zip(steps_t, steps_s):
        for a, b in zip(st.inputs(), ss.inputs()):
            assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        assert_array_equal(st.weight, ss.weight)
        Q = UniformQuantizer(n_bits=3).fit(ss.weight).transform(ss.weight)
        st.quantized = ss.quantized = Q
    # the same loss and gradients
    lt, gt = tnet.loss_gradients((torch.from_numpy(X), torch.from_numpy(y)))
    ls, gs = snet.loss_gradients((X, y))
    assert lt == pytest.approx(ls, rel=1e-12)
    for i in range(len(mlp.coefs_)):
        k = 2 * i
        assert_allclose(gt[f"{k}.weight"].T, gs[f"layer_{i}.weight"], atol=1e-12)
        assert_allclose(gt[f"{k}.bias"], gs[f"layer_{i}.bias"], atol=1e-12)


def test_driver_report_is_a_table():
    net = cnn()
    res = quantize_layers(TorchNetwork(net), UniformQuantizer(n_bits=4))
    text = str(res.report)
    assert text.splitlines()[0].startswith("layer")
    assert len(text.splitlines()) == 2 + 5 + 1
    assert res.report.size_bits == sum(t.size_bits for t in res.tensors.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_on_a_cuda_device():
    net = cnn().cuda()
    qnet = quantize_model(net, GreedyPathQuantizer(n_bits=4), torch.rand(32, 1, 16, 16))
    assert qnet[0].weight.device.type == "cuda"
    cpu = quantize_model(
        cnn(), GreedyPathQuantizer(n_bits=4), torch.rand(32, 1, 16, 16)
    )
    assert qnet[10].weight_codes.shape == cpu[10].weight_codes.shape


@pytest.mark.parametrize(
    "quantizer", [UniformQuantizer(n_bits=4), GreedyPathQuantizer()]
)
def test_a_single_layer_model(quantizer):
    torch.manual_seed(0)
    net = nn.Linear(6, 3)
    qnet = quantize_model(net, quantizer, torch.randn(20, 6))
    assert type(qnet) is QuantLinear
    assert type(net) is nn.Linear


def _model_bytes_are_counted(path, qnet):
    import struct

    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    counted = sum(
        m.size_bits for m in qnet.modules() if hasattr(m, "weight_packed")
    ) // 8 + sum(
        v.numel() * v.element_size()
        for k, v in qnet.state_dict().items()
        if not any(s in k for s in ("weight_packed", "weight_scale", "_extra_state"))
    )
    return len(blob) - 8 - n, counted


@pytest.mark.parametrize(
    "quantizer",
    [
        UniformQuantizer(n_bits=2),
        UniformQuantizer(n_bits=8, granularity="per_tensor"),
        GreedyPathQuantizer(n_bits=3),
        NullSpaceQuantizer(n_bits="ternary", rank=8),
        GreedyPathQuantizer(n_bits="binary"),
    ],
    ids=["msq2", "msq8-tensor", "gpfq3", "nullspace-ternary", "gpfq-binary"],
)
def test_save_model_load_into_round_trip(tmp_path, quantizer):
    from skquant.torch import load_into, save_model

    net = cnn()
    x = torch.rand(32, 1, 16, 16)
    with torch.no_grad():
        net(x)  # a training-mode pass: BatchNorm statistics to store and restore
    qnet = quantize_model(net, {"0": quantizer, "5": quantizer, "10": quantizer}, x)
    path = tmp_path / "net.skq"
    save_model(qnet, path)
    stored, counted = _model_bytes_are_counted(path, qnet)
    assert stored == counted
    loaded = load_into(cnn(), path)
    qnet.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), qnet(x))
    for i in (0, 5, 10):
        assert type(loaded[i]) is type(qnet[i])
        assert torch.equal(loaded[i].weight_codes, qnet[i].weight_codes)
        assert torch.equal(loaded[i].weight, qnet[i].weight)
    assert type(loaded[4]) is nn.Conv2d  # left float, as saved


def test_state_dict_is_compact_and_loads_into_a_fresh_layer():
    import io

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    qnet = quantize_model(net, UniformQuantizer(n_bits=2))
    buf, ref = io.BytesIO(), io.BytesIO()
    torch.save(qnet.state_dict(), buf)
    torch.save(net.state_dict(), ref)
    # 2-bit codes: about 1/16 of the float weights, plus float biases and scales
    assert buf.tell() < ref.tell() / 10
    assert "0.weight" not in qnet.state_dict()
    buf.seek(0)
    fresh = nn.Sequential(QuantLinear(784, 512), nn.ReLU(), QuantLinear(512, 10))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(5, 784)
    with torch.no_grad():
        assert torch.equal(fresh(x), qnet(x))
    assert torch.equal(fresh[2].weight_codes, qnet[2].weight_codes)


def test_load_into_errors(tmp_path):
    import skquant
    from skquant.torch import load_into, save_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    qnet = quantize_model(net, UniformQuantizer(n_bits=4))
    path = tmp_path / "n.skq"
    save_model(qnet, path)
    with pytest.raises(ValueError, match="weight shape"):
        load_into(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)), path)
    with pytest.raises(ValueError, match="not a file of this model"):
        load_into(nn.Sequential(nn.Conv1d(6, 4, 1)), path)
    with pytest.raises(ValueError, match="holds a torch model"):
        skquant.load(path)
    with pytest.raises(TypeError, match="path must be a str or path-like, got 0"):
        load_into(net, 0)  # (not stdin's file descriptor, read and closed)
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x55
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupted"):
        load_into(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)), path)


def test_bfloat16_model_file(tmp_path):
    from skquant.torch import load_into, save_model

    net = cnn().to(torch.bfloat16)
    qnet = quantize_model(net, UniformQuantizer(n_bits=4))
    save_model(qnet, tmp_path / "b.skq")
    loaded = load_into(cnn().to(torch.bfloat16), tmp_path / "b.skq")
    x = torch.rand(4, 1, 16, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), qnet.eval()(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_into_a_model_on_cuda(tmp_path):
    from skquant.torch import load_into, save_model

    qnet = quantize_model(
        cnn(), GreedyPathQuantizer(n_bits=3), torch.rand(32, 1, 16, 16)
    )
    save_model(qnet, tmp_path / "g.skq")
    loaded = load_into(cnn().cuda(), tmp_path / "g.skq")
    assert loaded[0].weight.device.type == "cuda"
    assert torch.equal(loaded[0].weight.cpu(), qnet[0].weight)
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x.cuda()).cpu(), qnet.eval()(x))


def _nested():
    """:func:`cnn`'s layers in two nested containers, the ReLUs in place."""
    seq = cnn()
    layers = [nn.ReLU(inplace=True) if isinstance(m, nn.ReLU) else m for m in seq]
    return nn.Sequential(
        nn.Sequential(*layers[:4]),
        nn.Sequential(nn.Sequential(*layers[4:7]), layers[7]),
        nn.Sequential(*layers[8:]),
    ).eval()


COUNTED = [0]


def counted(x):
    """The identity, counting its calls (a leaf of torch.fx's graphs)."""
    COUNTED[0] += 1
    return x


torch.fx.wrap("counted")


class Block(nn.Module):
    """A residual block whose sum is taken in place on its input."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        x += self.bn2(self.conv2(out))
        return torch.relu(x)


class Residual(nn.Module):
    """A small ResNet: its forward is not a sequence, torch.fx traces it."""

    def __init__(self, branch=False):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.fc = nn.Linear(8, 10)
        self.branch = branch

    def forward(self, x):
        x = counted(x)
        if self.branch and float(x.sum()) > 0:  # data-dependent: fx cannot trace
            x = x * 1.0
        x = torch.relu(self.stem(x))
        return self.fc(self.blocks(x).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "make",
    [
        cnn,
        _nested,
        lambda: Generic(cnn()),
        lambda: Residual().eval(),
        lambda: Residual(branch=True).eval(),
    ],
)
def test_layer_outputs_are_the_outputs_with_that_weight(make):
    """Running a model from a layer on (the float prefix computed once) gives
    what the whole model gives with the layer's weight replaced, call after call
    (in-place activations after the layer leave the kept batches alone), and the
    model keeps its weights."""
    torch.manual_seed(1)
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = TorchNetwork(model, batch_size=7)  # batches of unequal size
    x = torch.rand(20, 1, 16, 16)
    rng = np.random.default_rng(0)
    for name in net.layer_names:
        run = net.layer_outputs(x, name)
        W = net.weight(name)
        for _ in range(2):
            V = W + 0.3 * rng.standard_normal(W.shape)
            assert_array_equal(run(V), net.outputs(x, {name: V}))
        assert_array_equal(run(W), net.outputs(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match=re.escape("names layers ['nope']")):
        net.layer_outputs(x, "nope")


class SkipSequence(nn.Sequential):
    """A sequence with a forward of its own: its children are not run in order."""

    def forward(self, x):
        return x + super().forward(x)


def test_layer_outputs_of_unusual_sequences(monkeypatch):
    """Each as the whole forward gives it, call after call: a module used twice
    in a sequence, a Sequential subclass with its own forward, a pre-hook that
    writes to the layer's input, and an in-place module before the layer when
    the kept batches pass the budget (the model then runs whole)."""
    torch.manual_seed(0)
    act = nn.Tanh()
    twice = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2))
    skip = nn.Sequential(
        nn.Linear(4, 4),
        SkipSequence(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)),
        nn.Linear(4, 2),
    )
    hooked = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    def double(module, args):
        args[0].mul_(2.0)

    hooked[2].register_forward_pre_hook(double)
    inplace = nn.Sequential(
        nn.Linear(4, 4), nn.LeakyReLU(0.1, inplace=True), nn.Linear(4, 2)
    )
    x = torch.randn(10, 4)
    rng = np.random.default_rng(0)
    cases = [(twice, "2"), (twice, "4"), (skip, "1.0"), (skip, "1.2"), (hooked, "2")]
    cases += [(inplace, "2")]
    for model, name in cases:
        if model is inplace:
            monkeypatch.setattr(_graph, "PREFIX_BYTES", 1)
        net = TorchNetwork(model.eval(), batch_size=4)
        run = net.layer_outputs(x, name)
        for _ in range(2):
            V = net.weight(name) + rng.standard_normal(net.weight(name).shape)
            assert_array_equal(run(V), net.outputs(x, {name: V}), err_msg=name)


def test_layer_outputs_of_a_traced_model_run_what_the_layer_changes():
    """In a model torch.fx traces, what does not depend on the layer runs once
    (the counted input: once per batch), and calls run the rest; a model it
    cannot trace runs whole each call."""
    torch.manual_seed(0)
    x = torch.rand(12, 1, 8, 8)
    for branch, per_call in ((False, 0), (True, 2)):
        net = TorchNetwork(Residual(branch).eval(), batch_size=6)
        for name in ("blocks.1.conv2", "fc"):
            COUNTED[0] = 0
            run = net.layer_outputs(x, name)
            W = net.weight(name)
            for _ in range(3):
                run(W)
            # traced: the check of the graph against the forward on one batch
            # (graph and forward: 2), then what does not depend on the layer
            assert COUNTED[0] == (0 if branch else 2 + 2) + 3 * per_call


def test_walk_of_a_traced_model_runs_it_once(monkeypatch):
    """The walk of a model whose forward is not a sequence carries its quantized
    copy layer to layer on torch.fx's graph (one float pass and one quantized
    pass, the counted input once each per batch, and the graph checked against
    the forward on one batch) instead of a pass stopped at each layer, and gives
    the codes those passes give."""
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.rand(12, 1, 8, 8)
    quantizer = GreedyPathQuantizer(n_bits=3)
    COUNTED[0] = 0
    qnet = quantize_model(model, quantizer, x, batch_size=6)
    assert COUNTED[0] == 2 + 2 + 2  # float pass, the graph's check, quantized pass
    monkeypatch.setattr(_graph, "trace", lambda block, sample: None)
    COUNTED[0] = 0
    stopped = quantize_model(model, quantizer, x, batch_size=6)
    assert COUNTED[0] == 2 * 6  # the float pass, then one per later layer

    assert _graph.same(qnet.state_dict(), stopped.state_dict())
    with torch.no_grad():
        assert torch.equal(qnet(x), stopped(x))


def test_outputs_compared_bit_for_bit():
    """The comparison behind the graph's check (and the walk tests above)."""
    t = torch.randn(3, 2)
    assert _graph.same({"w": (t, 2)}, {"w": (t.clone(), 2)})
    assert not _graph.same({"w": (t, 2)}, {"w": (t + 1e-7, 2)})
    assert not _graph.same([t], (t,)) and not _graph.same(t, t.reshape(2, 3))
    assert not _graph.same({"w": t}, {"v": t}) and not _graph.same(t, 1.0)
    assert not _graph.same(
        t.new_full((1,), float("nan")), t.new_full((1,), float("nan"))
    )


class AddInPlace(nn.Module):
    """A residual added in place by a statement whose result nothing reads."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        a = self.fc1(x)
        out = self.fc2(a)
        out.add_(a)
        return self.fc3(torch.relu(out))


class ReluAfterBranch(nn.Module):
    """A shortcut that reads a tensor before an in-place ReLU writes to it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.down = nn.Linear(8, 8), nn.Linear(8, 8)
        self.relu, self.fc2 = nn.ReLU(inplace=True), nn.Linear(8, 4)

    def forward(self, x):
        x = self.fc1(x)
        shortcut = self.down(x)
        x = self.relu(x)
        return self.fc2(x + shortcut)


class AliasedAdd(nn.Module):
    """``a += ...`` where ``a`` has another name: fx records an out-of-place add."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.fc3, self.fc4 = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        a = self.fc1(x)
        skip = a
        a += self.fc2(a)
        return self.fc3(a) + self.fc4(skip)


def _hooked_in_place():
    model = AddInPlace()

    def clamp(module, args, out):
        out.clamp_(-0.1, 0.1)

    model.fc2.register_forward_hook(clamp)
    return model


def _pre_hooked():
    model = AddInPlace()
    model.fc2.register_forward_pre_hook(lambda m, args: (args[0] * 3,))
    return model


@pytest.mark.parametrize(
    "make", [AddInPlace, ReluAfterBranch, AliasedAdd, _hooked_in_place, _pre_hooked]
)
def test_in_place_writes_and_hooks_as_the_forward_runs_them(make, monkeypatch):
    """Models that write in place, alias tensors, or hook their layers: the walk
    gives the codes of passes stopped at each layer, and running from a layer on
    gives the whole forward's outputs."""
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(24, 8)
    quantizer = GreedyPathQuantizer(n_bits=3)
    walked = quantize_model(model, quantizer, x, batch_size=8)
    net = TorchNetwork(model, batch_size=8)
    for name in net.layer_names:
        V = net.weight(name) + 0.5
        run = net.layer_outputs(x, name)
        for _ in range(2):
            assert_array_equal(run(V), net.outputs(x, {name: V}), err_msg=name)
    monkeypatch.setattr(_graph, "trace", lambda block, sample: None)
    stopped = quantize_model(model, quantizer, x, batch_size=8)
    with torch.no_grad():
        assert torch.equal(walked(x), stopped(x))


def test_layer_outputs_run_the_layers_before_once(monkeypatch):
    """The prefix runs once for all calls; the layer and what follows, each call.
    A container with hooks of its own, or a weight shared with an earlier
    module, makes the whole model run each call (what outputs() runs)."""
    model = _nested()
    calls = {"first": 0, "last": 0}
    model[0][0].register_forward_hook(
        lambda *a: calls.__setitem__("first", calls["first"] + 1)
    )
    model[2][2].register_forward_hook(
        lambda *a: calls.__setitem__("last", calls["last"] + 1)
    )
    net = TorchNetwork(model, batch_size=8)
    x = torch.rand(16, 1, 16, 16)  # two batches
    run = net.layer_outputs(x, "2.2")
    W = net.weight("2.2")
    for _ in range(3):
        run(W)
    assert calls == {"first": 2, "last": 6}
    # a container with a hook runs whole, so the hook sees every call: the
    # layer's block (the modules before it still run once), or the model
    seen = []
    for hooked, first in ((model[2], 2), (model, 6)):
        hooked.register_forward_hook(lambda *a: seen.append(1))
        calls.update(first=0, last=0)
        seen.clear()
        run = TorchNetwork(model, batch_size=8).layer_outputs(x, "2.2")
        for _ in range(3):
            run(W)
        assert calls == {"first": first, "last": 6}
        assert len(seen) == 6 * (1 if hooked is model[2] else 2)
    # kept batches over the budget: it runs whole (outputs still the model's)
    model = _nested()
    model[0][0].register_forward_hook(
        lambda *a: calls.__setitem__("first", calls["first"] + 1)
    )
    calls.update(first=0)
    one_batch = 8 * 16 * 4  # the input of "2.2": 8 rows of 16 float32 features
    monkeypatch.setattr(_graph, "PREFIX_BYTES", one_batch)
    net = TorchNetwork(model, batch_size=8)
    run = net.layer_outputs(x, "2.2")  # the first batch fits, not the second
    for _ in range(3):
        run(W)
    assert calls["first"] == 2 + 6  # the two batches it tried to keep, then whole
    assert_array_equal(run(W + 1.0), net.outputs(x, {"2.2": W + 1.0}))
    # a weight tied to an earlier layer's
    torch.manual_seed(0)
    tied = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    tied[2].weight = tied[0].weight
    with pytest.warns(UserWarning, match="share their weight"):
        net = TorchNetwork(tied)
    x = torch.randn(5, 6)
    V = np.full((6, 6), 0.1)
    assert_array_equal(net.layer_outputs(x, "0")(V), net.outputs(x, {"0": V}))


def test_mlp_layer_outputs_are_the_outputs_with_that_weight():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((12, 8), max_iter=20, random_state=0).fit(X[:200], y[:200])
    net = MLPNetwork(mlp)
    rng = np.random.default_rng(0)
    for name in net.layer_names:
        W = net.weight(name)
        V = W + rng.standard_normal(W.shape)
        run = net.layer_outputs(X[:50], name)
        assert_array_equal(run(V), net.outputs(X[:50], {name: V}))
        assert_array_equal(run(W), net.outputs(X[:50]))
    assert_array_equal(mlp.coefs_[0], net.weight("layer_0"))


def test_hooks_on_quantized_layers_run_on_their_quantized_twins(tmp_path):
    """Forward hooks and pre-hooks registered on a layer run on the layer that
    replaces it: in quantize_model (also from a checkpoint) and in load_into,
    where the caller's handle still removes them. None of skquant's own hooks
    are left behind."""
    from safetensors.torch import save_file

    from skquant.torch import load_into, save_model

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()

    def hooked(model):
        handles = [
            model[0].register_forward_hook(lambda m, i, o: 2 * o),
            model[2].register_forward_pre_hook(lambda m, i: (i[0] + 1,)),
        ]
        return model, handles

    net, _ = hooked(build())
    x = torch.randn(32, 6)
    with torch.no_grad():
        ref = net(x)
    save_file(build().state_dict(), str(tmp_path / "ckpt.safetensors"))
    with torch.device("meta"):
        skeleton, _ = hooked(build())
    runs = [
        quantize_model(net, UniformQuantizer(n_bits=8)),
        quantize_model(net, GreedyPathQuantizer(n_bits=8), x),
        quantize_model(
            skeleton,
            GreedyPathQuantizer(n_bits=8),
            x,
            checkpoint=tmp_path / "ckpt.safetensors",
        ),
    ]
    for qnet in runs:
        assert [
            len(qnet[i]._forward_hooks) + len(qnet[i]._forward_pre_hooks)
            for i in (0, 2)
        ] == [1, 1]
        with torch.no_grad():
            assert float((qnet(x) - ref).norm() / ref.norm()) < 0.02
    save_model(runs[0], tmp_path / "q.skq")
    fresh, handles = hooked(build())
    loaded = load_into(fresh, tmp_path / "q.skq")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), runs[0](x))
        for h in handles:
            h.remove()
        plain = load_into(build(), tmp_path / "q.skq")
        torch.testing.assert_close(loaded(x), plain(x))


def test_parametrized_layers_are_read_without_change_and_load_strictly(tmp_path):
    """spectral_norm's power iteration runs when its weight is read in train
    mode: quantize_model reads it in eval mode, leaving the caller's buffers
    alone. A file of a weight_norm model loads strictly into a fresh one."""
    from torch.nn.utils import parametrizations

    from skquant.torch import load_into, save_model

    torch.manual_seed(0)
    sn = nn.Sequential(parametrizations.spectral_norm(nn.Linear(16, 32)), nn.ReLU())
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    x = torch.randn(8, 16)
    for q in (UniformQuantizer(n_bits=4), GreedyPathQuantizer(n_bits=4)):
        quantize_model(sn, q, x)
        for k, v in sn.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert sn.training and sn[0].parametrizations.weight.training

    def wn():
        torch.manual_seed(0)
        return nn.Sequential(
            parametrizations.weight_norm(nn.Linear(16, 32)), nn.ReLU(), nn.Linear(32, 5)
        ).eval()

    qnet = quantize_model(wn(), UniformQuantizer(n_bits=4))
    save_model(qnet, tmp_path / "wn.skq")
    loaded = load_into(wn(), tmp_path / "wn.skq")  # strict
    with torch.no_grad():
        assert torch.equal(loaded(x), qnet(x))


def test_torchs_own_weight_hooks_stay_with_the_float_layer(tmp_path):
    """Pruning and the old weight_norm rebuild a layer's weight in a pre-hook
    from tensors the quantized layer does not have: those hooks are not
    carried over (a forward raised), the caller's are."""
    from torch.nn.utils import prune

    from skquant.torch import load_into, save_model

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()

    x = torch.randn(4, 8)
    save_model(quantize_model(build(), UniformQuantizer(n_bits=8)), tmp_path / "q.skq")
    plain = load_into(build(), tmp_path / "q.skq")
    for wrap in (
        lambda m: prune.l1_unstructured(m, "weight", 0.5),
        lambda m: torch.nn.utils.weight_norm(m),
    ):
        model = build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm
            wrap(model[0])
        model[0].register_forward_hook(lambda m, i, o: o)
        loaded = load_into(model, tmp_path / "q.skq", strict=False)
        assert len(loaded[0]._forward_hooks) == 1
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), plain(x))


def test_the_result_keeps_its_parametrizations_modes_and_a_root_layer_loads(tmp_path):
    from torch.nn.utils import parametrizations

    from skquant.torch import load_into, save_model

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), parametrizations.spectral_norm(nn.Linear(8, 3))
    )  # train mode; the spectral layer stays float
    qnet = quantize_model(net, {"0": UniformQuantizer(n_bits=4)})
    assert all(m.training for m in qnet.modules())

    def root():
        torch.manual_seed(0)
        return parametrizations.weight_norm(nn.Linear(6, 3)).eval()

    save_model(quantize_model(root(), UniformQuantizer(n_bits=4)), tmp_path / "r.skq")
    loaded = load_into(root(), tmp_path / "r.skq")  # strict
    assert type(loaded).__name__ == "QuantLinear"
