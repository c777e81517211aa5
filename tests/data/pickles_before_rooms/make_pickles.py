"""The pickles of tests/test_old_pickles.py, written by skquant before the rooms.

Run at commit 1facab1 with that checkout first on the path::

    PYTHONPATH=. python tests/data/pickles_before_rooms/make_pickles.py OUT
"""

import pickle
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

import skquant


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    mlp = MLPClassifier((16,), max_iter=60, random_state=0).fit(X[:600], y[:600])
    rng = np.random.default_rng(0)
    W = rng.standard_normal((32, 8))
    objects = {
        "quantized_mlp": skquant.QuantizedMLP(
            mlp, skquant.UniformQuantizer(n_bits=4), n_calibration=128, random_state=0
        ).fit(X[:600]),
        "uniform": skquant.UniformQuantizer(n_bits=3).fit(W),
        "ternary": skquant.TernaryQuantizer().fit(W),
        "gptq": skquant.GPTQQuantizer(n_bits=3).fit(W, activations=X[:64, :32]),
        "nullspace": skquant.NullSpaceQuantizer(n_bits=3).fit(
            W, activations=X[:64, :32]
        ),
        "adaptive": skquant.AdaptivePrecisionQuantizer(budget=0.05).fit(
            W, gradient=rng.standard_normal(W.shape) * 1e-3
        ),
        "activation": skquant.ActivationQuantizer(n_bits=8).fit(X[:100]),
        "tensor": skquant.quantize(W, n_bits=4),
        "allocator": skquant.LayerBitAllocator(mlp, bits=(2, 4, 8)).fit(
            X[600:900], y[600:900]
        ),
    }
    for name, obj in objects.items():
        (out / f"{name}.pkl").write_bytes(pickle.dumps(obj))
    expected = {
        "mlp_proba": objects["quantized_mlp"].predict_proba(X[900:1000]),
        "X": X[900:1000],
        "W": W,
        "bits": np.array(
            [objects["allocator"].bits_[k] for k in sorted(objects["allocator"].bits_)]
        ),
    }
    for name in ("uniform", "ternary", "gptq", "nullspace", "adaptive"):
        expected[f"transform_{name}"] = objects[name].transform(W)
    expected["activation"] = objects["activation"].transform(X[900:1000])
    expected["tensor"] = objects["tensor"].dequantize()
    np.savez_compressed(out / "expected_pickles.npz", **expected)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
