"""Chains of int8 convolutions that pass codes to the next layer (chain_int8)."""

import collections
import copy
import functools
import pickle
import threading
import types
import warnings

import numpy as np
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
        assert chain_int8(q) == [("0", "3"), ("3", "7"), ("7", "9")]
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


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(48, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(32, 10),
    ).eval()


def test_chained_linear_layers_give_the_next_layers_codes():
    """A Linear on the int8 GEMM gives the next Linear's codes (fbgemm's quint8
    GEMM rounds them), a code apart at most from those the float path rounds
    to; the model's output is the unchained model's, for rows and for tokens
    (3-D inputs)."""
    x = torch.randn(512, 48, generator=torch.Generator().manual_seed(3))
    tokens = x.reshape(32, 16, 48)
    for n_bits in (8, 7):
        q = quantized(mlp(), x, n_bits=n_bits)
        with torch.no_grad():
            before, before_tokens = q(x), q(tokens)
        assert chain_int8(q) == [("0", "2"), ("2", "5")]
        with torch.no_grad():
            after, after_tokens = q(x), q(tokens)
            codes = q[0](x)
            link, q[0]._chain = q[0]._chain, None
            unchained = q[0](x)
            q[0]._chain = link
            assert q[:2](tokens).is_quantized and q[:2](tokens).shape == (32, 16, 64)
        assert codes.dtype == torch.quint8 and after.dtype == torch.float32
        scale, zp = q[2]._input_qparams(None)
        assert codes.q_scale() == scale and codes.q_zero_point() == zp
        expected = torch.clamp(torch.round(unchained / scale) + zp, 0, 255)
        got = codes.int_repr().float()
        assert (got - expected).abs().max() <= 1
        assert (got != expected).float().mean() < 1e-3
        assert_near(after, before)
        assert_near(after_tokens.reshape(512, 10), before_tokens.reshape(512, 10))


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
    assert chain_int8(q) == [("0", "4"), ("4", "9"), ("9", "11")]
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
    assert not q[:8](x).is_quantized  # (through the Linear and its ReLU)
    with torch.inference_mode():
        assert q[0](x).is_quantized and q[:8](x).is_quantized
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

    assert links(lambda n: None) == [("0", "3"), ("3", "7"), ("7", "9")]
    from_second = [("3", "7"), ("7", "9")]
    assert links(lambda n: n[1].register_forward_hook(lambda *a: None)) == from_second
    pre = [("0", "3"), ("7", "9")]
    assert links(lambda n: n[5].register_forward_pre_hook(lambda *a: None)) == pre
    assert links(lambda n: n.__setitem__(1, nn.GELU())) == from_second

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
    # 8-bit weights with 8-bit inputs run simulated where the kernels' pair sums
    # saturate (no codes), on the GEMM where they are exact
    flat = torch.randn(64, 48)
    assert chain_int8(quantized(mlp(), flat, n_bits=7)) == [("0", "2"), ("2", "5")]
    for exact in (False, True):
        with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not exact:
                mp.setattr(_int8, "exact_pair_sums", lambda: False)
            w8 = UniformQuantizer(n_bits=8)
            q = quantize_model(mlp(), w8, flat, activations=ActivationQuantizer())
        want = [("0", "2"), ("2", "5")] if _int8.exact_pair_sums() and exact else []
        assert chain_int8(q) == want


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
    assert chain_int8(q) == [("0", "4"), ("4", "8"), ("8", "10")]
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


def test_a_global_hook_gives_floats_while_it_is_registered():
    """A global forward hook registered when chaining (it returned [] and left
    the model unchained for good) or after: floats while it is there."""
    from torch.nn.modules.module import register_module_forward_hook

    x = data()
    q = quantized(cnn(), x)
    seen = []
    handle = register_module_forward_hook(lambda m, i, o: seen.append(o.is_quantized))
    try:
        assert chain_int8(q) == [("0", "3"), ("3", "7"), ("7", "9")]
        with torch.no_grad():
            q(x)
    finally:
        handle.remove()
    assert seen and not any(seen)
    with torch.no_grad():
        assert q[0](x).is_quantized


