"""What a quantized model keeps after it is deployed: copies, casts, loads, tracing."""

import copy
import io
import pickle
import warnings

import pytest

from skquant import ActivationQuantizer, UniformQuantizer

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skquant.torch import (  # noqa: E402
    RuntimeFallbackWarning,
    _int8,
    _qlayers,
    quantize_model,
)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def quantized(net, x, runtime="auto", activations=None, n_bits=4):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(
            net,
            UniformQuantizer(n_bits=n_bits),
            x,
            runtime=runtime,
            activations=activations,
        )


def _reload(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save": _reload,
    "double-float": lambda m: m.double().float(),
}


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("activations", ["dynamic", "static"])
def test_int8_kernel_adds_the_current_bias_after_copies(how, activations):
    """The int8 GEMM's prepacked weights hold a bias: after a copy, a pickle or a
    cast the layer's ``bias`` is another tensor, and changing it (``zero_``, an
    optimizer step) changes the output, as in the float runtime."""
    x = torch.randn(16, 32)
    acts = ActivationQuantizer(n_bits=7) if activations == "static" else "dynamic"
    model = COPIES[how](quantized(mlp(), x, "int8", acts))
    assert model[2]._int8 is not None
    with torch.no_grad():
        model[2].bias.add_(1.0)
        bias = model[2].bias.clone()
        before = model(x)
        model[2].bias.zero_()
        after = model(x)
    assert torch.allclose(before - after, bias.expand_as(before), atol=1e-5)
    # an optimizer step on the bias reaches the kernel too
    model[2].bias.requires_grad_(True)
    opt = torch.optim.SGD([model[2].bias], lr=1.0)
    model[2].bias.grad = torch.ones_like(model[2].bias)
    opt.step()
    with torch.no_grad():
        assert torch.allclose(model(x), after - 1.0, atol=1e-5)


def depthwise():
    """A 3x3 depthwise convolution and a 1x1 one, inputs, 7-bit static grids."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.Conv2d(64, 8, 1)
    ).eval()
    return net, torch.randn(4, 64, 6, 6), ActivationQuantizer(n_bits=7)


def test_grouped_convolutions_on_gemms_auto_runtime_and_bytes_held(monkeypatch):
    """Without oneDNN's convolution, the int8 GEMM holds one prepacked object per
    group (some 5 kB each for a 3x3 depthwise channel of 9 codes):
    ``runtime="auto"`` runs grouped convolutions weight-only (inputs simulated)
    and says so; asked for, ``runtime="int8"`` runs them and ``nbytes_held``
    counts the objects."""
    monkeypatch.setattr(_int8, "onednn_conv_available", lambda: False)
    net, x, acts = depthwise()
    for key in [k for k in _qlayers._ANNOUNCED if "grouped" in str(k)]:
        _qlayers._ANNOUNCED.discard(key)  # (said once a process)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        auto = quantize_model(net, UniformQuantizer(n_bits=4), x, activations=acts)
    assert auto[0]._int8 is None and auto[0].runtime == "packed"
    assert auto[1]._int8 is not None  # groups=1: the integer GEMM
    said = [str(w.message) for w in seen if w.category is RuntimeFallbackWarning]
    assert any("grouped convolutions" in m for m in said)
    assert "simulated" in repr(auto[0])
    assert auto[0].nbytes_held < 64 * 100  # 32 bytes of codes an output, scales
    explicit = quantized(net, x, "int8", acts)
    assert len(explicit[0]._int8.params) == 64
    assert explicit[0].nbytes_held >= 64 * 4000  # (measured: 5.7 kB a group)
    sim = quantized(net, x, "float", acts)
    with torch.no_grad():
        want = sim(x)
        for got in (auto(x), explicit(x)):
            assert float((got - want).norm() / want.norm()) < 0.01
    # a few wide groups run the GEMM under auto (weight-only, a groups=2
    # 1024-channel convolution dequantized its weight in every call: 20x slower)
    wide = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1, groups=2)).eval()
    xw = torch.randn(2, 128, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = quantize_model(wide, UniformQuantizer(n_bits=4), xw, activations=acts)
    assert auto[0]._int8 is not None and len(auto[0]._int8.params) == 2


@pytest.mark.skipif(
    not _int8.onednn_conv_available(), reason="no oneDNN quantized convolution"
)
def test_grouped_convolutions_on_onednn_auto_runtime_and_bytes_held():
    """oneDNN's convolution takes every group in one object: ``runtime="auto"``
    runs a depthwise convolution on it, holding about a byte a code (the
    per-group GEMMs held 5.7 kB a group), and computes the simulated function."""
    net, x, acts = depthwise()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeFallbackWarning)
        auto = quantize_model(net, UniformQuantizer(n_bits=4), x, activations=acts)
    assert type(auto[0]._int8) is _int8.Int8Conv and auto[0].runtime == "int8"
    assert auto[0].nbytes_held < 64 * 100
    assert "simulated" not in repr(auto[0])
    sim = quantized(net, x, "float", acts)
    with torch.no_grad():
        want = sim(x)
        assert float((auto(x) - want).norm() / want.norm()) < 1e-5


@pytest.mark.parametrize("runtime", ["packed", "int8", "float"])
def test_half_float_round_trip_keeps_the_scales_computed_with(runtime):
    """``.half().float()``: the ``packed`` and ``int8`` layers compute with their
    float32 scales, and ``weight_scale`` keeps them, so the model's state_dict
    loads into a model that gives its outputs."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 5)
    ).eval()
    x = torch.randn(4, 3, 8, 8)
    model = quantized(net, x, runtime)
    scale = model[0].weight_scale.clone()
    model.half()
    model.float()
    if runtime != "float":  # (the float runtime computes with the cast buffers)
        assert model[0].weight_scale.dtype == torch.float32
        assert torch.equal(model[0].weight_scale, scale)
    back = quantized(net, x, runtime, n_bits=2)
    back.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


