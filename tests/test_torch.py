"""The torch adapter: parity with the numba path, layouts, quantize_model."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skquant import (  # noqa: E402
    ActivationQuantizer,
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant.torch import (  # noqa: E402
    FakeQuantize,
    QuantConv2d,
    QuantLinear,
    capture_inputs,
    fake_quantize_ste,
    matrix_to_weight,
    quantize_model,
    weight_to_matrix,
)
from skquant.torch._rows import layer_inputs_matrix  # noqa: E402


def lenet(n_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, n_classes),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "est",
    [
        UniformQuantizer(n_bits=4),
        UniformQuantizer(n_bits=3, scale="mse"),
        TernaryQuantizer(),
        ActivationQuantizer(n_bits=8, granularity="per_feature"),
        UniformQuantizer(n_bits=8, granularity="per_tensor"),
    ],
)
def test_fake_quantize_equals_numba_bit_for_bit(dtype, est):
    W = np.random.default_rng(0).standard_normal((257, 13)).astype(dtype)
    W[0, 0] = 0.0
    est = est.fit(W)
    fq = FakeQuantize.from_estimator(est)
    out = fq(torch.from_numpy(W)).numpy()
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, est.transform(W))


def test_fake_quantize_gradient_is_clipped_ste():
    x = torch.tensor([-9.0, -0.4, 0.5, 3.2, 7.4, 7.6], requires_grad=True)
    y = fake_quantize_ste(x, torch.tensor(1.0), -7, 7)
    y.sum().backward()
    # inside the grid (codes -7..7 before clipping) the gradient is 1, outside 0
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert y.tolist() == [-7.0, -0.0, 0.0, 3.0, 7.0, 7.0]


def test_fake_quantize_rejects_binary_and_follows_device_and_state_dict():
    from skquant import BinaryQuantizer

    W = np.ones((4, 2))
    with pytest.raises(ValueError, match="got a BinaryQuantizer"):
        FakeQuantize.from_estimator(BinaryQuantizer().fit(W))
    fq = FakeQuantize.from_estimator(UniformQuantizer().fit(W))
    assert set(fq.state_dict()) == {"scale", "zero_point"}


@pytest.mark.parametrize(
    "module",
    [
        nn.Linear(7, 5),
        nn.Conv2d(3, 4, (3, 2)),
        nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2),
        nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect"),
    ],
)
def test_layout_roundtrip_and_im2col_reproduce_the_layer(module):
    W = weight_to_matrix(module)
    assert torch.equal(matrix_to_weight(W, module), module.weight.detach())
    x = (
        torch.randn(2, 7)
        if isinstance(module, nn.Linear)
        else torch.randn(2, module.in_channels, 9, 8)
    )
    rows = layer_inputs_matrix(module, x)
    out = rows @ torch.from_numpy(W) + module.bias
    ref = module(x)
    if isinstance(module, nn.Conv2d):  # rows are (sample, position)
        ref = ref.permute(0, 2, 3, 1).reshape(-1, module.out_channels)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5)


def test_capture_inputs_order_and_shapes():
    net = lenet()
    mods = {
        n: m for n, m in net.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
    }
    got = capture_inputs(
        net, dict(reversed(list(mods.items()))), torch.randn(3, 1, 28, 28)
    )
    assert list(got) == ["0", "3", "7", "9", "11"]  # forward order, not dict order
    assert tuple(got["0"].shape) == (3 * 28 * 28, 25)
    assert tuple(got["3"].shape) == (3 * 10 * 10, 150)
    assert tuple(got["7"].shape) == (3, 400)


@pytest.mark.parametrize(
    "quantizer",
    [
        UniformQuantizer(n_bits=4),
        GreedyPathQuantizer(n_bits=4),
        NullSpaceQuantizer(n_bits=4, rank=64),
    ],
)
def test_quantize_model_lenet(quantizer):
    net = lenet()
    x = torch.randn(64, 1, 28, 28)
    qnet = quantize_model(net, quantizer, x, max_rows=512)
    kinds = [type(m).__name__ for m in qnet if isinstance(m, nn.Linear | nn.Conv2d)]
    assert kinds == ["QuantConv2d"] * 2 + ["QuantLinear"] * 3
    for m in qnet:
        if isinstance(m, QuantLinear | QuantConv2d):
            # weights are codes times per-output-channel scales
            codes = m.weight_codes.reshape(m.weight.shape[0], -1).double()
            scale = m.weight_scale.double().reshape(-1, 1)
            torch.testing.assert_close(
                m.weight.detach().reshape(codes.shape).double(),
                codes * scale,
                rtol=1e-6,
                atol=0,
            )
            assert m.weight_codes.abs().max() <= 7
    # the float model is untouched and the quantized one stays close
    assert type(net[0]) is nn.Conv2d
    with torch.no_grad():
        ref, out = net(x), qnet(x)
    assert torch.linalg.norm(out - ref) / torch.linalg.norm(ref) < 0.3


def test_quantize_model_data_driven_beats_msq_at_low_bits():
    net = lenet()
    x = torch.randn(128, 1, 28, 28)
    with torch.no_grad():
        ref = net(x)
    err = {}
    for name, q in [
        ("msq", UniformQuantizer(n_bits=3)),
        ("gpfq", GreedyPathQuantizer(n_bits=3)),
    ]:
        with torch.no_grad():
            out = quantize_model(net, q, x, max_rows=1024)(x)
        err[name] = float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))
    assert err["gpfq"] < err["msq"]


def test_quantize_model_errors():
    net = nn.Sequential(nn.Conv3d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 6, 2))
    with pytest.raises(
        ValueError, match=re.escape("layer '0' (Conv3d) is not supported")
    ):
        quantize_model(net, UniformQuantizer(), torch.randn(4, 2, 8, 8, 8))
    net = nn.Sequential(nn.Linear(10, 3))
    with pytest.raises(ValueError, match="does not fit the model"):
        quantize_model(net, GreedyPathQuantizer(), torch.randn(4, 11))
    with pytest.raises(ValueError, match="no nn.Linear, nn.Conv1d or nn.Conv2d"):
        quantize_model(nn.Sequential(nn.ReLU()), UniformQuantizer(), torch.randn(4, 3))
    # skip leaves a layer in float
    net = nn.Sequential(nn.Linear(10, 3), nn.Linear(3, 2))
    qnet = quantize_model(net, UniformQuantizer(), torch.randn(8, 10), skip=["1"])
    assert type(qnet[0]) is QuantLinear and type(qnet[1]) is nn.Linear


def test_calibration_from_a_data_loader():
    net = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2))
    ds = torch.utils.data.TensorDataset(torch.randn(40, 10), torch.zeros(40))
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    qnet = quantize_model(net, GreedyPathQuantizer(n_bits=4), loader)
    assert type(qnet[2]) is QuantLinear


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_parity():
    W = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    est = UniformQuantizer(n_bits=4).fit(W)
    fq = FakeQuantize.from_estimator(est).cuda()
    out = fq(torch.from_numpy(W).cuda()).cpu().numpy()
    np.testing.assert_array_equal(out, est.transform(W))
    net = lenet().cuda()
    qnet = quantize_model(
        net,
        GreedyPathQuantizer(n_bits=4),
        torch.randn(32, 1, 28, 28).cuda(),
        max_rows=256,
    )
    assert qnet[0].weight.device.type == "cuda"


def test_read_only_inputs_are_read_without_a_warning():
    """A read-only array (a memory-mapped file, joblib's workers' inputs) is
    used as it is, without torch's warning about non-writable arrays."""
    import warnings

    from skquant.torch._data import as_tensor

    A = np.arange(6.0).reshape(2, 3)
    A.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T = as_tensor(A)
    assert T.data_ptr() == A.ctypes.data
    np.testing.assert_array_equal(T.numpy(), A)


