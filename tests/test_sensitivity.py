"""Per-layer output noise and Zhou's fit (the measurement of the bit allocation)."""

import math
import re
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from skquant import GreedyPathQuantizer, TernaryQuantizer, UniformQuantizer
from skquant._network import MLPNetwork
from skquant._sensitivity import _fit, measure_layer_noise


@pytest.fixture(scope="module")
def network():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((64, 32), max_iter=300, random_state=0).fit(X, y)
    return MLPNetwork(mlp), X[:500]


def test_noise_decays_like_zhous_law(network):
    net, X = network
    res = measure_layer_noise(net, X, bits=(4, 5, 6, 7, 8))
    assert [r["name"] for r in res.rows] == net.layer_names
    for r in res.rows:
        # each extra bit divides the noise power by about 4 (slope near -ln 4)
        assert r["slope"] == pytest.approx(-math.log(4), rel=0.25)
        assert r["r2"] > 0.9
        assert all(a > b for a, b in zip(r["noise"], r["noise"][1:]))
    assert "slope" in str(res)


def test_noise_is_measured_on_the_logits(network):
    net, X = network
    res = measure_layer_noise(net, X, bits=(3, 8))
    W = net.weight("layer_2")
    Q = UniformQuantizer(n_bits=3).fit(W).transform(W)
    diff = net.outputs(X, {"layer_2": Q}) - net.outputs(X)
    assert res.rows[2]["noise"][0] == pytest.approx(np.mean(np.sum(diff**2, axis=1)))


def test_the_fit_recovers_a_known_law():
    bits = [2, 3, 4, 6]
    p0, slope, r2 = _fit(bits, [5.0 * math.exp(-1.3 * b) for b in bits])
    assert p0 == pytest.approx(5.0) and slope == pytest.approx(-1.3) and r2 == 1.0


def test_measurement_errors(network):
    net, X = network
    with pytest.raises(TypeError, match="memoryless skquant weight quantizer"):
        measure_layer_noise(net, X, quantizer=GreedyPathQuantizer())
    with pytest.raises(TypeError, match="n_bits parameter"):
        measure_layer_noise(net, X, quantizer=TernaryQuantizer())
    with pytest.raises(ValueError, match=re.escape("at least two different")):
        measure_layer_noise(net, X, bits=(4, 4))
    with pytest.raises(ValueError, match="at least one row"):
        measure_layer_noise(net, X[:0])


def test_torch_adapter_gives_the_same_noise(network):
    torch = pytest.importorskip("torch")
    from skquant.torch import TorchNetwork

    net, X = network
    mlp = net.model
    layers = []
    for i, (W, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        lin = torch.nn.Linear(*W.shape, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.ReLU()] if i < len(mlp.coefs_) - 1 else [lin]
    tnet = TorchNetwork(torch.nn.Sequential(*layers))
    a = measure_layer_noise(net, X, bits=(3, 6))
    b = measure_layer_noise(tnet, torch.from_numpy(X), bits=(3, 6))
    for ra, rb in zip(a.rows, b.rows):
        np.testing.assert_allclose(ra["noise"], rb["noise"], rtol=1e-9)
