"""The runtime form: codes held packed or as bytes, products computed from them."""

import copy
import io
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from skquant import (
    ActivationQuantizer,
    AdaptivePrecisionQuantizer,
    BinaryQuantizer,
    GPTQQuantizer,
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    QuantizedTensor,
    TernaryQuantizer,
    UniformQuantizer,
    quantize,
)
from skquant._kernels import _runtime as kernels
from skquant._tensor._runtime import RuntimeWeights, runtime_bits

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from skquant.torch import (  # noqa: E402
    QuantConv1d,
    QuantConv2d,
    QuantLinear,
    _int8,  # noqa: E402
    load_into,
    quantize_model,
    save_model,
)
from skquant.torch._int8 import fake_dynamic  # noqa: E402
from skquant.torch._qlayers import (  # noqa: E402
    _ANNOUNCED,
    RuntimeFallbackWarning,
)


@pytest.fixture(autouse=True)
def _fresh_announcements():
    """Each test sees the once-per-process announcements afresh."""
    _ANNOUNCED.clear()
    yield
    _ANNOUNCED.clear()


# -- the NumPy runtime form -----------------------------------------------------


def affine_tensor(rng, n_in, n_out, n_bits=4):
    """An affine grid: unsigned codes, per-column zero points."""
    top = 2**n_bits - 1
    return QuantizedTensor(
        codes=rng.integers(0, top + 1, (n_in, n_out)).astype(np.uint8),
        scale=rng.uniform(0.01, 0.1, n_out).astype(np.float32),
        n_bits=n_bits,
        qmin=0,
        qmax=top,
        alphabet="affine",
        zero_point=rng.integers(0, top + 1, n_out).astype(np.uint8),
    )


def tensors(rng, n_in, n_out):
    W = rng.standard_normal((n_in, n_out)).astype(np.float32)
    return {
        "uniform1": quantize(W, n_bits=2),  # codes -1..1 (2 bits, ternary grid)
        "uniform3": quantize(W, n_bits=3),
        "uniform4": quantize(W, n_bits=4),
        "uniform8": quantize(W, n_bits=8),
        "binary": BinaryQuantizer().fit(W).compress(W),
        "ternary": TernaryQuantizer().fit(W).compress(W),
        "affine": affine_tensor(rng, n_in, n_out),
        "affine8": affine_tensor(rng, n_in, n_out, 8),
        "per_tensor": quantize(W, n_bits=4, granularity="per_tensor"),
    }


@given(
    n_in=st.integers(1, 140),
    n_out=st.integers(1, 9),
    m=st.sampled_from([1, 2, 5, 9, 33]),
    seed=st.integers(0, 2**16),
)
def test_runtime_matmul_is_the_dequantized_product(n_in, n_out, m, seed):
    """Oracle: from the codes, ``x @ W`` equals the product with ``dequantize()``."""
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal((m, n_in))).astype(np.float32)  # ReLU-like
    for name, qt in tensors(rng, n_in, n_out).items():
        rt = RuntimeWeights(qt)
        ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64)
        got = rt.matmul(x)
        assert got.dtype == np.float32
        # float32 sums: within 1e-5 of the size of the terms summed
        tol = 1e-5 * (np.abs(x) @ np.abs(qt.dequantize().astype(np.float64)))
        assert np.all(np.abs(got - ref) <= tol), name
        # the weights are the very floats of dequantize(), and the codes come back
        np.testing.assert_array_equal(rt.dequantize(), qt.dequantize())
        back = rt.tensor()
        np.testing.assert_array_equal(back.codes, qt.codes)
        assert back.codes.dtype == qt.codes.dtype
        assert back.size_bits == qt.size_bits