@pytest.mark.parametrize("cast", ["half", "bfloat16"])
def test_a_cast_and_back_keeps_the_input_grid(cast):
    """``.half().float()`` (a precision plugin's round trip) keeps a static input
    grid's scales, as it keeps the weights' (``input_scale`` was cast: the grid
    moved by 0.03%, 1% of the outputs)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 5))
    x = torch.randn(16, 3, 5, 5)
    model = quantized(net.eval(), x, activations=ActivationQuantizer(n_bits=8))
    scales = [m.input_scale.clone() for m in (model[0], model[3])]
    getattr(model, cast)().float()
    for m, scale in zip((model[0], model[3]), scales):
        assert m.input_scale.dtype == torch.float32
        assert torch.equal(m.input_scale, scale)


def test_a_float64_model_cast_to_float32_runs_the_int8_kernels():
    """A layer's dtype follows the model's casts: quantized in float64 (the
    integer GEMM runs float32 only), then ``.float()``, it runs on the int8
    kernels, and ``weight`` is read in the bias's dtype (it stayed float64, and
    ``F.linear(x, layer.weight, layer.bias)`` failed after ``.half()``)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(72, 5)).double()
    x = torch.randn(16, 3, 5, 5, dtype=torch.float64)
    model = quantized(net.eval(), x, activations=ActivationQuantizer(n_bits=7))
    assert model[0]._int8 is None and model[2]._int8 is None
    model.float()
    for layer in (model[0], model[2]):
        assert layer._int8 is not None
        assert layer.weight.dtype == layer.bias.dtype == torch.float32
    sim = quantized(net.float().eval(), x.float(), "float", ActivationQuantizer(7))
    with torch.no_grad():
        want = sim(x.float())
        got = model(x.float())
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    model.half()
    assert model[2].weight.dtype == model[2].bias.dtype == torch.float16


def test_a_checkpoint_of_another_width_is_refused_before_loading():
    """torch's size mismatch error, naming the key, the checkpoint's shape and the
    model's; the model is left as it was and its own state_dict still loads."""
    x = torch.randn(8, 32)
    wide = quantized(mlp(), x)  # Linear(32, 64) -> Linear(64, 10)
    torch.manual_seed(1)

    def narrow_net():
        return nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 10))

    narrow = quantized(narrow_net(), x)
    before = {
        k: v.clone()
        for k, v in narrow.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    with torch.no_grad():
        y = narrow(x)
    with pytest.raises(RuntimeError, match="size mismatch") as info:
        narrow.load_state_dict(wide.state_dict())
    said = str(info.value)
    assert "0.weight_scale" in said and "(64,)" in said and "(48,)" in said
    assert "0.weight_packed" in said and "(1024,)" in said and "(768,)" in said
    after = narrow.state_dict()
    for key, value in before.items():
        assert after[key].shape == value.shape and torch.equal(after[key], value)
    with torch.no_grad():
        assert torch.equal(narrow(x), y)
    again = quantized(narrow_net(), x, n_bits=2)
    again.load_state_dict(narrow.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), y)


@pytest.mark.parametrize("how", ["jit.trace", "export"])
def test_tracing_the_kernels_says_to_use_the_float_runtime(how):
    """A trace of the ``packed``/``int8`` kernels would hold the example's output
    (they run outside torch's operators): tracing and exporting raise, naming
    runtime='float', which traces."""
    x = torch.randn(4, 32)

    def trace(model):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # (torch.jit)
            if how == "jit.trace":
                return torch.jit.trace(model, x, check_trace=False)
            return torch.export.export(model, (x,)).module()

    for runtime, acts in (("packed", None), ("int8", "dynamic")):
        with pytest.raises(RuntimeError, match="runtime='float'"):
            trace(quantized(mlp(), x, runtime, acts))
    model = quantized(mlp(), x, "float")
    traced = trace(model)
    x2 = torch.randn(4, 32) * 5
    with torch.no_grad():
        assert torch.allclose(traced(x2), model(x2), atol=1e-5)


