"""Loss gradients of torch models and the adaptive-precision driver on them.

Also the one place that makes gradients possible on a user's model:
:func:`gradients_enabled` (grad mode on, chosen parameters made to require
grad, the model restored after by :func:`kept_state`) and
:func:`check_autograd` (the clear error under ``torch.inference_mode()``).
"""

import contextlib

import numpy as np
import torch

from ._layout import to_numpy
from ._state import kept_state


def check_autograd(model, where):
    """Raise a clear error when autograd cannot run on ``model`` here.

    ``torch.enable_grad()`` cannot undo ``torch.inference_mode()``, and inference
    tensors (parameters of a model built or loaded inside it) never take part in
    autograd.

    Parameters
    ----------
    model : torch.nn.Module
        The user's model.
    where : str
        The entry point named in the message.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{where} needs gradients, which torch.inference_mode() disables "
            "(torch.enable_grad() cannot turn them back on): call it outside "
            "torch.inference_mode(); under torch.no_grad() it works, as it turns "
            "gradients on where it needs them."
        )
    if any(p.is_inference() for p in model.parameters()):
        raise RuntimeError(
            f"{where} needs gradients, but the model's parameters are inference "
            "tensors (the model was built or loaded inside torch.inference_mode()), "
            "which cannot take part in autograd: build or load the model outside "
            "torch.inference_mode() (under torch.no_grad() is fine), or pass "
            "copy.deepcopy(model), whose parameters are normal tensors."
        )


@contextlib.contextmanager
def gradients_enabled(model, where, params=None):
    """Make ``params`` take gradients for a block, the model restored after.

    Whatever their ``requires_grad`` flags and the caller's grad mode: inside the
    block grad mode is on (``torch.enable_grad()``) and every tensor of
    ``params`` requires grad; on leaving it the model is as it was
    (:func:`kept_state`).

    Parameters
    ----------
    model : torch.nn.Module
        The user's model.
    where : str
        The entry point, named by the error of :func:`check_autograd`.
    params : iterable of torch.nn.Parameter, default=None
        The parameters that need gradients; ``None``: all of ``model``'s.

    Yields
    ------
    model : torch.nn.Module
        The same model.
    """
    check_autograd(model, where)
    with kept_state(model), torch.enable_grad():
        for p in model.parameters() if params is None else params:
            p.requires_grad_(True)
        yield model


def autograd_tensor(t):
    """``t``, or a normal copy of it when it is an inference tensor."""
    return t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t


def labelled_batches(data, batch_size):
    """``(x, y)`` batches of a pair of tensors, or the batches of an iterable.

    Inference tensors (data made inside ``torch.inference_mode()``) are copied
    into normal ones, which autograd accepts.
    """
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        X, y = data
        batches = (
            (X[i : i + batch_size], y[i : i + batch_size])
            for i in range(0, len(X), batch_size)
        )
    else:
        batches = iter(data)
    return ((autograd_tensor(x), autograd_tensor(y)) for x, y in batches)


def loss_gradients(model, loss_fn, data, *, batch_size=256):
    """Mean loss of ``model`` over ``data`` and its gradient for every parameter.

    Parameters
    ----------
    model : torch.nn.Module
        The model, left as it was (``requires_grad`` flags, ``.grad``,
        ``training`` modes).
    loss_fn : callable
        ``loss_fn(output, target) -> scalar tensor``, a mean over the batch (as
        ``torch.nn.CrossEntropyLoss()``).
    data : tuple of (X, y) tensors, or iterable of (x, y) batches
        The data.
    batch_size : int, default=256
        Batch size when ``data`` is a pair of tensors.

    Returns
    -------
    loss : float
        The mean loss over all samples.
    grads : dict of {str: ndarray}
        Gradient of that mean loss for every named parameter.

    Notes
    -----
    The gradients are taken in eval mode with respect to every parameter,
    whatever its ``requires_grad`` flag, also under ``torch.no_grad()``: a frozen
    model loaded for inference works. Under ``torch.inference_mode()`` it raises
    a ``RuntimeError``: call it outside.

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import loss_gradients
    >>> net = torch.nn.Linear(3, 2)
    >>> X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    >>> loss, grads = loss_gradients(net, torch.nn.CrossEntropyLoss(), (X, y))
    >>> sorted(grads), grads["weight"].shape
    (['bias', 'weight'], (2, 3))
    """
    batches = labelled_batches(data, batch_size)
    device = next(model.parameters()).device
    total, n = 0.0, 0
    with gradients_enabled(model, "skquant.torch.loss_gradients"):
        model.eval()
        model.zero_grad(set_to_none=True)
        for xb, yb in batches:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model(xb), yb)
            (loss * len(xb)).backward()
            total += float(loss.detach()) * len(xb)
            n += len(xb)
        if n == 0:
            raise ValueError("data holds no batch: nothing to compute the loss on.")
        grads = {
            name: to_numpy(p.grad) / n
            if p.grad is not None
            else np.zeros(tuple(p.shape), dtype=np.float32)
            for name, p in model.named_parameters()
        }
    return total / n, grads


def adaptive_quantize_model(
    model,
    loss_fn,
    data,
    *,
    loss_bound=0.1,
    relative=True,
    trust_region=0.05,
    max_iter=10,
    max_bits=24,
    group_size=None,
    group_margin="smallest",
    map_coder="auto",
    payload_coder="range",
    retrain=None,
    retrain_steps=50,
    retrain_lr=1e-3,
    retrain_batch_size=None,
    retrain_data=None,
    random_state=None,
    evaluate=None,
    batch_size=256,
    verbose=False,
    n_jobs=None,
):
    """Khoram & Li's iterative adaptive precision on a torch model.

    Every parameter gets its own fixed-point precision while the loss on ``data``
    stays within the bound; gradients come from :func:`loss_gradients`, the
    allocation from skquant's numba core.

    Parameters
    ----------
    model : torch.nn.Module
        The float model (left unchanged; it may be frozen, see Notes).
    loss_fn : callable
        ``loss_fn(output, target)``, a mean over the batch.
    data : tuple of (X, y) tensors, or iterable of (x, y) batches
        Data for the loss and its gradient.
    loss_bound : float, default=0.1
        Allowed loss, relative to the float loss (10% above) or absolute.
    relative : bool, default=True
        How to read ``loss_bound``.
    trust_region : float, default=0.05
        Largest margin, as a fraction of each tensor's power-of-two range.
    max_iter : int, default=10
        Largest number of steps.
    max_bits : int, default=24
        Largest number of fractional bits.
    group_size : None, "channel" or int, default=None
        One precision per parameter, per output channel (``"channel"``) or per
        ``group_size`` consecutive weights of a channel.
    group_margin : {"smallest", "pooled"}, default="smallest"
        With groups: the smallest member margin, or one margin per group from
        the budget solved over groups (see
        ``skquant._precision._allocate.allocate_precision``).
    map_coder : str, default="auto"
        Coder of the stored precision maps.
    payload_coder : str, default="range"
        Coder of the stored payloads.
    retrain : {None, "ste", "pruned"}, default=None
        Fine-tune between steps: ``"ste"`` on the current fixed-point grids
        (straight-through), ``"pruned"`` in float with pruned weights at zero.
    retrain_steps : int, default=50
        Full-batch Adam steps of each fine-tune (one pass over ``data`` each).
    retrain_lr : float, default=1e-3
        Adam's learning rate, relative to each tensor's range.
    retrain_batch_size : int, default=None
        Rows per fine-tune step, shuffled minibatches of a pair ``(X, y)`` (a list
        of batches is cycled through); ``None``: all of ``data`` every step.
    retrain_data : tuple of (X, y) tensors, or iterable of batches, default=None
        Data of the fine-tune (the training set, say); ``None``: ``data``.
    random_state : int, default=None
        Seed of the minibatches' order.
    evaluate : callable, default=None
        ``evaluate(model) -> accuracy``, recorded in the history.
    batch_size : int, default=256
        Batch size when ``data`` is a pair of tensors.
    verbose : bool, default=False
        Progress bar with the loss and the size.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    result : AdaptiveQuantizationResult
        ``result.model`` is the quantized copy.

    Notes
    -----
    The gradients are taken with respect to every parameter whatever its
    ``requires_grad`` flag, also under ``torch.no_grad()``, so a frozen model
    loaded for inference works; its flags, ``.grad`` and modes are left as they
    were. Under ``torch.inference_mode()`` it raises a ``RuntimeError``: call it
    outside.

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import adaptive_quantize_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 3))
    >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> res = adaptive_quantize_model(net, torch.nn.CrossEntropyLoss(), (X, y),
    ...                               loss_bound=0.2)
    >>> res.history[-1]["loss"] <= 1.2 * res.history[0]["loss"]
    True
    """
    from .._network._adaptive import adaptive_quantize_network
    from ._network import TorchNetwork

    data = data if isinstance(data, tuple) else list(data)
    network = TorchNetwork(model, loss_fn=loss_fn, batch_size=batch_size)
    # the gradients are taken on copies (loss_gradients on the network's scratch
    # model): nothing of the user's model needs grad, but the checks and the
    # restored state hold for the whole run
    with gradients_enabled(model, "skquant.torch.adaptive_quantize_model", ()):
        return adaptive_quantize_network(
            network,
            data,
            loss_bound=loss_bound,
            relative=relative,
            trust_region=trust_region,
            max_iter=max_iter,
            max_bits=max_bits,
            group_size=group_size,
            group_margin=group_margin,
            map_coder=map_coder,
            payload_coder=payload_coder,
            retrain=retrain,
            retrain_steps=retrain_steps,
            retrain_lr=retrain_lr,
            retrain_batch_size=retrain_batch_size,
            retrain_data=retrain_data,
            random_state=random_state,
            evaluate=evaluate,
            verbose=verbose,
            n_jobs=n_jobs,
        )