def _packed_reference(u, bits):
    """Rows of unsigned codes ``u`` (n_out, n_in) packed as the kernels' module
    says: byte ``t`` of block ``b`` holds in slot ``s`` the code of input
    ``b * BLOCK * per + s * BLOCK + t``; rows padded with code 0."""
    per, block = 8 // bits, kernels.BLOCK
    n_out, n_in = u.shape
    n_blocks = -(-n_in // (block * per))
    padded = np.zeros((n_out, n_blocks * block * per), np.int64)
    padded[:, :n_in] = u
    slots = padded.reshape(n_out, n_blocks, per, block)
    packed = sum(slots[:, :, s, :] << (s * bits) for s in range(per))
    return packed.reshape(n_out, n_blocks * block).astype(np.uint8)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_packed_rows_round_trip_and_padding(bits):
    rng = np.random.default_rng(bits)
    u = rng.integers(0, 2**bits, (3, 70)).astype(np.uint8)
    width = -(-70 // (kernels.BLOCK * (8 // bits))) * kernels.BLOCK
    packed = np.empty((3, width), np.uint8)
    kernels.pack_columns(np.ascontiguousarray(u.T), 0, 1, bits, packed)
    np.testing.assert_array_equal(packed, _packed_reference(u, bits))
    back = np.empty((3, 70), np.int64)
    kernels.unpack_rows(packed, bits, 70, back)
    np.testing.assert_array_equal(back, u)
    # padding codes are 0: a row of ones times the padded input gives the sum
    x = np.zeros((1, width * 8 // bits), np.float32)
    x[0, :70] = 1.0
    out = np.empty((1, 3), np.float32)
    kernels.packed_dot(x, packed, bits, 1.0, np.zeros(3, np.float32), out)
    np.testing.assert_allclose(out[0], u.sum(axis=1), rtol=1e-6)


@given(
    n_in=st.integers(1, 300),
    n_out=st.integers(1, 140),
    bits=st.sampled_from([1, 2, 4, 8]),
    binary=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pack_columns_packs_the_tensors_codes_and_back(n_in, n_out, bits, binary, seed):
    """The kernels pack (and unpack) a QuantizedTensor's (n_in, n_out) codes
    with no transposed copy, as the module's layout says."""
    rng = np.random.default_rng(seed)
    if binary:  # codes {-1, +1}: u = (c + 1) // 2
        base, mult = -1, 2
        codes = (2 * rng.integers(0, 2, (n_in, n_out)) - 1).astype(np.int8)
    else:
        base, mult = -(2 ** (bits - 1)), 1
        codes = rng.integers(base, base + 2**bits, (n_in, n_out)).astype(np.int16)
    width = -(-n_in // (kernels.BLOCK * (8 // bits))) * kernels.BLOCK
    got = np.full((n_out, width), 255, np.uint8)  # overwritten, padding included
    kernels.pack_columns(codes, base, mult, bits, got)
    want = _packed_reference((codes.T.astype(np.int64) - base) // mult, bits)
    np.testing.assert_array_equal(got, want)
    back = np.empty_like(codes)
    kernels.unpack_columns(got, bits, mult, base, back)
    np.testing.assert_array_equal(back, codes)


def test_runtime_bits_and_sizes():
    rng = np.random.default_rng(0)
    ts = tensors(rng, 256, 16)
    assert runtime_bits(ts["binary"]) == 1
    assert runtime_bits(ts["ternary"]) == 2
    assert runtime_bits(ts["uniform3"]) == 4
    assert runtime_bits(ts["uniform8"]) == 8
    rt = RuntimeWeights(ts["uniform4"])
    # codes held: 4 bits each, plus three float32 per output channel
    assert rt.packed.nbytes == 256 * 16 // 2
    assert rt.nbytes <= ts["uniform4"].size_bits // 8 + 12 * 16
    with pytest.raises(ValueError, match="bits must be one of"):
        RuntimeWeights(ts["uniform8"], bits=4)
    wide = quantize(rng.standard_normal((8, 2)), n_bits=12)
    assert runtime_bits(wide) is None
    with pytest.raises(ValueError, match="at most 8 bits"):
        RuntimeWeights(wide)


def test_runtime_float64_input_and_large_batch():
    rng = np.random.default_rng(1)
    qt = quantize(rng.standard_normal((300, 40)).astype(np.float32), n_bits=4)
    x = rng.standard_normal((700, 300))
    got = RuntimeWeights(qt).matmul(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, x @ qt.dequantize().astype(np.float64), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_runtime_large_batch_reads_its_input_in_place(dtype, traced_peak):
    """A large batch is not copied to pad it to whole blocks: the product holds
    its output and one tile of weights, not a second input (it did: +1x the
    input for every layer whose inputs are not a multiple of the block)."""
    rng = np.random.default_rng(2)
    n_in = 1000  # not a multiple of a 4-bit block (64 inputs)
    qt = quantize(rng.standard_normal((n_in, 8)).astype(np.float32), n_bits=4)
    rt = RuntimeWeights(qt)
    assert rt.n_pad != n_in
    x = rng.standard_normal((4000, n_in)).astype(dtype)
    rt.matmul(x[:16])  # compiled before measuring
    got, peak = traced_peak(lambda: rt.matmul(x))
    assert peak < x.nbytes // 4, (peak, x.nbytes)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64)
    tol = 1e-5 * (np.abs(x) @ np.abs(qt.dequantize().astype(np.float64)))
    assert np.all(np.abs(got - ref) <= tol)


# -- torch layers ---------------------------------------------------------------


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(37, 24), nn.ReLU(), nn.Linear(24, 5)).eval()


def cnn(groups=1):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=groups),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1, groups=8),  # depthwise
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 1),  # one output channel
    ).eval()


def quantizers():
    return {
        "msq4": UniformQuantizer(n_bits=4),
        "msq8": UniformQuantizer(n_bits=8),
        "gpfq3": GreedyPathQuantizer(n_bits=3),
        "gptq4": GPTQQuantizer(n_bits=4),
        "nullspace4": NullSpaceQuantizer(n_bits=4),
        "binary": BinaryQuantizer(),
        "ternary": TernaryQuantizer(),
    }


def no_float_weight(layer):
    """No float tensor of the weight's size is held by the layer."""
    assert [name for name, _ in layer.named_parameters()] == ["bias"]
    small = {"weight_scale", "weight_zero_point", "input_scale", "input_zero_point"}
    for name, t in layer.named_buffers():
        assert name in small or (name == "_codes" and not t.is_floating_point())
        if name in small:
            assert t.numel() <= layer._wshape[0] or name.startswith("input")


@pytest.mark.parametrize("name", list(quantizers()))
@pytest.mark.parametrize("runtime", ["auto", "int8", "float"])
def test_every_alphabet_runs_the_dequantized_function(name, runtime):
    """Weight-only kernels compute the float model with the dequantized weights."""
    net = mlp()
    X = torch.randn(300, 37)
    q = quantizers()[name]
    qnet = quantize_model(net, q, X, runtime=runtime)
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for i in (0, 2):
            ref[i].weight.copy_(
                torch.from_numpy(qnet[i].quantized_tensor().dequantize().T.copy())
            )
        for m in (1, 3, 300):
            got, want = qnet(X[:m]), ref(X[:m])
            assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    for i in (0, 2):
        no_float_weight(qnet[i])
        assert qnet[i].runtime == (
            runtime if runtime != "auto" else ("int8" if name == "msq8" else "packed")
        )


@pytest.mark.parametrize("name", [*quantizers(), "adaptive"])
def test_every_runtime_stores_the_codes_it_was_given(name, tmp_path):
    """A layer writes its codes to a file from the form it holds (packed once,
    not through a QuantizedTensor): the entry is the tensor's, and the files
    of the three runtimes hold the same arrays."""
    from safetensors.numpy import load_file

    from skquant._tensor._io import _tensor_entry

    net = mlp()
    X = torch.randn(300, 37)
    files = []
    for runtime in ("auto", "int8", "float"):
        if name == "adaptive":  # (fixed-point codes: one runtime)
            y = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(0))
            q = AdaptivePrecisionQuantizer(max_bits=6)
            qnet = quantize_model(net, q, X, targets=y, runtime=runtime)
        else:
            qnet = quantize_model(net, quantizers()[name], X, runtime=runtime)
        for i in (0, 2):
            meta, arrays = qnet[i].stored_entry()
            want_meta, want = _tensor_entry(qnet[i].quantized_tensor())
            assert meta == want_meta and list(arrays) == list(want)
            for key, a in want.items():
                np.testing.assert_array_equal(arrays[key], a)
        save_model(qnet, tmp_path / f"{runtime}.skq")
        files.append(load_file(tmp_path / f"{runtime}.skq"))
    for other in files[1:]:
        assert other.keys() == files[0].keys()
        for key, a in files[0].items():
            np.testing.assert_array_equal(other[key], a)


def test_runtime_packed_refuses_wide_codes():
    with pytest.raises(ValueError, match="runtime='packed' holds codes of at most 4"):
        quantize_model(mlp(), UniformQuantizer(n_bits=6), runtime="packed")
    # codes past 8 bits too (they fell back to 'float' with a warning)
    with pytest.raises(ValueError, match=r"\[-2047, 2047\] \(over 8 bits\)"):
        quantize_model(mlp(), UniformQuantizer(n_bits=12), runtime="packed")
    with pytest.raises(ValueError, match="runtime must be one of"):
        quantize_model(mlp(), UniformQuantizer(n_bits=4), runtime="gpu")


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("runtime", ["auto", "int8", "float"])
def test_convolutions_odd_shapes(groups, runtime):
    net = cnn(groups)
    X = torch.randn(16, 3, 8, 8)
    qnet = quantize_model(net, GreedyPathQuantizer(n_bits=4), X, runtime=runtime)
    floated = quantize_model(net, GreedyPathQuantizer(n_bits=4), X, runtime="float")
    with torch.no_grad():
        got, want = qnet(X), floated(X)
    assert isinstance(qnet[2], QuantConv2d) and qnet[2].groups == groups
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()) + 1e-7
    for layer in (qnet[0], qnet[2], qnet[4], qnet[6]):
        no_float_weight(layer)


def test_conv1d_and_float64_model():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 9, 3)
    ).double()
    X = torch.randn(20, 2, 9, dtype=torch.float64)
    qnet = quantize_model(net, UniformQuantizer(n_bits=4), X)
    assert isinstance(qnet[0], QuantConv1d) and qnet[0].runtime == "packed"
    ref = quantize_model(net, UniformQuantizer(n_bits=4), X, runtime="float")
    with torch.no_grad():
        got, want = qnet(X), ref(X)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_bfloat16_input_falls_back_once_and_says_so():
    qnet = quantize_model(mlp(), UniformQuantizer(n_bits=4))
    x = torch.randn(4, 37)
    with pytest.warns(RuntimeFallbackWarning, match="no integer kernel"):
        with torch.no_grad():  # in grad mode, the float path is the one to take
            y = qnet(x.bfloat16())
    assert y.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(y.float(), qnet(x), rtol=0.05, atol=0.05)