@pytest.mark.parametrize("activations", [None, "dynamic", "static"])
def test_the_float_runtime_traces_with_its_check_and_exports_to_onnx(activations):
    """runtime='float' traces as any torch layer, in grad mode and with
    torch.jit.trace's check (a device constant pooled in another order, and the
    input grid's gradient ops, made the retrace differ), and torch's TorchScript
    ONNX exporter takes it (it read the extra state, a dict, as a tensor)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4))
    x = torch.randn(16, 3, 8, 8)
    acts = ActivationQuantizer(n_bits=8) if activations == "static" else activations
    model = quantized(net.eval(), x, "float", acts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (torch.jit)
        traced = torch.jit.trace(model, x[:2])  # (check_trace: on)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    pytest.importorskip("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), io.BytesIO(), dynamo=False)


def test_a_bias_the_gemm_cannot_read_in_place_takes_the_simulated_path():
    """A strided bias was copied by the prepack (later in-place changes were not
    seen: rel. error 0.89); a parametrized one was packed again in every call."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, b):
            return 2 * b

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8)).eval()
    x = torch.randn(4, 16)
    acts = ActivationQuantizer(n_bits=7)
    q = quantized(net, x, "int8", acts)
    ref = quantized(net, x, "float", acts)
    strided = torch.randn(16)
    for m in (q[0], ref[0]):
        m.bias = nn.Parameter(strided[::2], requires_grad=False)  # (a view, stride 2)
    assert not q[0].bias.is_contiguous()
    with torch.no_grad():
        q(x)
        for m in (q[0], ref[0]):
            m.bias.add_(1.0)
        assert torch.allclose(q(x), ref(x), atol=1e-5)
    p, pref = quantized(net, x, "int8", acts), quantized(net, x, "float", acts)
    for m in (p[0], pref[0]):
        parametrize.register_parametrization(m, "bias", Doubled())
    packed = p[0]._int8
    with torch.no_grad():
        p(x)
        assert torch.allclose(p(x), pref(x), atol=1e-5)
    assert p[0]._int8 is packed  # not packed again


def test_torch_fx_traces_a_quantized_model_with_its_layers_as_calls():
    """torch.fx (feature extractors, graph passes) traces a model holding
    quantized layers, each one call that runs its kernels (their forwards
    branch on values: fx raised on every runtime); a lone layer says to trace
    the model around it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4))
    x = torch.randn(16, 3, 8, 8)
    model = quantized(net.eval(), x, activations=ActivationQuantizer(n_bits=7))
    graph = torch.fx.symbolic_trace(model)
    calls = [n.target for n in graph.graph.nodes if n.op == "call_module"]
    assert calls == ["0", "1", "2", "3"]
    assert graph.get_submodule("0") is model[0] and model[0]._int8 is not None
    with torch.no_grad():
        assert torch.equal(graph(x), model(x))
    with pytest.raises(TypeError, match="trace that model"):
        torch.fx.symbolic_trace(model[3])


def test_casts_follow_the_device_and_bring_the_kernels_back():
    """A layer's device follows ``.to()`` (``.to("meta").float()`` of a float64
    model raised: the runtime was chosen again from codes on the meta device),
    and a weight-only model loaded in float16 and cast back runs its kernels
    again (it stayed on the float runtime)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(8, 16)
    acts = ActivationQuantizer(n_bits=7)
    model = quantized(net.double().eval(), x.double(), activations=acts)
    model.to("meta").float()
    assert model[0]._device.type == "meta" and model[0].weight.is_meta
    plain = quantized(net.float().eval(), x)
    state = plain.state_dict()
    assert plain[0].runtime == "packed"
    plain.half()
    plain.load_state_dict(state)
    plain.float()
    assert plain[0].runtime == "packed" and plain[0]._rt is not None
    plain.load_state_dict(state)  # (the float16 round trip rounded the biases)
    with torch.no_grad():
        assert torch.equal(plain(x), quantized(net, x)(x))


