"""Files written before the package moved into its rooms load and give the same numbers.

The files and the numbers they gave were written by the code of that time (see
tests/data/files_before_rooms/make_files.py); nothing here computes an expected
value with the code under test.
"""

from pathlib import Path

import numpy as np
import pytest

import skquant

DATA = Path(__file__).parent / "data" / "files_before_rooms"


@pytest.fixture(scope="module")
def expected():
    return np.load(DATA / "expected.npz")


def test_quantized_mlp_predicts_as_before(expected):
    q = skquant.load(DATA / "mlp_gpfq3.skq")
    assert isinstance(q, skquant.QuantizedMLP)
    # to round-off: the forward pass's BLAS products round differently from one
    # CPU to another (last-bit differences seen on another machine)
    np.testing.assert_allclose(
        q.predict_proba(expected["X"]), expected["mlp_proba"], rtol=1e-12, atol=1e-15
    )


def test_tensors_of_every_alphabet_dequantize_as_before(expected):
    tensors = skquant.load(DATA / "tensors.skq")
    assert sorted(tensors) == ["bias", "binary", "fixed_point", "ternary", "uniform"]
    for name in ("binary", "fixed_point", "ternary", "uniform"):
        np.testing.assert_array_equal(
            tensors[name].dequantize(), expected[f"deq_{name}"], err_msg=name
        )
    np.testing.assert_array_equal(tensors["bias"], np.arange(8, dtype=np.float32))


def test_torch_model_loads_and_runs_as_before(expected):
    torch = pytest.importorskip("torch")
    import skquant.torch as sqt

    torch.manual_seed(1)  # other float weights: load_into must replace them
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 6 * 6, 4),
    )
    model = sqt.load_into(net, DATA / "cnn_uniform4.skq")
    with torch.no_grad():
        out = model(torch.as_tensor(expected["x"])).numpy()
    # the packed kernel sums in another order than the float product of then
    np.testing.assert_allclose(out, expected["cnn_out"], rtol=1e-5, atol=1e-7)
    floated = sqt.load_into(net, DATA / "cnn_uniform4.skq", runtime="float")
    with torch.no_grad():
        out = floated(torch.as_tensor(expected["x"])).numpy()
    # the same float product, to float32 round-off (torch's convolution sums in a
    # CPU-dependent order: last-bit differences seen on another machine)
    np.testing.assert_allclose(out, expected["cnn_out"], rtol=1e-6, atol=1e-7)
