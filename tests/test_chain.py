"""Chains of int8 convolutions that pass codes to the next layer (chain_int8)."""

import copy
import pickle
import warnings

import pytest

from skquant import ActivationQuantizer, UniformQuantizer

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skquant.torch import (  # noqa: E402
    _int8,
    chain_int8,
    load_into,
    quantize_model,
    save_model,
)

pytestmark = pytest.mark.skipif(
    not _int8.onednn_conv_available(),
    reason="this torch has no oneDNN quantized convolution",
)


def cnn(norm=False):
    """conv-[BN]-ReLU-pool, conv-[BN]-ReLU-pool, flatten, Linear-ReLU-Linear."""
    torch.manual_seed(0)

    def block(c_in, c_out):
        mid = [nn.BatchNorm2d(c_out)] if norm else []
        return [nn.Conv2d(c_in, c_out, 3, padding=1), *mid, nn.ReLU(), nn.MaxPool2d(2)]

    net = nn.Sequential(
        *block(3, 8),
        *block(8, 16),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    if norm:  # statistics of their own, so that folding changes the weights
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def quantized(net, x, n_bits=8, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(
            net,
            UniformQuantizer(n_bits=4),
            x,
            activations=ActivationQuantizer(n_bits=n_bits),
            **kwargs,
        )


def assert_near(got, expected):
    """Outputs of a chained and an unchained model: a code apart here and there
    (see chain_int8), so a few samples differ, and by little; codes read on a
    wrong grid would move every sample."""
    got, expected = torch.as_tensor(got), torch.as_tensor(expected)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    moved = (got - expected).abs()
    assert (moved > 0).any(dim=1).float().mean() <= 0.05
    assert moved.max() <= 0.01 * expected.abs().max()


def data(n=64, seed=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_chained_convolutions_give_the_next_layers_codes():
    """Each chained convolution gives a quint8 tensor on its next quantized
    layer's input grid; the codes are those the float path rounds to (a code
    apart at most, where the kernel's rescaling and the float path round a
    value on two sides of half a step), and the model's output is that of the
    unchained model."""
    x = data()
    for n_bits in (8, 7):  # 7 bits: codes clamped to the grid's 0..127
        q = quantized(cnn(), x, n_bits=n_bits)
        with torch.no_grad():
            before = q(x)
            h = q[:3](x)  # the second conv's input, float
        assert chain_int8(q) == [("0", "3"), ("3", "7")]
        with torch.no_grad():
            after = q(x)
            codes = q[0](x)
        assert after.dtype == torch.float32 and not after.is_quantized
        assert codes.is_quantized and codes.dtype == torch.quint8
        scale, zp = q[3]._input_qparams(None)
        assert codes.q_scale() == scale and codes.q_zero_point() == zp
        # the float path's codes of the same values: the next layer's grid
        with torch.no_grad():
            link, q[0]._chain = q[0]._chain, None
            unchained = q[0](x)
            q[0]._chain = link
        expected = torch.clamp(torch.round(unchained / scale) + zp, 0, 255)
        got = codes.int_repr().float()
        assert (got - expected).abs().max() <= 1
        assert (got != expected).float().mean() < 1e-3
        top = q[3]._act_meta["qmax"]
        pooled = q[2](q[1](codes))  # what the next conv is given: codes still
        assert pooled.is_quantized
        floats = torch.clamp(torch.round(h / scale) + zp, 0, top)
        assert (pooled.int_repr().clamp(max=top).float() - floats).abs().max() <= 1
        assert_near(after, before)


def test_unchaining_gives_the_model_back_bit_for_bit():
    x = data()
    q = quantized(cnn(), x)
    with torch.no_grad():
        before = q(x)
        assert chain_int8(q)
        assert chain_int8(q, enable=False) == []
        assert torch.equal(q(x), before)
    assert all(getattr(m, "_chain", None) is None for m in q.modules())


def test_folded_batchnorms_chain():
    """Folded BatchNorms (identities in their places) are passed through."""
    x = data()
    q = quantized(cnn(norm=True), x, fold_batchnorm=True)
    with torch.no_grad():
        before = q(x)
    assert chain_int8(q) == [("0", "4"), ("4", "9")]
    with torch.no_grad():
        assert_near(q(x), before)


def test_a_chain_runs_only_in_eval_mode_without_gradients():
    """With the bias needing gradients (grad mode) or in train mode the layers
    give float32, and the model's output is the unchained model's; frozen, or
    under inference_mode, they chain."""
    x = data()
    q = quantized(cnn(), x)
    ref = copy.deepcopy(q)
    chain_int8(q)
    out = q(x)  # grad mode, biases need gradients: float all along
    assert not q[0](x).is_quantized
    torch.testing.assert_close(out, ref(x), rtol=0, atol=0)
    out.sum().backward()
    assert q[0].bias.grad is not None and q[3].bias.grad is not None
    with torch.inference_mode():
        assert q[0](x).is_quantized
    q.train()
    with torch.no_grad():
        assert not q[0](x).is_quantized
    q.eval()
    for p in q.parameters():
        p.requires_grad_(False)
    assert q[0](x).is_quantized  # frozen: chained without no_grad


def test_what_does_not_chain():
    """Hooks, a module other than those a chain passes through, a Sequential
    with a forward of its own, a convolution held in two places and a dynamic
    input grid each leave the layers unchained."""
    x = data()

    def links(edit):
        net = cnn()
        edit(net)
        return chain_int8(quantized(net, x))

    assert links(lambda n: None) == [("0", "3"), ("3", "7")]
    assert links(lambda n: n[1].register_forward_hook(lambda *a: None)) == [("3", "7")]
    assert links(lambda n: n[5].register_forward_pre_hook(lambda *a: None)) == [
        ("0", "3")
    ]
    assert links(lambda n: n.__setitem__(1, nn.GELU())) == [("3", "7")]

    class Own(nn.Sequential):
        def forward(self, x):
            return super().forward(x)

    assert chain_int8(quantized(Own(*cnn()), x)) == []
    q = quantized(cnn(), x)
    # the second conv also in another container: the first still gives codes
    # to it (it takes floats too), the second gives none
    assert chain_int8(nn.Sequential(q, q[3:])) == [("0.0", "0.3")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(cnn(), UniformQuantizer(n_bits=4), x, activations="dynamic")
    assert chain_int8(q) == []


def test_a_chain_follows_the_next_layers_grid_as_it_is_at_the_call():
    """A next layer whose grid changed after chaining (a load_state_dict of a
    model calibrated on other data) gets its codes on its grid as it is now:
    the chained model is the unchained one (it gave codes on the old grid,
    dequantized: clipped activations, a third of the predictions changed)."""
    x = data()
    q = quantized(cnn(), x)
    other = quantized(cnn(), 4 * data(seed=2))  # wider grids
    chain_int8(q)
    with torch.no_grad():
        q.load_state_dict(other.state_dict())
        scale, zp = q[3]._input_qparams(None)
        codes = q[:3](x)
        assert codes.q_scale() == scale and codes.q_zero_point() == zp
        assert_near(q(x), other(x))
        q[3].input_scale.mul_(2.0)  # an edit in place: the same
        assert q[:3](x).q_scale() == 2 * scale
        chain_int8(q, enable=False)
        expected = q(x)
        chain_int8(q)
        assert_near(q(x), expected)


def test_hooks_and_monte_carlo_dropout_added_after_chaining_get_floats():
    """What the chain would show codes to, when it runs: a hook on the
    convolution, on a module between or on the next layer, and a dropout in
    train mode (Monte-Carlo dropout: it raised on quint8) make the call give
    float32; without them, codes again."""
    x = data()
    net = nn.Sequential(*cnn()[:2], nn.Dropout(0.5), *cnn()[2:]).eval()
    q = quantized(net, x)
    assert chain_int8(q) == [("0", "4"), ("4", "8")]
    with torch.no_grad():
        seen = []
        for module in (q[0], q[1], q[4]):
            handle = module.register_forward_hook(
                lambda m, i, o: seen.append(o.is_quantized or i[0].is_quantized)
            )
            q(x)
            handle.remove()
        assert seen and not any(seen)
        assert q[0](x).is_quantized
        q[2].train()  # Monte-Carlo dropout
        assert not q[0](x).is_quantized
        out = q(x)
        assert out.dtype == torch.float32 and out.shape == (64, 10)
        q[2].eval()
        assert q[0](x).is_quantized


def test_copies_keep_their_chains():
    x = data()
    q = quantized(cnn(), x)
    chain_int8(q)
    with torch.no_grad():
        out = q(x)
        for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
            assert other[0]._chain.consumer is other[3]  # (the copy's, not q's)
            assert other[0](x).is_quantized
            torch.testing.assert_close(other(x), out, rtol=0, atol=0)


def test_saved_chained_model_loads_unchained(tmp_path):
    x = data()
    q = quantized(cnn(), x)
    with torch.no_grad():
        before = q(x)
    chain_int8(q)
    save_model(q, tmp_path / "m.skq")
    loaded = load_into(cnn(), tmp_path / "m.skq")
    with torch.no_grad():
        assert not loaded[0](x).is_quantized
        assert torch.equal(loaded(x), before)
        assert chain_int8(loaded) == [("0", "3"), ("3", "7")]
        assert_near(loaded(x), before)


def test_bad_arguments_are_named():
    with pytest.raises((TypeError, ValueError), match="enable"):
        chain_int8(nn.Sequential(), enable="yes")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        chain_int8([1, 2])


def test_where_torch_makes_no_quantized_tensors_nothing_is_chained(monkeypatch):
    from skquant.torch import _chain

    q = quantized(cnn(), data())
    monkeypatch.setattr(_chain, "_quantized_tensors", lambda: False)
    with pytest.warns(UserWarning, match="makes no quint8 tensors"):
        assert chain_int8(q) == []
    assert all(getattr(m, "_chain", None) is None for m in q.modules())


def test_a_chained_forward_gives_the_user_no_torch_deprecation_warning():
    """torch 2.13 warns once a process at the first quint8 tensor made, naming
    skquant's kernel: chain_int8 takes that warning, not the user's forward
    (a fresh process, warnings as errors)."""
    import subprocess
    import sys

    script = (
        "import warnings, torch\n"
        "from torch import nn\n"
        "from skquant import ActivationQuantizer, UniformQuantizer\n"
        "from skquant.torch import chain_int8, quantize_model\n"
        "torch.manual_seed(0)\n"
        "net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))\n"
        "net = net.eval()\n"
        "x = torch.randn(4, 3, 8, 8)\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')\n"
        "    q = quantize_model(net, UniformQuantizer(4), x,\n"
        "                       activations=ActivationQuantizer(8))\n"
        "warnings.simplefilter('error')\n"
        "assert chain_int8(q) == [('0', '2')]\n"
        "with torch.no_grad():\n"
        "    assert q[0](x).is_quantized\n"
        "    q(x)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_module_swapped_in_after_chaining_gets_floats():
    """A module put in a chained one's place later (another calibration's
    layer, a dropout in train mode, a float convolution) breaks the chain:
    floats, as the unchained model gives (the new layer got codes on the old
    grid, a train-mode dropout and a float convolution raised on quint8)."""
    x = data()
    for swap in ("consumer", "dropout", "float"):
        q = quantized(cnn(), x)
        other = quantized(cnn(), 4 * data(seed=2))
        chain_int8(q)
        if swap == "consumer":
            q[3] = other[3]
        elif swap == "dropout":
            q[1] = nn.Dropout(0.1).train()
        else:
            q[3] = cnn()[3]
        with torch.no_grad():
            assert not q[0](x).is_quantized
            got = q(x)
            chain_int8(q, enable=False)
            if swap != "dropout":
                torch.testing.assert_close(got, q(x), rtol=0, atol=0)


def test_quint8_inputs_of_any_layout_are_read_by_value():
    """A quint8 tensor on a layer's grid, in any layout (sliced, transposed,
    contiguous), is read as its values: the bytes of one not dense channels
    last once crashed the process."""
    x = data()
    q = quantized(cnn(), x)
    chain_int8(q)
    with torch.no_grad():
        codes = q[:3](x)
        q[3]._chain = None  # (its float32 outputs, compared)
        for c in (codes.contiguous(), codes[:, :, ::2, ::2], codes.transpose(2, 3)):
            torch.testing.assert_close(q[3](c), q[3](c.dequantize()), rtol=0, atol=0)
