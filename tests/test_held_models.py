"""Models as people hold them: layer subclasses with their own forward, inference
tensors, hooks registered before quantizing, layers the forward never calls."""

import math
import re
import warnings

import pytest

from skquant import ActivationQuantizer, GreedyPathQuantizer, UniformQuantizer

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from skquant.torch import QuantLinear, load_into, quantize_model, save_model  # noqa: E402


class LoRALinear(nn.Linear):
    """An adapter's extra product, added in its own forward."""

    def __init__(self, n_in, n_out, rank=2):
        super().__init__(n_in, n_out)
        self.A = nn.Parameter(torch.randn(rank, n_in))
        self.B = nn.Parameter(torch.randn(n_out, rank))

    def forward(self, x):
        return super().forward(x) + F.linear(F.linear(x, self.A), self.B)


class StdConv2d(nn.Conv2d):
    """Weight standardisation in its ``_conv_forward``."""

    def _conv_forward(self, x, weight, bias):
        w = (weight - weight.mean((1, 2, 3), keepdim=True)) / weight.std(
            (1, 2, 3), keepdim=True
        )
        return super()._conv_forward(x, w, bias)


class SamePadConv2d(nn.Conv2d):
    """TF's 'SAME' padding, computed in its forward."""

    def forward(self, x):
        s, k = self.stride[0], self.kernel_size[0]
        pad = max((math.ceil(x.shape[-1] / s) - 1) * s + k - x.shape[-1], 0)
        x = F.pad(x, [pad // 2, pad - pad // 2] * 2)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0)


class PlainLinear(nn.Linear):
    """A subclass that adds nothing to the computation."""

    def extra_repr(self):
        return "plain, " + super().extra_repr()


@pytest.mark.parametrize(
    "layer, x",
    [
        (LoRALinear(16, 8), torch.randn(32, 16)),
        (StdConv2d(3, 8, 3), torch.randn(8, 3, 9, 9)),
        (SamePadConv2d(3, 8, 3, stride=2), torch.randn(8, 3, 9, 9)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_a_layer_subclass_with_its_own_forward_is_refused_by_name(layer, x):
    """A Linear or convolution subclass that computes its own way (an adapter's
    product, weight standardisation, padding of its own) is refused by name,
    not replaced by a quantized layer that computes as torch's does (an error
    of 0.8 to 0.9 of the output, or another output shape, before); skip leaves
    it float."""
    with torch.no_grad():
        width = layer(x).flatten(1).shape[1]
    net = nn.Sequential(layer, nn.Flatten(), nn.Linear(width, 2)).eval()
    kind = type(layer).__name__
    with pytest.raises(ValueError, match=re.escape(f"layer '0' ({kind})")):
        quantize_model(net, UniformQuantizer(n_bits=8), x)
    for skip in (["0"], [type(layer)]):
        q = quantize_model(net, UniformQuantizer(n_bits=8), x, skip=skip)
        assert type(q[0]) is type(layer) and type(q[2]) is QuantLinear
        with torch.no_grad():
            assert torch.equal(q[0](x), layer(x))


def test_a_forward_set_on_a_layer_is_refused_by_name():
    """A forward set on the layer itself (not its class's) is its own too."""
    import types

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    net[0].forward = types.MethodType(lambda self, x: 7.0 + 0 * x[..., :8], net[0])
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) computes with a"):
        quantize_model(net, UniformQuantizer(n_bits=8))
    q = quantize_model(net, UniformQuantizer(n_bits=8), skip=["0"])
    assert torch.equal(q[0](torch.zeros(1, 16)), torch.full((1, 8), 7.0))


def test_a_subclass_that_keeps_torchs_forward_is_quantized():
    """A subclass that changes nothing torch computes (its repr here) is
    quantized as its base class is; so is a quantized model, again."""
    torch.manual_seed(0)
    net = nn.Sequential(PlainLinear(16, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    q = quantize_model(net, UniformQuantizer(n_bits=8))
    assert type(q[0]) is QuantLinear
    again = quantize_model(q, UniformQuantizer(n_bits=4))
    assert again[0].n_bits == 4


def test_load_into_refuses_a_subclass_with_its_own_forward(tmp_path):
    """A file of a plain model read into one whose layer computes its own way
    is refused by name (the layer was replaced, silently)."""
    torch.manual_seed(0)
    path = tmp_path / "m.skq"
    save_model(
        quantize_model(nn.Sequential(nn.Linear(16, 8)), UniformQuantizer()), path
    )
    skeleton = nn.Sequential(LoRALinear(16, 8))
    with pytest.raises(ValueError, match=r"layer '0' of the model \(LoRALinear\)"):
        load_into(skeleton, path)
    assert type(skeleton[0]) is LoRALinear
    assert type(load_into(nn.Sequential(PlainLinear(16, 8)), path)[0]) is QuantLinear


def test_a_model_built_under_inference_mode_quantizes_outside_it():
    """A model whose parameters are inference tensors (built under
    ``torch.inference_mode``) quantizes with a data-driven quantizer outside
    it (torch refused to set their flags back: a RuntimeError before), and
    keeps its flags; the quantized copy holds normal tensors, with gradients."""
    torch.manual_seed(0)
    with torch.inference_mode():
        net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    flags = [p.requires_grad for p in net.parameters()]
    x = torch.randn(64, 10)
    q = quantize_model(net, GreedyPathQuantizer(n_bits=4), x)
    assert [p.requires_grad for p in net.parameters()] == flags
    assert not any(p.is_inference() for p in q.parameters())
    xx = x[:4].clone().requires_grad_(True)
    q(xx).sum().backward()
    assert xx.grad is not None and q[0].bias.grad is not None


class ReadsWeight(nn.Module):
    """A forward that reads a layer's weight and never calls the layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x):
        return F.linear(F.relu(self.a(x)), self.b.weight, self.b.bias)


def test_static_activations_of_a_layer_the_forward_never_calls_are_refused_by_name():
    """A layer whose forward never runs has no input to calibrate a grid on: the
    error names it and says what to do (torch.cat's 'expected a non-empty list
    of Tensors' before)."""
    x = torch.randn(64, 16)
    with pytest.raises(ValueError, match=re.escape("layers ['b'] did not run")):
        quantize_model(
            ReadsWeight().eval(),
            UniformQuantizer(),
            x,
            activations=ActivationQuantizer(),
        )
    q = quantize_model(
        ReadsWeight().eval(),
        UniformQuantizer(),
        x,
        activations=ActivationQuantizer(),
        skip=["b"],
    )
    assert q.a.activation_bits == 8 and type(q.b) is nn.Linear


def test_load_into_refuses_runtimes_for_layers_it_does_not_have(tmp_path):
    """``runtime={...}`` naming no layer of the file is refused by name, as
    ``quantize_model`` refuses it (it was ignored: every layer stayed packed)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))
    path = tmp_path / "m.skq"
    save_model(quantize_model(net, UniformQuantizer(n_bits=4)), path)
    skeleton = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=re.escape("runtime names layers ['layer0']")):
        load_into(skeleton, path, runtime={"layer0": "float"})
    assert type(skeleton[0]) is nn.Linear  # (left as it was)
    q = load_into(skeleton, path, runtime={"0": "float"})
    assert [q[0].runtime, q[2].runtime] == ["float", "packed"]


@pytest.mark.parametrize("runtime", ["packed", "int8"])
def test_a_scale_edited_to_an_invalid_step_is_refused_by_name(runtime):
    """A ``weight_scale`` edited to 0 or NaN (pruning a channel) is refused by
    the held runtimes with the buffer's name (a FileFormatError about 'a
    runtime weight' before), and the layer keeps its held form: the scale set
    back runs as before."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    x = torch.randn(8, 20)
    q = quantize_model(net, UniformQuantizer(n_bits=4), runtime=runtime)
    with torch.no_grad():
        before = q(x)
        kept = float(q[0].weight_scale[3])
        for bad in (0.0, float("nan")):
            q[0].weight_scale[3] = bad
            with pytest.raises(ValueError, match=r"QuantLinear.weight_scale must hold"):
                q(x)
        q[0].weight_scale[3] = kept
        assert torch.equal(q(x), before)


@pytest.mark.parametrize("first", [nn.Conv2d(3, 8, 3), nn.Flatten()])
def test_a_float64_input_of_int8_kernels_is_said_by_convolutions_too(first):
    """A float64 input of a float32 layer with int8 kernels runs simulated, and
    a convolution says so as a Linear does (it said nothing)."""
    from skquant.torch import RuntimeFallbackWarning, _qlayers

    torch.manual_seed(0)
    x = torch.randn(8, 3, 10, 10)
    tail = [] if isinstance(first, nn.Conv2d) else [nn.Linear(300, 8)]
    net = nn.Sequential(first, *tail).eval()
    q = quantize_model(
        net, UniformQuantizer(n_bits=4), x, activations=ActivationQuantizer(n_bits=7)
    )
    kind = type(q[-1]).__name__
    for key in [k for k in _qlayers._ANNOUNCED if kind in str(k)]:
        _qlayers._ANNOUNCED.discard(key)  # (said once a process)
    with warnings.catch_warnings(record=True) as seen, torch.no_grad():
        warnings.simplefilter("always")
        y = q(x.double())
    said = [str(w.message) for w in seen if w.category is RuntimeFallbackWarning]
    assert any(f"{kind}: no integer kernel for torch.float64" in m for m in said)
    with torch.no_grad():
        assert torch.allclose(y.float(), q(x), rtol=1e-3, atol=1e-4)


class Alias(nn.Module):
    """A layer under two names, and a layer whose weight is another's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        self.alias = self.a
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.alias(self.a(x)))


def test_runtimes_name_a_layer_by_its_first_name(tmp_path):
    """A layer under two names takes its first name's runtime: ``runtime``
    naming the other is refused and says which (it was ignored); a layer
    whose weight is another's takes its own."""
    x, asked = torch.randn(8, 16), {"alias": "float"}
    for how in ("quantize", "load"):
        with pytest.raises(ValueError, match="'alias', another name of layer 'a'"):
            if how == "quantize":
                quantize_model(Alias(), UniformQuantizer(4), x, runtime=asked)
            else:
                path = tmp_path / "m.skq"
                save_model(quantize_model(Alias(), UniformQuantizer(4)), path)
                load_into(Alias(), path, runtime=asked)
    q = quantize_model(Alias(), UniformQuantizer(4), x, runtime={"b": "float"})
    assert [q.a.runtime, q.alias.runtime, q.b.runtime] == ["packed", "packed", "float"]