def test_gradients_flow_to_the_input():
    qnet = quantize_model(mlp(), UniformQuantizer(n_bits=4))
    x = torch.randn(3, 37, requires_grad=True)
    qnet(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("runtime", ["packed", "int8", "auto"])
@pytest.mark.parametrize("activations", [None, "dynamic"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_gradients_flow_to_the_biases(kind, runtime, activations):
    torch.manual_seed(0)
    if kind == "conv":
        net = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)
        )
        x, names = torch.randn(8, 3, 6, 6), ("0", "3")
    else:
        net, x, names = mlp(), torch.randn(8, 37), ("0", "2")
    q = quantize_model(
        net, UniformQuantizer(n_bits=4), runtime=runtime, activations=activations
    )
    want = quantize_model(
        net, UniformQuantizer(n_bits=4), runtime="float", activations=activations
    )
    q(x).sum().backward()
    want(x).sum().backward()
    for name in names:
        got, ref = q.get_submodule(name).bias.grad, want.get_submodule(name).bias.grad
        assert got is not None
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("runtime", ["auto", "float"])
@pytest.mark.parametrize("activations", ["dynamic", "static"])
def test_input_grids_pass_gradients_straight_through(runtime, activations):
    """An input grid passes gradients straight through inside its range, as
    FakeQuantize does (torch.round gave every input and every bias before the
    last layer a gradient of 0): on a network linear in its input, the
    gradients are those of the weight-only model; a static grid gives 0 to an
    input past its range."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 16, 3))
    calib = torch.randn(64, 3, 6, 6)
    acts = ActivationQuantizer(8) if activations == "static" else "dynamic"
    q = quantize_model(
        net, UniformQuantizer(4), calib, activations=acts, runtime=runtime
    )
    plain = quantize_model(net, UniformQuantizer(4), calib, runtime=runtime)
    x, x0 = calib[:8].clone().requires_grad_(), calib[:8].clone().requires_grad_()
    q(x).sum().backward()
    plain(x0).sum().backward()
    torch.testing.assert_close(x.grad, x0.grad)
    assert float(x.grad.abs().sum()) > 0
    torch.testing.assert_close(q[0].bias.grad, plain[0].bias.grad)
    if activations == "static":
        far = calib[:1].clone()
        far[0, 0, 0, 0] = 1e3  # past the calibrated range: clipped
        far.requires_grad_()
        q(far).sum().backward()
        assert far.grad[0, 0, 0, 0] == 0 and float(far.grad.abs().sum()) > 0


@pytest.mark.parametrize("activations", [None, "dynamic", "static"])
def test_grad_mode_runs_every_layer_on_its_kernels(monkeypatch, activations):
    """In grad mode every layer's output needs gradients (its bias's), and each
    layer after the first took the simulated path (the kernels are inference
    kernels): they run the kernels now, with the simulated path's gradient
    recomputed in backward (input grid straight through)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 16), nn.ReLU(),
        nn.Linear(16, 4),
    )  # fmt: skip
    x = torch.randn(32, 3, 6, 6)
    acts = ActivationQuantizer(7) if activations == "static" else activations
    q = quantize_model(net, UniformQuantizer(4), x, activations=acts)
    sim = quantize_model(net, UniformQuantizer(4), x, activations=acts, runtime="float")
    runs = []
    for cls in (QuantLinear, QuantConv2d):
        real = cls._run
        monkeypatch.setattr(
            cls,
            "_run",
            lambda self, x, real=real, **kw: (
                runs.append((self, x.requires_grad)) or real(self, x, **kw)
            ),
        )
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = q(xa), sim(xb)
    kernels = [  # (a weight-only convolution computes on dequantized weights)
        m
        for m in (q[0], q[3], q[5])
        if m._int8 is not None or (m._rt is not None and isinstance(m, nn.Linear))
    ]
    assert len(kernels) >= 2
    assert {m for m, grad in runs if not grad} == set(kernels)  # (no gradient:
    # the kernels ran; before, every layer after the first took the float path)
    assert _relative(ya.detach(), yb.detach()) <= 1e-5
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert _relative(xa.grad, xb.grad) <= 1e-4
    for i in (0, 3, 5):
        assert _relative(q[i].bias.grad, sim[i].bias.grad) <= 1e-4


@pytest.mark.parametrize("frozen", [True, False])
def test_grad_mode_runs_the_kernels(monkeypatch, frozen):
    net = mlp().eval().requires_grad_(not frozen)
    q = quantize_model(net, UniformQuantizer(n_bits=4))
    assert all(p.requires_grad != frozen for p in q.parameters())
    assert not any(m.training for m in q.modules())
    calls = []
    real = RuntimeWeights.matmul
    monkeypatch.setattr(
        RuntimeWeights,
        "matmul",
        lambda self, *a, **k: calls.append(1) or real(self, *a, **k),
    )
    y = q(torch.randn(2, 37))  # grad mode, the input needs no gradient
    assert calls  # the kernels ran
    assert y.requires_grad != frozen  # and the biases' gradients flow


def test_per_parameter_precision_runs_from_codes():
    net = mlp()
    X = torch.randn(64, 37)
    y = torch.randint(0, 5, (64,))
    qnet = quantize_model(net, AdaptivePrecisionQuantizer(max_bits=6), X, targets=y)
    layer = qnet[0]
    qt = layer.quantized_tensor()
    assert qt.precision_bits is not None
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for i in (0, 2):
            W = qnet[i].quantized_tensor().dequantize()
            ref[i].weight.copy_(torch.from_numpy(W.T.copy()))
        torch.testing.assert_close(qnet(X), ref(X), rtol=1e-5, atol=1e-6)
    sd = qnet.state_dict()
    fresh = quantize_model(mlp(), UniformQuantizer(n_bits=2))
    fresh.load_state_dict(sd)
    np.testing.assert_array_equal(fresh[0].quantized_tensor().codes, qt.codes)


# -- quantized activations ------------------------------------------------------


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("n_bits", [2, 4, 8])
@pytest.mark.parametrize(
    "activations",
    ["dynamic", ActivationQuantizer(n_bits=8), ActivationQuantizer(4, symmetric=True)],
)
@pytest.mark.parametrize("exact", [True, False])
def test_int8_kernels_match_their_simulation(n_bits, activations, exact, monkeypatch):
    net = mlp()
    X = torch.randn(512, 37)
    q = UniformQuantizer(n_bits=n_bits)
    if not exact:  # (a CPU without VNNI: its pair sums saturate)
        monkeypatch.setattr(_int8, "exact_pair_sums", lambda: False)
    saturates = n_bits == 8 and activations != "dynamic" and activations.n_bits == 8
    saturates = saturates and not _int8.exact_pair_sums()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        qnet = quantize_model(net, q, X, activations=activations)
    said = [str(w.message) for w in seen if w.category is RuntimeFallbackWarning]
    sim = quantize_model(net, q, X, activations=activations, runtime="float")
    assert qnet[0].runtime == "int8" and sim[0].runtime == "float"
    # 8-bit inputs and 8-bit weights could saturate x86's int16 pair sums: said
    assert (qnet[0]._int8 is None) == saturates
    assert any("saturate" in m for m in said) == saturates
    with torch.no_grad():
        for m in (1, 7, 512):
            assert _relative(qnet(X[:m]), sim(X[:m])) <= 0.01
    bits = 8 if activations == "dynamic" else activations.n_bits
    assert qnet[0].activation_bits == bits


def test_static_scales_are_calibrated_on_the_quantized_prefix():
    net = mlp()
    X = torch.randn(256, 37)
    qnet = quantize_model(
        net, UniformQuantizer(n_bits=2), X, activations=ActivationQuantizer(n_bits=8)
    )
    # the second layer's grid covers what the quantized first layer gives it
    with torch.no_grad():
        h = torch.relu(qnet[0](X))
    top = float(qnet[2].input_scale[0]) * (255 - int(qnet[2].input_zero_point[0]))
    assert top == pytest.approx(float(h.max()), rel=1e-5)
    # and differs from the float model's (2 bits change the first layer a lot)
    with torch.no_grad():
        hf = torch.relu(net[0](X))
    assert abs(float(hf.max()) - top) > 1e-3


