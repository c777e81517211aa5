"""train_sq: one training with the Smart Quantization penalty, then the projection."""

import math
import numbers

import torch

from ..._common._checks import check_bool, check_positive
from ..._common._progress import progress
from .._model import quantize_model
from ._loop import Loop, accuracy, straight_through
from ._regularizer import BETA_HIGH, BETA_LOW, SQRegularizer
from ._result import SQResult


def lambda_schedule(lam, epochs):
    """Per-epoch ``lambda``: a number ramps linearly from ``lam/epochs_half`` up to
    ``lam`` over the first half of the epochs, then stays; a sequence is taken as
    it is (one value per epoch, never decreasing)."""
    if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
        lam = check_positive(lam, "lam", zero=True)
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
    data : tuple of (X, y), Dataset or iterable of (x, y) batches
        Training data: tensors or arrays (shuffled every epoch with the seed), a
        torch ``Dataset``, or batches read once an epoch (a ``DataLoader``; a
        generator, used up after one epoch, is refused in the second).
    loss_fn : callable, default=None
        ``nn.CrossEntropyLoss()`` when ``None``: the model gives ``(batch,
        classes)`` logits and the labels are class indices (any integer dtype)
        or rows of class probabilities (one-hot, soft labels), checked against
        the outputs. A loss of the caller's takes the model's output and the
        labels as they are; the history's accuracy is NaN where they give no
        class (a regression, a tuple output).
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
    skip : sequence of str or module classes, default=()
        Modules left out, with their children, by name or by class.
    validation_data : tuple of (X, y), default=None
        Accuracy on it is recorded per epoch.
    device : str or torch.device, default="cpu"
        Where to train (``"cuda"`` for a GPU).
    random_state : int or None, default=0
        Seed of the shuffling and of torch's generators during the training (in
        a fork of them: what the caller draws afterwards is unchanged); ``None``
        seeds nothing.
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
    if not (
        isinstance(beta_threshold, numbers.Real)
        and BETA_LOW <= beta_threshold <= BETA_HIGH
    ):
        raise ValueError(
            "beta_threshold must be a number in [pi/4, pi/2] (the range of beta), "
            f"got beta_threshold={beta_threshold!r} instead."
        )
    loop = Loop(
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
    check_bool(freeze_beta, "freeze_beta")  # ("no" froze beta)
    check_bool(verbose, "verbose")
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
                    row["val_accuracy_projected"] = accuracy(
                        model,
                        validation_data,
                        loop.device,
                        straight_through(
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
                        return straight_through(
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
    levels = reg.scale().detach()
    collapsed = [
        n for n, a in zip(names, levels.tolist()) if not math.isfinite(a) or a <= 0
    ]
    if collapsed:  # the projection has no grid: say so, not the quantizer's scale
        raise ValueError(
            f"train_sq: the learned level of layers {collapsed} collapsed to "
            f"{levels[names.index(collapsed[0])].item()!r} during training (lr={lr!r} "
            "is too large for this model): lower lr."
        )
    if alphabets is None:
        alphabets = reg._alphabets(beta_threshold)
    alphabets = {n: a.kind for n, a in alphabets.items()}
    model.eval()
    qmodel, report = quantize_model(
        model, reg.quantizers(beta_threshold), skip=skip, return_report=True
    )
    return SQResult(qmodel, model, reg, alphabets, loop.history, report)
