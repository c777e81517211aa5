"""Smart Quantization (Razani et al.): train once, each layer binary or ternary.

A regulariser pulls every weight layer toward ``{-a, +a}`` or ``{-a, 0, +a}`` and a
trainable switch ``beta`` per layer decides which: ``r(w) = min(|(|w| - a)|^p,
tan(beta) |w|^p)``, ``R = lambda / n_layers * sum r + gamma * sum |cot beta|``. At
``beta = pi/4`` the penalty's wells are ``{-a, 0, a}`` (the zero well wins for
``|w| < a/2``); as ``beta -> pi/2`` the zero well closes (binary). ``gamma`` trades
accuracy for memory; ``lambda`` is annealed up during training.
"""

import copy
import math
import numbers
import time

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .._alphabets import BINARY, TERNARY, Alphabet, alphabet_from
from .._kernels import _sq as _sq_kernels
from .._progress import progress
from .._uniform import BinaryQuantizer, TernaryQuantizer
from ._data import batches
from ._gradients import gradients_enabled
from ._network import TorchNetwork

__all__ = ["SQRegularizer", "SQResult", "train_baseline", "train_sq"]

BETA_LOW, BETA_HIGH = math.pi / 4, math.pi / 2


def _positive(value, name, allow_zero=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"{name} must be a finite number {bound}, got {name}={value!r}."
        )
    return float(value)


def _covered_layers(model, layers, skip):
    """The model's weight layers chosen as in ``quantize_model`` (``layers``,
    ``skip``): the walk's adapter and the names, in forward order."""
    network = TorchNetwork(model, skip=skip)
    names = list(network.layer_names)
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        network.check_layer_names(layers, "layers")
        names = [n for n in names if n in layers]
    return network, names


_QUANTIZER_CLASSES = {BINARY: BinaryQuantizer, TERNARY: TernaryQuantizer}


def quantizer_class(alphabet):
    """The skquant quantizer that stores ``alphabet`` (binary or ternary)."""
    try:
        return _QUANTIZER_CLASSES[alphabet]
    except KeyError:
        raise ValueError(
            f"no binary or ternary quantizer for the alphabet {alphabet!r}."
        ) from None


def as_alphabet(alphabet):
    """An :class:`~skquant._alphabets.Alphabet`, or the one its name gives."""
    return alphabet if isinstance(alphabet, Alphabet) else alphabet_from(alphabet)


def _project(w, a, alphabet):
    """``w`` on ``a * {-1, 1}`` (``sign(0) = +1``) or on the nearest of
    ``a * {-1, 0, 1}`` (ties at ``a/2`` to 0), as :class:`~skquant.BinaryQuantizer`
    and :class:`~skquant.TernaryQuantizer` round; ``alphabet`` is
    :data:`~skquant._alphabets.BINARY` or :data:`~skquant._alphabets.TERNARY`."""
    if alphabet.is_binary:
        return a * torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    return a * torch.where(w.abs() > a / 2, torch.sign(w), 0.0).to(w.dtype)


def _fusable(w):
    return w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64)


