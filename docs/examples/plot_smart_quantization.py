"""
=====================================================================
Smart Quantization: each layer binary or ternary, trained once
=====================================================================

Razani et al.'s Smart Quantization adds a regulariser to the training loss that
pulls each layer's weights toward ``{-a, +a}`` or ``{-a, 0, +a}``; a trainable
switch ``beta`` per layer decides which (``pi/4``: ternary, toward ``pi/2``:
binary), and ``gamma * |cot beta|`` rewards binary layers. One training run gives
a network whose layers are 1 or 2 bits, mixed.

This example trains a three-layer MLP on scikit-learn's digits with
:func:`skquant.torch.train_sq` at several ``gamma``, next to the baselines trained
the same way (:func:`skquant.torch.train_baseline`: float, all-binary with a
straight-through estimator, all-ternary), and plots the trade-off and the
switches' trajectories.
"""

# %%
# Data and network
# ----------------
import math

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skquant.torch import train_baseline, train_sq

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X / 16, y, test_size=0.3, stratify=y, random_state=0
)
X_train, X_test = (torch.tensor(a, dtype=torch.float32) for a in (X_train, X_test))
y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)


def network(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )


def test_accuracy(model):
    with torch.no_grad():
        return float((model(X_test).argmax(1) == y_test).float().mean())


common = dict(lr=1e-2, lr_schedule="cosine", batch_size=64, verbose=False)
EPOCHS, FINETUNE = 12, 3

# %%
# Baselines and SQ at several gamma
# ---------------------------------
# Every run has the same optimiser, batches and number of epochs (SQ: 12 with the
# penalty, then 3 straight-through epochs on the projected weights).
baselines = {
    alphabet: train_baseline(
        network(),
        (X_train, y_train),
        alphabet=alphabet,
        epochs=EPOCHS + FINETUNE,
        **common,
    )
    for alphabet in ("float", "binary", "ternary")
}
gammas = [0.0, 1e-3, 3e-3, 1e-2]
runs = {
    g: train_sq(
        network(),
        (X_train, y_train),
        gamma=g,
        epochs=EPOCHS,
        finetune_epochs=FINETUNE,
        **common,
    )
    for g in gammas
}
print(f"{'setting':<14}{'accuracy':>9}{'bits/weight':>13}  layers")
for name, res in [*baselines.items(), *((f"SQ g={g:g}", r) for g, r in runs.items())]:
    print(
        f"{name:<14}{test_accuracy(res.model):>9.3f}{res.bits_per_weight:>13.3f}  "
        + "/".join(a[0] for a in res.alphabets.values())
    )

# %%
# The trade-off: larger gamma, fewer bits
# ---------------------------------------
# ``gamma = 0`` is drawn at the left edge.
x = [max(g, 1e-4) for g in gammas]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
ax1.plot(x, [test_accuracy(runs[g].model) for g in gammas], "o-", label="SQ")
for name, style in (("float", "-"), ("ternary", "--"), ("binary", ":")):
    ax1.axhline(
        test_accuracy(baselines[name].model), color="gray", ls=style, label=name
    )
ax1.set_xscale("log")
ax1.set_xlabel("gamma")
ax1.set_ylabel("test accuracy")
ax1.legend(fontsize="small")
ax2.plot(x, [runs[g].bits_per_weight for g in gammas], "s-", color="C1")
ax2.set_xscale("log")
ax2.set_xlabel("gamma")
ax2.set_ylabel("bits per weight")
plt.tight_layout()

# %%
# The switches during training
# ----------------------------
# Each layer's ``beta``; above the dashed line (``3 pi / 8``) the layer ends binary.
runs[3e-3].plot_beta()
plt.title(f"gamma = 3e-3 (dashed: {3 * math.pi / 8:.3f})")
plt.tight_layout()
