"""A user's model given back as it was: flags, gradients and modes."""

import contextlib


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
    caller's handles still remove them)."""
    for attr in _HOOKS:
        if hasattr(old, attr):
            setattr(new, attr, getattr(old, attr))
    return new
