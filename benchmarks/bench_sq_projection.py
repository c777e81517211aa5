"""Where Smart Quantization loses accuracy: latent weights, projection, fine-tune.

MNIST LeNet-5, seed 0, ``train_sq`` with ``gamma=1e-3`` (9 epochs with the penalty,
3 fine-tune epochs, Adam at ``lr=2e-3``, cosine schedule) in three variants:

* ``default``: ``lam=1e-3`` ramped linearly, the fine-tune restarting at ``lr``;
* ``small fine-tune lr``: the same with ``finetune_lr=lr/50`` (as if the fine-tune
  continued the training's decay);
* ``strong lambda``: ``lambda`` ramped geometrically from 1e-4 to 1.

Prints, per variant, the test accuracy of the latent weights and of the weights
projected on that epoch's alphabets after the last training epoch, the final
accuracy after the fine-tune, the binary layers, and the largest zero-well
fraction among the layers that end binary.

Run: ``python benchmarks/bench_sq_projection.py`` (MNIST files: ``bash
benchmarks/get_data.sh``).
"""

import numpy as np
import torch
from _models import accuracy, lenet5, mnist_tensors

from skquant.torch import train_sq

EPOCHS, FINETUNE, LR = 9, 3, 2e-3


def main():
    Xtr, ytr, Xte, yte = mnist_tensors("mnist", image=True)
    variants = {
        "default": dict(lam=1e-3),
        "small fine-tune lr": dict(lam=1e-3, finetune_lr=LR / 50),
        "strong lambda": dict(lam=list(np.geomspace(1e-4, 1.0, EPOCHS))),
    }
    print(
        f"{'variant':<20}{'latent %':>9}{'projected %':>12}{'final %':>9}"
        f"{'binary':>8}  max zero fraction of a binary layer"
    )
    for name, kw in variants.items():
        torch.manual_seed(0)
        res = train_sq(
            lenet5(),
            (Xtr, ytr),
            gamma=1e-3,
            epochs=EPOCHS,
            finetune_epochs=FINETUNE,
            lr=LR,
            validation_data=(Xte, yte),
            random_state=0,
            verbose=False,
            **kw,
        )
        last = [h for h in res.history if h["phase"] == "train"][-1]
        binary = [n for n, a in res.alphabets.items() if a == "binary"]
        zf = max((last["zero_fraction"][n] for n in binary), default=float("nan"))
        print(
            f"{name:<20}{100 * last['val_accuracy']:>9.2f}"
            f"{100 * last['val_accuracy_projected']:>12.2f}"
            f"{100 * accuracy(res.model, Xte, yte):>9.2f}"
            f"{len(binary):>6}/{len(res.alphabets)}  {zf:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