def test_unbatched_inputs_deterministic_mode_and_nan_give_the_unchained_outputs():
    """An unbatched image gives floats (qnnpack's quantized max pooling refused
    one image's codes); under torch's deterministic algorithms the Linear
    layers give floats (fbgemm's quint8 GEMM raised); NaN and inf in a Linear
    chain's input take the codes the unchained layer takes (a NaN took the
    lowest code: another output for that row)."""
    x = data()
    q = quantized(cnn()[:6], x)  # (convolutions: an unbatched image is theirs)
    ref = copy.deepcopy(q)
    assert chain_int8(q) == [("0", "3")]
    engines = torch.backends.quantized.supported_engines
    before = torch.backends.quantized.engine
    try:
        for engine in [e for e in ("x86", "qnnpack") if e in engines]:
            torch.backends.quantized.engine = engine
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (qnnpack: simulated GEMMs)
                assert not q[0](x[0]).is_quantized
                torch.testing.assert_close(q(x[0]), ref(x[0]), rtol=0, atol=0)
    finally:
        torch.backends.quantized.engine = before
    flat = torch.randn(64, 48)
    q = quantized(mlp(), flat)
    ref = copy.deepcopy(q)
    chain_int8(q)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            assert not q[0](flat).is_quantized
            torch.testing.assert_close(q(flat), ref(flat), rtol=0, atol=0)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    bad = flat[:4].clone()
    bad[0, 0], bad[1, 1], bad[2, 2] = float("nan"), float("inf"), -float("inf")
    with torch.no_grad():
        assert q[0](bad).is_quantized
        torch.testing.assert_close(q(bad), ref(bad), rtol=0, atol=0)


def test_copies_come_unchained():
    """A chained model or layer pickled, copied or saved by torch comes
    unchained, and chains again: a copy of one layer carried a hidden copy of
    the whole model (370x the layer's bytes), kept giving codes in another
    model (a BatchNorm after it raised on quint8), and a model loaded in a new
    process made torch's quantized tensors without chain_int8's checks."""
    import io

    x = data()
    q = quantized(cnn(), x)
    with torch.no_grad():
        before = q(x)
    alone = io.BytesIO()
    torch.save(q[0], alone)
    chain_int8(q)
    chained = io.BytesIO()
    torch.save(q[0], chained)
    assert len(chained.getvalue()) < 1.1 * len(alone.getvalue())
    with torch.no_grad():
        for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
            assert all(m._chain is None for m in other if hasattr(m, "_chain"))
            torch.testing.assert_close(other(x), before, rtol=0, atol=0)
            assert chain_int8(other) == chain_int8(q)
            assert other[0](x).is_quantized
        layer = copy.deepcopy(q[0])
        assert layer._chain is None
        new = nn.Sequential(layer, nn.BatchNorm2d(8).eval(), nn.ReLU())
        assert not new(x).is_quantized  # (it raised)


def test_a_chain_holds_its_model_weakly():
    """A layer kept after its model is deleted does not keep the model alive,
    and gives floats (its chain is gone)."""
    import gc
    import weakref

    x = data()
    q = quantized(cnn(), x)
    chain_int8(q)
    first, gone = q[0], weakref.ref(q)
    del q
    gc.collect()
    assert gone() is None
    with torch.no_grad():
        assert not first(x).is_quantized


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
        assert chain_int8(loaded) == [("0", "3"), ("3", "7"), ("7", "9")]
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
        codes, flat = q[:3](x), q[:7](x)
        q[3]._chain = q[7]._chain = None  # (their float32 outputs, compared)
        for c in (codes.contiguous(), codes[:, :, ::2, ::2], codes.transpose(2, 3)):
            torch.testing.assert_close(q[3](c), q[3](c.dequantize()), rtol=0, atol=0)
        assert flat.is_quantized  # a Linear reads them without rounding them again
        for c in (flat, flat[::2], torch.cat([flat, flat], 1)[:, ::2]):
            torch.testing.assert_close(q[7](c), q[7](c.dequantize()), rtol=0, atol=0)


class Block(nn.Module):
    """A residual block: conv-BN-ReLU-conv-BN, plus its input, ReLU; then a
    classifier head (a Linear-ReLU-Linear called from the forward)."""

    def __init__(self, returns=False, twice=False, branch=False):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(32, 16), nn.Linear(16, 10)
        self.act = nn.ReLU()
        self.returns, self.twice, self.branch = returns, twice, branch
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x):
        x = self.relu(self.stem(x))
        a = self.conv1(x)
        if self.twice:  # (a layer called twice: one call's output reads floats)
            a = a + self.conv1(x)
        out = self.conv2(self.relu(self.bn1(a)))
        out = self.relu(self.bn2(out) + x)
        h = self.fc2(self.act(self.fc1(self.pool(out).flatten(1))))
        if self.branch and self.training:  # (a path eval mode does not take)
            h = h + self.fc1(self.pool(out).flatten(1)).sum(1, keepdim=True)
        return (h, a) if self.returns else h


