"""Error messages of the torch adapter for models it cannot quantize."""

import re

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skquant import (  # noqa: E402
    ActivationQuantizer,
    GreedyPathQuantizer,
    UniformQuantizer,
)
from skquant.torch import quantize_model  # noqa: E402


@pytest.mark.parametrize(
    "model",
    [nn.LSTM(4, 8), nn.GRU(4, 8), nn.Embedding(10, 4), nn.ConvTranspose2d(2, 3, 3)],
    ids=lambda m: type(m).__name__,
)
def test_unsupported_root_says_the_model_itself(model):
    kind = type(model).__name__
    with pytest.raises(ValueError) as info:
        quantize_model(model, UniformQuantizer(n_bits=3))
    message = str(info.value)
    assert message.startswith(f"the model itself ({kind}) is a layer type")
    assert "nn.Linear, nn.Conv1d and nn.Conv2d" in message
    assert "skip=['']" not in message


def test_unsupported_inner_layer_keeps_the_skip_advice():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 8)
            self.head = nn.Linear(8, 2)

    with pytest.raises(
        ValueError, match=re.escape("layer 'lstm' (LSTM) is not supported")
    ) as info:
        quantize_model(Net(), UniformQuantizer(n_bits=3))
    assert "skip=['lstm']" in str(info.value)


def test_root_without_weight_layers_names_its_type():
    with pytest.raises(
        ValueError, match=re.escape("model (LayerNorm) has no nn.Linear")
    ):
        quantize_model(nn.LayerNorm(4), UniformQuantizer(n_bits=3))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


class _Branchy(nn.Module):  # walked by stopped passes (fx cannot trace it)
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h if h.sum() > -1e30 else -h)


@pytest.mark.parametrize("make", [_mlp, _Branchy], ids=["sequence", "module"])
@pytest.mark.parametrize(
    "data, error, match",
    [
        ([{"x": torch.ones(4, 8)}], TypeError, "a batch of the data is a dict"),
        ("abc", TypeError, "calibration data must be a tensor.*got str"),
        (
            torch.ones(20, 8, dtype=torch.long),
            ValueError,
            "calibration data.* does not fit the model.*(floating dtype|Long)",
        ),
        (
            torch.full((20, 8), float("nan")),
            ValueError,
            "layer 'fc1'|layer '0'",
        ),
        (torch.randn(8), ValueError, r"a batch \(2-D or more\).*got shape \(8,\)"),
    ],
    ids=["dict", "str", "integer", "nan", "one-sample"],
)
def test_calibration_data_errors_name_the_problem(make, data, error, match):
    with pytest.raises(error, match=match):
        quantize_model(make(), GreedyPathQuantizer(n_bits=4), data)


def test_a_list_of_rows_is_an_array():
    X = torch.randn(30, 8, dtype=torch.float64)
    q = GreedyPathQuantizer(n_bits=4)
    got = quantize_model(_mlp(), q, X.tolist())
    want = quantize_model(_mlp(), q, X.numpy())
    for a, b in zip(got.parameters(), want.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            {"batch_size": 0},
            ValueError,
            "batch_size must be an int >= 1, got batch_size=0",
        ),
        ({"max_rows": -1}, ValueError, "max_rows must be an int >= 1 or None"),
        ({"runtime": {"7": "float"}}, ValueError, r"runtime names layers \['7'\]"),
        ({"skip": 5}, TypeError, "skip must be a module name, a module class"),
        ({"random_state": "a"}, ValueError, "random_state must be an int >= 0 or"),
        # ("no" is truthy: it gave a tuple back)
        ({"return_report": "no"}, TypeError, "return_report must be a bool, got"),
        ({"verbose": "no"}, TypeError, "verbose must be a bool, got verbose='no'"),
    ],
    ids=["batch_size", "max_rows", "runtime", "skip", "random_state", "report", "v"],
)
def test_arguments_are_checked_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        quantize_model(
            _mlp(), GreedyPathQuantizer(n_bits=4), torch.randn(8, 8), **kwargs
        )


def test_a_model_that_is_not_a_module():
    with pytest.raises(
        TypeError, match="model must be a torch.nn.Module, got function"
    ):
        quantize_model(lambda x: x, UniformQuantizer(n_bits=4))


