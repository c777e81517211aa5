"""Export to ONNX: integer weights, activation grids, checked in ONNX Runtime."""

import builtins
import warnings

import numpy as np
import pytest

import skquant.torch._onnx as export_module
import skquant.torch._onnxcheck as check_module

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

from skquant import (  # noqa: E402
    ActivationQuantizer,
    BinaryQuantizer,
    GPTQQuantizer,
    GreedyPathQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant.torch import export_onnx, quantize_model  # noqa: E402


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    ).eval()


def run(path, x, optimise=False):
    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def weight_types(path):
    model = onnx.load(str(path))
    return {
        i.name: onnx.helper.tensor_dtype_to_string(i.data_type)
        for i in model.graph.initializer
        if i.name.endswith(".weight_q")
    }


@pytest.mark.parametrize(
    "quantizer, kind",
    [
        (UniformQuantizer(n_bits=8), "INT8"),
        (GreedyPathQuantizer(n_bits=4), "INT4"),
        (GPTQQuantizer(n_bits=3), "INT4"),  # no 3-bit type: the next one
        (UniformQuantizer(n_bits=2), "INT2"),
        (TernaryQuantizer(), "INT2"),
        (BinaryQuantizer(), "INT2"),
    ],
)
def test_weights_are_stored_as_integers_and_run_the_same(tmp_path, quantizer, kind):
    net = cnn()
    X = torch.randn(16, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_model(net, quantizer, X)
        report = export_onnx(qnet, X, tmp_path / "m.onnx")
    types = weight_types(tmp_path / "m.onnx")
    assert set(types.values()) == {f"TensorProto.{kind}"} and len(types) == 3
    assert report["max_rel_deviation"] <= 1e-4
    # another batch size, and ONNX Runtime's own optimisations
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        want = qnet(x).numpy()
    for optimise in (False, True):
        got = run(tmp_path / "m.onnx", x, optimise)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize(
    "activations", [ActivationQuantizer(8), ActivationQuantizer(4, symmetric=True)]
)
def test_static_activation_grids_are_quantize_dequantize_pairs(tmp_path, activations):
    net = cnn()
    X = torch.randn(64, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_model(
            net, UniformQuantizer(n_bits=4), X, activations=activations
        )
        report = export_onnx(qnet, X, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("Clip") == 3
    # the convolutions: their weights and inputs dequantized; the Linear layer
    # multiplies the integer codes
    assert report["nodes"] == {
        "0": "DequantizeLinear",
        "2": "DequantizeLinear",
        "5": "MatMulInteger",
    }
    assert ops.count("DequantizeLinear") == 4 and ops.count("MatMulInteger") == 1
    with torch.no_grad():
        want = qnet(X).numpy()
    got = run(tmp_path / "m.onnx", X)
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()


def test_bit_table_float_layers_and_file_size(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    table = {"0": UniformQuantizer(n_bits=4), "2": UniformQuantizer(n_bits=8)}
    qnet = quantize_model(net, table)  # layer 4 stays float
    X = torch.randn(8, 512)
    report = export_onnx(qnet, X, tmp_path / "m.onnx")
    assert report["layers"] == {"0": "int4", "2": "int8"}
    types = weight_types(tmp_path / "m.onnx")
    assert types == {"0.weight_q": "TensorProto.INT4", "2.weight_q": "TensorProto.INT8"}
    # codes at the type's width, float32 scales, float32 biases and the float layer
    counted = 512 * 256 // 2 + 256 * 64 + 4 * (256 + 64) + 4 * (256 + 64 + 10)
    counted += 4 * (64 * 10)
    size = (tmp_path / "m.onnx").stat().st_size
    assert counted <= size <= counted + 32 * 1024


def test_clear_errors(tmp_path, monkeypatch):
    net = cnn()
    with pytest.raises(ValueError, match="model has no quantized layer"):
        export_onnx(net, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        export_onnx("net", torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")
    qnet = quantize_model(net, UniformQuantizer(n_bits=8))
    with pytest.raises(ValueError, match="matmul_nbits must be None, 'float' or"):
        export_onnx(qnet, torch.randn(2, 1, 8, 8), "m.onnx", matmul_nbits="int4")
    x = torch.randn(2, 1, 8, 8)
    for bad in ((x,), None, [x, x]):
        with pytest.raises(TypeError, match="example_input must be one tensor"):
            export_onnx(qnet, bad, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset must be an int >= 1 or None, got"):
        export_onnx(qnet, x, tmp_path / "m.onnx", opset="x")
    with pytest.raises(ValueError, match="rtol must be a finite number > 0, got rtol"):
        export_onnx(qnet, x, tmp_path / "m.onnx", rtol=-1)
    with pytest.raises(TypeError, match="check must be a bool, got check='x'"):
        export_onnx(qnet, x, tmp_path / "m.onnx", check="x")
    with pytest.raises(ValueError, match=r"example_input has dtype torch.float64"):
        export_onnx(qnet, x.double(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="path=.* is a folder"):  # (IsADirectoryError)
        export_onnx(qnet, x, tmp_path)
    with pytest.raises(TypeError, match="path must be a str or path-like, got 3"):
        export_onnx(qnet, x, 3)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")  # the check's deviation would be NaN
    with pytest.raises(ValueError, match="example_input holds NaN or inf"):
        export_onnx(qnet, nan, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset=1000 is above what torch's exporter"):
        export_onnx(qnet, x, tmp_path / "m.onnx", opset=1000)
    # an input the model does not take: its own error (the exporter's blamed
    # data-dependent control flow)
    with pytest.raises(ValueError, match=r"example_input of shape \(2, 5\) does not"):
        export_onnx(qnet, torch.randn(2, 5), tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant features; simulated inputs
        per_feature = quantize_model(
            net,
            UniformQuantizer(n_bits=8),
            torch.randn(32, 1, 8, 8),
            activations=ActivationQuantizer(8, granularity="per_feature"),
        )
    with pytest.raises(ValueError, match=r"layers \['2', '5'\] have per-feature"):
        export_onnx(per_feature, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ImportError, match=r"pip install 'skquant\[onnx\]'"):
        export_onnx(qnet, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")


def test_opset_too_old_is_refused(tmp_path):
    qnet = quantize_model(cnn(), TernaryQuantizer())
    with pytest.raises(ValueError, match=r"opset=21 is too old .*\(INT2 tensors need"):
        export_onnx(qnet, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", opset=21)
    report = export_onnx(qnet, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", opset=25)
    assert report["opset"] == 25
    # INT4 codes multiplied as integers are INT4 tensors too
    X = torch.randn(64, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w4a8 = quantize_model(
            mlp(), UniformQuantizer(n_bits=4), X, activations=ActivationQuantizer(8)
        )
    with pytest.raises(ValueError, match=r"opset=20 is too old .*\(INT4 tensors need"):
        export_onnx(w4a8, X, tmp_path / "m.onnx", opset=20)


def test_per_parameter_precision_exports_exact_values(tmp_path):
    from skquant import AdaptivePrecisionQuantizer

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 3))
    X, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_model(net, AdaptivePrecisionQuantizer(max_bits=6), X, targets=y)
    report = export_onnx(qnet, X, tmp_path / "m.onnx")
    assert set(report["layers"].values()) <= {"int4", "int8"}
    assert report["max_rel_deviation"] <= 1e-4


def test_batchnorm_after_a_quantized_conv_is_kept(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_()
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(0.5, 2)
    net.eval()
    qnet = quantize_model(net, UniformQuantizer(n_bits=8))
    report = export_onnx(qnet, torch.randn(8, 1, 8, 8), tmp_path / "m.onnx")
    assert report["max_rel_deviation"] <= 1e-4
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "BatchNormalization" in ops


def mlp(n_in=40):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(n_in, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5)
    ).eval()


@pytest.mark.parametrize(
    "quantizer, op",
    # 4-bit weights: 8-bit inputs (DynamicQuantizeLinear); 8-bit weights with codes
    # above 64: 7-bit inputs, from the input's range, as the torch runtime does
    [
        (UniformQuantizer(n_bits=4), "DynamicQuantizeLinear"),
        (UniformQuantizer(n_bits=8), "ReduceMin"),
    ],
)
@pytest.mark.parametrize("make, shape", [(cnn, (16, 1, 8, 8)), (mlp, (6, 3, 40))])
def test_dynamic_activation_grids_are_computed_in_the_graph(
    tmp_path, quantizer, op, make, shape
):
    qnet = quantize_model(make(), quantizer, activations="dynamic")
    report = export_onnx(qnet, torch.randn(*shape), tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count(op) == 3
    assert report["max_rel_deviation"] <= 1e-2
    # the grid is per call: another batch, another grid, the same as the model's
    x = 3 * torch.randn(5, *shape[1:])
    with torch.no_grad():
        want = qnet(x).numpy()
        simulated = [m._fake_input(x) for m in [qnet[0]]][0]
    got = run(tmp_path / "m.onnx", x)
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()
    # the first layer's input grid has 2**8 - 1 or 2**7 - 1 steps over the range
    levels = len(np.unique(simulated.numpy()))
    assert levels <= (256 if op == "DynamicQuantizeLinear" else 128)


def affine_mlp(n_in):
    """An MLP whose layers have affine grids: unsigned codes, per-output zero points."""
    from skquant import QuantizedTensor
    from skquant.torch import QuantLinear

    rng = np.random.default_rng(0)
    net = mlp(n_in)
    for i in (0, 2, 4):
        n_out, n_in_i = net[i].weight.shape
        qt = QuantizedTensor(
            codes=rng.integers(0, 16, (n_in_i, n_out)).astype(np.uint8),
            scale=rng.uniform(0.01, 0.1, n_out).astype(np.float32),
            n_bits=4,
            qmin=0,
            qmax=15,
            alphabet="affine",
            zero_point=rng.integers(0, 16, n_out).astype(np.uint8),
        )
        net[i] = QuantLinear.from_float(net[i], qt)
    return net


@pytest.mark.parametrize(
    "quantizer",
    [
        UniformQuantizer(n_bits=8),
        UniformQuantizer(n_bits=4),
        GPTQQuantizer(n_bits=3),
        TernaryQuantizer(),
        BinaryQuantizer(),
        "affine",  # unsigned codes, zero points
    ],
)
@pytest.mark.parametrize("n_in", [40, 300])  # one block of 64; 3 blocks of 128
def test_matmul_nbits_runs_the_same_products(tmp_path, quantizer, n_in):
    X = torch.randn(64, n_in)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if quantizer == "affine":
            qnet = affine_mlp(n_in)
        else:
            qnet = quantize_model(mlp(n_in), quantizer, X)
    report = export_onnx(qnet, X, tmp_path / "m.onnx", matmul_nbits="float")
    assert set(report["nodes"].values()) == {"MatMulNBits"}
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert {n.op_type for n in graph.node} == {"MatMulNBits", "Add", "Relu"}
    assert not [
        i
        for i in graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and i.name.endswith("weight")
    ]
    assert report["max_rel_deviation"] <= 1e-5
    x = torch.randn(4, 7, n_in)  # 3-D inputs: Transpose -> MatMul in the graph
    report = export_onnx(qnet, x, tmp_path / "m3.onnx", matmul_nbits="float")
    graph = onnx.load(str(tmp_path / "m3.onnx")).graph
    assert {n.op_type for n in graph.node} == {"MatMulNBits", "Add", "Relu"}
    assert report["max_rel_deviation"] <= 1e-5
    # integer products: the inputs on 8-bit grids, a deviation of about 1e-2
    report = export_onnx(qnet, X, tmp_path / "m8.onnx", matmul_nbits="int8")
    assert 1e-6 < report["max_rel_deviation"] <= 3e-2


def test_matmul_nbits_leaves_convolutions_and_wide_codes_to_dequantize(tmp_path):
    from skquant import AdaptivePrecisionQuantizer

    X = torch.randn(32, 1, 8, 8)
    qnet = quantize_model(cnn(), UniformQuantizer(n_bits=4), X)
    report = export_onnx(qnet, X, tmp_path / "m.onnx", matmul_nbits="float")
    assert report["nodes"] == {
        "0": "DequantizeLinear",
        "2": "DequantizeLinear",
        "5": "MatMulNBits",
    }
    net = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 3))
    X, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_model(
            net, AdaptivePrecisionQuantizer(max_bits=12), X, targets=y
        )
    report = export_onnx(qnet, X, tmp_path / "m.onnx", matmul_nbits="float")
    for name, kind in report["layers"].items():
        want = "MatMulNBits" if kind[-1] in "248" else "DequantizeLinear"
        assert report["nodes"][name] == want


def test_a_deviation_names_the_first_layer_that_differs(tmp_path, monkeypatch):
    twin = export_module._float_twin

    def off_bias(n_out):  # the graph's layer with n_out outputs gets another bias
        def make(layer):
            out = twin(layer)
            if out.out_features == n_out:
                with torch.no_grad():
                    out.bias += 1.0
            return out

        return make

    qnet = quantize_model(mlp(), UniformQuantizer(n_bits=4))
    monkeypatch.setattr(export_module, "_float_twin", off_bias(20))  # layer '2'
    with pytest.raises(
        ValueError,
        match=r"first quantized layer whose output differs is '2' \(the input of '4'",
    ):
        export_onnx(qnet, torch.randn(8, 40), tmp_path / "m.onnx")
    # the last layer: what follows the last quantized input
    monkeypatch.setattr(export_module, "_float_twin", off_bias(5))
    with pytest.raises(ValueError, match=r"the last one, '4', or what follows"):
        export_onnx(qnet, torch.randn(8, 40), tmp_path / "m.onnx")


def test_optimised_sessions_that_deviate_are_warned_about(tmp_path, monkeypatch):
    session = check_module.session

    class Off:
        def __init__(self, s):
            self.s = s

        def run(self, names, feed):
            return [y + 1.0 for y in self.s.run(names, feed)]

    def fused(ort_, data, optimise):
        s = session(ort_, data, optimise)
        return Off(s) if optimise else s

    monkeypatch.setattr(check_module, "session", fused)
    qnet = quantize_model(mlp(), UniformQuantizer(n_bits=4))
    with pytest.warns(UserWarning, match="session.disable_quant_qdq"):
        report = export_onnx(qnet, torch.randn(8, 40), tmp_path / "m.onnx")
    assert report["optimized_max_rel_deviation"] > 1e-2
    assert report["max_rel_deviation"] <= 1e-4


def test_ternary_convolutions_with_static_inputs_load_in_optimised_sessions(tmp_path):
    X = torch.randn(64, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_model(
            cnn(), TernaryQuantizer(), X, activations=ActivationQuantizer(8)
        )
        report = export_onnx(qnet, X, tmp_path / "m.onnx")
    # ONNX Runtime fuses the convolutions into QLinearConv, which takes no INT2
    assert report["layers"] == {"0": "int4", "2": "int4", "5": "int2"}
    got = run(tmp_path / "m.onnx", X, optimise=True)
    with torch.no_grad():
        want = qnet(X).numpy()
    assert np.abs(got - want).max() <= 5e-2 * np.abs(want).max()


@pytest.mark.parametrize(
    "bits, act_bits, want",
    [
        (4, 8, "INT4"),
        (2, 8, "INT2"),
        (8, 7, "INT8"),
        # 8-bit inputs times signed codes beyond 64 saturate x86's int16 pair sums:
        # the codes move up by 128 (zero point 128), an exact uint8 x uint8 product
        (8, 8, "UINT8"),
    ],
)
def test_linear_layers_with_static_inputs_multiply_integers(
    tmp_path, bits, act_bits, want
):
    X = torch.randn(128, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_model(
            mlp(),
            UniformQuantizer(n_bits=bits),
            X,
            activations=ActivationQuantizer(act_bits, symmetric=True),
        )
    report = export_onnx(qnet, X, tmp_path / "m.onnx")
    assert set(report["nodes"].values()) == {"MatMulInteger"}
    assert set(report["layers"].values()) == {want.lower()}
    model = onnx.load(str(tmp_path / "m.onnx"))
    types = weight_types(tmp_path / "m.onnx")
    assert set(types.values()) == {f"TensorProto.{want}"}
    # unsigned input codes (a signed grid moved up to 0) for the fast kernels
    zps = [i for i in model.graph.initializer if i.name.endswith("_input_zero_point")]
    assert zps and {z.data_type for z in zps} == {onnx.TensorProto.UINT8}
    # integer products on both sides: the same values up to float32 rounding,
    # in both sessions
    assert report["max_rel_deviation"] <= 1e-5
    assert report["optimized_max_rel_deviation"] <= 1e-5


@pytest.mark.parametrize("act_bits", [2, 4])
@pytest.mark.parametrize("net", ["cnn", "mlp"])
def test_coarse_static_grids_keep_their_biases_in_optimised_sessions(
    tmp_path, net, act_bits
):
    """ONNX Runtime's optimiser rounded the float bias of a Conv/Gemm after
    a QuantizeLinear/DequantizeLinear input to int32 at the input's scale
    times the weight's (deviations of 0.02 to 0.37 at 2 to 4 bits): the bias
    is added after the product, and the optimised session computes what the
    model computes."""
    X = torch.randn(64, 1, 8, 8) if net == "cnn" else torch.randn(64, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_model(
            cnn() if net == "cnn" else mlp(),
            UniformQuantizer(n_bits=4),
            X,
            activations=ActivationQuantizer(act_bits),
        )
        report = export_onnx(qnet, X, tmp_path / "m.onnx", integer_products=False)
    assert set(report["nodes"].values()) == {"DequantizeLinear"}
    assert report["optimized_max_rel_deviation"] <= 1e-5
    with torch.no_grad():
        want = qnet(X).numpy()
    got = run(tmp_path / "m.onnx", X, optimise=True)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_integer_products_can_be_refused(tmp_path):
    X = torch.randn(128, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_model(
            mlp(), UniformQuantizer(n_bits=4), X, activations=ActivationQuantizer(8)
        )
    path = tmp_path / "m.onnx"
    assert set(export_onnx(qnet, X, path)["nodes"].values()) == {"MatMulInteger"}
    report = export_onnx(qnet, X, path, integer_products=False)
    assert set(report["nodes"].values()) == {"DequantizeLinear"}
    assert report["max_rel_deviation"] <= 1e-2
    with pytest.raises(TypeError, match="integer_products must be a bool, got"):
        export_onnx(qnet, X, path, integer_products="always")


def test_a_smart_quantization_model_exports_its_binary_and_ternary_layers(tmp_path):
    from sklearn.datasets import load_digits

    from skquant.torch import train_sq

    X, y = load_digits(return_X_y=True)
    X = torch.as_tensor(X / 16.0, dtype=torch.float32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    res = train_sq(net, (X, torch.as_tensor(y)), epochs=2, lr=1e-2, verbose=False)
    report = export_onnx(res.model, X[:64], tmp_path / "sq.onnx")
    assert set(report["layers"].values()) == {"int2"}  # 1- or 2-bit codes
    assert report["max_rel_deviation"] <= 1e-4
    got = run(tmp_path / "sq.onnx", X)
    with torch.no_grad():
        want = res.model(X).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() == 1.0


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h), h


def test_a_model_with_several_outputs_is_checked_on_each(tmp_path):
    torch.manual_seed(0)
    q = quantize_model(TwoOutputs().eval(), UniformQuantizer(n_bits=4))
    x = torch.randn(4, 6)
    export_onnx(q, x, tmp_path / "m.onnx")
    s = ort.InferenceSession(
        str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]
    )
    got = s.run(None, {s.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = q(x)
    assert len(got) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_a_float64_model_is_refused_with_the_way_out(tmp_path, bias):
    net = nn.Sequential(
        nn.Linear(40, 8, bias=bias), nn.ReLU(), nn.Linear(8, 3, bias=bias)
    )
    q = quantize_model(net.double(), UniformQuantizer(n_bits=4))
    with pytest.raises(ValueError, match=r"float64.*float32 copy"):
        export_onnx(q, torch.randn(2, 40, dtype=torch.float64), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class _Doubles(nn.Module):
    """A forward that writes to its input."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(20, 4)

    def forward(self, x):
        return self.a(x.mul_(2))


class _VarArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(20, 4)

    def forward(self, *xs):
        return self.a(xs[0])


def test_the_example_input_stays_as_it_was_and_the_check_runs_on_it(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 20)
    before = x.clone()
    qnet = quantize_model(_Doubles().eval(), UniformQuantizer(n_bits=8))
    report = export_onnx(qnet, x, tmp_path / "m.onnx")
    assert torch.equal(x, before)  # the forward ran on a copy
    assert report["max_rel_deviation"] <= 1e-4
    np.testing.assert_allclose(
        run(tmp_path / "m.onnx", x), qnet(x.clone()).detach(), rtol=0, atol=1e-5
    )


def test_a_model_in_train_mode_is_exported_and_checked_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    net(torch.randn(16, 1, 8, 8))  # running statistics away from their start
    qnet = quantize_model(net.eval(), UniformQuantizer(n_bits=8)).train()
    x = torch.randn(4, 1, 8, 8)
    report = export_onnx(qnet, x, tmp_path / "m.onnx")
    assert report["max_rel_deviation"] <= 1e-4
    assert qnet.training and qnet[1].training  # given back in its modes


@pytest.mark.parametrize(
    "wrap",
    [nn.DataParallel, lambda m: _VarArgs(), torch.compile],
    ids=["DataParallel", "varargs", "compile"],
)
def test_wrapped_and_varargs_models_export_with_a_dynamic_batch(tmp_path, wrap):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        # torch.compile's own notices (torch.jit's deprecation) on this torch
        warnings.simplefilter("ignore", DeprecationWarning)
        qnet = quantize_model(
            wrap(nn.Sequential(nn.Linear(20, 4))), UniformQuantizer(8)
        )
        export_onnx(qnet, torch.randn(8, 20), tmp_path / "m.onnx")
    x = torch.randn(3, 20)  # another batch size
    np.testing.assert_allclose(
        run(tmp_path / "m.onnx", x), qnet(x).detach(), rtol=0, atol=1e-5
    )


def _data_inputs(path, op_types):
    """The data (first) inputs of the nodes of ``op_types`` and what makes them."""
    graph = onnx.load(str(path)).graph
    maker = {out: n.op_type for n in graph.node for out in n.output}
    return [maker.get(n.input[0]) for n in graph.node if n.op_type in op_types]


@pytest.mark.parametrize("activations", ["dynamic", ActivationQuantizer(n_bits=4)])
def test_convolutions_without_bias_quantize_their_inputs(tmp_path, activations):
    """The exporter reads a bias-free convolution's weight for its shape (a zero
    bias): the input grid goes on the convolution's data, not on that read."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, bias=False),
    ).eval()
    X = torch.randn(16, 3, 8, 8)
    qnet = quantize_model(net, UniformQuantizer(n_bits=4), X, activations=activations)
    report = export_onnx(qnet, X[:4], tmp_path / "m.onnx")
    assert _data_inputs(tmp_path / "m.onnx", ("Conv",)) == ["DequantizeLinear"] * 2
    assert report["max_rel_deviation"] < 1e-5


class _CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = (
            nn.Linear(6, 8),
            nn.Linear(8, 8),
            nn.Linear(8, 3),
        )

    def forward(self, x):
        h = torch.relu(self.shared(torch.relu(self.inp(x))))
        return self.out(torch.relu(self.shared(h)))


@pytest.mark.parametrize("integer_products", [True, False])
@pytest.mark.parametrize("activations", ["dynamic", ActivationQuantizer(n_bits=4)])
def test_a_layer_called_twice_quantizes_both_inputs(
    tmp_path, activations, integer_products
):
    torch.manual_seed(0)
    X = torch.randn(32, 6)
    qnet = quantize_model(
        _CalledTwice().eval(), UniformQuantizer(n_bits=4), X, activations=activations
    )
    report = export_onnx(
        qnet, X[:8], tmp_path / "m.onnx", integer_products=integer_products
    )
    if integer_products:
        products = _data_inputs(tmp_path / "m.onnx", ("MatMulInteger",))
        assert len(products) == 4 and None not in products
    else:  # every product reads dequantized inputs
        products = _data_inputs(tmp_path / "m.onnx", ("MatMul", "Gemm"))
        assert products == ["DequantizeLinear"] * 4
    assert report["max_rel_deviation"] < 1e-5


def test_a_layer_under_two_names_exports(tmp_path):
    class Alias(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.out = nn.Linear(6, 6), nn.Linear(6, 3)
            self.b = self.a

        def forward(self, x):
            return self.out(torch.relu(self.b(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    qnet = quantize_model(Alias().eval(), UniformQuantizer(n_bits=4))
    report = export_onnx(qnet, torch.randn(8, 6), tmp_path / "m.onnx")
    assert report["layers"] == {"a": "int4", "out": "int4"}
    assert report["max_rel_deviation"] < 1e-5


@pytest.mark.parametrize(
    "options",
    [{"matmul_nbits": "float"}, {"activations": "dynamic"}],
    ids=["matmul_nbits", "integer_products"],
)
def test_a_weight_read_by_another_node_stays_defined(tmp_path, options):
    class Reads(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(6, 4)

        def forward(self, x):
            return self.l(x) * self.l.weight.abs().mean()

    torch.manual_seed(0)
    X = torch.randn(16, 6)
    activations = options.pop("activations", None)
    qnet = quantize_model(
        Reads().eval(), UniformQuantizer(n_bits=4), X, activations=activations
    )
    report = export_onnx(qnet, X[:4], tmp_path / "m.onnx", **options)
    assert report["nodes"] == {"l": "DequantizeLinear"}  # (not the fused product)
    assert report["max_rel_deviation"] < 1e-5


class _TokenLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(30, 8), nn.Linear(8, 30)

    def forward(self, t):
        h = torch.tanh(self.emb(t))
        return self.fc(h + h.mean(dim=1, keepdim=True))  # mixes the positions


def test_dynamic_axes_leave_the_sequence_length_free(tmp_path):
    torch.manual_seed(0)
    model = _TokenLM().eval()
    tokens = torch.randint(0, 30, (4, 12))
    qnet = quantize_model(model, UniformQuantizer(n_bits=4), tokens, skip=["emb"])
    fixed, free = tmp_path / "fixed.onnx", tmp_path / "free.onnx"
    export_onnx(qnet, tokens, fixed)
    report = export_onnx(qnet, tokens, free, dynamic_axes={1: "sequence"})
    assert report["max_rel_deviation"] < 1e-4
    other = torch.randint(0, 30, (3, 7))
    with torch.no_grad():
        want = qnet(other).numpy()
    np.testing.assert_allclose(run(free, other), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(fixed, other)


@pytest.mark.parametrize(
    "axes, error, match",
    [
        ([1], TypeError, "dynamic_axes must be a dict"),
        ({1: 2}, TypeError, "dynamic_axes must be a dict"),
        ({0: "b"}, ValueError, r"axis 0 \('b'\) must be an axis"),
        ({2: "s"}, ValueError, r"axis 2 \('s'\) must be an axis .*\(4, 12\)"),
        ({1: "not a name"}, ValueError, "named by an identifier"),
        ({1: "batch"}, ValueError, "names two axes alike"),
    ],
)
def test_dynamic_axes_errors(tmp_path, axes, error, match):
    torch.manual_seed(0)
    qnet = quantize_model(_TokenLM().eval(), UniformQuantizer(n_bits=4), skip=["emb"])
    with pytest.raises(error, match=match):
        export_onnx(
            qnet, torch.randint(0, 30, (4, 12)), tmp_path / "m.onnx", dynamic_axes=axes
        )


def test_a_gemm_without_a_bias_input_gets_no_add(tmp_path):
    """A ``Gemm`` may leave its optional bias input empty (``""``): its
    replacement adds no bias, and a ``Gemm`` naming one adds it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 16)).astype(np.float32)  # (n_out, n_in)
    qt = UniformQuantizer(n_bits=4).fit(W.T).compress(W.T)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", ""], ["y0"], transB=1),
            helper.make_node("Gemm", ["x", "W", "b"], ["y1"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [
            helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 3])
            for y in ("y0", "y1")
        ],
        [
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(np.ones(3, np.float32), "b"),
        ],
    )
    codes = np.asarray(qt.codes).T
    assert export_module._matmul_nbits(
        graph, "W", codes, qt, "int4", 0, helper, numpy_helper
    )
    assert [n.op_type for n in graph.node].count("Add") == 1
    assert all(name for n in graph.node for name in n.input)
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid("com.microsoft", 1),
        ],
    )
    onnx.save(model, tmp_path / "g.onnx")
    x = rng.standard_normal((2, 16)).astype(np.float32)
    s = ort.InferenceSession(
        str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"]
    )
    y0, y1 = s.run(None, {"x": x})
    expected = x @ qt.dequantize()
    np.testing.assert_allclose(y0, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y1, expected + 1, rtol=1e-5, atol=1e-5)


def test_a_one_sample_example_leaves_the_batch_free(tmp_path):
    """An example of one sample is exported as two copies of it: the file takes
    any batch. A model that refuses two copies gets a file of batch 1, and a
    warning that says how to free it."""
    net = cnn()
    x = torch.randn(4, 1, 8, 8)
    qnet = quantize_model(net, UniformQuantizer(n_bits=4), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        export_onnx(qnet, x[:1], tmp_path / "one.onnx")
    dims = onnx.load(str(tmp_path / "one.onnx")).graph.input[0].type.tensor_type
    assert dims.shape.dim[0].dim_param and not dims.shape.dim[0].dim_value
    with torch.no_grad():
        np.testing.assert_allclose(
            run(tmp_path / "one.onnx", x), qnet(x).numpy(), rtol=1e-5, atol=1e-5
        )
    flat = nn.Sequential(nn.Flatten(0), nn.Linear(10, 3)).eval()  # no batch axis
    qflat = quantize_model(flat, UniformQuantizer(n_bits=4))
    with pytest.warns(UserWarning, match="batch size is 1"):
        export_onnx(qflat, torch.randn(1, 10), tmp_path / "flat.onnx")
    dims = onnx.load(str(tmp_path / "flat.onnx")).graph.input[0].type.tensor_type
    assert dims.shape.dim[0].dim_value == 1


def test_an_unbatched_example_gets_a_warning_that_its_shape_is_fixed(tmp_path):
    """An example without a batch axis (a Linear's one feature vector, a conv's
    one image) traces a file of that one shape: the batch asked for is not free,
    and the warning says so and how to free it. A batch of the same model gives
    a free batch and no warning."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    for net, x in ((mlp, torch.randn(16)), (conv, torch.randn(3, 8, 8))):
        qnet = quantize_model(net, UniformQuantizer(n_bits=4))
        path = tmp_path / "unbatched.onnx"
        with pytest.warns(UserWarning, match=r"fixes the input's axis 0 \('batch'\)"):
            export_onnx(qnet, x, path)
        dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims] == list(x.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            export_onnx(qnet, x[None].expand(3, *x.shape), tmp_path / "batch.onnx")
        dims = onnx.load(str(tmp_path / "batch.onnx")).graph.input[0]
        assert dims.type.tensor_type.shape.dim[0].dim_param


def test_a_forward_torch_export_cannot_trace_gets_a_hint(tmp_path):
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            if h.mean().item() > 0.0:  # Python control flow on a value
                h = 2 * h
            return self.b(h)

    qnet = quantize_model(DataDependent().eval(), UniformQuantizer(n_bits=4))
    for batch in (4, 1):  # (one sample: no warning about two copies)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            with pytest.raises(RuntimeError, match="could not trace the model's"):
                export_onnx(qnet, torch.randn(batch, 6), tmp_path / "dd.onnx")


def test_export_leaves_torchs_random_numbers_alone(tmp_path):
    """The float twins are made without torch's initialisation (it drew from
    the global generator: a seeded script's later draws changed)."""
    qnet = quantize_model(cnn(), UniformQuantizer(n_bits=4))
    state = torch.get_rng_state()
    export_onnx(qnet, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    torch.randn(2, 1, 8, 8)  # (the example input's own draw)
    assert torch.equal(after, torch.get_rng_state())