def test_layers_chain_in_a_forward_of_their_own():
    """In a module's own forward (not an nn.Sequential), read on its torch.fx
    graph: a layer whose output flows only through modules a chain passes (a
    folded BatchNorm, an in-place ReLU also used after the residual sum) to the
    next quantized layer gives that layer's codes; the block's output, and
    what the residual sum reads, stay float; the model's predictions are the
    unchained model's."""
    x = data(256)
    q = quantized(Block(), x, fold_batchnorm=True)
    with torch.no_grad():
        before = q(x)
        assert chain_int8(q) == [("conv1", "conv2"), ("fc1", "fc2")]
        after = q(x)
        assert q.conv1(q.relu(q.stem(x))).dtype == torch.quint8
        assert q.stem(x).dtype == torch.float32  # (its output: the residual's too)
    assert_near(after, before)
    assert (after.argmax(1) != before.argmax(1)).sum() <= 2
    assert q.training is False and q.conv1.training is False
    q.train()
    with torch.no_grad():  # (train mode: nothing chains)
        assert q.conv1(q.relu(q.stem(x))).dtype == torch.float32


def test_what_does_not_chain_in_a_forward_of_its_own():
    """A layer whose output the forward also returns, a layer called twice, a
    BatchNorm left unfolded between, and a forward fx cannot trace (it branches
    on values): no chain there. A branch taken only in train mode is traced
    in eval mode, where chains run; the model was in train mode and stays so."""
    x = data(64)
    for block in (Block(returns=True), Block(twice=True)):
        assert chain_int8(quantized(block, x, fold_batchnorm=True)) == [("fc1", "fc2")]
    assert chain_int8(quantized(Block(), x)) == [("fc1", "fc2")]  # (BN between)

    class Valued(Block):
        def forward(self, x):
            return super().forward(x) if x.sum() > 0 else -super().forward(x)

    assert chain_int8(quantized(Valued(), x, fold_batchnorm=True)) == []

    class Optional(Block):  # (fx traces the default None as a value)
        def forward(self, x, scale=None):
            h = super().forward(x)
            return h if scale is None else h * scale

    class Stores(Block):  # (a stored value is read outside the graph)
        def forward(self, x):
            self.stem_out = self.relu(self.stem(x))
            return super().forward(x)

    class Kept(Block):
        def __init__(self):
            super().__init__()
            self.kept = []

        def forward(self, x):
            self.kept.append(self.stem(x))
            return super().forward(x)

    class Outer(nn.Module):  # (the block's conv1 called by the model around it)
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            h = self.block.relu(self.block.stem(x))
            return self.block(x) + self.block.conv1(h).mean((1, 2, 3))[:, None]

    for net, want in (
        (Optional(), []),
        (Stores(), []),
        (Kept(), []),
        (Outer().eval(), [("block.fc1", "block.fc2")]),  # (not conv1)
    ):
        q = quantized(net, x, fold_batchnorm=True)
        assert chain_int8(q) == want, type(net).__name__
        with torch.no_grad():
            q(x)
    q = quantized(Stores(), x, fold_batchnorm=True)
    chain_int8(q)
    with torch.no_grad():
        q(x)
    assert q.stem_out.dtype == torch.float32
    q = quantized(Block(branch=True), x, fold_batchnorm=True)
    q.train()
    assert chain_int8(q) == [("conv1", "conv2"), ("fc1", "fc2")]
    assert q.training and q.fc1.training
    for layer in (q.conv1, q.fc1, q.fc2):  # (mixed modes: the block's decides)
        layer.eval()
    with torch.no_grad():  # (fc1 called twice: its codes read as floats raised)
        assert torch.isfinite(q(x)).all()


