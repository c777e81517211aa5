"""Error messages of the torch adapter for models it cannot quantize."""

import re

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skquant import UniformQuantizer  # noqa: E402
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
