"""Stored sizes: what skquant writes to disk against the counted sizes and float.

Prints, for the cases of the storage issue:

* a 784-512-10 ``nn.Sequential`` quantized with ``UniformQuantizer(n_bits=2)``:
  ``torch.save(state_dict)`` bytes of the float and the quantized model, the
  ``skquant.torch.save_model`` file, and the counted size of the quantized layers;
* ``QuantizedMLP(mlp, GreedyPathQuantizer(n_bits=2))`` on digits (64-256-10 MLP):
  ``pickle.dumps`` bytes with 256 and 1500 calibration rows, the ``skquant.save``
  file, the counted ``size_bits_ / 8``, and the float ``MLPClassifier``'s pickle.

Run: .venv/bin/python benchmarks/bench_storage.py
"""

import io
import os
import pickle
import tempfile
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

import skquant
from skquant import GreedyPathQuantizer, QuantizedMLP, UniformQuantizer
from skquant.torch import quantize_model, save_model


def nbytes_torch(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def main():
    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)
    )
    qnet = quantize_model(net, UniformQuantizer(n_bits=2))
    path = os.path.join(folder, "net.skq")
    save_model(qnet, path)
    counted = sum(m.size_bits for m in qnet.modules() if hasattr(m, "size_bits")) // 8
    print("784-512-10 nn.Sequential, UniformQuantizer(n_bits=2):")
    print(
        "  float state_dict (torch.save)       "
        f"{nbytes_torch(net.state_dict()):>10,d} B"
    )
    print(
        "  quantized state_dict (torch.save)   "
        f"{nbytes_torch(qnet.state_dict()):>10,d} B"
    )
    print(f"  skquant.torch.save_model file       {os.path.getsize(path):>10,d} B")
    print(f"  counted: weights {counted:,d} B + float32 biases {4 * 522:,d} B")

    X, y = load_digits(return_X_y=True)
    X = X / 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((256,), max_iter=300, random_state=0).fit(X, y)
    print("\ndigits 64-256-10 MLPClassifier, GreedyPathQuantizer(n_bits=2):")
    print(f"  float MLPClassifier pickle          {len(pickle.dumps(mlp)):>10,d} B")
    for m in (256, 1500):
        q = QuantizedMLP(
            mlp, GreedyPathQuantizer(n_bits=2), n_calibration=m, random_state=0
        ).fit(X, y)
        path = os.path.join(folder, "mlp.skq")
        skquant.save(q, path)
        with open(path, "rb") as f:  # safetensors: 8 bytes of length, the header
            header = int.from_bytes(f.read(8), "little")
        print(
            f"  m={m:<5d} QuantizedMLP pickle         {len(pickle.dumps(q)):>10,d} B;"
            f" skquant.save file {os.path.getsize(path):,d} B (header {header:,d} B);"
            f" counted size_bits_/8 {q.size_bits_ // 8:,d} B"
        )
        back = skquant.load(path)
        assert np.array_equal(back.predict_proba(X), q.predict_proba(X))


if __name__ == "__main__":
    main()
