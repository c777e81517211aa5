"""
============================================================
Quantizing an MNIST MLP: MSQ, GPFQ and the null-space method
============================================================

A small multi-layer perceptron trained on MNIST is quantized at 4, 3 and 2 bits per
weight and to the ternary alphabet with three methods, through
:class:`~skquant.QuantizedMLP` (layer by layer, each layer on the activations of the
already quantized layers before it):

* memoryless scalar quantization (MSQ): :class:`~skquant.UniformQuantizer` (max-abs
  step) and :class:`~skquant.TernaryQuantizer` (the exact L2-optimal level);
* greedy path following (GPFQ): :class:`~skquant.GreedyPathQuantizer`;
* the null-space pre-processing (Maly & Saab): :class:`~skquant.NullSpaceQuantizer`
  with ``rank=0.99``, which keeps the singular directions of the calibration data
  holding 99% of its energy (the first layer has 784 inputs and sees 1024
  calibration images, so without the cap there would be no freedom left).

The test accuracy is plotted against the stored bits per parameter, counted by
``size_bits_`` (packed codes, one float32 scale per neuron, float32 biases). MNIST
is read from disk with :func:`skquant.datasets.load_mnist` (nothing is downloaded);
where its files are absent the example falls back to scikit-learn's bundled 8x8
digits. The first lines printed below, and the plot's title, say which data set this
page was built with: after a fallback its numbers are the digits', not MNIST's.
"""

# %%
# Data and the float network
# --------------------------
# A 20 000-image training subset and a dozen epochs keep the example fast; the
# network has one hidden layer of 128 ReLU units.
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from skquant import (
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    QuantizedMLP,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant.datasets import load_mnist, mnist_available

tic = time.perf_counter()
if mnist_available():
    dataset, max_iter = "MNIST", 12
    X_train, y_train = load_mnist("train", return_X_y=True)
    X_test, y_test = load_mnist("test", return_X_y=True)
    keep = np.random.default_rng(0).choice(X_train.shape[0], 20000, replace=False)
    X_train, y_train = X_train[keep], y_train[keep]
else:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    dataset, max_iter = "digits (fallback: MNIST files absent)", 300
    print(
        "FALLBACK: the MNIST files were not found (in $SKQUANT_DATA or "
        "~/skquant_data),\nso this run uses scikit-learn's 8x8 digits instead: "
        "every number and plot below is\nfor the digits, not MNIST. Fetch MNIST "
        "with `bash benchmarks/get_data.sh` and rerun."
    )
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X / 16, y, test_size=0.3, random_state=0
    )

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    mlp = MLPClassifier((128,), max_iter=max_iter, random_state=0).fit(X_train, y_train)
float_acc = mlp.score(X_test, y_test)
n_params = sum(W.size + b.size for W, b in zip(mlp.coefs_, mlp.intercepts_))
print(
    f"data: {dataset}, {X_train.shape[0]} training images, "
    f"{X_test.shape[0]} test images"
)
print(f"float network: test accuracy {float_acc:.4f}, {n_params} parameters")

# %%
# Quantize with every method
# --------------------------
# :class:`~skquant.QuantizedMLP` takes the fitted network and an unfitted quantizer,
# which it clones for every layer; ``random_state`` draws the 1024 calibration rows
# (``n_calibration``) from the training images. For the two data-driven methods the
# ternary alphabet with the max-abs level is exactly the 2-bit grid
# (``{-1, 0, 1}`` times the step), so their ternary and 2-bit rows agree; MSQ's
# ternary quantizer picks the L2-optimal level instead.
methods = {
    "MSQ": lambda b: (
        TernaryQuantizer() if b == "ternary" else UniformQuantizer(n_bits=b)
    ),
    "GPFQ": lambda b: GreedyPathQuantizer(n_bits=b),
    "null space": lambda b: NullSpaceQuantizer(n_bits=b, rank=0.99),
}
rows = []
for name, make in methods.items():
    for n_bits in (4, 3, 2, "ternary"):
        start = time.perf_counter()
        qmlp = QuantizedMLP(mlp, make(n_bits), random_state=0).fit(X_train, y_train)
        rows.append(
            {
                "method": name,
                "n_bits": n_bits,
                "bits": qmlp.size_bits_ / n_params,
                "acc": qmlp.score(X_test, y_test),
                "errors": qmlp.layer_errors_,
                "time": time.perf_counter() - start,
            }
        )

# %%
# The table
# ---------
# ``layer errors`` are :attr:`~skquant.QuantizedMLP.layer_errors_`, the relative
# error of each layer's output on the calibration data, its input already perturbed
# by the quantized layers before it.
print(
    f"{'method':<11} {'n_bits':>7} {'bits/param':>10} {'accuracy':>8} "
    f"{'layer errors':>13} {'time':>6}"
)
for r in rows:
    errs = " ".join(f"{e:.3f}" for e in r["errors"])
    print(
        f"{r['method']:<11} {r['n_bits']!s:>7} {r['bits']:>10.3f} {r['acc']:>8.4f} "
        f"{errs:>13} {r['time']:>5.1f}s"
    )
print(f"total time {time.perf_counter() - tic:.1f} s")

# %%
# The plot
# --------
# At 4 bits every method keeps the float accuracy. At 3 bits MSQ starts to lose
# accuracy, and at 2 bits its max-abs grid collapses: the step is the largest
# weight, so most weights round to zero. MSQ's ternary quantizer, with the same
# alphabet but the L2-optimal level, recovers most of the accuracy. The data-driven
# methods keep the max-abs step yet lose little, because they choose the codes
# for the layer's output on the calibration data, not weight by weight; the
# null-space method and GPFQ end up close, a little apart only at 2 bits. On real
# data the calibration error carries over to the test set (the right panel zooms
# in on the top of the left one).
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
for ax in axes:
    for i, name in enumerate(methods):
        sub = [r for r in rows if r["method"] == name]
        grid = [r for r in sub if r["n_bits"] != "ternary"]
        tern = [r for r in sub if r["n_bits"] == "ternary"]
        ax.plot(
            [r["bits"] for r in grid],
            [r["acc"] for r in grid],
            "o-",
            color=f"C{i}",
            label=f"{name}, 2-4 bits",
        )
        ax.plot(
            [r["bits"] for r in tern],
            [r["acc"] for r in tern],
            "^",
            markersize=10,
            fillstyle="none",
            color=f"C{i}",
            label=f"{name}, ternary",
        )
    ax.axhline(float_acc, color="k", linestyle=":", label="float32")
    ax.set_xlabel("stored bits per parameter (codes + scales + float32 biases)")
    ax.grid(True, alpha=0.3)
axes[0].set_ylabel("test accuracy")
axes[0].set_title(f"MLP (128 hidden units) on {dataset}")
axes[1].set_ylim(float_acc - 0.05, float_acc + 0.01)
axes[1].set_title("zoom on the top")
axes[1].legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()
