"""Khoram & Li's adaptive precision on torch models (the front end of the driver)."""

import torch

from .._network._adaptive import adaptive_quantize_network
from .._precision._options import loop_options, shared_loop_docs
from ._data import batches
from ._gradients import gradients_enabled
from ._network import TorchNetwork, skip_names
from ._state import kept_state, still_parametrizations


@shared_loop_docs
@still_parametrizations
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
    random_state=None,
    retrain_batch_size=None,
    retrain_data=None,
    evaluate=None,
    batch_size=256,
    skip=(),
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
    data : tuple of (X, y) tensors, Dataset, or iterable of (x, y) batches
        Data for the loss and its gradient (a ``Dataset``'s samples in batches
        of ``batch_size``).
    {loop_options}
    retrain_batch_size : int, default=None
        Rows per fine-tune step, shuffled minibatches of a pair ``(X, y)`` (a list
        of batches is cycled through); ``None``: all of ``data`` every step.
    retrain_data : tuple of (X, y) tensors, or iterable of batches, default=None
        Data of the fine-tune (the training set, say); ``None``: ``data``.
    evaluate : callable, default=None
        ``evaluate(model) -> accuracy``, recorded in the history; it gets the
        model in eval mode, as the loss is measured (its modes back after).
    batch_size : int, default=256
        Batch size when ``data`` is a pair of tensors.
    skip : sequence of str or module classes, default=()
        Modules whose layers to leave to the loop's other parameters, by name
        or by class, as in :func:`quantize_model` (``skip=[nn.Embedding]`` for
        a model whose embedding is not a layer skquant quantizes).
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
    data = _batched(data, batch_size)
    if isinstance(retrain_data, torch.utils.data.Dataset):  # (others as they are)
        retrain_data = _batched(retrain_data, batch_size)
    options = loop_options(locals())
    network = TorchNetwork(
        model, skip=skip_names(model, skip), loss_fn=loss_fn, batch_size=batch_size
    )
    # the gradients are taken on copies (loss_gradients on the network's scratch
    # model): nothing of the user's model needs grad, but the checks and the
    # restored state hold for the whole run
    with gradients_enabled(model, "skquant.torch.adaptive_quantize_model", ()):
        return adaptive_quantize_network(
            network,
            data,
            **options,
            evaluate=None if evaluate is None else _in_eval_mode(evaluate),
            verbose=verbose,
            n_jobs=n_jobs,
        )


def _batched(data, batch_size):
    """``data`` as the loop reads it again and again: a pair as it is, else its
    batches listed (a ``Dataset``'s samples in batches of ``batch_size``)."""
    if isinstance(data, tuple):
        return data
    return list(batches(data, batch_size, copy=False))


def _in_eval_mode(evaluate):
    """``evaluate`` called on the model in eval mode, its modes back after."""

    def run(model):
        with kept_state(model):
            model.eval()
            return evaluate(model)

    return run