def test_a_bias_the_int8_gemm_cannot_add_is_said():
    """A strided bias makes the layer simulate its input grid; it says so (the
    generic message it gave went with the change that muted float32 inputs)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8)).eval()
    x = torch.randn(4, 16)
    q = quantized(net, x, "int8", ActivationQuantizer(n_bits=7))
    q[0].bias = nn.Parameter(torch.randn(16)[::2], requires_grad=False)
    _qlayers._ANNOUNCED.clear()  # (said once a process)
    with pytest.warns(RuntimeFallbackWarning, match="adds a contiguous float32"):
        with torch.no_grad():
            q(x)
    assert repr(q[0]).endswith("simulated)")  # (as runtime.rst says)


@pytest.mark.parametrize("runtime", ["packed", "int8"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_an_edited_weight_scale_is_what_every_runtime_computes_and_saves(
    tmp_path, runtime, kind
):
    """weight_scale is the layer's state: an edit in place, or another tensor
    put there by functional_call, is what the packed and int8 forms compute
    with (they held their own copy, and state_dict wrote the edited buffer, so
    that the model and its file computed different functions), as the float
    runtime does."""
    from torch.func import functional_call

    from skquant.torch import load_into, save_model

    def net():
        torch.manual_seed(0)
        if kind == "conv":
            return nn.Sequential(
                nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4)
            ).eval()
        return mlp()

    x = torch.randn(8, 3, 6, 6) if kind == "conv" else torch.randn(8, 32)
    acts = ActivationQuantizer(n_bits=8)
    q = quantized(net(), x, runtime, acts)
    ref = quantized(net(), x, "float", acts)
    with torch.no_grad():
        before = q(x)
        for m in (q, ref):
            m[0].weight_scale.mul_(1.5)
        after = q(x)
        assert not torch.equal(after, before)
        torch.testing.assert_close(after, ref(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            q[0].weight,
            q[0].weight_codes.float()
            * q[0].weight_scale.reshape((-1,) + (1,) * (q[0].weight.dim() - 1)),
        )
        again = copy.deepcopy(q)
        again.load_state_dict(q.state_dict())
        assert torch.equal(again(x), after)
        save_model(q, tmp_path / "m.skq")
        assert torch.equal(
            load_into(net(), tmp_path / "m.skq", runtime=runtime)(x), after
        )
        swapped = dict(q.named_buffers())
        swapped["0.weight_scale"] = swapped["0.weight_scale"] * 2
        ref_swapped = dict(ref.named_buffers())
        ref_swapped["0.weight_scale"] = ref_swapped["0.weight_scale"] * 2
        torch.testing.assert_close(
            functional_call(q, swapped, (x,)),
            functional_call(ref, ref_swapped, (x,)),
            rtol=1e-5,
            atol=1e-5,
        )
        assert torch.equal(q(x), after)  # its own scale again
        # edits that keep the version counter (.data, a NumPy view) are seen
        # too, and a copy of the same values holds nothing again
        q[0].weight_scale.data.mul_(0.5)
        ref[0].weight_scale.data.mul_(0.5)
        torch.testing.assert_close(q(x), ref(x), rtol=1e-5, atol=1e-5)
        q[0].weight_scale.numpy()[:] *= 2
        ref[0].weight_scale.numpy()[:] *= 2
        torch.testing.assert_close(q(x), ref(x), rtol=1e-5, atol=1e-5)
        held = q[0]._int8 if runtime == "int8" else q[0]._rt
        q[0].weight_scale.copy_(q[0].weight_scale.clone())
        q(x)
        assert (q[0]._int8 if runtime == "int8" else q[0]._rt) is held
    # a replacement that needs gradients gives its values (no gradient: the
    # kernels give the scale none)
    grad_scale = dict(q.named_buffers())
    grad_scale["0.weight_scale"] = (3 * grad_scale["0.weight_scale"]).requires_grad_()
    ref_scale = dict(ref.named_buffers())
    ref_scale["0.weight_scale"] = 3 * ref_scale["0.weight_scale"]
    with torch.no_grad():
        torch.testing.assert_close(
            functional_call(q, grad_scale, (x,)),
            functional_call(ref, ref_scale, (x,)),
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.parametrize("runtime", ["packed", "int8"])
def test_a_weight_scale_made_a_parameter_is_what_the_layer_computes_with(runtime):
    """weight_scale made an nn.Parameter (a step being learned) is read as the
    buffer was: its values (it raised AttributeError: the check read buffers
    only)."""
    x = torch.randn(8, 32)
    acts = ActivationQuantizer(n_bits=8)
    q = quantized(mlp(), x, runtime, acts)
    ref = quantized(mlp(), x, "float", acts)
    for m in (q, ref):
        m[0].weight_scale = nn.Parameter(m[0].weight_scale.clone() * 2)
    with torch.no_grad():
        torch.testing.assert_close(q(x), ref(x), rtol=1e-5, atol=1e-5)
        held = q[0]._int8 if runtime == "int8" else q[0]._rt
        q(x)  # (held once: the copy it compares with is the parameter's)
        assert (q[0]._int8 if runtime == "int8" else q[0]._rt) is held
