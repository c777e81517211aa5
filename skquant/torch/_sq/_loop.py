"""The training loop train_sq and train_baseline share (epochs, history, NaN stop)."""

import copy
import math
import time
from contextlib import contextmanager

import torch
from torch import nn

from ..._common._checks import check_int, check_pair, check_positive
from .._data import batches, on_model
from .._gradients import gradients_enabled
from .._state import seeded
from ._checks import covered_layers


def n_correct(out, y):
    """Samples whose largest output is their class, ``y`` class indices or a row
    of class probabilities a sample (one-hot, soft labels); ``None`` where
    ``out`` is no ``(n, classes)`` tensor or ``y`` gives no class (a
    regression's)."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        return None
    if y.is_floating_point():  # class scores: probabilities over the outputs
        if y.shape != out.shape or out.shape[1] < 2 or not _probabilities(y):
            return None
        y = y.argmax(1)
    return int((out.argmax(1) == y.to(out.device)).sum())


def _probabilities(y):
    """Whether every row of ``y`` is a distribution (one-hot, soft labels)."""
    sums = y.sum(1)
    return bool((y >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums)))


@torch.no_grad()
def accuracy(model, data, device, weights=None):
    """Accuracy of ``model`` (some weights replaced) on ``(X, y)``; NaN where
    the outputs or the labels give no class (see :func:`n_correct`)."""
    X, y = data
    was = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    correct = seen = 0
    for xb, yb in batches((X, y), 1024):
        xb = on_model(xb, device, dtype)  # (token ids stay integers)
        out = (
            model(xb)
            if weights is None
            else torch.func.functional_call(model, weights, (xb,))
        )
        right = n_correct(out, yb)
        correct = None if right is None or correct is None else correct + right
        seen += len(yb)
    model.train(was)
    return math.nan if correct is None else correct / seen


def straight_through(names, modules, project):
    """Weights for ``functional_call``: ``project(i, w)`` forward, the gradient to
    the latent ``w`` unchanged (the straight-through estimator)."""
    return {
        f"{n}.weight": m.weight + (project(i, m.weight) - m.weight).detach()
        for i, (n, m) in enumerate(zip(names, modules))
    }


class Loop:
    """The training loop :func:`train_sq` and :func:`train_baseline` share.

    Checks the arguments, seeds torch, moves the model, runs epochs (shuffled
    batches, the loss plus an optional penalty, label checks, the NaN stop that
    restores the last good state) and records one history row per epoch.
    """

    def __init__(
        self,
        model,
        data,
        *,
        loss_fn,
        epochs,
        finetune_epochs,
        lr,
        lr_schedule,
        batch_size,
        validation_data,
        finetune_lr=None,
        device,
        random_state,
        layers,
        skip,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__} instead."
            )
        self.seed = check_int(random_state, "random_state", low=0, none=True)
        _, self.names = covered_layers(model, layers, skip)
        check_int(epochs, "epochs")
        check_int(finetune_epochs, "finetune_epochs", low=0)
        check_int(batch_size, "batch_size")
        self.lr = check_positive(lr, "lr")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                "lr_schedule must be 'constant' or 'cosine', got "
                f"lr_schedule={lr_schedule!r}."
            )
        self.lr_schedule, self.epochs, self.finetune_epochs = (
            lr_schedule,
            epochs,
            finetune_epochs,
        )
        self.finetune_lr = self.lr
        if finetune_lr is not None:
            self.finetune_lr = check_positive(finetune_lr, "finetune_lr")
        self.model, self.data, self.batch_size = model, data, batch_size
        self.loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        # class indices are checked against the outputs under the default loss
        self.classes = loss_fn is None
        check_pair(validation_data, "validation_data")
        self.validation_data = validation_data
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                "device must be a torch device such as 'cpu' or 'cuda', got "
                f"device={device!r} instead."
            ) from exc
        self.generator = torch.Generator()
        if self.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.seed)
        model.to(self.device)
        self.dtype = next(model.parameters()).dtype
        self.history = []
        self.keep = [model]  # modules whose state the NaN stop restores

    def snapshot(self):
        self.last_good = [copy.deepcopy(m.state_dict()) for m in self.keep]

    @contextmanager
    def gradients(self, where):
        """The context of the training: grad mode on, the covered layers' weights
        and biases trainable whatever their flags, torch's generators seeded
        (:func:`seeded`); on leaving it (also by an exception), the flags,
        ``.grad``, modes and the generators' states are the user's again."""
        modules = dict(self.model.named_modules())
        params = [p for n in self.names for p in modules[n].parameters(recurse=False)]
        with (
            seeded(self.seed, self.device),
            gradients_enabled(self.model, where, params),
        ):
            yield

    def epoch_lr(self, epoch, phase):
        """Learning rate of epoch ``epoch`` (1-based, counted over both phases):
        ``lr``, or cosine decay from ``lr`` to ``lr / 100`` over the training
        epochs, restarted from ``finetune_lr`` over the fine-tune epochs."""
        start, count = (
            (0, self.epochs)
            if phase == "train"
            else (self.epochs, self.finetune_epochs)
        )
        base = self.lr if phase == "train" else self.finetune_lr
        if self.lr_schedule == "constant":
            return base
        frac = (epoch - 1 - start) / max(1, count - 1)
        return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))

    def epoch(self, epoch, phase, opt, weights=None, penalty=None):
        """One epoch; ``weights()`` gives ``functional_call`` weights (None: the
        model's own), ``penalty()`` a scalar added to the loss."""
        model, device = self.model, self.device
        lr = self.epoch_lr(epoch, phase)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        total = penalty_total = 0.0
        correct = seen = 0
        start = time.perf_counter()
        for xb, yb in batches(
            self.data, self.batch_size, generator=self.generator, single=False
        ):
            xb, yb = on_model(xb, device, self.dtype), yb.to(device)
            if self.classes and not yb.is_floating_point():
                yb = yb.long()  # class indices as cross-entropy takes them
            opt.zero_grad()
            out = (
                model(xb)
                if weights is None
                else torch.func.functional_call(model, weights(), (xb,))
            )
            if self.classes:
                _check_classes(out, yb)
            loss = self.loss_fn(out, yb)
            pen = (
                torch.zeros((), dtype=self.dtype, device=device)
                if penalty is None
                else penalty()
            )
            objective = loss + pen
            if not torch.isfinite(objective):
                for m, state in zip(self.keep, self.last_good):
                    m.load_state_dict(state)
                bad = [  # (the data's fault, not the step's)
                    name
                    for name, t in (("inputs", xb), ("targets", yb))
                    if t.is_floating_point() and not bool(torch.isfinite(t).all())
                ]
                raise ValueError(
                    f"the loss became {float(objective.detach())} in epoch {epoch} "
                    f"({phase}); training stopped and the model keeps the weights "
                    "of the last good epoch. "
                    + (
                        f"The batch's {' and '.join(bad)} hold NaN or inf: clean "
                        "the training data."
                        if bad
                        else "Lower lr or lam."
                    )
                )
            objective.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
            penalty_total += float(pen.detach()) * len(xb)
            right = n_correct(out, yb)
            correct = None if right is None or correct is None else correct + right
            seen += len(xb)
        if not seen:
            raise ValueError(
                f"data gave no batch in epoch {epoch}: pass (X, y), a Dataset or a "
                "DataLoader (a generator of batches is used up after one epoch)."
            )
        row = {
            "epoch": epoch,
            "phase": phase,
            "loss": total / seen,
            "penalty": penalty_total / seen,
            "accuracy": math.nan if correct is None else correct / seen,
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }
        if self.validation_data is not None:
            row["val_accuracy"] = accuracy(
                model,
                self.validation_data,
                device,
                None if weights is None else weights(),
            )
        self.history.append(row)
        self.snapshot()
        return row


def _check_classes(out, y):
    """ValueError unless ``y`` are class indices (or rows of class scores) of
    the ``(n, classes)`` ``out``."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)
        raise ValueError(
            f"the model's output must be (batch, classes) logits under the default "
            f"cross-entropy loss, got {shape}: pass a loss_fn that takes it."
        )
    if y.is_floating_point():  # class scores (one-hot, soft labels)
        if y.shape != out.shape:
            raise ValueError(
                f"float labels must be one row of class scores a sample, "
                f"{tuple(out.shape)} as the outputs, got {tuple(y.shape)}."
            )
    elif y.numel() and (y.max() >= out.shape[1] or y.min() < 0):
        raise ValueError(
            f"labels must be class indices below the model's {out.shape[1]} "
            f"outputs, got labels from {int(y.min())} to {int(y.max())}."
        )
