"""train_baseline: float, BinaryConnect-style and TWN-style training, no penalty."""

import torch

from ..._common._checks import check_bool
from ..._common._progress import progress
from ..._quantizers._uniform import level_quantizer
from ..._tensor._alphabets import alphabet_from
from .._model import quantize_model
from ._alphabet import baseline_level, project_onto
from ._loop import Loop, straight_through
from ._result import SQResult


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
    data : tuple of (X, y), Dataset or iterable of (x, y) batches
        Training data, as in :func:`train_sq`.
    alphabet : {"float", "binary", "ternary"}, default="ternary"
        The baseline.
    loss_fn : callable, default=None
        ``nn.CrossEntropyLoss()`` when ``None``; the labels and a loss of the
        caller's are read as in :func:`train_sq`.
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
    skip : sequence of str or module classes, default=()
        Modules left out, with their children, by name or by class.
    validation_data : tuple of (X, y), default=None
        Accuracy on it (of the projected weights) is recorded per epoch.
    device : str or torch.device, default="cpu"
        Where to train.
    random_state : int or None, default=0
        Seed of the shuffling and of torch's generators during the training (in
        a fork of them: what the caller draws afterwards is unchanged); ``None``
        seeds nothing.
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
    record = alphabet_from(alphabet, allow_float=True)  # None: float
    check_bool(verbose, "verbose")
    loop = Loop(
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
            return straight_through(
                names,
                modules,
                lambda i, w: project_onto(w, baseline_level(w, record), record),
            )

    with loop.gradients("skquant.torch.train_baseline"):
        bar = progress(range(epochs), desc=f"train {alphabet}", enabled=verbose)
        for epoch in bar:
            row = loop.epoch(epoch + 1, "train", opt, weights=weights)
            if record is not None:
                row["a"] = {
                    n: float(baseline_level(m.weight, record))
                    for n, m in zip(names, modules)
                }
            bar.set_postfix(f"loss {row['loss']:.3f} acc {row['accuracy']:.3f}")
    model.eval()
    alphabets = dict.fromkeys(names, alphabet)
    if record is None:
        return SQResult(model, model, None, alphabets, loop.history, None)
    cls, rule = level_quantizer(record), record.level_rule
    qmodel, report = quantize_model(
        model,
        {n: cls(granularity="per_tensor", scale=rule) for n in names},
        skip=skip,
        return_report=True,
    )
    return SQResult(qmodel, model, None, alphabets, loop.history, report)
