"""Export to ONNX: integer weights, activation grids, checked in ONNX Runtime."""

import builtins
import warnings

import numpy as np
import pytest

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
        export_onnx(qnet, X, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("Clip") == 3
    assert ops.count("DequantizeLinear") == 6
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
    qnet = quantize_model(net, UniformQuantizer(n_bits=8), activations="dynamic")
    with pytest.raises(ValueError, match="dynamic activation grids"):
        export_onnx(qnet, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")
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
    with pytest.raises(ValueError, match=r"opset=21 is too old .*\(INT2 needs"):
        export_onnx(qnet, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", opset=21)
    report = export_onnx(qnet, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", opset=25)
    assert report["opset"] == 25


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
