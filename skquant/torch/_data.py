"""Data as mini-batches of tensors: the one batching helper of the torch drivers."""

import warnings
from numbers import Number

import numpy as np
import torch

from .._common._checks import check_int


def as_tensor(a):
    """``a`` itself when it is a tensor, else ``a`` through NumPy as a tensor
    (sharing its memory; a read-only array, such as the memory-mapped inputs
    of joblib's workers, is read without torch's warning: skquant never writes
    to its inputs)."""
    if isinstance(a, torch.Tensor):
        return a
    a = np.asarray(a)
    if a.flags.writeable:
        return torch.as_tensor(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not")
        return torch.as_tensor(a)


def autograd_tensor(t):
    """``t``, or a normal copy of it when it is an inference tensor."""
    return t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t


def cloned(value):
    """``value`` with each tensor in it cloned (nested in tuples, lists and
    dicts): what a forward pass gets when the value must stay as it was whatever
    the operations that read it do to their inputs (``x.sub_(mean)``,
    ``nn.ReLU(inplace=True)``)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple | list):
        return type(value)(cloned(v) for v in value)
    if isinstance(value, dict):
        return {k: cloned(v) for k, v in value.items()}
    return value


def model_dtype(model):
    """The dtype of the model's first floating parameter (default: torch's)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def model_device(model):
    """The device of the model's first parameter (default: the CPU)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _is_pair(data):
    """Whether ``data`` is one pair ``(X, y)`` rather than a tuple of batches."""
    return isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple)


def _inputs_of_pair(data):
    """``X`` of a pair ``(X, y)`` given where inputs alone are read, else None.

    A tuple of two tensors or arrays of one length is ``(X, y)`` when ``y`` has
    fewer dimensions than ``X``, or integer entries where ``X`` has floating
    ones (labels, targets); two batches alike (a tuple of batches) stay batches.
    """
    if not _is_pair(data) or not all(
        isinstance(a, torch.Tensor | np.ndarray) for a in data
    ):
        return None
    x, y = data
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        return None
    labels = y.ndim < x.ndim or (_floating(x) and not _floating(y))
    return x if labels else None


def on_model(t, device, dtype):
    """``t`` on the model's ``device``, in its ``dtype`` when it holds floats
    (token ids, masks and class labels keep their integer dtype)."""
    return t.to(device, dtype) if t.is_floating_point() else t.to(device)


def batches(data, batch_size, *, labelled=True, generator=None, copy=True, single=True):
    """Mini-batches of ``data`` as tensors.

    ``data`` is a pair ``(X, y)`` (``labelled``) or a tensor or array ``X``
    (unlabelled) of tensors or arrays, cut into slices of ``batch_size`` rows, in
    the order of ``torch.randperm(len(X), generator=generator)`` when a generator
    is given; a list of rows (:func:`is_rows`) as such an ``X``; a torch
    ``Dataset`` (samples) in batches of ``batch_size`` samples, as a
    ``DataLoader`` gives them; or any other iterable, whose batches come as they
    are (unlabelled: the ``x`` of ``(x, y)`` pairs). Inference tensors (made inside
    ``torch.inference_mode()``) are copied into normal ones, which autograd
    accepts. With ``copy``, each ``x`` holds memory of its own (a copy of the
    caller's), so a model whose forward writes to its input leaves the caller's
    data as it was; without, ``x`` may be a view of the caller's data. Without
    ``single``, a last slice of one row of ``(X, y)`` or ``X`` goes with the
    one before (training: BatchNorm takes no batch of one row).

    Yields
    ------
    batch : torch.Tensor or tuple of (torch.Tensor, torch.Tensor)
        ``x`` (unlabelled) or ``(x, y)`` (labelled).
    """
    batch_size = check_int(batch_size, "batch_size")
    if not labelled and (x := _inputs_of_pair(data)) is not None:
        data = x  # the inputs of (X, y), as a labelled reader takes them
    if labelled and _is_pair(data):
        arrays = [as_tensor(a) for a in data]
        if len(arrays[0]) != len(arrays[1]):
            raise ValueError(
                f"X and y must have the same length, got {len(arrays[0])} and "
                f"{len(arrays[1])}."
            )
        if len(arrays[0]) == 0:
            raise ValueError("data holds no sample.")
    elif not labelled and isinstance(data, np.ndarray | torch.Tensor):
        arrays = [as_tensor(data)]
    elif not labelled and is_rows(data):
        arrays = [_rows(data)]
    elif isinstance(data, torch.utils.data.Dataset):  # samples: batch them
        yield from _iterated(_loader(data, batch_size, generator), labelled, copy)
        return
    else:
        yield from _iterated(data, labelled, copy)
        return
    n = len(arrays[0])
    order = None if generator is None else torch.randperm(n, generator=generator)
    starts = list(range(0, n, batch_size))
    if not single and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()  # (the last row joins the slice before)
    for i, stop in zip(starts, [*starts[1:], n]):
        if order is None:
            batch = [a[i:stop] for a in arrays]
            batch = [t.clone() if copy else autograd_tensor(t) for t in batch]
        else:
            idx = order[i:stop]
            batch = [autograd_tensor(a[idx]) for a in arrays]
        yield tuple(batch) if labelled else batch[0]


def is_rows(data):
    """Whether ``data`` is a list of rows (an array-like ``X``, as scikit-learn
    takes), not a list of batches: its first item a list or tuple of numbers, or
    a 1-D floating array or tensor (one sample of a Linear input; a 1-D batch
    would be one number per sample, as token ids are, which stay batches)."""
    first = data[0] if isinstance(data, list) and data else None
    if isinstance(first, list | tuple):
        return bool(first) and isinstance(first[0], Number)
    return (
        isinstance(first, np.ndarray | torch.Tensor)
        and first.ndim == 1
        and _floating(first)
    )


def _floating(a):
    """Whether a tensor or an array holds floating-point numbers."""
    return a.is_floating_point() if isinstance(a, torch.Tensor) else a.dtype.kind == "f"


def _rows(data):
    """The tensor of a list of rows (:func:`is_rows`)."""
    try:
        if isinstance(data[0], torch.Tensor):
            return torch.stack([torch.as_tensor(r) for r in data])
        return as_tensor(np.asarray(data))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(
            "calibration data is a list of rows (samples) of different lengths or "
            f"kinds ({exc}); pass one array or tensor of shape (n_samples, "
            "n_features), or a list of batches."
        ) from None


def _loader(data, batch_size, generator):
    """A torch ``Dataset`` (samples, not batches) as a ``DataLoader`` of
    ``batch_size`` samples, shuffled by ``generator`` when given."""
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        shuffle=generator is not None
        and not isinstance(data, torch.utils.data.IterableDataset),
        generator=generator,
    )


def _iterated(data, labelled, copy=True):
    """The batches of an iterable, as :func:`batches` gives them."""
    try:
        if isinstance(data, str | bytes | dict):
            raise TypeError
        items = iter(data)
    except TypeError as exc:
        raise TypeError(
            (
                "data must be a pair (X, y) of tensors or arrays, or an iterable of "
                "(x, y) batches"
                if labelled
                else "calibration data must be a tensor, an array, or an iterable "
                "of batches (tensors or (x, y) pairs)"
            )
            + f", got {type(data).__name__} instead."
        ) from exc
    for b in items:
        x = b[0] if isinstance(b, tuple | list) and b else b
        several = isinstance(x, tuple | list) and any(
            isinstance(t, torch.Tensor) for t in x
        )
        if isinstance(x, dict) or several:
            raise TypeError(
                f"a batch of the data is a {'dict' if not several else 'sequence'} "
                "of tensors: skquant calls model(x) with one tensor x (or takes x "
                "from (x, y) pairs); pass the inputs as tensors, or wrap the model "
                "so that its forward takes one tensor."
            )
        if labelled:
            if not (isinstance(b, tuple | list) and len(b) == 2):
                raise TypeError(
                    "data must be a pair (X, y), or batches of (x, y) pairs (a "
                    f"DataLoader), got a batch of type {type(b).__name__} instead "
                    "(with batches of inputs alone, pass X and its targets as one "
                    "pair)."
                )
            x, y = b
            x = as_tensor(x)
            yield (
                x.clone() if copy else autograd_tensor(x),
                autograd_tensor(as_tensor(y)),
            )
        else:
            x = torch.as_tensor(x)
            yield x.clone() if copy else autograd_tensor(x)


def output_tensor(out):
    """``out``, the model's output, when it is one tensor; else a ``TypeError``
    (the sensitivity and the losses read one output: the logits)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the model's forward returns a {type(out).__name__}, and this needs "
            "one output tensor (the logits): wrap the model in a module whose "
            "forward returns that tensor."
        )
    return out