def test_blocks_in_a_module_list_chain():
    """Blocks a model's forward calls from an nn.ModuleList chain inside (their
    layers were taken for layers called from outside their block: no link)."""

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])

        def forward(self, x):
            return sum(b(x) for b in self.blocks)

    x = data(64)
    q = quantized(Stack().eval(), x, fold_batchnorm=True)
    with torch.no_grad():
        before = q(x)
        links = chain_int8(q)
        after = q(x)
    assert ("blocks.0.conv1", "blocks.0.conv2") in links
    assert ("blocks.1.conv1", "blocks.1.conv2") in links
    assert_near(after, before)


class Slotted:
    __slots__ = ("h",)

    def __init__(self):
        self.h = None


class Stored(Block):
    """A Block whose forward keeps conv1's output where the graph shows no read:
    ``how`` names the place."""

    shared = []  # (on the class)

    def __init__(self, how):
        super().__init__()
        self.how = how
        self._list, self.nested = [], {"feats": []}
        self.queue = collections.deque(maxlen=4)
        self.ordered, self.by_key = (
            collections.OrderedDict(),
            collections.defaultdict(list),
        )
        self.space = types.SimpleNamespace(h=None)
        object.__setattr__(self, "sink", nn.Module())  # (not registered)
        self.slotted = Slotted()

    def forward(self, x):
        a = self.conv1(self.relu(self.stem(x)))
        {
            "private list": lambda: self._list.append(a),
            "nested list": lambda: self.nested["feats"].append(a),
            "deque": lambda: self.queue.append(a),
            "OrderedDict": lambda: self.ordered.__setitem__("a", a),
            "defaultdict": lambda: self.by_key["a"].append(a),
            "namespace": lambda: setattr(self.space, "h", a),
            "unregistered module": lambda: setattr(self.sink, "h", a),
            "child": lambda: setattr(self.conv2, "seen", a),
            "partial": lambda: setattr(self, "get", functools.partial(abs, a)),
            "closure": lambda: setattr(self, "get", lambda: a),
            "slots": lambda: setattr(self.slotted, "h", a),
            "class list": lambda: Stored.shared.append(a),
        }[self.how]()
        out = self.conv2(self.relu(self.bn1(a)))
        return self.fc2(self.act(self.fc1(self.pool(out).flatten(1))))


STORED = [
    "private list",
    "nested list",
    "deque",
    "OrderedDict",
    "defaultdict",
    "namespace",
    "unregistered module",
    "child",
    "partial",
    "closure",
    "slots",
    "class list",
]


@pytest.mark.parametrize("how", STORED)
def test_a_forward_that_stores_a_value_anywhere_chains_nothing_there(how):
    """Values a forward keeps in a private or nested container, a deque, an
    OrderedDict, a defaultdict, a namespace, a module it does not register or
    on a child: conv1's codes reached them (and the trace's placeholders were
    left in the model's containers). Now that forward chains nothing, what it
    keeps is float32, and the model's containers hold nothing of the trace."""
    x = data(64)
    q = quantized(Stored(how), x, fold_batchnorm=True)
    for kept in (q._list, q.nested["feats"], q.queue, q.ordered, q.by_key):
        kept.clear()  # (what the quantizing passes kept)
    q.space.h = None
    q.sink.__dict__.pop("h", None)
    q.conv2.__dict__.pop("seen", None)
    q.slotted.h = None
    Stored.shared.clear()
    q.__dict__.pop("get", None)
    assert chain_int8(q) == []
    for kept in (q._list, q.nested["feats"], q.queue, q.ordered, q.by_key):
        assert len(kept) == 0  # (the trace left nothing behind)
    assert q.space.h is None and not hasattr(q.sink, "h")
    assert not hasattr(q.conv2, "seen") and not hasattr(q, "get")
    assert q.slotted.h is None and Stored.shared == []
    with torch.no_grad():
        q(x)
    stored = {
        "private list": lambda: q._list[0],
        "nested list": lambda: q.nested["feats"][0],
        "deque": lambda: q.queue[0],
        "OrderedDict": lambda: q.ordered["a"],
        "defaultdict": lambda: q.by_key["a"][0],
        "namespace": lambda: q.space.h,
        "unregistered module": lambda: q.sink.h,
        "child": lambda: q.conv2.seen,
        "partial": lambda: q.get.args[0],
        "closure": lambda: q.get(),
        "slots": lambda: q.slotted.h,
        "class list": lambda: Stored.shared[-1],
    }[how]()
    assert stored.dtype == torch.float32


Pair = collections.namedtuple("Pair", "x skip")


