"""
=====================================================================
Per-layer bit-widths from a measured sensitivity (Zhou et al.)
=====================================================================

Not every layer needs the same number of bits. Zhou et al. (AAAI 2018) measure how
the quantization noise of each layer reaches the logits, ``p_i exp(-alpha b)``
(``alpha`` near ``ln 4``: each bit quarters the noise), and how much noise each
layer tolerates, ``t_i``; the smallest model whose normalised noise
``sum_i p_i(b_i) / t_i`` stays below 1 is a multiple-choice knapsack, which
:class:`~skquant.LayerBitAllocator` solves exactly.

This example measures a small MLP trained on scikit-learn's digits, plots the
measured noise against bits per layer, and compares the allocation's test accuracy
and size with the same bit-width for every layer, over a sweep of budgets.
"""

# %%
# A network with layers of different sizes
# -----------------------------------------
# The first layer holds most of the weights; the last one is small.
import warnings

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from skquant import LayerBitAllocator, QuantizedMLP, UniformQuantizer

X, y = load_digits(return_X_y=True)
X = X / 16
X_train, X_rest, y_train, y_rest = train_test_split(
    X, y, test_size=0.5, stratify=y, random_state=0
)
X_val, X_test, y_val, y_test = train_test_split(
    X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0
)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    mlp = MLPClassifier((128, 32), max_iter=400, random_state=0).fit(X_train, y_train)
print(f"float test accuracy: {mlp.score(X_test, y_test):.4f}")

# %%
# Measure and allocate
# --------------------
# The sensitivity is measured on validation data; the default target
# (``max_cost=1``) asks for an expected accuracy drop of about ``tolerance``
# (half a point).
alloc = LayerBitAllocator(mlp, bits=("ternary", 2, 3, 4, 5, 6, 8), threshold="margin")
alloc.fit(X_val, y_val)
print(alloc.sensitivity_)
print("bits per layer:", alloc.bits_)

# %%
# Zhou's law: the noise on the logits falls by about 4 per bit (straight lines on
# a log scale); the dashed lines are each layer's tolerated noise ``t_i``.
alloc.sensitivity_.plot()
plt.tight_layout()

# %%
# Accuracy against size: per-layer bits and equal bits
# ----------------------------------------------------
# Each point of the allocation's Pareto front (predicted cost against size) is
# quantized for real through :class:`~skquant.QuantizedMLP` and the per-layer
# quantizer mapping; the equal bit-widths are the baseline.
n_weights = sum(W.size for W in mlp.coefs_)


def test_point(quantizer):
    q = QuantizedMLP(mlp, quantizer).fit(X_train)
    weight_bits = sum(r["size_bits"] for r in q.report_.rows)
    return weight_bits / n_weights, q.score(X_test, y_test)


front = alloc.pareto_front(n_points=25)
allocated = [test_point(alloc.quantizers(bits)) for bits in front["bits"]]
equal = [test_point(UniformQuantizer(n_bits=b)) for b in (2, 3, 4, 5, 6, 8)]

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(*zip(*equal), "ks-", label="equal bit-width")
ax.plot(*zip(*sorted(allocated)), "o-", ms=4, label="per-layer (exact allocation)")
ax.axhline(mlp.score(X_test, y_test), color="gray", ls="--", label="float")
ax.set_xlabel("bits per weight (codes + scales)")
ax.set_ylabel("test accuracy")
ax.set_ylim(0.8, 1.0)
ax.legend()
plt.tight_layout()
