"""The files of tests/test_old_files.py, written by skquant before the rooms.

Run at commit 1facab1 (the last one before the package moved into sub-packages),
with that checkout first on the path::

    PYTHONPATH=. python tests/data/files_before_rooms/make_files.py OUT

It writes a QuantizedMLP (GPFQ, 3 bits), a dict of tensors of every alphabet
(uniform, ternary, binary, fixed point, a float array), a quantized torch CNN, and
``expected.npz``: what that code predicted and dequantized.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

import skquant
import skquant.torch as sqt


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    mlp = MLPClassifier((16,), max_iter=60, random_state=0).fit(X[:600], y[:600])
    q = skquant.QuantizedMLP(
        mlp, skquant.GreedyPathQuantizer(n_bits=3), n_calibration=128, random_state=0
    ).fit(X[:600])
    skquant.save(q, out / "mlp_gpfq3.skq")
    rng = np.random.default_rng(0)
    W = rng.standard_normal((32, 8)).astype(np.float32)
    G = rng.standard_normal((32, 8)) * 1e-3
    ap = skquant.AdaptivePrecisionQuantizer(budget=0.05).fit(W, gradient=G)
    tensors = {
        "uniform": skquant.quantize(W, n_bits=4),
        "ternary": skquant.TernaryQuantizer().fit(W).compress(W),
        "binary": skquant.BinaryQuantizer().fit(W).compress(W),
        "fixed_point": ap.compress(W),
        "bias": np.arange(8, dtype=np.float32),
    }
    skquant.save(tensors, out / "tensors.skq")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 6 * 6, 4),
    )
    x = torch.randn(16, 1, 8, 8)
    qnet = sqt.quantize_model(net, skquant.UniformQuantizer(n_bits=4), x)
    sqt.save_model(qnet, out / "cnn_uniform4.skq")
    with torch.no_grad():
        out_t = qnet(x).numpy()
    np.savez(
        out / "expected.npz",
        mlp_proba=q.predict_proba(X[600:700]),
        X=X[600:700],
        x=x.numpy(),
        cnn_out=out_t,
        **{f"deq_{k}": v.dequantize() for k, v in tensors.items() if k != "bias"},
    )
    print("written", sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
