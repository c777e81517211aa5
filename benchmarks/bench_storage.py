"""Stored sizes: what skquant writes to disk against the counted sizes and float.

Prints, for the cases of the storage issue:

* a 784-512-10 ``nn.Sequential`` quantized with ``UniformQuantizer(n_bits=2)``:
  ``torch.save(state_dict)`` bytes of the float and the quantized model, the
  ``skquant.torch.save_model`` file, and the counted size of the quantized layers;
* ``QuantizedMLP(mlp, GreedyPathQuantizer(n_bits=2))`` on digits (64-256-10 MLP):
  ``pickle.dumps`` bytes with 256 and 1500 calibration rows, the ``skquant.save``
  file, the counted ``size_bits_ / 8``, and the float ``MLPClassifier``'s pickle.

Run: .venv/bin/python benchmarks/bench_storage.py

The "before" rows of ``docs/storage.rst`` are this script run on the code of commit
``578a077`` (the last before the file format; it has no ``save_model`` and no
``skquant.save``, whose rows then print as absent)::

    git worktree add /tmp/skquant-578a077 578a077
    PYTHONPATH=/tmp/skquant-578a077 .venv/bin/python benchmarks/bench_storage.py
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
import skquant.torch
from skquant import GreedyPathQuantizer, QuantizedMLP, UniformQuantizer
from skquant.torch import quantize_model

# absent before the file format (the "before" rows: see above)
save_model = getattr(skquant.torch, "save_model", None)
save = getattr(skquant, "save", None)


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
    if save_model is not None:
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
    if save_model is not None:
        print(f"  skquant.torch.save_model file       {os.path.getsize(path):>10,d} B")
    else:
        print("  skquant.torch.save_model file       (absent in this code)")
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
        size = len(pickle.dumps(q))
        line = f"  m={m:<5d} QuantizedMLP pickle         {size:>10,d} B;"
        if save is not None:
            path = os.path.join(folder, "mlp.skq")
            save(q, path)
            with open(path, "rb") as f:  # safetensors: 8 bytes of length, the header
                header = int.from_bytes(f.read(8), "little")
            line += (
                f" skquant.save file {os.path.getsize(path):,d} B"
                f" (header {header:,d} B);"
            )
            back = skquant.load(path)
            assert np.array_equal(back.predict_proba(X), q.predict_proba(X))
        print(f"{line} counted size_bits_/8 {q.size_bits_ // 8:,d} B")


if __name__ == "__main__":
    main()
