"""Gradients on a user's model: the loss and its gradient for every parameter.

Also the one place that makes gradients possible on a user's model:
:func:`gradients_enabled` (grad mode on, chosen parameters made to require
grad, the model restored after by :func:`kept_state`),
:func:`check_autograd` (the clear error under ``torch.inference_mode()``) and
:func:`outside_inference_mode` (models built with inference mode off).
"""

import contextlib
import functools

import numpy as np
import torch

from ._data import batches, model_device, model_dtype, on_model
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
    if not callable(loss_fn):
        raise TypeError(
            "loss_fn must be a callable loss_fn(outputs, targets) -> scalar tensor "
            f"(e.g. torch.nn.CrossEntropyLoss()), got loss_fn={loss_fn!r} instead."
        )
    device, dtype = model_device(model), model_dtype(model)
    total, n = 0.0, 0
    with gradients_enabled(model, "skquant.torch.loss_gradients"):
        model.eval()
        model.zero_grad(set_to_none=True)
        for xb, yb in batches(data, batch_size):
            # floats in the model's dtype, as the walk gives them
            xb, yb = on_model(xb, device, dtype), on_model(yb, device, dtype)
            out = model(xb)
            try:
                loss = loss_fn(out, yb)
            except torch.OutOfMemoryError:
                raise
            except (IndexError, RuntimeError, ValueError) as exc:
                raise ValueError(
                    f"loss_fn ({getattr(loss_fn, '__name__', type(loss_fn).__name__)})"
                    f" did not take the targets (y, or quantize_model's targets: shape "
                    f"{tuple(yb.shape)}, dtype "
                    f"{yb.dtype}) with the outputs (shape {tuple(out.shape)}): the "
                    "default nn.CrossEntropyLoss takes class indices in [0, "
                    "n_outputs) of shape (n,). It raised: "
                    f"{exc}"
                ) from exc
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


def outside_inference_mode(function):
    """``function`` (a builder of models from the model given first:
    :func:`~._model.quantize_model`, :func:`~._io.load_into`) run with
    inference mode off: under ``torch.inference_mode`` the tensors it makes
    would be inference tensors, and the model it gives could neither give
    gradients nor update a BatchNorm's statistics. A model that holds inference
    tensors itself (built under inference mode) is built on as it was, in
    inference mode (outside it, torch refuses to touch them)."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        model = args[0] if args else kwargs.get("model")
        if not torch.is_inference_mode_enabled() or (
            isinstance(model, torch.nn.Module)
            and any(t.is_inference() for t in (*model.parameters(), *model.buffers()))
        ):
            return function(*args, **kwargs)
        with torch.inference_mode(False):  # (grad mode as a plain call has it)
            return function(*args, **kwargs)

    return run
