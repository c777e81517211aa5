"""Quantized layers inside torch's transformer modules run their own forward: the
fused fast path (eval mode, no gradients) would read their weights and skip
their input grids and kernels."""

import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skquant import ActivationQuantizer, UniformQuantizer  # noqa: E402
from skquant.torch import load_into, quantize_model, save_model  # noqa: E402


def _encoder(layers=1):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    if layers == 1:
        return layer.eval()
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=True).eval()


def _quantized(model, x, skip):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(
            model,
            UniformQuantizer(n_bits=8),
            x,
            skip=skip,
            activations=ActivationQuantizer(n_bits=4),
        )


def test_encoder_layer_runs_its_quantized_layers_without_gradients(tmp_path):
    model, x = _encoder(), torch.randn(16, 6, 16)
    q = _quantized(model, x, ["self_attn"])
    want = q(x).detach()  # grad mode: every module's forward runs
    with torch.no_grad():
        assert (want - model(x)).abs().max() > 0.05  # 4-bit input grids
        torch.testing.assert_close(q(x), want, rtol=0, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(q(x), want, rtol=0, atol=1e-5)
    save_model(q, tmp_path / "m.skq")
    back = load_into(_encoder(), tmp_path / "m.skq")
    again = pickle.loads(pickle.dumps(q))
    with torch.no_grad():
        torch.testing.assert_close(back(x), want, rtol=0, atol=1e-5)
        torch.testing.assert_close(again(x), want, rtol=0, atol=1e-5)


def test_encoder_with_a_padding_mask_runs_its_quantized_layers():
    model, x = _encoder(layers=2), torch.randn(4, 6, 16)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 4:] = True  # the last two positions are padding
    skip = [f"layers.{i}.self_attn" for i in range(2)]
    q = _quantized(model, x, skip)
    want = q(x, src_key_padding_mask=mask).detach()
    with torch.no_grad():
        got = q(x, src_key_padding_mask=mask)
    torch.testing.assert_close(got[:, :4], want[:, :4], rtol=0, atol=1e-5)