def test_activation_errors_are_clear():
    net = mlp()
    with pytest.raises(ValueError, match="pass calibration_data"):
        quantize_model(net, UniformQuantizer(), activations=ActivationQuantizer())
    with pytest.raises(TypeError, match="activations must be None, 'dynamic'"):
        quantize_model(net, UniformQuantizer(), activations="static")
    X = torch.randn(32, 37)
    X[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_model(net, UniformQuantizer(), X, activations=ActivationQuantizer())


def test_activation_bits_the_kernels_cannot_run_are_announced():
    net = mlp()
    X = torch.randn(64, 37)
    with pytest.warns(RuntimeFallbackWarning, match="16-bit"):
        qnet = quantize_model(
            net, UniformQuantizer(n_bits=4), X, activations=ActivationQuantizer(16)
        )
    assert qnet[0]._int8 is None and qnet[0].activation_bits == 16
    with pytest.warns(RuntimeFallbackWarning, match="per-feature"):
        quantize_model(
            net,
            UniformQuantizer(n_bits=4),
            X,
            activations=ActivationQuantizer(8, granularity="per_feature"),
        )


@pytest.mark.parametrize("kernel", ["onednn", "gemm"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("activations", ["dynamic", ActivationQuantizer(8)])
def test_convolutions_run_int8_kernels(monkeypatch, groups, activations, kernel):
    """oneDNN's quantized convolution (all groups in one call) where torch has
    it, else int8 GEMMs over the patches (one per group): both compute the
    simulated layer's function (exact integer sums, rescaled in float32)."""
    if kernel == "onednn" and not _int8.onednn_conv_available():
        pytest.skip("this torch has no oneDNN quantized convolution")
    if kernel == "gemm":
        monkeypatch.setattr(_int8, "onednn_conv_available", lambda: False)
    net = cnn(groups)
    X = torch.randn(32, 3, 8, 8)
    q = GreedyPathQuantizer(n_bits=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeFallbackWarning)
        # (runtime="auto" runs grouped convolutions weight-only: asked for here)
        qnet = quantize_model(net, q, X, activations=activations, runtime="int8")
        with torch.no_grad():
            got = qnet(X)
    sim = quantize_model(net, q, X, activations=activations, runtime="float")
    want = _int8.Int8Conv if kernel == "onednn" else _int8.Int8Weights
    assert all(type(qnet[i]._int8) is want for i in (0, 2, 4))
    assert type(qnet[6]._int8) is _int8.Int8Weights  # (a Linear's)
    if kernel == "gemm":
        assert len(qnet[4]._int8.params) == 8  # depthwise: one GEMM per group
    with torch.no_grad():
        assert _relative(got, sim(X)) <= 1e-5
        assert _relative(qnet(X[:1]), sim(X[:1])) <= 1e-5


@pytest.mark.parametrize("kernel", ["onednn", "gemm"])
def test_int8_convolution_outputs_are_laid_out_as_documented(monkeypatch, kernel):
    """An int8 convolution's output is laid out as its kernel gives it (oneDNN's:
    channels last; the GEMMs': output positions first), as runtime.rst says:
    ``reshape`` and ``torch.flatten`` give the float layer's values, ``view``
    refuses the layout."""
    if kernel == "onednn" and not _int8.onednn_conv_available():
        pytest.skip("this torch has no oneDNN quantized convolution")
    if kernel == "gemm":
        monkeypatch.setattr(_int8, "onednn_conv_available", lambda: False)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Flatten(), nn.Linear(210, 2))
    x = torch.randn(3, 4, 7, 5)
    acts = ActivationQuantizer(7)
    q = quantize_model(net.eval(), UniformQuantizer(4), x, activations=acts)
    sim = quantize_model(net, UniformQuantizer(4), x, activations=acts, runtime="float")
    assert q[0]._int8 is not None and not q[0]._contiguous_out
    with torch.no_grad():
        got, want = q[0](x), sim[0](x)
        assert not got.is_contiguous()
        if kernel == "onednn":
            assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got.reshape(3, -1), want.reshape(3, -1))
        torch.testing.assert_close(torch.flatten(got, 1), want.view(3, -1))
        with pytest.raises(RuntimeError, match="view size is not compatible"):
            got.view(3, -1)


def assert_raises_as_torch(net, q, bad):
    """Quantized ``q`` raises on ``bad`` the error float ``net`` raises."""
    with torch.no_grad():
        with pytest.raises(RuntimeError) as want:
            net(bad)
        with pytest.raises(RuntimeError) as got:
            q(bad)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("kernel", ["onednn", "gemm"])
def test_int8_convolutions_refuse_what_torch_refuses(monkeypatch, kernel):
    """An input smaller than the kernel, or of other channels or dimensions,
    raises torch's own error (oneDNN gave an empty output or an error naming
    its primitive), and a forward that calls ``.view`` on an int8
    convolution's output is told why at calibration."""
    if kernel == "onednn" and not _int8.onednn_conv_available():
        pytest.skip("this torch has no oneDNN quantized convolution")
    if kernel == "gemm":
        monkeypatch.setattr(_int8, "onednn_conv_available", lambda: False)
    torch.manual_seed(0)
    acts = ActivationQuantizer(7)
    for conv, x, bad in (
        (nn.Conv2d(8, 16, 3), torch.randn(2, 8, 6, 6), torch.randn(2, 8, 2, 2)),
        (
            nn.Conv2d(8, 16, 3, groups=8),
            torch.randn(2, 8, 6, 6),
            torch.randn(2, 8, 2, 9),
        ),
        (nn.Conv1d(4, 6, 5), torch.randn(2, 4, 9), torch.randn(2, 4, 3)),
        (nn.Conv2d(8, 16, 3), torch.randn(2, 8, 6, 6), torch.randn(2, 4, 6, 6)),
    ):
        net = nn.Sequential(conv).eval()
        q = quantize_model(
            net, UniformQuantizer(4), x, activations=acts, runtime="int8"
        )
        assert q[0]._int8 is not None
        assert_raises_as_torch(net, q, bad)

    class Viewed(nn.Module):  # (a forward fx cannot trace: branches on values)
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            y = self.conv(x)
            if bool(y.sum() > -1e9):
                y = y.view(-1, 4 * 6 * 6)
            return self.fc(y)

    with pytest.raises(ValueError, match=r"\(channels-last\) output.*\.reshape"):
        quantize_model(
            Viewed().eval(),
            UniformQuantizer(4),
            torch.randn(8, 3, 8, 8),
            activations=acts,
        )


class _LeNet(nn.Module):
    """Convolutions, pools and ``.view`` before the classifier, as in tutorials."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.f1 = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.f1(x.view(x.size(0), -1))


@pytest.mark.parametrize("acts", ["dynamic", "static"])
def test_int8_linear_layers_refuse_other_widths_as_torch_does(acts):
    """An input of another width raises torch's own error ("mat1 and mat2
    shapes cannot be multiplied"; the int8 GEMM's reshape gave "shape '[4,
    120]' is invalid for input of size 960"), a chain's codes included."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 12)).eval()
    acts = ActivationQuantizer(7) if acts == "static" else acts
    q = quantize_model(net, UniformQuantizer(4), torch.randn(64, 40), activations=acts)
    assert q[0]._int8 is not None
    for bad in (torch.randn(4, 80), torch.randn(4, 20), torch.randn(3, 10)):
        assert_raises_as_torch(net, q, bad)
    if acts != "dynamic" and _int8.onednn_conv_available():  # (quint8 tensors)
        scale, zp = q[0]._input_qparams(None)
        codes = torch._make_per_tensor_quantized_tensor(
            torch.zeros(4, 80, dtype=torch.uint8), scale, zp
        )
        with torch.no_grad(), pytest.raises(RuntimeError, match="cannot be multi"):
            q(codes)


def test_viewed_outputs_follow_a_layer_output_up_to_the_next_layer():
    """A layer's output counts as viewed where ``.view``/``.view_as`` reads it
    or what operations make of it, not past another of the layers, nor through
    a read of its shape; a forward fx cannot trace gives none."""
    from skquant.torch._graph import viewed_outputs

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
            self.c, self.d = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            a = self.a(x)
            b = F.relu(self.b(a)) + 1
            c = self.c(b)
            d = self.d(c)
            flat = b.view(b.size(0), -1)  # b: viewed; a only through b
            other = x.view(d.size(0), -1)  # d: its size read only
            return flat + other[:, :1] + c.view_as(c).sum()

    net = Net()
    layers = dict(net.named_children())
    assert viewed_outputs(net, layers) == {"b", "c"}
    assert viewed_outputs(net, {"a": net.a}) == {"a"}  # (b not a layer then)

    class Returned(nn.Module):  # (the caller may view what it returns)
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    returned = Returned()
    assert viewed_outputs(returned, dict(returned.named_children())) == {"b"}

    class Branching(Net):
        def forward(self, x):
            return super().forward(x) if bool(x.sum() > 0) else x

    assert viewed_outputs(Branching(), layers) == set()