class _Replay:
    """A one-shot iterator read once, lazily: each batch is kept as it comes, and
    every later pass gives the kept batches, then reads on where the first
    stopped."""

    def __init__(self, items):
        self._items, self._kept = items, []

    def __iter__(self):
        i = 0
        while True:
            if i == len(self._kept):
                try:
                    self._kept.append(next(self._items))
                except StopIteration:
                    return
            yield self._kept[i]
            i += 1


def replayable(data):
    """``data``, or, when it is a one-shot iterator (a generator), an iterable
    that reads it once and gives its batches on every pass: the drivers that
    read calibration data more than once (a walk, then loss gradients or static
    input grids) read the same batches each time, and nothing is read when
    nothing needs the data."""
    try:
        once = iter(data) is data
    except TypeError:
        return data
    return _Replay(data) if once else data


class CallerBatches(list):
    """Input batches that may share the caller's memory (views of ``X`` where
    its dtype and device are the model's): a forward that may write to its
    input runs on a copy of each (:func:`cloned`), one batch at a time, so that
    the caller's data stays as it was without a second copy held of it all."""


def input_batches(data, batch_size, dtype, device):
    """Input batches (tensors on ``device`` in ``dtype``) from any calibration data.

    ``data`` is a tensor, a NumPy array, or an iterable of batches (tensors,
    arrays or ``(x, y)`` pairs, as a ``DataLoader`` gives); see :func:`batches`.
    The batches come as :class:`CallerBatches`; empty ones are left out.
    """
    out = CallerBatches()
    for x in batches(data, batch_size, labelled=False, copy=False):
        if x.dim() > 0 and x.shape[0] == 0:
            continue
        out.append(on_model(x, device, dtype))
    if not out or sum(x.shape[0] for x in out) == 0:
        raise ValueError("calibration data holds no sample.")
    return out
