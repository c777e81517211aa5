"""A user's model given back as it was (flags, gradients, modes; its
parametrizations held in eval mode while it is read), and a replaced layer's
hooks on its replacement."""

import contextlib
import functools

from torch.nn.utils.parametrize import ParametrizationList
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm


@contextlib.contextmanager
def kept_state(model):
    """Give ``model`` back as it was on leaving the block, also by an exception.

    Every parameter gets back its ``requires_grad`` flag and its ``.grad``, and
    every module its ``training`` flag (``model.train(was)`` would flatten mixed
    modes). Parameter values are not saved: the training loops change them on
    purpose.

    Parameters
    ----------
    model : torch.nn.Module
        The user's model.

    Yields
    ------
    model : torch.nn.Module
        The same model.
    """
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            # a grad saved before the model moved (train's device=) follows it
            p.grad = grad if grad is None else grad.to(p)


#: a module's hook tables
_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_is_full_backward_hook",
)


def take_hooks(new, old):
    """Give ``new`` the hook tables of ``old``, the module it replaces: the
    hooks registered on ``old`` run on ``new`` (the same tables, so the
    caller's handles still remove them). torch's own hooks that rebuild a
    weight from other tensors (pruning, the old ``weight_norm`` and
    ``spectral_norm``) are left behind: the quantized layer holds its codes."""
    own = (BasePruningMethod, WeightNorm, SpectralNorm)
    for attr in _HOOKS:
        table = getattr(old, attr, None)
        if table is None:
            continue
        if isinstance(table, dict) and any(isinstance(h, own) for h in table.values()):
            kept = [(k, h) for k, h in table.items() if not isinstance(h, own)]
            table = type(table)(kept)
        setattr(new, attr, table)
    return new


def still_parametrizations(func):
    """Run ``func(model, ...)`` with the model's parametrizations (such as
    ``spectral_norm``'s, ``weight_norm``'s) in eval mode: reading a weight then
    changes no buffer of the caller's model (spectral norm's power iteration
    runs in train mode). Their modes come back after."""

    @functools.wraps(func)
    def run(model, *args, **kwargs):
        modes = []
        for holder in getattr(model, "modules", list)():
            if isinstance(holder, ParametrizationList):
                modes += [(m, m.training) for m in holder.modules()]
        try:
            for m, _ in modes:
                m.training = False
            result = func(model, *args, **kwargs)
        finally:
            for m, training in modes:
                m.training = training
        for out in result if isinstance(result, tuple) else [result]:
            _owners_modes(getattr(out, "model", out))  # (copies made in the block)
        return result

    return run


def _owners_modes(model):
    """Each parametrization of ``model`` in the mode of the module it belongs to."""
    for owner in getattr(model, "modules", list)():
        holder = getattr(owner, "parametrizations", None)
        if holder is not None and hasattr(holder, "modules"):
            for m in holder.modules():
                m.training = owner.training