def test_meta_state_without_a_source_is_named(tmp_path):
    from safetensors.torch import save_file

    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match=r"'0.weight'.*meta device.*checkpoint="):
        quantize_model(meta, UniformQuantizer(n_bits=4))

    class Table(nn.Module):  # a buffer no checkpoint holds
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)
            self.register_buffer("table", torch.arange(8.0), persistent=False)

        def forward(self, x):
            return self.fc(x + self.table)

    path = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in Table().state_dict().items()}, path)
    with torch.device("meta"):
        meta = Table()
    with pytest.raises(ValueError, match=r"buffers \['table'\].*persistent=False"):
        quantize_model(meta, UniformQuantizer(n_bits=4), checkpoint=path)


def test_a_model_with_several_outputs_in_the_sensitivity():
    from skquant.torch import measure_sensitivity

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(x), x

    X, y = torch.randn(32, 8), torch.arange(32) % 3
    with pytest.raises(TypeError, match="returns a tuple.*one output tensor"):
        measure_sensitivity(Pair(), X, y, bits=(2, 8))


def test_an_inputs_and_labels_pair_is_read_as_its_inputs():
    """(X, y) as calibration data: X (y was read as a second batch)."""
    X, y = torch.randn(30, 8), torch.arange(30) % 3
    q = GreedyPathQuantizer(n_bits=4)
    want = quantize_model(_mlp(), q, X)
    for pair in ((X, y), (X.numpy(), y.numpy()), (X, torch.randn(30))):
        got = quantize_model(_mlp(), q, pair)
        for a, b in zip(got.parameters(), want.parameters()):
            assert torch.equal(a, b)
    # two batches alike stay two batches
    two = quantize_model(_mlp(), q, (X[:15], X[15:]), batch_size=15)
    for a, b in zip(
        two.parameters(), quantize_model(_mlp(), q, X, batch_size=15).parameters()
    ):
        assert torch.equal(a, b)


def test_load_into_and_the_sensitivity_check_their_arguments(tmp_path):
    from skquant.torch import load_into, measure_sensitivity, save_model

    save_model(quantize_model(_mlp(), UniformQuantizer(n_bits=4)), tmp_path / "m.skq")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .*got str"):
        load_into("m", tmp_path / "m.skq")
    with pytest.raises(TypeError, match="strict must be a bool, got strict='no'"):
        load_into(_mlp(), tmp_path / "m.skq", strict="no")  # (it read as True)
    with pytest.raises(TypeError, match="got the class UniformQuantizer: pass an"):
        quantize_model(_mlp(), UniformQuantizer)
    X, y = torch.randn(30, 8), torch.arange(30) % 3
    with pytest.raises(
        ValueError, match="n_probes must be an int >= 1, got n_probes=0"
    ):
        measure_sensitivity(_mlp(), X, y, bits=(2, 4), hessian=True, n_probes=0)
    bad = X.clone()
    bad[0, 0] = float("nan")  # (every noise and exponent came out NaN)
    with pytest.raises(ValueError, match="X holds 1 NaN or inf values"):
        measure_sensitivity(_mlp(), bad, y, bits=(2, 4))
    with pytest.raises(ValueError, match="X does not fit the model: mat1 and mat2"):
        measure_sensitivity(_mlp(), X[:, :3], y, bits=(2, 4))  # (a RuntimeError)


def test_a_load_that_does_not_fit_leaves_the_model_as_it_was(tmp_path):
    """load_into checks the whole file against the model before it changes it: a
    last layer of another shape used to raise after the first layer was swapped
    for a quantized one and its weights replaced."""
    from skquant.torch import load_into, save_model

    torch.manual_seed(0)
    saved = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    save_model(quantize_model(saved, UniformQuantizer(n_bits=4)), tmp_path / "m.skq")
    other = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer '2' has weight shape \[3, 8\]"):
        load_into(other, tmp_path / "m.skq")
    assert [type(m) for m in other] == [nn.Linear, nn.ReLU, nn.Linear]
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k]), k
    # a plain entry of another shape (a bias) is found before anything changes too
    bias = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    save_model(bias, tmp_path / "float.skq")
    wider = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    wider[0].bias = nn.Parameter(torch.zeros(9))
    with pytest.raises(ValueError, match=r"'0.bias' has shape \(8,\) in the file"):
        load_into(wider, tmp_path / "float.skq")
    assert torch.equal(wider[0].bias, torch.zeros(9))