class Packed(Block):
    """A block given one tuple, dict or namedtuple (its fields read by name)
    whose second item may be None."""

    def forward(self, inp):
        if self.fields:  # (fx traces a proxy for the namedtuple)
            x, skip = inp.x, inp.skip
        elif isinstance(inp, dict):
            x, skip = inp["x"], inp.get("skip")
        else:
            x, skip = inp
        a = self.conv1(self.relu(self.stem(x)))
        skip = a if skip is None else skip
        out = self.conv2(self.relu(self.bn1(a))) + skip
        return self.fc2(self.act(self.fc1(self.pool(out).flatten(1))))


class Caller(nn.Module):
    def __init__(self, block, as_dict):
        super().__init__()
        self.block, self.as_dict = block, as_dict

    def forward(self, x):
        if self.as_dict == "namedtuple":
            return self.block(Pair(x, None))
        return self.block({"x": x} if self.as_dict else (x, None))


@pytest.mark.parametrize("as_dict", [False, True, "namedtuple"])
def test_a_forward_given_one_tuple_or_dict_chains_nothing(as_dict):
    """fx traced the None of ``(x, None)`` as a value: conv1 chained, and its
    codes reached the sum (a torch error)."""
    x = data(64)
    block = Packed()
    block.fields = as_dict == "namedtuple"
    q = quantized(Caller(block, as_dict).eval(), x, fold_batchnorm=True)
    with torch.no_grad():
        before = q(x)
        assert chain_int8(q) == []
        assert_near(q(x), before)


def test_a_forward_set_on_an_instance_chains_nothing_it_holds():
    """fx traces the class's forward: one set on a block, or on an
    nn.Sequential, that keeps an output or calls layers in another order gave
    codes to what reads floats."""
    x = data(64)
    block = Block()
    kept = []

    def tapped(self, x):
        x = self.relu(self.stem(x))
        a = self.conv1(x)
        kept.append(a)
        out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(a)))) + x)
        return self.fc2(self.act(self.fc1(self.pool(out).flatten(1))))

    q = quantized(block, x, fold_batchnorm=True)
    q.forward = types.MethodType(tapped, q)
    assert chain_int8(q) == []
    with torch.no_grad():
        q(x)
    assert kept[-1].dtype == torch.float32
    seq = quantized(cnn(), x)
    taps = []

    def tapping(self, x):
        for m in self:
            x = m(x)
            taps.append(x)
        return x

    seq.forward = types.MethodType(tapping, seq)
    assert chain_int8(seq) == []
    with torch.no_grad():
        seq(x)
    assert all(t.dtype == torch.float32 for t in taps)


class Features(nn.Module):
    """A VGG-like model: its forward calls a sequence of features and one of
    classifier layers (``loop``: calls the features' layers itself)."""

    def __init__(self, loop=False, untraceable=False):
        super().__init__()
        net = cnn()
        self.features, self.classifier = net[:7], net[7:]
        self.loop, self.untraceable = loop, untraceable
        self.outputs = []

    def forward(self, x):
        if self.untraceable and x.dim() == 3:  # (fx cannot branch on it)
            x = x[None]
        if self.loop:
            for layer in self.features:
                x = layer(x)
                self.outputs.append(x)
        else:
            x = self.features(x)
        return self.classifier(x)


def test_sequences_chain_under_a_forward_unless_it_calls_their_layers():
    """Sequences a forward calls chain; a forward that loops over a sequence's
    layers itself (its list keeps every output), or that fx cannot trace, had
    the layers chained regardless: codes in the list."""
    x = data(64)
    q = quantized(Features().eval(), x)
    with torch.no_grad():
        before = q(x)
        links = chain_int8(q)
        assert_near(q(x), before)
    assert links == [("features.0", "features.3"), ("classifier.7", "classifier.9")]
    for net in (Features(loop=True), Features(loop=True, untraceable=True)):
        q = quantized(net.eval(), x)
        links = chain_int8(q)
        assert all(not a.startswith("features") for a, _ in links), links
        q.outputs.clear()
        with torch.no_grad():
            q(x)
        assert all(t.dtype == torch.float32 for t in q.outputs)