class _FusedWells(torch.autograd.Function):
    """``scale * sum_w min(|(|w| - a)|^p, t |w|^p)`` and its gradients in one
    compiled pass (first derivatives only). ``scale`` (a float) is folded into
    the kernel's gradient so that the backward pass is no extra pass over ``w``."""

    @staticmethod
    def forward(ctx, w, a, t, p, scale):
        flat = w.detach().reshape(-1).contiguous().numpy()
        total, grad, d_a, d_t = _sq_kernels.wells_sum(
            flat, float(a), float(t), p, scale
        )
        ctx.save_for_backward(
            torch.from_numpy(grad).view(w.shape),
            torch.tensor(d_a, dtype=a.dtype),
            torch.tensor(d_t, dtype=t.dtype),
        )
        return torch.tensor(total, dtype=w.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        grad_w, d_a, d_t = ctx.saved_tensors
        if float(g) != 1.0:
            grad_w = g * grad_w
        return grad_w, g * d_a, g * d_t, None, None


class SQRegularizer(nn.Module):
    """The Smart Quantization penalty over a model's weight layers.

    Holds, per weight layer, a trainable scale ``a > 0`` (``a = exp(log_a)``) and a
    trainable switch ``beta = pi/4 + (pi/4) sigmoid(theta)`` in ``[pi/4, pi/2)``
    (kept inside by the reparametrisation, never clipped). Calling it returns

    ``R = lambda / n_layers * sum_layers sum_w r(w) + gamma * sum_layers |cot beta|``

    with ``r(w) = min(|(|w| - a)|^p, tan(beta) |w|^p)``. The zero well covers
    ``|w| < a / (1 + tan(beta)^(1/p))``.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` weights are
        regularised (the regulariser holds references, not copies).
    layers : sequence of str, default=None
        The layers covered (``model.named_modules()`` names); ``None``: all.
    skip : sequence of str, default=()
        Modules left out, with their children (as in ``quantize_model``).
    p : float, default=2
        The power of the wells.
    gamma : float, default=0.0
        Weight of ``|cot beta|`` (pushes layers toward binary: memory).
    lam : float, default=1.0
        ``lambda``, the strength of the wells (the trainer anneals it).
    beta_init : float, default=3*pi/8
        Initial switch of every layer, in ``(pi/4, pi/2)``.

    Attributes
    ----------
    layer_names : list of str
        The regularised layers.
    log_a : torch.nn.Parameter of shape (n_layers,)
        Log-scales, initialised from a fitted per-tensor
        :class:`~skquant.TernaryQuantizer`'s scale of each layer.
    theta : torch.nn.Parameter of shape (n_layers,)
        The switch's free parameter.

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import SQRegularizer
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(),
    ...                           torch.nn.Linear(4, 2))
    >>> reg = SQRegularizer(net, gamma=1e-3)
    >>> reg.layer_names
    ['0', '2']
    >>> penalty = reg()
    >>> penalty.backward()            # reaches the weights, a and beta
    >>> net[0].weight.grad is not None and reg.theta.grad is not None
    True
    """

    def __init__(
        self,
        model,
        *,
        layers=None,
        skip=(),
        p=2.0,
        gamma=0.0,
        lam=1.0,
        beta_init=3 * math.pi / 8,
    ):
        super().__init__()
        network, names = _covered_layers(model, layers, skip)
        self.p = _positive(p, "p")
        self.gamma = _positive(gamma, "gamma", allow_zero=True)
        self.lam = _positive(lam, "lam", allow_zero=True)
        if not (
            isinstance(beta_init, numbers.Real) and BETA_LOW < beta_init < BETA_HIGH
        ):
            raise ValueError(
                f"beta_init must be in (pi/4, pi/2), got beta_init={beta_init!r}."
            )
        self.layer_names = names
        # references to the model's modules, not submodules of the regulariser (its
        # parameters are a and theta only)
        object.__setattr__(self, "_layers", [network.module(n) for n in names])
        scales = []
        for n in names:
            W = network.weight(n)
            q = TernaryQuantizer(granularity="per_tensor").fit(W)
            scales.append(max(float(np.ravel(q.scale_)[0]), 1e-8))
        dtype = next(iter(self._layers)).weight.dtype
        device = next(iter(self._layers)).weight.device
        self.log_a = nn.Parameter(
            torch.tensor(np.log(scales), dtype=dtype, device=device)
        )
        s = (beta_init - BETA_LOW) / (BETA_HIGH - BETA_LOW)
        self.theta = nn.Parameter(
            torch.full((len(names),), math.log(s / (1 - s)), dtype=dtype, device=device)
        )

    # ----------------------------------------------------------- quantities
    def beta(self):
        """The switches, in ``[pi/4, pi/2)``."""
        return BETA_LOW + (BETA_HIGH - BETA_LOW) * torch.sigmoid(self.theta)

    def scale(self):
        """The scales ``a > 0``."""
        return torch.exp(self.log_a)

    def wells(self, w, a, beta):
        """``r(w) = min(|(|w| - a)|^p, tan(beta) |w|^p)``, elementwise."""
        aw = w.abs()
        if self.p == 2.0:
            outer, inner = (aw - a) ** 2, torch.tan(beta) * aw**2
        else:
            outer, inner = (aw - a).abs() ** self.p, torch.tan(beta) * aw**self.p
        return torch.minimum(outer, inner)

    def layer_penalties(self):
        """``sum_w r(w)`` per layer (a tensor of shape ``(n_layers,)``).

        On the CPU each layer's sum and its gradients come from one compiled pass
        over the weights (:mod:`skquant._kernels._sq`); elsewhere from
        :meth:`wells` through autograd. Both give the same values and gradients.
        """
        return self._penalties(1.0)

    def _penalties(self, scale):
        a, beta = self.scale(), self.beta()
        t = torch.tan(beta)
        return torch.stack(
            [
                _FusedWells.apply(m.weight, a[i], t[i], self.p, scale)
                if _fusable(m.weight)
                else scale * self.wells(m.weight, a[i], beta[i]).sum()
                for i, m in enumerate(self._layers)
            ]
        )

    def forward(self):
        """The penalty ``R`` (a scalar tensor)."""
        beta = self.beta()
        wells = self._penalties(self.lam / len(self._layers)).sum()
        return wells + self.gamma * (1.0 / torch.tan(beta)).abs().sum()

    def zero_well(self):
        """Half-width of each layer's zero well, ``a / (1 + tan(beta)^(1/p))``."""
        with torch.no_grad():
            return self.scale() / (1 + torch.tan(self.beta()) ** (1 / self.p))

    def zero_fraction(self):
        """Fraction of each layer's weights inside its zero well."""
        edge = self.zero_well()
        with torch.no_grad():
            return [
                float((m.weight.abs() < edge[i]).float().mean())
                for i, m in enumerate(self._layers)
            ]

    def alphabets(self, threshold=3 * math.pi / 8):
        """``"binary"`` for layers with ``beta >= threshold``, else ``"ternary"``."""
        return {n: a.kind for n, a in self._alphabets(threshold).items()}

    def _alphabets(self, threshold):
        """:data:`BINARY` or :data:`TERNARY` by layer, as :meth:`alphabets` says."""
        beta = self.beta().detach().cpu().numpy()
        return {
            n: BINARY if b >= threshold else TERNARY
            for n, b in zip(self.layer_names, beta)
        }

    def quantizers(self, threshold=3 * math.pi / 8):
        """Per-layer quantizers projecting onto ``{-a, a}`` or ``{-a, 0, a}``.

        Parameters
        ----------
        threshold : float, default=3*pi/8
            Layers with ``beta >= threshold`` are binary.

        Returns
        -------
        quantizers : dict of {str: estimator}
            The mapping for :func:`skquant.torch.quantize_model`: a
            :class:`~skquant.BinaryQuantizer` or :class:`~skquant.TernaryQuantizer`
            with the layer's trained scale ``a`` (one per tensor); ternary rounds
            to the nearest of the three values (zero for ``|w| < a/2``).
        """
        a = self.scale().detach().cpu().numpy()
        out = {}
        for (name, alphabet), scale in zip(self._alphabets(threshold).items(), a):
            cls = quantizer_class(alphabet)
            out[name] = cls(granularity="per_tensor", scale=float(scale))
        return out

    def project(self, w, i, alphabet):
        """Layer ``i``'s weights on its alphabet (for the straight-through pass).

        ``alphabet`` is ``"binary"`` or ``"ternary"``, or its
        :class:`~skquant._alphabets.Alphabet`.
        """
        return _project(w, self.scale()[i].detach(), as_alphabet(alphabet))


# --------------------------------------------------------------------- trainer
class SQResult:
    """What :func:`train_sq` and :func:`train_baseline` return.

    Parameters
    ----------
    model : torch.nn.Module
        The quantized model: ``QuantLinear``/``QuantConv2d`` layers holding 1- or
        2-bit codes and one scale each (the float model for a float baseline).
    trained : torch.nn.Module
        The trained float model (latent weights).
    regularizer : SQRegularizer or None
        The trained regulariser (``beta``, ``a``); ``None`` for a baseline.
    alphabets : dict of {str: str}
        ``"binary"``, ``"ternary"`` (or ``"float"``) by layer.
    history : list of dict
        One row per epoch (fine-tune epochs included, ``phase="finetune"``):
        ``loss``, ``penalty``, ``accuracy`` (training batches), ``val_accuracy``
        (with validation data; of the projected weights in the fine-tune),
        ``lr``, ``seconds``; for SQ also ``val_accuracy_projected`` (the
        weights projected on the alphabets of that epoch), ``lam`` and by layer
        ``beta``, ``a`` and ``zero_fraction``; for a baseline by layer ``a``.
    report : QuantizationReport or None
        Per-layer rows of the final quantization (bits, sizes); ``None`` for a
        float baseline.

    Attributes
    ----------
    size_bits : int
        Bits of the covered layers' weights: codes + scales, or 32 per weight for
        a float layer.
    n_weights : int
        Number of weights in the covered layers.
    """

    def __init__(self, model, trained, regularizer, alphabets, history, report):
        self.model = model
        self.trained = trained
        self.regularizer = regularizer
        self.alphabets = alphabets
        self.history = history
        self.report = report
        modules = dict(trained.named_modules())
        self.n_weights = int(sum(modules[n].weight.numel() for n in alphabets))
        if report is None:
            self.size_bits = 32 * self.n_weights
        else:
            self.size_bits = int(
                sum(r["size_bits"] for r in report.rows if r["name"] in alphabets)
            )

    @property
    def binary_fraction(self):
        """Fraction of the covered layers that ended binary."""
        binary = [
            alphabet_from(a, allow_float=True) is BINARY
            for a in self.alphabets.values()
        ]
        return sum(binary) / len(self.alphabets)

    @property
    def bits_per_weight(self):
        """Stored bits per weight of the covered layers, scales included."""
        return self.size_bits / self.n_weights

    def plot_beta(self, ax=None):
        """Each layer's ``beta`` over the training epochs.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, default=None
            Where to draw; a new figure when ``None``.

        Returns
        -------
        ax : matplotlib.axes.Axes
            The axes drawn on.
        """
        import matplotlib.pyplot as plt

        if self.regularizer is None:
            raise ValueError(
                "plot_beta needs a result of train_sq (a baseline has no beta)."
            )
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        rows = [h for h in self.history if h["phase"] == "train"]
        for name in self.alphabets:
            ax.plot(
                [h["epoch"] for h in rows], [h["beta"][name] for h in rows], label=name
            )
        ax.axhline(3 * math.pi / 8, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("beta (pi/4 ternary, pi/2 binary)")
        ax.legend(fontsize="small")
        return ax


def lambda_schedule(lam, epochs):
    """Per-epoch ``lambda``: a number ramps linearly from ``lam/epochs_half`` up to
    ``lam`` over the first half of the epochs, then stays; a sequence is taken as
    it is (one value per epoch, never decreasing)."""
    if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
        lam = _positive(lam, "lam", allow_zero=True)
        half = max(1, math.ceil(epochs / 2))
        return [lam * min(1.0, (e + 1) / half) for e in range(epochs)]
    values = [float(v) for v in lam]
    if len(values) != epochs:
        raise ValueError(
            f"lam must be a number or one value per epoch ({epochs}), got "
            f"{len(values)} values instead."
        )
    if any(not math.isfinite(v) or v < 0 for v in values) or any(
        b < a for a, b in zip(values, values[1:])
    ):
        raise ValueError(
            f"lam must be annealed up: non-negative and never decreasing, got "
            f"lam={values!r}."
        )
    return values


@torch.no_grad()
def _accuracy(model, data, device, weights=None):
    """Accuracy of ``model`` (some weights replaced) on ``(X, y)``."""
    X, y = data
    was = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    correct = seen = 0
    for xb, yb in batches((X, y), 1024):
        xb = xb.to(device, dtype)
        out = (
            model(xb)
            if weights is None
            else torch.func.functional_call(model, weights, (xb,))
        )
        correct += int((out.argmax(1).cpu() == yb).sum())
        seen += len(yb)
    model.train(was)
    return correct / seen


def _straight_through(names, modules, project):
    """Weights for ``functional_call``: ``project(i, w)`` forward, the gradient to
    the latent ``w`` unchanged (the straight-through estimator)."""
    return {
        f"{n}.weight": m.weight + (project(i, m.weight) - m.weight).detach()
        for i, (n, m) in enumerate(zip(names, modules))
    }


class _Loop:
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
        _, self.names = _covered_layers(model, layers, skip)
        for name, value in (
            ("epochs", epochs),
            ("finetune_epochs", finetune_epochs),
            ("batch_size", batch_size),
        ):
            if not isinstance(value, numbers.Integral) or value < (
                name != "finetune_epochs"
            ):
                raise ValueError(
                    f"{name} must be a positive integer, got {name}={value!r}."
                )
        self.lr = _positive(lr, "lr")
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
        self.finetune_lr = (
            self.lr if finetune_lr is None else _positive(finetune_lr, "finetune_lr")
        )
        self.model, self.data, self.batch_size = model, data, batch_size
        self.loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        self.validation_data = validation_data
        self.device = torch.device(device)
        torch.manual_seed(random_state)
        self.generator = torch.Generator().manual_seed(random_state)
        model.to(self.device)
        self.dtype = next(model.parameters()).dtype
        self.history = []
        self.keep = [model]  # modules whose state the NaN stop restores

    def snapshot(self):
        self.last_good = [copy.deepcopy(m.state_dict()) for m in self.keep]

    def gradients(self, where):
        """The context of the training: grad mode on, the covered layers' weights
        and biases trainable whatever their flags; on leaving it (also by an
        exception), the flags, ``.grad`` and modes are the user's again."""
        modules = dict(self.model.named_modules())
        return gradients_enabled(
            self.model,
            where,
            [p for n in self.names for p in modules[n].parameters(recurse=False)],
        )

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
        for xb, yb in batches(self.data, self.batch_size, generator=self.generator):
            xb, yb = xb.to(device, self.dtype), yb.to(device)
            opt.zero_grad()
            out = (
                model(xb)
                if weights is None
                else torch.func.functional_call(model, weights(), (xb,))
            )
            if out.ndim != 2 or yb.max() >= out.shape[1] or yb.min() < 0:
                raise ValueError(
                    f"labels must be class indices below the model's {out.shape[-1]} "
                    f"outputs, got labels from {int(yb.min())} to {int(yb.max())}."
                )
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
                raise ValueError(
                    f"the loss became {float(objective.detach())} in epoch {epoch} "
                    f"({phase}); training stopped and the model keeps the weights "
                    "of the last good epoch. Lower lr or lam."
                )
            objective.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
            penalty_total += float(pen.detach()) * len(xb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(xb)
        row = {
            "epoch": epoch,
            "phase": phase,
            "loss": total / seen,
            "penalty": penalty_total / seen,
            "accuracy": correct / seen,
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }
        if self.validation_data is not None:
            row["val_accuracy"] = _accuracy(
                model,
                self.validation_data,
                device,
                None if weights is None else weights(),
            )
        self.history.append(row)
        self.snapshot()
        return row


def train_sq(
    model,
    data,
    *,
    loss_fn=None,
    gamma=1e-3,
    lam=1e-3,
    p=2.0,
    epochs=10,
    finetune_epochs=2,
    lr=1e-3,
    lr_schedule="cosine",
    finetune_lr=None,
    batch_size=128,
    beta_threshold=3 * math.pi / 8,
    beta_init=3 * math.pi / 8,
    freeze_beta=False,
    layers=None,
    skip=(),
    validation_data=None,
    device="cpu",
    random_state=0,
    verbose=True,
):
    """Train a model once with the Smart Quantization penalty; return it quantized.

    Adam over the model's parameters and the regulariser's ``a`` and ``beta``
    minimises ``loss + R`` with ``lambda`` annealed up (see
    :func:`lambda_schedule`). Then each layer becomes binary when its ``beta``
    reaches ``beta_threshold`` (ternary otherwise), ``finetune_epochs`` epochs of
    straight-through training (forward on the projected weights, gradients to the
    latent ones; ``a`` and the alphabets fixed) recover accuracy, and the layers
    are projected for good through :func:`skquant.torch.quantize_model`.

    The model is trained in place (as a torch training loop does; pass a copy to
    keep the original) and left in eval mode. If the loss becomes NaN or
    infinite, training stops with a ``ValueError`` naming the epoch and the model
    keeps the weights of the last good epoch.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier (outputs: logits).
    data : tuple of (X, y) or iterable of (x, y) batches
        Training data: tensors or arrays (shuffled every epoch with the seed), or
        a ``DataLoader``.
    loss_fn : callable, default=None
        ``nn.CrossEntropyLoss()`` when ``None``.
    gamma : float, default=1e-3
        The memory knob: weight of ``sum |cot beta|`` (larger: more binary
        layers).
    lam : float or sequence, default=1e-3
        Final ``lambda`` (ramped up linearly over the first half of the epochs),
        or one value per epoch, never decreasing.
    p : float, default=2
        Power of the wells.
    epochs : int, default=10
        Epochs with the penalty.
    finetune_epochs : int, default=2
        Straight-through epochs after the projection (0: none).
    lr : float, default=1e-3
        Adam's learning rate.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"`` decays the learning rate per epoch from ``lr`` to
        ``lr / 100`` over the training epochs, and again from ``finetune_lr``
        over the fine-tune epochs.
    finetune_lr : float, default=None
        Learning rate of the fine-tune (``None``: ``lr``).
    batch_size : int, default=128
        Batch size for tensors or arrays.
    beta_threshold : float, default=3*pi/8
        Layers with ``beta >= beta_threshold`` become binary.
    beta_init : float, default=3*pi/8
        Initial ``beta`` of every layer.
    freeze_beta : bool, default=False
        Keep ``beta`` at ``beta_init`` (the ablations: near ``pi/4`` all ternary,
        near ``pi/2`` all binary).
    layers : sequence of str, default=None
        The layers regularised and quantized (``None``: all; see
        :class:`SQRegularizer`).
    skip : sequence of str, default=()
        Modules left out, with their children.
    validation_data : tuple of (X, y), default=None
        Accuracy on it is recorded per epoch.
    device : str or torch.device, default="cpu"
        Where to train (``"cuda"`` for a GPU).
    random_state : int, default=0
        Seed of the shuffling (and of torch's generator).
    verbose : bool, default=True
        Progress bar over the epochs.

    Returns
    -------
    result : SQResult
        The quantized model, the trained one, the regulariser, the alphabets and
        the history.

    See Also
    --------
    train_baseline : The same loop without the penalty: float, all-binary or
        all-ternary training.

    Notes
    -----
    A frozen model (``requires_grad=False``, as loaded for inference) is trained
    too, also under ``torch.no_grad()``: the weights and biases of the layers it
    quantizes are trained whatever their ``requires_grad`` flags, the other
    parameters (BatchNorm, skipped layers) only where their flags allow. The
    flags and the ``.grad`` are restored after training, also when it stops with
    an error. Inside ``torch.inference_mode()`` it raises a ``RuntimeError``:
    call it outside.

    Examples
    --------
    >>> import torch
    >>> from sklearn.datasets import load_digits
    >>> from skquant.torch import train_sq
    >>> X, y = load_digits(return_X_y=True)
    >>> X, y = torch.tensor(X / 16, dtype=torch.float32), torch.tensor(y)
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
    ...                           torch.nn.Linear(32, 10))
    >>> res = train_sq(net, (X, y), epochs=4, lr=1e-2, verbose=False)
    >>> set(res.alphabets.values()) <= {"binary", "ternary"}
    True
    >>> type(res.model[0]).__name__, res.size_bits < 32 * (64 * 32 + 32 * 10) / 10
    ('QuantLinear', True)
    """
    from ._model import quantize_model

    loop = _Loop(
        model,
        data,
        loss_fn=loss_fn,
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        lr=lr,
        lr_schedule=lr_schedule,
        finetune_lr=finetune_lr,
        batch_size=batch_size,
        validation_data=validation_data,
        device=device,
        random_state=random_state,
        layers=layers,
        skip=skip,
    )
    schedule = lambda_schedule(lam, epochs)
    reg = SQRegularizer(
        model,
        layers=layers,
        skip=skip,
        p=p,
        gamma=gamma,
        lam=schedule[0],
        beta_init=beta_init,
    ).to(loop.device)
    if freeze_beta:
        reg.theta.requires_grad_(False)
    with loop.gradients("skquant.torch.train_sq"):
        loop.keep.append(reg)
        loop.snapshot()
        params = list(model.parameters()) + [
            q for q in reg.parameters() if q.requires_grad
        ]
        opt = torch.optim.Adam(params, lr=loop.lr)
        names = reg.layer_names

        bar = progress(
            range(epochs + finetune_epochs), desc="train_sq", enabled=verbose
        )
        alphabets = weights = None
        for epoch in bar:
            if epoch < epochs:
                reg.lam = schedule[epoch]
                row = loop.epoch(epoch + 1, "train", opt, penalty=reg)
                if validation_data is not None:
                    row["val_accuracy_projected"] = _accuracy(
                        model,
                        validation_data,
                        loop.device,
                        _straight_through(
                            names,
                            reg._layers,
                            lambda i, w, now=reg._alphabets(beta_threshold): (
                                reg.project(w, i, now[names[i]])
                            ),
                        ),
                    )
            else:
                if alphabets is None:
                    alphabets = reg._alphabets(beta_threshold)
                    opt = torch.optim.Adam(model.parameters(), lr=loop.finetune_lr)

                    def weights():
                        return _straight_through(
                            names,
                            reg._layers,
                            lambda i, w: reg.project(w, i, alphabets[names[i]]),
                        )

                row = loop.epoch(epoch + 1, "finetune", opt, weights=weights)
            row.update(
                lam=reg.lam,
                beta=dict(zip(names, reg.beta().tolist())),
                a=dict(zip(names, reg.scale().tolist())),
                zero_fraction=dict(zip(names, reg.zero_fraction())),
            )
            bar.set_postfix(f"loss {row['loss']:.3f} acc {row['accuracy']:.3f}")
    if alphabets is None:
        alphabets = reg._alphabets(beta_threshold)
    alphabets = {n: a.kind for n, a in alphabets.items()}
    model.eval()
    qmodel, report = quantize_model(
        model, reg.quantizers(beta_threshold), skip=skip, return_report=True
    )
    return SQResult(qmodel, model, reg, alphabets, loop.history, report)


def _baseline_scale(w, alphabet):
    """The per-tensor level of a baseline: ``mean|w|`` for binary (XNOR-Net's
    rule), ternary weight networks' ``mean{|w| : |w| > 0.7 mean|w|}``."""
    A = w.detach().abs()
    if alphabet.is_binary:
        return A.mean()
    kept = A[A > 0.7 * A.mean()]
    return kept.mean() if kept.numel() else A.mean()


def train_baseline(
    model,
    data,
    *,
    alphabet="ternary",
    loss_fn=None,
    epochs=12,
    lr=1e-3,
    lr_schedule="cosine",
    batch_size=128,
    layers=None,
    skip=(),
    validation_data=None,
    device="cpu",
    random_state=0,
    verbose=True,
):
    """Train a model the way :func:`train_sq` does, without the penalty: the
    baselines that Smart Quantization is measured against.

    * ``alphabet="float"``: plain training (Adam, the same batches and seed).
    * ``alphabet="binary"``: BinaryConnect-style training with a per-layer scale:
      every step the forward pass uses ``a * sign(w)`` with ``a = mean|w|`` of
      the layer's latent weights (XNOR-Net's level), and the gradient goes to the
      latent weights unchanged (straight-through estimator).
    * ``alphabet="ternary"``: TWN-style training: ``a`` is the mean of the
      ``|w| > 0.7 mean|w|`` (ternary weight networks' level) and each weight is
      rounded to the nearest of ``{-a, 0, a}``, with the same estimator.

    At the end the layers are projected for good with the same rule through
    :func:`skquant.torch.quantize_model` (per-tensor
    :class:`~skquant.BinaryQuantizer` ``scale="mean"`` or
    :class:`~skquant.TernaryQuantizer` ``scale="twn"``). The arguments, the NaN
    stop, the history and the handling of frozen models (its Notes) are those of
    :func:`train_sq`.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier (outputs: logits), trained in place.
    data : tuple of (X, y) or iterable of (x, y) batches
        Training data.
    alphabet : {"float", "binary", "ternary"}, default="ternary"
        The baseline.
    loss_fn : callable, default=None
        ``nn.CrossEntropyLoss()`` when ``None``.
    epochs : int, default=12
        Training epochs (give ``train_sq``'s ``epochs + finetune_epochs`` for
        the same budget).
    lr : float, default=1e-3
        Adam's learning rate.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        As in :func:`train_sq`: cosine decay from ``lr`` to ``lr / 100``.
    batch_size : int, default=128
        Batch size for tensors or arrays.
    layers : sequence of str, default=None
        The layers quantized (``None``: all weight layers).
    skip : sequence of str, default=()
        Modules left out, with their children.
    validation_data : tuple of (X, y), default=None
        Accuracy on it (of the projected weights) is recorded per epoch.
    device : str or torch.device, default="cpu"
        Where to train.
    random_state : int, default=0
        Seed of the shuffling (and of torch's generator).
    verbose : bool, default=True
        Progress bar over the epochs.

    Returns
    -------
    result : SQResult
        ``regularizer`` is ``None``; ``history`` rows hold each layer's level
        ``a`` (binary and ternary); for ``"float"``, ``model`` is the trained
        model and ``size_bits`` counts 32 bits per weight.

    Examples
    --------
    >>> import torch
    >>> from sklearn.datasets import load_digits
    >>> from skquant.torch import train_baseline
    >>> X, y = load_digits(return_X_y=True)
    >>> X, y = torch.tensor(X / 16, dtype=torch.float32), torch.tensor(y)
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
    ...                           torch.nn.Linear(32, 10))
    >>> res = train_baseline(net, (X, y), alphabet="binary", epochs=4, lr=1e-2,
    ...                      verbose=False)
    >>> res.alphabets
    {'0': 'binary', '2': 'binary'}
    >>> res.bits_per_weight < 1.03  # one bit per weight plus one scale per layer
    True
    """
    from ._model import quantize_model

    record = alphabet_from(alphabet, allow_float=True)  # None: float
    loop = _Loop(
        model,
        data,
        loss_fn=loss_fn,
        epochs=epochs,
        finetune_epochs=0,
        lr=lr,
        lr_schedule=lr_schedule,
        batch_size=batch_size,
        validation_data=validation_data,
        device=device,
        random_state=random_state,
        layers=layers,
        skip=skip,
    )
    names = loop.names
    modules = [dict(model.named_modules())[n] for n in names]
    loop.snapshot()
    opt = torch.optim.Adam(model.parameters(), lr=loop.lr)
    weights = None
    if record is not None:

        def weights():
            return _straight_through(
                names,
                modules,
                lambda i, w: _project(w, _baseline_scale(w, record), record),
            )

    with loop.gradients("skquant.torch.train_baseline"):
        bar = progress(range(epochs), desc=f"train {alphabet}", enabled=verbose)
        for epoch in bar:
            row = loop.epoch(epoch + 1, "train", opt, weights=weights)
            if record is not None:
                row["a"] = {
                    n: float(_baseline_scale(m.weight, record))
                    for n, m in zip(names, modules)
                }
            bar.set_postfix(f"loss {row['loss']:.3f} acc {row['accuracy']:.3f}")
    model.eval()
    alphabets = dict.fromkeys(names, alphabet)
    if record is None:
        return SQResult(model, model, None, alphabets, loop.history, None)
    cls, rule = quantizer_class(record), record.level_rule
    qmodel, report = quantize_model(
        model,
        {n: cls(granularity="per_tensor", scale=rule) for n in names},
        skip=skip,
        return_report=True,
    )
    return SQResult(qmodel, model, None, alphabets, loop.history, report)