def test_a_model_with_entries_the_file_lacks_is_refused_unless_not_strict(tmp_path):
    """A model with more layers than the file loaded without a word, its extra
    layers keeping their random weights; as load_state_dict, strict=False keeps
    them on purpose."""
    from skquant.torch import load_into, save_model

    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    save_model(quantize_model(small, UniformQuantizer(n_bits=4)), tmp_path / "m.skq")
    bigger = nn.Sequential(
        nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 2)
    )
    with pytest.raises(ValueError, match=r"entries \['3.weight', '3.bias'\] have no"):
        load_into(bigger, tmp_path / "m.skq")
    assert type(bigger[0]) is nn.Linear
    kept = bigger[3].weight.detach().clone()
    load_into(bigger, tmp_path / "m.skq", strict=False)
    assert type(bigger[0]).__name__ == "QuantLinear"
    assert torch.equal(bigger[3].weight, kept)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.equal(bigger[:3](x), load_into(small, tmp_path / "m.skq")(x))


def test_sensitivity_labels_are_checked_against_the_outputs():
    """Labels outside the model's outputs made every accuracy 0 and every
    tolerated noise inf (each layer would get its smallest bit-width); a column
    of labels is raveled, as scikit-learn does."""
    from sklearn.exceptions import DataConversionWarning

    from skquant.torch import measure_sensitivity

    X, y = torch.randn(60, 8), torch.arange(60) % 3
    with pytest.raises(ValueError, match=r"y holds labels \[10, 11, 12\] outside"):
        measure_sensitivity(_mlp(), X, y + 10, bits=(2, 4))
    with pytest.raises(ValueError, match="fractional values"):
        measure_sensitivity(_mlp(), X, y + 0.5, bits=(2, 4))
    with pytest.raises(ValueError, match=r"one label per sample.*y.shape=\(60, 3\)"):
        measure_sensitivity(_mlp(), X, nn.functional.one_hot(y), bits=(2, 4))
    flat = measure_sensitivity(_mlp(), X, y, bits=(2, 4))
    with pytest.warns(DataConversionWarning):
        column = measure_sensitivity(_mlp(), X, y[:, None], bits=(2, 4))
    assert (column.accuracy == flat.accuracy).all()


def test_a_quantized_layer_refuses_integer_inputs():
    """An int64 input dequantized the weights into int64 (all zeros) and gave
    zeros, with a warning only; the float layer raises."""
    x = torch.randint(0, 3, (2, 8))
    for activations in (None, "dynamic"):  # the input grids ran first
        qnet = quantize_model(
            _mlp(), UniformQuantizer(n_bits=4), activations=activations
        )
        with pytest.raises(TypeError, match="QuantLinear takes floating-point"):
            qnet(x)


