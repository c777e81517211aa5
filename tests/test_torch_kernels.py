"""The layer kernels in torch (device=): the numba kernels' codes, on CPU torch,
and on a CUDA device where one is present (never in CI; run this file on a machine
with a GPU for the parity check there)."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

torch = pytest.importorskip("torch")

from skquant import (  # noqa: E402
    GPTQQuantizer,
    GreedyPathQuantizer,
    UniformQuantizer,
)
from skquant.torch._model import on_device  # noqa: E402

ALPHABETS = [8, 4, 3, 2, "ternary", "binary"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_same_decisions(got, ref, device):
    """On CPU torch the codes are the numba kernels'. On a GPU a product sums in
    another order, so a value within rounding error of a decision boundary may
    round the other way (the documented tolerance): at least 99.9% equal, never
    more than one step apart."""
    if device == "cpu":
        assert_array_equal(got, ref)
        return
    same = got == ref
    assert same.mean() >= 0.999, same.mean()
    assert np.abs(got.astype(np.int64) - ref.astype(np.int64)).max() <= 1


def layer(m, n, n_out, seed):
    """Correlated inputs (a real layer's are), a near copy as the float inputs."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n)) @ rng.standard_normal((n, n)) / np.sqrt(n)
    Xf = X + 0.05 * rng.standard_normal(X.shape)
    W = rng.standard_normal((n, n_out)) / 8
    return X, Xf, W


@pytest.fixture(scope="module")
def digits_layer():
    """The first layer of an MLP trained on scikit-learn's digits, its inputs."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier((48,), max_iter=200, random_state=0).fit(X, y)
    return X, mlp.coefs_[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_bits", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("device", DEVICES)
def test_msq_on_torch_is_bit_for_bit(dtype, n_bits, granularity, device):
    W = (np.random.default_rng(n_bits).standard_normal((70, 9)) * 3).astype(dtype)
    W[5] = 0.0
    W[:, 2] *= 1e-3
    ref = UniformQuantizer(n_bits=n_bits, granularity=granularity).fit(W)
    got = UniformQuantizer(n_bits=n_bits, granularity=granularity, device=device)
    got.fit(W)
    assert_array_equal(got.encode(W), ref.encode(W))
    out = got.transform(W)
    assert out.dtype == W.dtype
    assert_array_equal(out, ref.transform(W))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_bits=st.integers(2, 8),
    scale=st.floats(1e-3, 1e3),
)
def test_msq_codes_oracle(seed, n_bits, scale):
    """Property: the torch codes are the numba codes (half to even, then clip)."""
    W = np.random.default_rng(seed).standard_normal((16, 5)) * scale
    ref = UniformQuantizer(n_bits=n_bits).fit(W)
    got = UniformQuantizer(n_bits=n_bits, device=torch.device("cpu")).fit(W)
    assert_array_equal(got.encode(W), ref.encode(W))


CASES = [
    (GPTQQuantizer, {}),
    (GPTQQuantizer, {"act_order": True}),
    (GPTQQuantizer, {"target": "float_output"}),
    (GPTQQuantizer, {"block_size": 7}),
    (GreedyPathQuantizer, {}),
]


@pytest.mark.parametrize("n_bits", ALPHABETS)
@pytest.mark.parametrize("cls,kw", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("device", DEVICES)
def test_gptq_and_gpfq_on_torch_give_the_numba_codes(cls, kw, n_bits, device):
    """More rows than inputs: both sides factor the same matrices (GPTQ's
    Cholesky form, GPFQ's path against its Gram form): the same codes."""
    X, Xf, W = layer(400, 96, 24, seed=3)
    ref = cls(n_bits=n_bits, **kw).fit(W, activations=X, target_activations=Xf)
    got = cls(n_bits=n_bits, device=device, **kw)
    got.fit(W, activations=X, target_activations=Xf)
    assert_same_decisions(got.codes_, ref.codes_, device)
    np.testing.assert_allclose(
        got.calibration_error_,
        ref.calibration_error_,
        rtol=1e-9 if device == "cpu" else 1e-2,
    )


@pytest.mark.parametrize("cls", [GPTQQuantizer, GreedyPathQuantizer])
@pytest.mark.parametrize("device", DEVICES)
def test_wide_layers_on_torch_match_the_low_rank_forms(cls, device):
    """Fewer rows than inputs: NumPy runs GPTQ's low-rank form (and GPFQ's path),
    torch the Cholesky (Gram) form; the same decisions up to rounding error."""
    X, Xf, W = layer(60, 200, 16, seed=5)
    for n_bits in (4, 2):
        ref = cls(n_bits=n_bits).fit(W, activations=X, target_activations=Xf)
        got = cls(n_bits=n_bits, device=device)
        got.fit(W, activations=X, target_activations=Xf)
        same = got.codes_ == ref.codes_
        assert same.mean() >= 0.999, same.mean()
        diff = np.abs(got.codes_.astype(int) - ref.codes_.astype(int))
        assert diff.max() <= 1


@pytest.mark.parametrize("cls", [GPTQQuantizer, GreedyPathQuantizer, UniformQuantizer])
@pytest.mark.parametrize("device", DEVICES)
def test_a_real_layer_on_torch(cls, digits_layer, device):
    X, W = digits_layer
    dead = np.flatnonzero(X.std(axis=0) == 0)  # digits has always-blank pixels
    assert dead.size
    for n_bits in (4, 3, "ternary"):
        if cls is UniformQuantizer and not isinstance(n_bits, int):
            continue
        kw = {} if cls is UniformQuantizer else {"activations": X}
        ref = cls(n_bits=n_bits).fit(W, **kw)
        got = cls(n_bits=n_bits, device=device).fit(W, **kw)
        if cls is UniformQuantizer:
            assert_array_equal(got.encode(W), ref.encode(W))
        else:
            assert_same_decisions(got.encode(W), ref.encode(W), device)


def test_device_is_checked():
    X, _, W = layer(50, 8, 3, seed=0)
    with pytest.raises(TypeError, match="device must be None, a torch device"):
        GPTQQuantizer(device=3).fit(W, activations=X)
    with pytest.raises(TypeError, match="device must be None"):
        UniformQuantizer(device=["cpu"]).fit(W).encode(W)


def test_quantize_model_sets_the_device_of_a_cuda_model():
    """A model on CUDA gets its quantizers' kernels there (the setting only: no
    GPU here); a device already set, and quantizers without one, are kept."""
    gptq, rtn = GPTQQuantizer(n_bits=3), UniformQuantizer(device="cpu")
    out = on_device({"0": gptq, "2": rtn, "4": None}, torch.device("cuda", 0))
    assert out["0"].device == "cuda:0" and gptq.device is None
    assert out["2"] is rtn and out["4"] is None
    from skquant import NullSpaceQuantizer

    ns = NullSpaceQuantizer(rank=4)
    assert on_device(ns, "cuda") is ns
    assert [q.device for q in on_device([gptq, gptq], "cuda")] == ["cuda", "cuda"]


@pytest.mark.parametrize("device", ["nope", "meta", "cuda:99"])
def test_a_device_torch_cannot_compute_on_is_refused_at_fit(device):
    """device= was only type-checked: an unknown name gave torch's RuntimeError,
    'meta' a NotImplementedError, and UniformQuantizer fitted and failed only in
    transform."""
    W = np.random.default_rng(0).standard_normal((8, 4))
    X = np.random.default_rng(1).standard_normal((6, 8))
    with pytest.raises(ValueError, match=f"UniformQuantizer: device='{device}'"):
        UniformQuantizer(device=device).fit(W)
    for est in (GreedyPathQuantizer(device=device), GPTQQuantizer(device=device)):
        with pytest.raises(ValueError, match=f"device='{device}'"):
            est.fit(W, activations=X)