@pytest.mark.parametrize("kernel", ["onednn", "gemm"])
@pytest.mark.parametrize("activations", ["dynamic", "static"])
def test_a_forward_that_views_an_int8_convolution_output_runs(
    monkeypatch, tmp_path, kernel, activations
):
    """A forward that calls ``.view`` on what an int8 convolution's output
    becomes runs (with and without gradients, after save/load and pickling),
    with the values of ``runtime="float"``: that convolution's output is
    contiguous, the others' stay as their kernel lays them out."""
    if kernel == "onednn" and not _int8.onednn_conv_available():
        pytest.skip("this torch has no oneDNN quantized convolution")
    if kernel == "gemm":
        monkeypatch.setattr(_int8, "onednn_conv_available", lambda: False)
    torch.manual_seed(0)
    net, x = _LeNet().eval(), torch.randn(16, 1, 28, 28)
    acts = ActivationQuantizer(8) if activations == "static" else "dynamic"
    q = quantize_model(net, UniformQuantizer(4), x, activations=acts)
    sim = quantize_model(net, UniformQuantizer(4), x, activations=acts, runtime="float")
    assert q.c1._int8 is not None and q.c2._int8 is not None
    with torch.no_grad():
        want = sim(x)
        assert not q.c1(x).is_contiguous()  # (the fast layout where no view reads)
        assert q.c2(F.max_pool2d(q.c1(x), 2)).is_contiguous()
    path = tmp_path / "lenet.skq"
    save_model(q, path)
    for model in (q, pickle.loads(pickle.dumps(q)), load_into(_LeNet(), path)):
        with torch.no_grad():
            assert _relative(model(x), want) <= 1e-5
        assert _relative(model(x).detach(), want) <= 1e-5  # (grad mode: float path)


def test_a_hook_that_views_an_int8_convolutions_output_runs():
    """A forward hook on an int8 convolution (a feature extractor's, Grad-CAM's)
    may .view its output: a hooked layer gives it contiguous (it raised 'view
    size is not compatible'); without hooks, the kernel's layout stays."""
    if not _int8.onednn_conv_available():
        pytest.skip("this torch has no oneDNN quantized convolution")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    x = torch.randn(4, 3, 8, 8)
    for acts in (ActivationQuantizer(7), "dynamic"):
        q = quantize_model(net, UniformQuantizer(4), x, activations=acts)
        with torch.no_grad():
            assert not q[0](x).is_contiguous()
            feats = []
            handle = q[0].register_forward_hook(
                lambda m, i, o: feats.append(o.view(o.size(0), -1))
            )
            out = q(x)
            handle.remove()
            assert torch.equal(feats[0], q[0](x).reshape(4, -1))
            assert torch.equal(out, q(x))


def test_an_int8_convolution_unpickles_where_onednn_does_not_run(monkeypatch):
    """A model pickled with oneDNN's convolutions loads where torch lacks them
    (another machine): its convolutions run as GEMMs, with the same outputs."""
    if not _int8.onednn_conv_available():
        pytest.skip("this torch has no oneDNN quantized convolution")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8))
    x = torch.randn(4, 3, 10, 10)
    q = quantize_model(
        net.eval(), UniformQuantizer(4), x, activations=ActivationQuantizer(7)
    )
    assert type(q[0]._int8) is _int8.Int8Conv
    blob = pickle.dumps(q)
    monkeypatch.setattr(_int8, "onednn_conv_available", lambda: False)
    back = pickle.loads(blob)
    assert type(back[0]._int8) is _int8.Int8Weights
    with torch.no_grad():
        torch.testing.assert_close(back(x), q(x), rtol=1e-5, atol=1e-6)


def test_conv1d_int8_and_padding_modes():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=2, dilation=2, stride=2),
        nn.ReLU(),
        nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect"),
    ).eval()
    X = torch.randn(16, 2, 11)
    acts = ActivationQuantizer(8)
    qnet = quantize_model(net, UniformQuantizer(n_bits=4), X, activations=acts)
    assert qnet[0]._int8 is not None and qnet[2]._int8 is not None
    sim = quantize_model(
        net, UniformQuantizer(n_bits=4), X, activations=acts, runtime="float"
    )
    with torch.no_grad():
        assert _relative(qnet(X), sim(X)) <= 1e-5


@pytest.mark.parametrize("activations", [None, "dynamic", ActivationQuantizer(8)])
@pytest.mark.parametrize("conv", ["1d", "2d"])
def test_unbatched_convolution_inputs(conv, activations):
    torch.manual_seed(0)
    layer = nn.Conv1d(3, 4, 3) if conv == "1d" else nn.Conv2d(3, 4, 3)
    x = torch.randn(8, 3, 10) if conv == "1d" else torch.randn(8, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(
            nn.Sequential(layer), UniformQuantizer(n_bits=8), x, activations=activations
        )
    with torch.no_grad():
        torch.testing.assert_close(q(x[:1])[0], q(x[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activations", ["dynamic", ActivationQuantizer(8)])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_empty_and_non_finite_batches_give_what_the_float_model_gives(
    kind, activations
):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3)) if kind == "conv" else mlp()
    x = torch.randn(8, 3, 6, 6) if kind == "conv" else torch.randn(8, 37)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(net, UniformQuantizer(n_bits=8), x, activations=activations)
    with torch.no_grad():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an empty batch is no fallback
            assert q(x[:0]).shape == net(x[:0]).shape
        for value in (float("nan"), float("inf"), -float("inf")):
            bad = x.clone()
            bad[0].view(-1)[3] = value  # one value of one sample
            got = q(bad)  # no error (a static grid puts it on the grid)
            assert got.shape == net(bad).shape
            assert bool(torch.isfinite(got[1:]).all())  # no other sample harmed
            if activations != "dynamic":  # a static grid: the others as they were
                torch.testing.assert_close(got[1:], q(x[1:]), rtol=1e-5, atol=1e-5)
            else:  # the grid of the finite values (0 is on every dynamic grid)
                clean = bad.clone()
                clean[0].view(-1)[3] = 0.0
                torch.testing.assert_close(got[1:], q(clean)[1:], rtol=1e-5, atol=1e-5)


def test_fake_dynamic_grid():
    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0]])
    y = fake_dynamic(x, reduce_range=False)
    step = 4.0 / 255
    assert float((y - x).abs().max()) <= step / 2 + 1e-7
    assert float(y[0, 1]) == 0.0  # zero is on the grid


# -- state, files, copies ---------------------------------------------------------


@pytest.mark.parametrize(
    "activations", [None, "dynamic", ActivationQuantizer(6, symmetric=True)]
)
def test_state_dict_file_pickle_round_trips(tmp_path, activations):
    net = mlp()
    X = torch.randn(128, 37)
    qnet = quantize_model(net, UniformQuantizer(n_bits=4), X, activations=activations)
    with torch.no_grad():
        want = qnet(X)
    fresh = quantize_model(mlp(), UniformQuantizer(n_bits=2))
    fresh.load_state_dict(qnet.state_dict())
    path = tmp_path / "m.skq"
    save_model(qnet, path)
    loaded = load_into(mlp(), path)
    buf = io.BytesIO()
    torch.save(qnet, buf)
    buf.seek(0)
    copies = [
        fresh,
        loaded,
        copy.deepcopy(qnet),
        pickle.loads(pickle.dumps(qnet)),
        torch.load(buf, weights_only=False),
    ]
    for other in copies:
        assert isinstance(other[0], QuantLinear)
        assert other[0].activation_bits == qnet[0].activation_bits
        with torch.no_grad():
            assert torch.equal(other(X), want)


def test_state_dict_is_the_stored_form():
    qnet = quantize_model(mlp(), UniformQuantizer(n_bits=4))
    sd = qnet.state_dict()
    assert set(sd) == {
        f"{i}.{k}"
        for i in (0, 2)
        for k in ("bias", "weight_scale", "weight_packed", "_extra_state")
    }
    assert sd["0.weight_packed"].dtype == torch.uint8
    assert sd["0.weight_packed"].numel() == 37 * 24 // 2 + (37 * 24 % 2)


