"""Warnings point at the user's line, not at skquant's (or scikit-learn's)."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from skquant import ActivationQuantizer, QuantizedMLP, UniformQuantizer


def _caught(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return seen


def test_an_estimator_warning_points_at_the_call():
    X = np.zeros((20, 4))
    X[:, 0] = np.linspace(0, 1, 20)
    seen = _caught(lambda: ActivationQuantizer(granularity="per_feature").fit(X))
    ours = [w for w in seen if "calibrated range of [0, 0]" in str(w.message)]
    assert ours and all(w.filename == __file__ for w in ours)


def test_a_warning_under_a_fit_points_at_the_call():
    X, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((8,), max_iter=50, random_state=0).fit(X / 16, y)
    act = ActivationQuantizer(granularity="per_feature")
    seen = _caught(lambda: QuantizedMLP(mlp, activations=act).fit(X / 16, y))
    ours = [w for w in seen if "per-feature input grid" in str(w.message)]
    assert ours and all(w.filename == __file__ for w in ours)


def test_a_forward_warning_points_at_the_call():
    torch = pytest.importorskip("torch")
    from skquant.torch import RuntimeFallbackWarning, quantize_model
    from skquant.torch._qlayers import _ANNOUNCED

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 4)).to(torch.float16)
    _ANNOUNCED.clear()
    got = {}
    try:
        seen = _caught(
            lambda: got.update(q=quantize_model(net, UniformQuantizer(n_bits=4)))
        )
        seen += _caught(lambda: got["q"](torch.randn(2, 8, dtype=torch.float16)))
    finally:
        _ANNOUNCED.clear()
    ours = [w for w in seen if w.category is RuntimeFallbackWarning]
    assert ours and all(w.filename == __file__ for w in ours)


def test_user_code_under_a_folder_named_torch_nn_is_the_users(tmp_path, monkeypatch):
    folder = tmp_path / "torch" / "nn"
    folder.mkdir(parents=True)
    (folder / "userfit.py").write_text(
        "from skquant._common._warn import warn\n\n\ndef go():\n    warn('x')\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    import userfit

    seen = _caught(userfit.go)
    assert [w.filename for w in seen] == [str(folder / "userfit.py")]