class _Block(nn.Module):
    """Conv-BN-ReLU, and a residual whose convolution's output two reads."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.side, self.side_bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 36, 4), nn.BatchNorm1d(4))

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        s = self.side(y)
        y = self.side_bn(s) + s  # (s read twice: not folded)
        return self.head(y)


def _trained_statistics(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model.eval()


def test_fold_batchnorm_folds_what_only_reads_a_convolution(tmp_path):
    """fold_batchnorm=True folds a BatchNorm that alone reads a convolution's
    output (the folded float model computes the model's outputs), leaves the
    others (a convolution read twice, a BatchNorm after a Linear) and the
    caller's model as they were; the quantized model holds nn.Identity there."""
    from skquant.torch._fold import fold_batchnorms, foldable_pairs

    torch.manual_seed(0)
    model = _trained_statistics(_Block())
    x = torch.randn(16, 3, 6, 6)
    assert foldable_pairs(model) == [("conv", "bn")]
    folded, pairs = fold_batchnorms(model)
    assert pairs == [("conv", "bn")] and isinstance(model.bn, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    q = quantize_model(
        model, UniformQuantizer(n_bits=8), x, activations="dynamic", fold_batchnorm=True
    )
    assert isinstance(q.bn, nn.Identity) and isinstance(q.side_bn, nn.BatchNorm2d)
    assert isinstance(model.bn, nn.BatchNorm2d)
    # (the folded copy shares the caller's tensors; the returned model not)
    assert folded.side_bn.running_mean is model.side_bn.running_mean
    assert q.side_bn.running_mean is not model.side_bn.running_mean
    with torch.no_grad():
        want = model(x)
        assert float((q(x) - want).norm() / want.norm()) < 0.05
    seq = _trained_statistics(  # (fx traces it not: branches on values)
        nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU())
    )

    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = seq

        def forward(self, x):
            return self.body(x) if bool(x.sum() > -1e9) else x

    assert foldable_pairs(Branching()) == []  # (how the forward uses them: unknown)
    hooked = _trained_statistics(_Block())
    hooked.bn.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    assert foldable_pairs(hooked) == []  # (the hook would be dropped with the norm)
    wn = _trained_statistics(_Block())
    nn.utils.parametrizations.weight_norm(wn.conv)
    assert foldable_pairs(wn) == []
    with pytest.raises(TypeError, match="fold_batchnorm must be a bool"):
        quantize_model(model, UniformQuantizer(n_bits=8), fold_batchnorm="yes")
    with pytest.raises(ValueError, match="cannot be combined with checkpoint="):
        quantize_model(
            model,
            UniformQuantizer(n_bits=8),
            output=tmp_path / "m.skq",
            fold_batchnorm=True,
        )


def test_a_folded_bias_is_trainable_where_the_batchnorms_shift_was():
    """The folded bias holds the BatchNorm's shift (and the convolution's bias):
    it needs gradients where either did, also after a bias-less convolution
    (torch's fusion froze it), and stays frozen where both were."""
    for conv_bias in (False, True):
        for frozen in (False, True):
            torch.manual_seed(0)
            model = _trained_statistics(
                nn.Sequential(nn.Conv2d(3, 4, 3, bias=conv_bias), nn.BatchNorm2d(4))
            ).eval()
            for p in model.parameters():
                p.requires_grad_(not frozen)
            x = torch.randn(8, 3, 6, 6)
            q = quantize_model(
                model, UniformQuantizer(n_bits=8), x, fold_batchnorm=True
            )
            assert q[0].bias.requires_grad is not frozen
            if not frozen:
                q(x).sum().backward()
                assert q[0].bias.grad is not None


def test_saved_folded_model_loads_into_the_float_architecture(tmp_path):
    """A folded model's file records where its BatchNorms were: load_into the
    architecture it was made from (BatchNorms, a convolution with
    bias=False; built normally or on the meta device) puts the identity there
    and gives the convolution its folded bias; the outputs are the quantized
    model's. A model with something else there is refused, left as it was."""
    from skquant.torch import FoldedBatchNorm, load_into, save_model

    def build():
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 16, 4),
        )

    torch.manual_seed(0)
    model = _trained_statistics(build())
    x = torch.randn(8, 3, 6, 6)
    q = quantize_model(
        model, UniformQuantizer(n_bits=4), x, activations="dynamic", fold_batchnorm=True
    )
    assert q[1].into == "0" and q[0].bias is not None
    save_model(q, tmp_path / "q.skq")
    with torch.device("meta"):
        skeleton = build()
    for fresh in (build().eval(), skeleton.eval()):
        loaded = load_into(fresh, tmp_path / "q.skq")  # strict
        assert isinstance(loaded[1], FoldedBatchNorm) and loaded[1].into == "0"
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)
    save_model(loaded, tmp_path / "again.skq")  # (the record survives a reload)
    again = load_into(build().eval(), tmp_path / "again.skq")
    assert isinstance(again[1], FoldedBatchNorm)
    other = build().eval()
    other[1] = nn.Conv2d(8, 8, 1)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"BatchNorm '1' was folded.*has Conv2d"):
        load_into(other, tmp_path / "q.skq")
    assert all(torch.equal(v, state[k]) for k, v in other.state_dict().items())
    assert type(other[0]) is nn.Conv2d and other[0].bias is None
    # the convolution left float, and files saved from a model holding the
    # folded one or from part of it (the fold's names are the saved model's)
    kept = quantize_model(
        model, UniformQuantizer(n_bits=4), x, skip=["0"], fold_batchnorm=True
    )
    outer = quantize_model(  # (its fold named there: "1.1" into "1.0")
        nn.Sequential(nn.Identity(), model),
        UniformQuantizer(n_bits=4),
        x,
        fold_batchnorm=True,
    )
    cases = (
        (kept, build, kept),
        (nn.Sequential(q), lambda: nn.Sequential(build()), q),
        (outer[1], build, outer[1]),
    )
    for saved, skeleton, want in cases:
        save_model(saved, tmp_path / "s.skq")
        loaded = load_into(skeleton().eval(), tmp_path / "s.skq")
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), want(x), rtol=0, atol=0)
    plain = quantize_model(model, UniformQuantizer(n_bits=4))  # (not folded:
    plain[0].bias = nn.Parameter(torch.zeros(8))  # a bias of a file is no fold)
    save_model(plain, tmp_path / "plain.skq")
    with pytest.raises(ValueError, match=r"entry '0.bias' has no place"):
        load_into(build().eval(), tmp_path / "plain.skq")
