"""Smart Quantization (Razani et al.): train once, each layer binary or ternary.

A regulariser pulls every weight layer toward ``{-a, +a}`` or ``{-a, 0, +a}`` and a
trainable switch ``beta`` per layer decides which: ``r(w) = min(|(|w| - a)|^p,
tan(beta) |w|^p)``, ``R = lambda / n_layers * sum r + gamma * sum |cot beta|``. At
``beta = pi/4`` the penalty's wells are ``{-a, 0, a}`` (the zero well wins for
``|w| < a/2``); as ``beta -> pi/2`` the zero well closes (binary). ``gamma`` trades
accuracy for memory; ``lambda`` is annealed up during training.

The sub-package, bottom to top: ``_checks`` (argument checks, the covered layers),
``_alphabet`` (binary and ternary in torch), ``_regularizer`` (the penalty),
``_result`` (what the trainers return), ``_loop`` (the training loop they share),
``_train`` (:func:`train_sq`) and ``_baseline`` (:func:`train_baseline`).
"""

from ._baseline import train_baseline
from ._regularizer import SQRegularizer
from ._result import SQResult
from ._train import train_sq

__all__ = ["SQRegularizer", "SQResult", "train_baseline", "train_sq"]