def test_the_traces_copy_no_hook_objects_or_arrays():
    """The traces run on a copy of each module: a hook that is a bound method
    of another object (a trainer holding its data), or an array the module
    holds, is shared with the copy, not copied."""

    class Trainer:
        copies = 0

        def __deepcopy__(self, memo):
            Trainer.copies += 1
            return Trainer()

        def log(self, module, inputs, output):
            pass

    from skquant.torch._graph import leaf_graph

    class Held(Block):
        def __init__(self):
            super().__init__()
            self.table = np.zeros(1000)

    x = data(64)
    net = Held()
    net.pool.register_forward_hook(Trainer().log)  # (copied with the model)
    q = quantized(net, x, fold_batchnorm=True)
    q.relu.register_forward_pre_hook(lambda m, i: None)
    table = q.table
    Trainer.copies = 0  # (quantize_model copies the model, its hooks too)
    assert chain_int8(q) == [("fc1", "fc2")]  # (the ReLU between is hooked)
    assert Trainer.copies == 0 and q.table is table
    assert leaf_graph(net, ()) is not None  # (as BatchNorm folding reads it)
    assert Trainer.copies == 0


_UNSET = object()


class Reset(Block):
    """A block whose forward compares an attribute with a sentinel, and that
    indexes its tensor input (its chains stay)."""

    def __init__(self):
        super().__init__()
        self.scale = 1.0  # (BatchNorms folded: conv1 has one reader)

    def forward(self, x):
        x = x[:, :3]
        a = self.conv1(self.relu(self.stem(x)))
        out = self.conv2(self.relu(self.bn1(a)))
        if self.scale is _UNSET:  # (a copied sentinel took the other branch)
            out = out + a
        return self.fc2(self.act(self.fc1(self.pool(out).flatten(1))))


def test_sentinels_keep_their_identity_and_tensor_indexing_chains():
    """The trace's copy shares objects other than modules and containers: a
    sentinel compared by identity took the other branch in a deep copy (conv1
    chained, its codes reached the sum: a torch error); a lock the model holds
    is no obstacle. Indexing the tensor input (``x[:, :3]``) is not reading an
    item of a tuple: the block still chains."""
    x = data(64)
    q = quantized(Reset(), x, fold_batchnorm=True)
    q.scale = _UNSET
    q.lock = threading.Lock()
    with torch.no_grad():
        before = q(x)
        assert chain_int8(q) == [("stem", "conv1"), ("fc1", "fc2")]
        assert_near(q(x), before)
    q.scale = 1.0
    assert chain_int8(q) == [("stem", "conv1"), ("conv1", "conv2"), ("fc1", "fc2")]
    with torch.no_grad():
        assert_near(q(x), q.eval()(x))


def test_the_traces_leave_the_model_as_it_was():
    """A hook that is a method of the module it is on, or a closure over the
    model, or a helper object holding the module, store through the model
    itself, not the trace's copy: the trace saw no store there (its copy was
    unchanged) and left its proxies in the model. Modules and objects with
    slots (one named by a string) trace as before."""
    from skquant.torch._graph import leaf_graph

    class Tapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_forward_pre_hook(self.tap)

        def tap(self, module, inputs):
            self.seen = inputs[0]

        def forward(self, x):
            return self.fc(x)

    class Helper:
        def __init__(self, owner):
            self.owner = owner

        def __call__(self, x):
            self.owner.cache = x
            return x

    class Helped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.helper = nn.Linear(4, 4), Helper(self)

        def forward(self, x):
            return self.fc(self.helper(x))

    class One:
        __slots__ = "value"

        def __init__(self):
            self.value = 2.0

        def method(self):
            return self.value

    class Slotted(nn.Module):
        __slots__ = ("k",)

        def __init__(self):
            super().__init__()
            self.fc, self.one, self.k = nn.Linear(4, 4), One(), 3.0

        def forward(self, x):
            return self.fc(x) * self.k * self.one.value

    inner = nn.Sequential(nn.Linear(4, 4))  # (torch's own layers are calls:
    outer = nn.Sequential(inner, nn.ReLU())  # their hooks do not run)
    inner.register_forward_hook(lambda m, i, o: setattr(outer, "last", o))
    for model, stores in (
        (nn.Sequential(Tapped(), nn.ReLU()), True),
        (outer, True),
        (Helped(), True),
        (Slotted(), False),
    ):
        before = {id(m): dict(m.__dict__) for m in model.modules()}
        found = []
        assert leaf_graph(model, (), found) is not None
        assert found == [stores], model
        for m in model.modules():
            assert m.__dict__ == before[id(m)]  # (nothing set, nothing left)