def test_bytes_held_are_the_codes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 256))
    for q, per_weight in (
        (UniformQuantizer(n_bits=4), 0.5),
        (TernaryQuantizer(), 0.25),
    ):
        qnet = quantize_model(net, q)
        for i in (0, 2):
            layer = qnet[i]
            n = layer.in_features * layer.out_features
            # codes; per output: the scale (as stored, as buffer and as used by the
            # kernels), the offset of the codes and the bias: 5 float32
            assert layer.nbytes_held <= n * per_weight + 20 * layer.out_features
            assert layer.nbytes_held >= n * per_weight
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is announced on the fast paths
        qnet = quantize_model(
            net,
            UniformQuantizer(n_bits=8),
            activations="dynamic",
            calibration_data=None,
        )
        with torch.no_grad():
            qnet(torch.randn(2, 1024))
    # the prepacked codes, a byte each, padded by fbgemm (512 outputs to 528 on
    # AVX-512: 1.068 times the codes measured as resident memory), and ~5 kB
    assert 1024 * 512 < qnet[0].nbytes_held <= 1024 * 512 * 1.1


@pytest.mark.parametrize("n_bits", [1, 2, 4, 8])
def test_few_inputs_an_output_hold_one_padded_block(n_bits):
    """What runtime.rst says of small layers: the kernels' codes of each output
    take whole 32-byte blocks, so a 3x3 depthwise convolution holds 32 bytes of
    codes an output; 1024 inputs at 4 bits, 512 bytes (no padding)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, groups=16), nn.Flatten(), nn.Linear(16, 4))
    q = BinaryQuantizer() if n_bits == 1 else UniformQuantizer(n_bits=n_bits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_model(net, q, runtime="packed" if n_bits < 8 else "int8")
    assert qnet[0]._rt.packed.nbytes == 32 * 16
    wide = quantize_model(nn.Linear(1024, 8), UniformQuantizer(n_bits=4))
    assert wide._rt.packed.nbytes == 512 * 8


# -- the NumPy side: integer products and QuantizedMLP ---------------------------------


@given(
    n_in=st.integers(1, 90),
    n_out=st.integers(1, 7),
    m=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    static=st.booleans(),
)
def test_integer_product_is_the_grid_times_the_codes(n_in, n_out, m, seed, static):
    """Oracle: the int32 product, scaled, equals the float product of the input on
    its grid and the dequantized weights (float64 rounding only)."""
    from skquant._tensor._runtime import CodeMatrix, InputGrid

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n_in)) * rng.uniform(0.1, 10)
    grid = (
        InputGrid(np.array([0.05]), np.array([128]), 0, 255) if static else InputGrid()
    )
    for name, qt in tensors(rng, n_in, n_out).items():
        W = CodeMatrix(qt, grid)
        got = x @ W
        # the weights exactly, in float64: (code - zero point) * float32 scale
        zp = 0.0 if qt.zero_point is None else qt.zero_point.astype(np.float64)
        exact = (qt.codes.astype(np.float64) - zp) * qt.scale.astype(np.float64)
        want = grid.fake(x) @ exact
        scale = np.abs(grid.fake(x)) @ np.abs(exact)
        assert np.all(np.abs(got - want) <= 1e-12 * scale + 1e-300), name
        a, _ = grid.encode(x)
        assert a.dtype == np.int32


def test_dynamic_grid_is_per_row():
    from skquant._tensor._runtime import InputGrid

    x = np.array([[0.0, 1.0, 2.0], [-100.0, 0.0, 100.0]])
    fake = InputGrid().fake(x)
    # each row on its own 256-level grid over [min(row, 0), max(row, 0)]
    assert np.abs(fake[0] - x[0]).max() <= 2.0 / 255 / 2 + 1e-12
    assert np.abs(fake[1] - x[1]).max() <= 200.0 / 255 / 2 + 1e-12
    assert fake[0, 0] == 0.0 and fake[1, 1] == 0.0


# codes the integer kernels hold (4 bits), and codes wider than 8 bits (a 9-bit
# grid, per-parameter precision), which are dequantized in every product
QUANTIZERS = {
    "gpfq4": (GreedyPathQuantizer(n_bits=4), 1),
    "uniform9": (UniformQuantizer(n_bits=9), 4),
    "adaptive": (AdaptivePrecisionQuantizer(), 4),
}


@pytest.mark.parametrize("quantizer, held", QUANTIZERS.values(), ids=QUANTIZERS)
@pytest.mark.parametrize(
    "activations",
    [None, "dynamic", ActivationQuantizer(8), ActivationQuantizer(4, symmetric=True)],
)
def test_quantized_mlp_runs_from_codes(
    digits_mlp, activations, quantizer, held, tmp_path
):
    import skquant
    from skquant import QuantizedMLP
    from skquant._tensor._runtime import CodeMatrix

    mlp, X, y = digits_mlp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = QuantizedMLP(mlp, quantizer, random_state=0, activations=activations).fit(
            X[:1200], y[:1200]
        )
    coefs = q.estimator_.coefs_
    assert all(isinstance(W, CodeMatrix) for W in coefs)
    # the same function as the float network with the dequantized weights, its
    # quantized layers' inputs put on their grids
    h = X[1200:]
    for i, (W, b) in enumerate(zip(coefs, q.estimator_.intercepts_)):
        if W.grid is not None:
            h = W.grid.fake(h)
        h = h @ np.asarray(W) + b
        if i < len(coefs) - 1:
            h = np.maximum(h, 0)
    want = np.exp(h - h.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(q.predict_proba(X[1200:]), want, rtol=1e-9, atol=1e-12)
    assert q.score(X[1200:], y[1200:]) > 0.85
    bits = (
        None
        if activations is None
        else (8 if activations == "dynamic" else activations.n_bits)
    )
    assert [r["activation_bits"] for r in q.report_.rows] == [bits] * len(coefs)
    # held: the codes (at 4 bits: under a byte each), not a float matrix
    assert coefs[0].nbytes < held * coefs[0].shape[0] * coefs[0].shape[1]
    skquant.save(q, tmp_path / "m.skq")
    back = skquant.load(tmp_path / "m.skq")
    np.testing.assert_array_equal(back.predict_proba(X), q.predict_proba(X))
    assert back.activations == activations or (
        back.activations.get_params() == activations.get_params()
    )


def test_quantized_mlp_per_feature_grid_is_announced(digits_mlp):
    from skquant import QuantizedMLP

    mlp, X, y = digits_mlp
    with pytest.warns(UserWarning, match="per-feature input grid has no integer"):
        QuantizedMLP(
            mlp,
            UniformQuantizer(n_bits=4),
            activations=ActivationQuantizer(8, granularity="per_feature"),
        ).fit(X[:300])


def test_runtime_per_layer(tmp_path):
    net = cnn()
    X = torch.randn(16, 3, 8, 8)
    acts = ActivationQuantizer(8)
    runtime = {"*": "auto", "0": "packed", "6": "float"}
    with pytest.warns(
        RuntimeFallbackWarning, match="runtime='packed' runs weight-only"
    ):
        qnet = quantize_model(
            net, UniformQuantizer(4), X, activations=acts, runtime=runtime
        )
    # "auto" runs a grouped (depthwise) convolution on oneDNN's convolution
    # where torch has it, else weight-only (its GEMMs would hold a kB a group)
    depthwise = "int8" if _int8.onednn_conv_available() else "packed"
    assert [qnet[i].runtime for i in (0, 2, 4, 6)] == [
        "packed",
        "int8",
        depthwise,
        "float",
    ]
    assert qnet[0]._int8 is None and qnet[2]._int8 is not None
    save_model(qnet, tmp_path / "m.skq")
    back = load_into(cnn(), tmp_path / "m.skq", runtime={"2": "float"})
    assert [back[i].runtime for i in (0, 2)] == ["int8", "float"]
    with pytest.raises(ValueError, match="a dict from layer name"):
        quantize_model(net, UniformQuantizer(4), runtime={"0": "fast"})


def test_a_per_layer_bit_table_runs_each_layer_at_its_width():
    net = mlp()
    X = torch.randn(200, 37)
    table = {"0": UniformQuantizer(n_bits=2), "2": UniformQuantizer(n_bits=7)}
    qnet = quantize_model(net, table, X)
    assert (qnet[0].runtime, qnet[0]._rt.bits) == ("packed", 2)
    assert (qnet[2].runtime, qnet[2]._rt.bits) == ("int8", 8)
    floated = quantize_model(net, table, X, runtime="float")
    with torch.no_grad():
        assert _relative(qnet(X), floated(X)) <= 1e-5


def test_repr_says_bits_runtime_and_activations(monkeypatch):
    qnet = quantize_model(mlp(), UniformQuantizer(n_bits=4))
    assert "n_bits=4, runtime='packed'" in repr(qnet[0])
    qnet = quantize_model(mlp(), UniformQuantizer(n_bits=4), activations="dynamic")
    assert repr(qnet[2]).endswith("runtime='int8', activation_bits=8)")
    # 8-bit inputs with 8-bit weight codes where the kernels' pair sums saturate
    # (a CPU without VNNI): put on their grid in float, and said so
    monkeypatch.setattr(_int8, "exact_pair_sums", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeFallbackWarning)  # (once a process)
        qnet = quantize_model(
            mlp(),
            UniformQuantizer(n_bits=8),
            torch.randn(64, 37),
            activations=ActivationQuantizer(),
        )
    assert repr(qnet[2]).endswith("runtime='int8', activation_bits=8, simulated)")


@pytest.mark.parametrize(
    "make",
    [
        lambda W: quantize(W, n_bits=4),
        lambda W: quantize(W, n_bits=8),
        lambda W: BinaryQuantizer().fit(W).compress(W),
        lambda W: QuantizedTensor(
            codes=np.clip(np.rint(W * 40 + 128), 0, 255).astype(np.uint8),
            scale=np.float32(1 / 40),
            n_bits=8,
            qmin=0,
            qmax=255,
            alphabet="affine",
            zero_point=np.full(W.shape[1], 128, dtype=np.uint8),
        ),
    ],
    ids=["4-bit", "8-bit", "binary", "affine"],
)
def test_codes_come_back_in_their_own_dtype(make, tmp_path):
    """The runtime form and a file give the codes back exactly, in their dtype,
    through the narrow unpacking (int16 work arrays, not int64)."""
    from skquant import load, save
    from skquant._tensor._runtime import RuntimeWeights

    W = np.random.default_rng(0).standard_normal((300, 20)).astype(np.float32)
    qt = make(W)
    for back in (RuntimeWeights(qt).codes(), RuntimeWeights(qt).tensor().codes):
        assert back.dtype == qt.codes.dtype and np.array_equal(back, qt.codes)
    save(qt, tmp_path / "t.skq")
    back = load(tmp_path / "t.skq")
    loaded = back.codes
    assert loaded.dtype == qt.codes.dtype and np.array_equal(loaded, qt.codes)
    # nothing of the loaded tensor is a view of the file's bytes (which such a
    # view would keep alive whole: a loaded 4096 MLP held twice its codes)
    for a in (back.codes, back.scale, back.zero_point):
        assert a is None or a.base is None or a.base.base is None
    save({"b": np.arange(3.0)}, tmp_path / "a.skq")
    assert load(tmp_path / "a.skq")["b"].flags.owndata


def test_other_quantized_engines_run_the_simulated_path(monkeypatch):
    """Under a quantized engine whose packed weights the int8 GEMM's operator
    does not take (qnnpack, torch's default on ARM), quantize_model and a model
    quantized under x86 run the simulated path and say why (both raised
    "not implemented for this packed parameter type", the first blaming the
    calibration data); back under x86, the GEMM runs again."""
    engines = torch.backends.quantized.supported_engines
    if "qnnpack" not in engines or "x86" not in engines:
        pytest.skip("this torch lacks the qnnpack or the x86 engine")
    monkeypatch.setattr(torch.backends.quantized, "engine", "x86")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x, acts = torch.randn(64, 16), ActivationQuantizer(8)
    sim = quantize_model(net, UniformQuantizer(4), x, activations=acts, runtime="float")
    built = quantize_model(net, UniformQuantizer(4), x, activations=acts)
    blob = pickle.dumps(built)
    with torch.no_grad():
        want = sim(x)
    torch.backends.quantized.engine = "qnnpack"
    with pytest.warns(RuntimeFallbackWarning, match="quantized engine is 'qnnpack'"):
        q = quantize_model(net, UniformQuantizer(4), x, activations=acts)
    assert q[0]._int8 is None
    assert repr(built[0]).endswith("simulated)")  # (packed under x86, not run)
    with torch.no_grad():
        assert _relative(q(x), want) <= 1e-6
        for model in (built, pickle.loads(blob)):
            assert _relative(model(x), want) <= 1e-5
    torch.backends.quantized.engine = "x86"
    calls = []
    real = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
    monkeypatch.setattr(
        torch.ops.quantized,
        "linear_with_input_q_dq_qweight_dq_output_fp32",
        lambda *a: calls.append(1) or real(*a),
    )
    with torch.no_grad():
        assert _relative(built(x), want) <= 1e-5
    assert calls


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(4, 6, 3, padding="valid"),
        lambda: nn.Conv2d(4, 6, 3, padding="same"),
        lambda: nn.Conv2d(4, 6, (2, 3), padding="same"),  # (uneven: 0 | 1 rows)
        lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        lambda: nn.Conv2d(4, 6, 3, padding=(1, 2), padding_mode="circular"),
        lambda: nn.Conv2d(4, 6, 3, padding=2, padding_mode="replicate", dilation=2),
        lambda: nn.Conv1d(4, 6, 5, padding="same"),
        lambda: nn.Conv1d(4, 6, 4, padding="same", padding_mode="reflect"),
    ],
)
@pytest.mark.parametrize("activations", ["dynamic", "static"])
@pytest.mark.parametrize("kernel", ["onednn", "gemm"])
def test_every_padding_runs_on_the_int8_kernels(monkeypatch, conv, activations, kernel):
    """padding='valid'/'same' and the padding modes run on the integer kernels
    (the input padded as torch's layer pads it, the kernel without padding),
    with the values of ``runtime="float"``; they ran simulated, and said the
    patches took explicit zero padding only."""
    if kernel == "onednn" and not _int8.onednn_conv_available():
        pytest.skip("this torch has no oneDNN quantized convolution")
    if kernel == "gemm":
        monkeypatch.setattr(_int8, "onednn_conv_available", lambda: False)
    torch.manual_seed(0)
    layer = conv()
    net = nn.Sequential(layer).eval()
    shape = (8, 4, 9) if isinstance(layer, nn.Conv1d) else (8, 4, 7, 9)
    x = torch.randn(*shape)
    acts = ActivationQuantizer(7) if activations == "static" else "dynamic"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeFallbackWarning)
        q = quantize_model(net, UniformQuantizer(4), x, activations=acts)
    sim = quantize_model(net, UniformQuantizer(4), x, activations=acts, runtime="float")
    assert q[0]._int8 is not None
    with torch.no_grad():
        got, want = q(x), sim(x)
    assert got.shape == want.shape == net(x).shape
    assert _relative(got, want) <= 1e-5


def test_what_the_model_returns_from_an_int8_convolution_is_contiguous():
    """A convolution whose output the model returns gives it in torch's layout
    (the caller may ``.view`` it: a fully convolutional net's output raised on
    ``out.view(n, -1)``); one whose output a later layer reads keeps the
    kernel's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 8, 9, padding=4), nn.ReLU(), nn.Conv1d(8, 4, 1))
    x = torch.randn(8, 1, 64)
    q = quantize_model(net.eval(), UniformQuantizer(4), x, activations="dynamic")
    assert q[0]._int8 is not None and q[2]._int8 is not None
    assert not q[0]._contiguous_out and q[2]._contiguous_out
    with torch.no_grad():
        out = q(x)
    assert out.is_contiguous()
    assert out.view(8, -1).shape == (8, 256)


def test_static_calibration_takes_unbatched_calls_inside_the_forward():
    """A forward may call a layer on an unbatched input (a per-sample loop, a
    gate from x.mean(0)), as torch's layers take it: the calibration's input
    check accepts it (it refused such models, which calibrated before)."""

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.g = nn.Conv2d(3, 8, 3), nn.Linear(8, 8)

        def forward(self, x):
            y = torch.stack([self.c(s) for s in x])  # (3-D inputs)
            gate = torch.sigmoid(self.g(y.mean(dim=(0, 2, 3))))  # (a 1-D input)
            return y * gate[:, None, None]

    torch.manual_seed(0)
    net, x = Gated().eval(), torch.randn(4, 3, 8, 8)
    q = quantize_model(net, UniformQuantizer(4), x, activations=ActivationQuantizer(8))
    with torch.no_grad():
        assert _relative(q(x), net(x)) < 0.2
    acts = ActivationQuantizer(8)
    with pytest.raises(ValueError, match="expects input 4-D with 3 channels"):
        quantize_model(net, UniformQuantizer(4), x[:, :2], activations=acts)


def _grad_nets():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    x = torch.randn(8, 16)
    q = quantize_model(net, UniformQuantizer(4), x, activations="dynamic")
    sim = quantize_model(
        net, UniformQuantizer(4), x, activations="dynamic", runtime="float"
    )
    return q, sim, x


def test_grad_mode_kernels_take_in_place_ops_and_second_order_gradients():
    """The kernels' output in grad mode is no view (ReLU(inplace=True) after a
    frozen layer raised), and a gradient of the gradient (a gradient penalty)
    is the simulated path's (once_differentiable raised, jvp gave zeros)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    for acts in (None, "dynamic"):
        q = quantize_model(net.eval(), UniformQuantizer(4), x, activations=acts)
        q.requires_grad_(False)
        xi = x.clone().requires_grad_()
        q(xi).square().sum().backward()
        assert float(xi.grad.abs().sum()) > 0
    q, sim, x = _grad_nets()
    got = []
    for model in (q, sim):
        model.zero_grad()
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(model(xi).sum(), xi, create_graph=True)
        gx.square().sum().backward()
        got.append([p.grad for p in model.parameters()])
    assert [a is None for a in got[0]] == [b is None for b in got[1]] != [True] * 2
    for a, b in zip(*got):
        assert a is None or _relative(a, b) <= 1e-4


def test_grad_mode_kernels_backward_with_the_forward_tensors():
    """The backward recomputes with the layer's tensors of the forward:
    functional_call's swapped-in scale (the gradient was off by 1.5 relative),
    and an in-place change of a buffer in between raises (not of the bias); a
    hook holding the layer's output does not keep the layer alive (a reference
    cycle through the graph); torch.func.grad of weight-only and int8 models
    runs (it raised)."""
    import gc
    import weakref

    q, sim, x = _grad_nets()
    grads = []
    for model in (q, sim):
        xi = x.clone().requires_grad_()
        swapped = {"2.bias": model[2].bias.detach() * 3}
        torch.func.functional_call(model, swapped, (xi,)).square().sum().backward()
        grads.append(xi.grad)
    assert _relative(grads[0], grads[1]) <= 1e-4
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    acts = ActivationQuantizer(7)
    static = [
        quantize_model(net, UniformQuantizer(4), x, activations=acts, runtime=r)
        for r in ("auto", "float")
    ]
    grads = []
    for model in static:
        xi = x.clone().requires_grad_()
        swapped = {"2.input_scale": model[2].input_scale * 3}
        torch.func.functional_call(model, swapped, (xi,)).square().sum().backward()
        grads.append(xi.grad)
    assert static[0][2]._int8 is not None
    assert _relative(grads[0], grads[1]) <= 1e-4
    xi = x.clone().requires_grad_()
    y = q(xi)
    with torch.no_grad():
        q[2].bias.add_(1.0)  # (an optimizer step: the bias is not in x's gradient)
    y.sum().backward(retain_graph=True)
    with torch.no_grad():
        q[2].weight_scale.mul_(2.0)
    with pytest.raises(RuntimeError, match="weight_scale, needed for the gradient"):
        y.sum().backward()
    q, _, x = _grad_nets()
    q[2].register_forward_hook(lambda m, a, out: setattr(m, "kept", out))
    q(x.clone().requires_grad_())
    alive = weakref.ref(q[2])
    del q
    gc.collect()
    assert alive() is None
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    for acts in (None, ActivationQuantizer(7)):  # (int8 layers raised too)
        plain = quantize_model(net, UniformQuantizer(4), x, activations=acts)
        ref = quantize_model(
            net, UniformQuantizer(4), x, activations=acts, runtime="float"
        )
        g = [
            torch.func.grad(lambda v, m=m: m(v).square().sum())(x) for m in (plain, ref)
        ]
        assert _relative(g[0], g[1]) <= 1e-5


def test_reading_the_graph_leaves_a_forward_s_containers_as_they_were():
    """quantize_model reads the model's fx graph (``.view`` readers): a forward
    that appends to a list or sets a dict entry left fx's proxies in them."""

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.seen, self.stats = nn.Conv2d(3, 4, 3), [], {}

        def forward(self, x):
            y = self.c(x)
            self.seen.append(y.shape[0])
            self.stats["last"] = y.shape[0]
            return y.flatten(1)

    torch.manual_seed(0)
    q = quantize_model(
        Recording().eval(), UniformQuantizer(4), torch.randn(4, 3, 6, 6),
        activations="dynamic",
    )  # fmt: skip
    assert all(isinstance(v, int) for v in q.seen)
    assert all(isinstance(v, int) for v in q.stats.values())


def test_per_feature_grids_of_unbatched_convolution_calls():
    """A convolution called unbatched inside the forward gets its per-channel
    grid on its channels (the calibration took the second axis: H)."""

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.stack([self.c(s) for s in x])

    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 8) * torch.tensor([1.0, 10.0, 100.0])[:, None, None]
    acts = ActivationQuantizer(8, granularity="per_feature")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeFallbackWarning)
        q = quantize_model(Loop().eval(), UniformQuantizer(4), x, activations=acts)
    scale = q.c.input_scale
    assert scale.shape == (3,) and bool(torch.all(scale[1:] > 5 * scale[:-1]))