def test_a_quantized_layer_refuses_a_new_weight():
    """torch's fuse_conv_bn_eval sets a float weight on a copy of the conv: it
    raised KeyError("attribute 'weight' already exists"); the message now says
    to fuse before quantizing, and the layer keeps its codes."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
    qnet = quantize_model(net, UniformQuantizer(n_bits=4), torch.randn(4, 3, 8, 8))
    codes = qnet[0].weight_codes
    with pytest.raises(TypeError, match="QuantConv2d .*fuse BatchNorm into the"):
        fuse_conv_bn_eval(qnet[0], qnet[1])
    for value in (nn.Parameter(torch.zeros(8, 3, 3, 3)), torch.zeros(8, 3, 3, 3)):
        with pytest.raises(TypeError, match="takes no new one"):
            qnet[0].weight = value
    assert torch.equal(qnet[0].weight_codes, codes)
    qnet[0].bias = nn.Parameter(torch.ones(8))  # a new bias is taken
    assert torch.equal(qnet[0].bias, torch.ones(8))


def test_layout_helpers_check_the_layer_and_the_shape():
    import numpy as np

    from skquant.torch import TorchNetwork, matrix_to_weight, weight_to_matrix

    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"of shape \(3, 2\).*got W of shape \(2, 3\)"):
        matrix_to_weight(torch.arange(6.0).reshape(2, 3).numpy(), lin)
    with pytest.raises(ValueError, match=r"\(n_in, n_out\) matrix"):
        TorchNetwork(nn.Sequential(nn.Linear(20, 16))).with_weights(
            {"0": torch.zeros(16, 20).numpy()}
        )
    with pytest.raises(TypeError, match="got ConvTranspose2d instead"):
        weight_to_matrix(nn.ConvTranspose2d(2, 3, 2))
    with pytest.raises(ValueError, match=r"got weight of shape \(5,\)"):
        weight_to_matrix(lin, torch.ones(5))
    with pytest.raises(
        TypeError, match="weight must be a torch.Tensor or None, got nd"
    ):
        weight_to_matrix(lin, np.ones((2, 3)))  # (an AttributeError)
    # NaN, and float64 values beyond float32's range, were made inf or NaN
    for bad in (np.full((3, 2), 1e300), np.full((3, 2), np.nan)):
        with pytest.raises(ValueError, match="W must hold finite values within"):
            matrix_to_weight(bad, lin)
    with pytest.raises(TypeError, match="W must hold real numbers, got W.dtype=comp"):
        matrix_to_weight(np.ones((3, 2)) + 1j, lin)
    W = weight_to_matrix(lin)
    assert torch.equal(matrix_to_weight(W, lin), lin.weight.detach())


def test_quantize_model_names_targets_loss_fn_and_the_layer():
    from skquant import AdaptivePrecisionQuantizer

    X, y = torch.randn(64, 8), torch.arange(64) % 3
    apq = AdaptivePrecisionQuantizer(budget=0.01)
    with pytest.raises(ValueError, match=r"did not take the targets .*\(64, 1\)"):
        quantize_model(_mlp(), apq, X, targets=y[:, None])
    with pytest.raises(ValueError, match="did not take the targets"):
        quantize_model(_mlp(), apq, X, targets=y + 5)
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        quantize_model(_mlp(), apq, X, targets=y, loss_fn="mse")
    net = _mlp()
    with torch.no_grad():
        net[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer '2': .*NaN"):
        quantize_model(net, UniformQuantizer(n_bits=4))
    with pytest.raises(ValueError, match=r"no nn.Linear.*skip=\[''\]"):
        quantize_model(_mlp(), UniformQuantizer(n_bits=4), skip=[""])


@pytest.mark.parametrize(
    "call",
    ["capture_inputs", "loss_gradients", "measure_sensitivity", "TorchNetwork"],
)
def test_batch_size_zero_is_named(call):
    """``range() arg 3 must not be zero`` came out of five entry points."""
    import skquant.torch as sqt

    X, y = torch.randn(8, 8), torch.arange(8) % 3
    calls = {
        "capture_inputs": lambda: sqt.capture_inputs(
            _mlp(), {"0": _mlp()[0]}, X, batch_size=0
        ),
        "loss_gradients": lambda: sqt.loss_gradients(
            _mlp(), nn.CrossEntropyLoss(), (X, y), batch_size=0
        ),
        "measure_sensitivity": lambda: sqt.measure_sensitivity(
            _mlp(), X, y, bits=(2, 4), batch_size=0
        ),
        "TorchNetwork": lambda: sqt.TorchNetwork(_mlp(), batch_size=0).outputs(X),
    }
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        calls[call]()


def test_fake_quantization_refuses_impossible_grids():
    """A zero step gave zeros, a negative one was taken, qmin > qmax clamped
    everything to qmin; a number as the step raised AttributeError."""
    import numpy as np

    from skquant import AdaptivePrecisionQuantizer
    from skquant.torch import FakeQuantize, fake_quantize_ste

    x = torch.tensor([0.4, 1.5, -2.5])
    for step in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="step must hold finite steps > 0"):
            fake_quantize_ste(x, torch.tensor(step), -7, 7)
    with pytest.raises(ValueError, match="qmin <= qmax, got qmin=7 and qmax=-7"):
        fake_quantize_ste(x, torch.tensor(1.0), 7, -7)
    with pytest.raises(ValueError, match="qmin and qmax must be finite"):
        fake_quantize_ste(x, torch.tensor(1.0), float("nan"), 7)  # (NaN outputs)
    assert torch.equal(fake_quantize_ste(x, 0.5, -7, 7), torch.tensor([0.5, 1.5, -2.5]))
    # an integer x took the step in its dtype (0.5 became 0, all outputs 0)
    with pytest.raises(TypeError, match="x must be a floating-point torch.Tensor"):
        fake_quantize_ste(torch.tensor([1, 2, 3]), torch.tensor(0.5), -7, 7)
    # a number as the zero point raised AttributeError
    shifted = fake_quantize_ste(x, 0.5, -7, 7, zero_point=1.0)
    assert torch.equal(shifted, fake_quantize_ste(x, 0.5, -7, 7, torch.tensor(1.0)))
    with pytest.raises(ValueError, match="scale must hold finite steps > 0"):
        FakeQuantize(torch.tensor([0.1, 0.0]), -7, 7)
    with pytest.raises(ValueError, match="qmin must be an int, got qmin=-7.5"):
        FakeQuantize(torch.tensor([0.1]), -7.5, 7)  # (was made -7)
    with pytest.raises(ValueError, match="zero_point must be finite"):
        FakeQuantize(torch.tensor([0.1]), -7, 7, zero_point=torch.tensor([np.nan]))
    rng = np.random.default_rng(0)
    W, G = rng.standard_normal((8, 4)), rng.standard_normal((8, 4))
    apq = AdaptivePrecisionQuantizer().fit(W, gradient=G)
    with pytest.raises(TypeError, match="got AdaptivePrecisionQuantizer instead"):
        FakeQuantize.from_estimator(apq)


def test_small_helpers_name_their_arguments(tmp_path):
    from safetensors.torch import save_file

    import skquant.torch as sqt

    m = _mlp()
    X = torch.randn(4, 8)
    with pytest.raises(TypeError, match="modules must be a dict .*got a list"):
        sqt.capture_inputs(m, [m[0]], X)
    with pytest.raises(TypeError, match=r"got layers \{'1': 'ReLU'\}"):
        sqt.capture_inputs(m, {"1": m[1]}, X)
    save_file({"0.weight": torch.ones(3, 2)}, tmp_path / "c.safetensors")
    ck = sqt.Checkpoint(tmp_path / "c.safetensors")
    with pytest.raises(KeyError, match="has no tensor 'nope'"):
        ck.shape("nope")
    with pytest.raises(TypeError, match="dtype must be a torch.dtype or None"):
        ck.read("0.weight", dtype="float64")
    with pytest.raises(ValueError, match=r"names layers \['9'\]"):
        sqt.TorchNetwork(m).weight("9")
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        sqt.loss_gradients(m, None, (X, torch.zeros(4, dtype=torch.int64)))


def test_missing_calibration_data_is_named_as_quantize_model_names_it():
    with pytest.raises(ValueError, match="got calibration_data=None instead"):
        quantize_model(_mlp(), GreedyPathQuantizer(n_bits=4))


def test_a_quantized_layers_bias_must_match_the_file(tmp_path):
    """A review found load_into taking a replaced layer's bias for granted: a
    file without it kept the model's random (or, built on meta, uninitialised)
    bias, and a file with it for a layer without one gave a bare KeyError."""
    from skquant.torch import load_into, save_model

    def net(bias):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 2))

    for saved_bias in (False, True):
        save_model(
            quantize_model(net(saved_bias), UniformQuantizer(n_bits=4)),
            tmp_path / f"{saved_bias}.skq",
        )
    with pytest.raises(ValueError, match=r"entries \['0.bias'\] have no value"):
        load_into(net(True), tmp_path / "False.skq")
    with pytest.raises(ValueError, match="'0.bias' has no place in the model"):
        load_into(net(False), tmp_path / "True.skq")
    with torch.device("meta"):
        meta = net(True)
    with pytest.raises(ValueError, match="on the meta device"):
        load_into(meta, tmp_path / "False.skq")


def test_fake_quantize_exports_and_takes_a_float64_step():
    """The step check ran inside torch.export's trace (bool() of a traced
    tensor); a number as the step went through float32."""
    from skquant.torch import FakeQuantize, fake_quantize_ste

    fq = FakeQuantize(torch.tensor([0.1, 0.2]), -7, 7)
    program = torch.export.export(fq, (torch.randn(4, 2),))
    x = torch.randn(4, 2)
    assert torch.equal(program.module()(x), fq(x))
    x64 = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    same = fake_quantize_ste(x64, torch.tensor(0.1, dtype=torch.float64), -7, 7)
    assert torch.equal(fake_quantize_ste(x64, 0.1, -7, 7), same)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x, y):
        return self.head(torch.relu(self.a(x)) * torch.sigmoid(self.b(y)))


def test_a_model_with_two_inputs_is_told_to_wrap_them():
    pairs = [(torch.randn(8, 6), torch.randn(8, 4)) for _ in range(2)]
    model = _TwoInputs().eval()
    # (x, y) pairs are (input, target): the forward misses its second input
    with pytest.raises(TypeError, match="wrap a model with several inputs"):
        quantize_model(model, GreedyPathQuantizer(n_bits=4), pairs)
    with pytest.raises(TypeError, match="a batch of the data is a sequence of tensors"):
        quantize_model(model, GreedyPathQuantizer(n_bits=4), [(p,) for p in pairs])


def test_a_type_error_inside_the_forward_is_the_forwards():
    class Buggy(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(8, 8)

        def forward(self, x):
            return torch.cat(self.l(x), x)  # (cat takes a sequence)

    with pytest.raises(TypeError, match=r"^cat\(\): argument 'tensors'"):
        quantize_model(Buggy(), GreedyPathQuantizer(n_bits=4), torch.randn(16, 8))


def test_static_grids_leave_the_input_check_to_the_walk():
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) expects input"):
        quantize_model(
            nn.Sequential(nn.Linear(9, 3)),
            GreedyPathQuantizer(n_bits=4),
            torch.randn(16, 8),
            activations=ActivationQuantizer(),
        )


class _TiedEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.dec = nn.Embedding(20, 8), nn.Linear(8, 20, bias=False)
        self.dec.weight = self.emb.weight

    def forward(self, t):
        return self.dec(torch.tanh(self.emb(t)))


def test_a_weight_tied_to_a_float_module_is_named():
    model = _TiedEmbedding().eval()
    with pytest.warns(UserWarning, match=re.escape("['emb.weight'] are the weights")):
        qnet = quantize_model(model, UniformQuantizer(n_bits=4), skip=["emb"])
    assert torch.equal(qnet.emb.weight, model.emb.weight)  # left float there


def test_an_empty_calibration_batch_is_left_out():
    class Res(nn.Module):  # (the generic walk)
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    torch.manual_seed(0)
    net, X1, X2 = Res().eval(), torch.randn(16, 8), torch.randn(16, 8)
    quantizer = GreedyPathQuantizer(n_bits=3)
    got = quantize_model(net, quantizer, [X1, torch.zeros(0, 8), X2])
    want = quantize_model(net, quantizer, [X1, X2])
    for name in ("a", "b"):
        assert torch.equal(getattr(got, name).weight, getattr(want, name).weight)
    with pytest.raises(ValueError, match="calibration data holds no sample"):
        quantize_model(net, quantizer, [torch.zeros(0, 8)])


def test_a_mapping_leaves_an_embedding_it_does_not_name_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 8), nn.Linear(8, 3))
    X = torch.randint(0, 20, (16, 4))
    qnet = quantize_model(model, {"2": UniformQuantizer(n_bits=4)}, X)
    assert type(qnet[0]) is nn.Embedding and type(qnet[1]) is nn.Linear
    assert type(qnet[2]).__name__ == "QuantLinear"
    with pytest.raises(ValueError, match=r"layer '0' \(Embedding\) is not supported"):
        quantize_model(model, {"0": UniformQuantizer(n_bits=4)}, X)
    with pytest.raises(ValueError, match=r"layer '0' \(Embedding\) is not supported"):
        quantize_model(model, {"*": UniformQuantizer(n_bits=4)}, X)
    attention = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 3))
    with pytest.raises(
        ValueError, match=r"layer '0' \(MultiheadAttention\) is not supported"
    ):  # a layer inside it, named: the module is refused, not skipped
        quantize_model(attention, {"0.out_proj": UniformQuantizer(n_bits=4)})


@pytest.mark.parametrize("generic", [False, True])
def test_token_ids_past_the_vocabulary_are_named(generic):
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(20, 8), nn.Linear(8, 3)

        def forward(self, t):
            return self.fc(torch.tanh(self.emb(t)))

    model = LM() if generic else nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 3))
    X = torch.randint(0, 25, (16, 4))
    X[0, 0] = 24
    with pytest.raises(ValueError, match="calibration data .*does not fit the model"):
        quantize_model(model, GreedyPathQuantizer(n_bits=3), X, skip=[nn.Embedding])


def test_a_runtime_error_names_the_layer():
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '0': runtime='packed' holds codes"):
        quantize_model(net, UniformQuantizer(n_bits=8), runtime="packed")


def test_static_calibration_data_that_does_not_fit_is_named():
    """Static activation calibration checks each layer's input as the weights'
    walk does: uint8 images raised the layer's TypeError, and an unbatched
    sample the float model cannot run was taken (grids fitted on it)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4))
    acts = ActivationQuantizer(n_bits=8)
    for data, what in (
        (torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8), "of a floating dtype"),
        (torch.randn(3, 8, 8), r"layer '3' .*last dimension 288, got shape \(8, 36\)"),
    ):
        with pytest.raises(ValueError, match=f"calibration data does not fit .*{what}"):
            quantize_model(
                net.eval(), UniformQuantizer(n_bits=4), data, activations=acts
            )
