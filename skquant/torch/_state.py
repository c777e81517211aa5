"""A user's model given back as it was (flags, gradients, modes; its
parametrizations held in eval mode while it is read; what a forward pass
changes, for passes run again), and a replaced layer's hooks on its
replacement."""

import contextlib
import copy
import functools

import torch
from torch import nn
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


#: the attributes every module has (its tables, flags): not a forward's state
_MODULE_KEYS = frozenset(vars(nn.Module()))


def _copied(value):
    """``value``, its containers copied one level (a forward appends to lists)."""
    return copy.copy(value) if isinstance(value, list | dict | set) else value


def _same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # values that do not compare (containers of tensors)
        return False


class ForwardState:
    """What forward passes of ``block`` may change besides their outputs, saved
    and put back: every module's buffers (cloned; meta ones left out) and its
    other attributes (containers copied one level; tensors by reference, as a
    forward assigns them), and torch's random number generators (CPU, and CUDA
    once initialised).

    :meth:`save` gives a snapshot (the previous one again when nothing
    changed, so that passes over many batches of a stateless forward hold one);
    :meth:`restore` puts one back (buffers copied into the module's own tensors
    where shapes match, so that tensors shared between modules stay shared).
    """

    def __init__(self, block):
        self.modules = list(block.modules())
        self._last = None

    def rng(self):
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return torch.get_rng_state(), cuda

    def set_rng(self, rng):
        cpu, cuda = rng
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    def save(self):
        buffers, attrs = {}, {}
        for i, m in enumerate(self.modules):
            for k, b in m._buffers.items():
                if b is not None and b.device.type != "meta":
                    buffers[i, k] = b
            attrs[i] = {
                k: _copied(v) for k, v in vars(m).items() if k not in _MODULE_KEYS
            }
        rng = self.rng()
        last = self._last
        if last is not None and self._unchanged(last, buffers, attrs, rng):
            return last
        self._last = ({k: b.clone() for k, b in buffers.items()}, attrs, rng)
        return self._last

    @staticmethod
    def _unchanged(last, buffers, attrs, rng):
        old_buffers, old_attrs, old_rng = last
        if old_buffers.keys() != buffers.keys() or old_attrs.keys() != attrs.keys():
            return False
        for k, b in buffers.items():
            o = old_buffers[k]
            if o.shape != b.shape or o.dtype != b.dtype or not torch.equal(o, b):
                return False
        for i, now in attrs.items():
            before = old_attrs[i]
            if before.keys() != now.keys():
                return False
            if not all(_same(before[k], now[k]) for k in now):
                return False
        same_cuda = (rng[1] is None) == (old_rng[1] is None) and (
            rng[1] is None or all(map(torch.equal, rng[1], old_rng[1]))
        )
        return torch.equal(rng[0], old_rng[0]) and same_cuda

    def restore(self, snapshot, rng=True):
        """Put ``snapshot`` back (torch's generators too, with ``rng``)."""
        buffers, attrs, generators = snapshot
        for (i, k), saved in buffers.items():
            m = self.modules[i]
            b = m._buffers.get(k)
            if b is not None and b.shape == saved.shape and b.dtype == saved.dtype:
                with torch.no_grad():
                    b.copy_(saved)
            else:
                m._buffers[k] = saved.clone()
        for i, saved in attrs.items():
            m = self.modules[i]
            made = [k for k in vars(m) if k not in _MODULE_KEYS and k not in saved]
            for k in made:  # a forward's own, made after the snapshot (not a
                if not k.startswith("_"):  # table torch makes when first used)
                    delattr(m, k)
            for k, v in saved.items():
                object.__setattr__(m, k, _copied(v))
        if rng:
            self.set_rng(generators)
        self._last = None