@given(
    values=st.lists(
        st.floats(-1e3, 1e3, allow_nan=False, width=32)
        | st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf")]),
        min_size=8,
        max_size=8,
    ),
    half_steps=st.lists(st.integers(-600, 600), min_size=8, max_size=8),
    n_bits=st.integers(2, 8),
    symmetric=st.booleans(),
)
def test_the_int8_gemm_reads_the_simulated_paths_codes(
    values, half_steps, n_bits, symmetric
):
    """A Linear's int8 GEMM puts its input on the grid in four passes
    (grid_values), not the simulated path's nine: the same values but for a
    zero's sign, so the GEMM gives the same outputs bit for bit, values on a
    step's half, NaN and inf included."""
    net = nn.Sequential(nn.Linear(16, 3)).eval()
    torch.manual_seed(0)
    calib = torch.randn(64, 16) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(
            net,
            UniformQuantizer(4),
            calib,
            activations=ActivationQuantizer(n_bits, symmetric=symmetric),
        )
    layer = q[0]
    assert layer._int8 is not None
    scale, zp = layer._input_qparams(None)
    x = torch.tensor(values + [h * scale / 2 for h in half_steps], dtype=torch.float32)
    x = x.reshape(1, 16)
    got = _int8.grid_values(x, scale, zp, _int8.kernel_bounds(layer))
    want = layer._fake_input(x)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())  # (+0 == -0)
    op = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
    params = layer._int8.params[0]
    a, b = op(got, scale, zp, params), op(want, scale, zp, params)
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(
        a.nan_to_num(), b.nan_to_num()
    )


def test_an_input_scale_made_a_parameter_or_parametrized_is_read():
    """An input grid's scale made an nn.Parameter (a step being learned) or
    computed by a parametrization is read on the int8 kernels (a KeyError
    once the scale was read from the buffers only)."""
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    x = torch.randn(32, 16)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    q = quantize_model(net, UniformQuantizer(4), x, activations=ActivationQuantizer(7))
    with torch.no_grad():
        before = q(x)
    assert q[2]._int8 is not None
    scale = q[2].input_scale.detach().clone()
    q[2].input_scale = nn.Parameter(scale, requires_grad=False)
    with torch.no_grad():
        torch.testing.assert_close(q(x), before, rtol=0, atol=0)

    class Same(nn.Module):
        def forward(self, s):
            return s * 1.0

    parametrize.register_parametrization(q[2], "input_scale", Same())
    with torch.no_grad():
        torch.testing.assert_close(q(x), before, rtol=0, atol=0)
