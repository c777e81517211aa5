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

from .._progress import progress
from .._uniform import BinaryQuantizer, TernaryQuantizer
from ._network import TorchNetwork

__all__ = ["SQRegularizer", "SQResult", "train_sq"]

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
        network = TorchNetwork(model, skip=skip)
        names = list(network.layer_names)
        if layers is not None:
            layers = [layers] if isinstance(layers, str) else list(layers)
            network.check_layer_names(layers, "layers")
            names = [n for n in names if n in layers]
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
        """``sum_w r(w)`` per layer (a tensor of shape ``(n_layers,)``)."""
        a, beta = self.scale(), self.beta()
        return torch.stack(
            [
                self.wells(m.weight, a[i], beta[i]).sum()
                for i, m in enumerate(self._layers)
            ]
        )

    def forward(self):
        """The penalty ``R`` (a scalar tensor)."""
        beta = self.beta()
        wells = self.layer_penalties().sum() * (self.lam / len(self._layers))
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
        beta = self.beta().detach().cpu().numpy()
        return {
            n: "binary" if b >= threshold else "ternary"
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
        for (name, alphabet), scale in zip(self.alphabets(threshold).items(), a):
            cls = BinaryQuantizer if alphabet == "binary" else TernaryQuantizer
            out[name] = cls(granularity="per_tensor", scale=float(scale))
        return out

    def project(self, w, i, alphabet):
        """Layer ``i``'s weights on its alphabet (for the straight-through pass)."""
        a = self.scale()[i].detach()
        if alphabet == "binary":
            return a * torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
        return a * torch.where(w.abs() >= a / 2, torch.sign(w), 0.0).to(w.dtype)


# --------------------------------------------------------------------- trainer
class SQResult:
    """What :func:`train_sq` returns.

    Parameters
    ----------
    model : torch.nn.Module
        The quantized model: ``QuantLinear``/``QuantConv2d`` layers holding 1- or
        2-bit codes and one scale each.
    trained : torch.nn.Module
        The trained float model (latent weights).
    regularizer : SQRegularizer
        The trained regulariser (``beta``, ``a``).
    alphabets : dict of {str: str}
        ``"binary"`` or ``"ternary"`` by layer.
    history : list of dict
        One row per epoch (fine-tune epochs included, ``phase="finetune"``):
        ``loss``, ``penalty``, ``accuracy`` (training batches), ``val_accuracy``
        (with validation data), ``lam``, and by layer ``beta``, ``a`` and
        ``zero_fraction``.
    report : QuantizationReport
        Per-layer rows of the final quantization (bits, sizes).

    Attributes
    ----------
    size_bits : int
        Bits of the quantized layers (codes + scales).
    """

    def __init__(self, model, trained, regularizer, alphabets, history, report):
        self.model = model
        self.trained = trained
        self.regularizer = regularizer
        self.alphabets = alphabets
        self.history = history
        self.report = report
        self.size_bits = int(
            sum(r["size_bits"] for r in report.rows if r["method"] != "float")
        )

    @property
    def binary_fraction(self):
        """Fraction of the regularised layers that ended binary."""
        return sum(a == "binary" for a in self.alphabets.values()) / len(self.alphabets)

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


def _batches(data, batch_size, generator, device):
    if isinstance(data, tuple) and len(data) == 2:
        X, y = data
        X = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
        y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
        if len(X) != len(y):
            raise ValueError(
                f"X and y must have the same length, got {len(X)} and {len(y)}."
            )
        if len(X) == 0:
            raise ValueError("data holds no sample.")
        order = torch.randperm(len(X), generator=generator)
        for i in range(0, len(X), batch_size):
            idx = order[i : i + batch_size]
            yield X[idx].to(device), y[idx].to(device)
    else:
        for xb, yb in data:
            yield xb.to(device), yb.to(device)


@torch.no_grad()
def _accuracy(model, data, device, weights=None):
    """Accuracy of ``model`` (some weights replaced) on ``(X, y)``."""
    X, y = data
    X = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    was = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    correct = 0
    for i in range(0, len(X), 1024):
        xb = X[i : i + 1024].to(device, dtype)
        out = (
            model(xb)
            if weights is None
            else torch.func.functional_call(model, weights, (xb,))
        )
        correct += int((out.argmax(1).cpu() == y[i : i + 1024]).sum())
    model.train(was)
    return correct / len(X)


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
    keep the original). If the loss becomes NaN or infinite, training stops with
    a ``ValueError`` naming the epoch and the model keeps the weights of the last
    good epoch.

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

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__} instead."
        )
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
    lr = _positive(lr, "lr")
    schedule = lambda_schedule(lam, epochs)
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    device = torch.device(device)
    torch.manual_seed(random_state)
    generator = torch.Generator().manual_seed(random_state)
    model.to(device)
    reg = SQRegularizer(
        model,
        layers=layers,
        skip=skip,
        p=p,
        gamma=gamma,
        lam=schedule[0],
        beta_init=beta_init,
    ).to(device)
    if freeze_beta:
        reg.theta.requires_grad_(False)
    params = list(model.parameters()) + [q for q in reg.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    history = []
    last_good = (copy.deepcopy(model.state_dict()), copy.deepcopy(reg.state_dict()))
    names = reg.layer_names
    dtype = next(model.parameters()).dtype

    def projected_weights(alphabets):
        """Projected weights whose gradient flows to the latent ones (STE)."""
        return {
            f"{n}.weight": m.weight
            + (reg.project(m.weight, i, alphabets[n]) - m.weight).detach()
            for i, (n, m) in enumerate(zip(names, reg._layers))
        }

    def run_epoch(epoch, phase, alphabets=None):
        model.train()
        total = penalty_total = 0.0
        correct = seen = 0
        start = time.perf_counter()
        for xb, yb in _batches(data, batch_size, generator, device):
            xb = xb.to(dtype)
            opt.zero_grad()
            if phase == "train":
                out = model(xb)
                penalty = reg()
            else:  # straight-through: forward on the projected weights
                out = torch.func.functional_call(
                    model, projected_weights(alphabets), (xb,)
                )
                penalty = torch.zeros((), dtype=dtype, device=device)
            if out.ndim != 2 or yb.max() >= out.shape[1] or yb.min() < 0:
                raise ValueError(
                    f"labels must be class indices below the model's {out.shape[-1]} "
                    f"outputs, got labels from {int(yb.min())} to {int(yb.max())}."
                )
            loss = loss_fn(out, yb)
            objective = loss + penalty
            if not torch.isfinite(objective):
                model.load_state_dict(last_good[0])
                reg.load_state_dict(last_good[1])
                raise ValueError(
                    f"the loss became {float(objective.detach())} in epoch {epoch} "
                    f"({phase}); training stopped and the model keeps the weights "
                    "of the last good epoch. Lower lr or lam."
                )
            objective.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
            penalty_total += float(penalty.detach()) * len(xb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(xb)
        row = {
            "epoch": epoch,
            "phase": phase,
            "loss": total / seen,
            "penalty": penalty_total / seen,
            "accuracy": correct / seen,
            "lam": reg.lam,
            "beta": dict(zip(names, reg.beta().tolist())),
            "a": dict(zip(names, reg.scale().tolist())),
            "zero_fraction": dict(zip(names, reg.zero_fraction())),
            "seconds": time.perf_counter() - start,
        }
        if validation_data is not None:
            row["val_accuracy"] = _accuracy(
                model,
                validation_data,
                device,
                None if alphabets is None else projected_weights(alphabets),
            )
        history.append(row)
        return row

    bar = progress(range(epochs + finetune_epochs), desc="train_sq", enabled=verbose)
    alphabets = None
    for epoch in bar:
        if epoch < epochs:
            reg.lam = schedule[epoch]
            row = run_epoch(epoch + 1, "train")
        else:
            if alphabets is None:
                alphabets = reg.alphabets(beta_threshold)
                opt = torch.optim.Adam(model.parameters(), lr=lr)
            row = run_epoch(epoch + 1, "finetune", alphabets)
        last_good = (copy.deepcopy(model.state_dict()), copy.deepcopy(reg.state_dict()))
        bar.set_postfix(f"loss {row['loss']:.3f} acc {row['accuracy']:.3f}")
    if alphabets is None:
        alphabets = reg.alphabets(beta_threshold)
    model.eval()
    qmodel, report = quantize_model(
        model, reg.quantizers(beta_threshold), skip=skip, return_report=True
    )
    return SQResult(qmodel, model, reg, alphabets, history, report)
