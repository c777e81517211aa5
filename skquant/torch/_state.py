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
            if p.requires_grad != flag:  # (an inference tensor's flag is set
                with torch.inference_mode(p.is_inference()):  # only in it)
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


def hooked(module):
    """Whether ``module`` has hooks or a parametrization (a change of the
    module, a fold or a chain of codes, would be seen, or could not be
    written)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
        # (is_parametrized's lookup through nn.Module.__getattr__: 1 us a call,
        # in every chained forward)
        or isinstance(module._modules.get("parametrizations"), nn.ModuleDict)
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


def _tracked(t):
    """Whether ``t`` is a tensor whose in-place changes can be seen (its version
    counter) and undone (a copy into it): strided, with data, not an inference
    tensor (which cannot change outside inference mode)."""
    return (
        isinstance(t, torch.Tensor)
        and t.layout == torch.strided
        and t.device.type != "meta"
        and not t.is_inference()
    )


def _entry(value, last, copied=True):
    """How a snapshot keeps ``value``: ``(value, version, saved)``. A tensor is
    copied, and the copy kept while it is the same tensor at the same version
    (``last``: the previous snapshot's entry); one assigned since the last
    snapshot is kept by reference unless ``copied`` (a tensor attribute, which
    a forward may assign every batch: copied once it is changed in place). A
    list, dict or set keeps a copy of its items, a generator its state;
    anything else is kept by reference."""
    if _tracked(value):
        version = value._version
        if last is not None and last[0] is value:
            if last[1] == version:
                return last
        elif not copied:
            return value, None, None
        return value, version, value.detach().clone()
    if isinstance(value, list | dict | set):
        return value, None, copy.copy(value)
    if isinstance(value, torch.Generator):
        return value, None, value.get_state()
    return value, None, None


def _put_back(entry):
    """``entry``'s value as it was when saved (tensors and containers changed
    in place are set back in place, so that they stay the same objects)."""
    value, version, saved = entry
    if version is not None and value._version != version:
        with torch.no_grad():
            value.copy_(saved)
    elif isinstance(value, list):
        value[:] = saved
    elif isinstance(value, dict | set):
        value.clear()
        value.update(saved)
    elif isinstance(value, torch.Generator):
        value.set_state(saved)
    return value


class ForwardState:
    """What forward passes of ``block`` may change besides their outputs, saved
    and put back: every module's buffers and other attributes, and torch's
    random number generators (CPU, and CUDA once initialised).

    :meth:`save` gives a snapshot; a tensor is copied once and its copy reused
    while its version counter says it has not changed (a stateless forward's
    snapshots share one copy of the buffers). :meth:`restore` puts a snapshot
    back: each attribute and buffer the same object as when saved, a buffer or
    container changed in place set back in place (tied buffers stay tied), a
    public attribute made since deleted. Left as they are: buffers that cannot
    change outside inference mode or are not strided, changes through
    ``.data`` (no version counted), a tensor attribute assigned by a forward
    and changed in place before the next snapshot (kept by reference when
    assigned: a forward that assigns one each batch would otherwise hold a
    copy of each), other objects (by reference), what containers hold beyond
    one level, private attributes and buffers made since.
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
        last_buffers, last_attrs = self._last or ({}, {})
        buffers, attrs, first = {}, {}, self._last is None
        for i, m in enumerate(self.modules):
            for k, b in m._buffers.items():
                if b is not None:
                    buffers[i, k] = _entry(b, last_buffers.get((i, k)))
            old = last_attrs.get(i, {})
            attrs[i] = {
                k: _entry(v, old.get(k), copied=first)
                for k, v in vars(m).items()
                if k not in _MODULE_KEYS
            }
        self._last = (buffers, attrs)
        return buffers, attrs, self.rng()

    def restore(self, snapshot):
        """Put ``snapshot`` back, torch's generators too."""
        buffers, attrs, generators = snapshot
        for (i, k), entry in buffers.items():
            self.modules[i]._buffers[k] = _put_back(entry)
        for i, saved in attrs.items():
            m = self.modules[i]
            made = [k for k in vars(m) if k not in _MODULE_KEYS and k not in saved]
            for k in made:  # a forward's own, made after the snapshot (not a
                if not k.startswith("_"):  # table torch makes when first used)
                    delattr(m, k)
            for k, entry in saved.items():
                object.__setattr__(m, k, _put_back(entry))
        self.set_rng(generators)


@contextlib.contextmanager
def seeded(seed, device):
    """torch's generators (the CPU's, and ``device``'s if a GPU) seeded with
    ``seed`` in the block (``None``: left as they are); the caller's state back
    after, so that a caller's later draws do not depend on the training."""
    device = torch.device(device)
    devices = []
    if device.type == "cuda":
        index = device.index
        devices = [torch.cuda.current_device() if index is None else index]
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield
