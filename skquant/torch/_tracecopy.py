"""A ``torch.fx`` trace that leaves the model as it was, and says what it stored.

A symbolic trace runs a module's forward on proxies: what the forward keeps
(``self.h = h``, a list's ``append``, an item of a nested dict, an attribute of
a namespace) is then a proxy, left in the model, and, where the chains of
:func:`~._chain.chain_int8` run, would be codes at run time. The trace runs on
:func:`structure_copy`, which copies the modules and the built-in containers
and shares everything else (tensors, arrays, the modules called as a whole,
hooks, locks, sentinels); :class:`Undo` records and puts back what the forward
can reach but that is shared (the called modules' attributes and containers, an
object's attributes, containers on a class), and :func:`leaked` says whether a
proxy is reachable from the copy.
"""

import copy
import functools
import numbers
import types
from collections import OrderedDict, defaultdict, deque

import torch
from torch import nn

__all__ = ["Undo", "leaked", "structure_copy"]

#: containers :func:`structure_copy` copies with their items, and
#: :class:`Undo` records the contents of
_MUTABLE = (list, dict, OrderedDict, defaultdict, set, deque)

#: what is neither copied nor looked into
_OPAQUE = (
    torch.Tensor,
    str,
    bytes,
    numbers.Number,
    type,
    types.ModuleType,
    types.BuiltinFunctionType,
    types.MethodType,
)


def structure_copy(obj, memo, shared):
    """``obj`` with its modules (but those in ``memo``, by id) and built-in
    containers (lists, tuples, dicts, sets, deques, namespaces) copied, their
    items too; every other object is the same (appended to ``shared`` where it
    holds attributes)."""
    key = id(obj)
    if key in memo:
        return memo[key]
    if obj is None or isinstance(obj, _OPAQUE):
        return obj
    one = functools.partial(structure_copy, memo=memo, shared=shared)
    if isinstance(obj, nn.Module):
        new = memo[key] = obj.__class__.__new__(obj.__class__)
        new.__dict__.update({k: one(v) for k, v in obj.__dict__.items()})
        for name in _slots(obj):  # (a module with slots of its own)
            if (value := getattr(obj, name, _MISSING)) is not _MISSING:
                object.__setattr__(new, name, one(value))
        return new
    if type(obj) in (dict, OrderedDict, defaultdict):
        new = memo[key] = copy.copy(obj)
        new.clear()
        new.update({k: one(v) for k, v in obj.items()})
        return new
    if type(obj) is list:
        new = memo[key] = []
        new.extend(one(v) for v in obj)
        return new
    if type(obj) is deque:
        new = memo[key] = deque(maxlen=obj.maxlen)
        new.extend(one(v) for v in obj)
        return new
    if type(obj) is set:
        new = memo[key] = set(obj)
        return new
    if type(obj) is types.SimpleNamespace:
        new = memo[key] = types.SimpleNamespace()
        new.__dict__.update({k: one(v) for k, v in vars(obj).items()})
        return new
    if type(obj) is tuple:
        return tuple(one(v) for v in obj)
    if isinstance(obj, tuple) and hasattr(type(obj), "_make"):  # (a namedtuple)
        return type(obj)._make(one(v) for v in obj)
    memo[key] = obj
    if _attrs(obj) is not None or _slots(obj):
        shared.append(obj)
    return obj


_MISSING = object()


def _slots(obj):
    """The names of ``obj``'s slots (a class's ``__slots__`` may be one string;
    private names are mangled)."""
    names = []
    for c in type(obj).__mro__:
        slots = c.__dict__.get("__slots__", ())
        for s in (slots,) if isinstance(slots, str) else slots:
            if s in ("__dict__", "__weakref__"):
                continue
            private = s.startswith("__") and not s.endswith("__")
            names.append(f"_{c.__name__.lstrip('_')}{s}" if private else s)
    return names


def _attrs(obj):
    """``obj``'s instance dict where it has a plain one, else ``None``."""
    d = getattr(obj, "__dict__", None)
    return d if type(d) is dict else None


class Undo:
    """The attributes (``__dict__`` and slots) of ``objects`` and the contents
    of the containers they hold directly, and the containers held by their
    classes (not torch's): :meth:`changed` says whether any differs now,
    :meth:`restore` puts them back."""

    def __init__(self, objects):
        self.records, seen = [], set()
        for obj in objects:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            held = _attrs(obj)
            attrs = None if held is None else dict(held)
            slots = {s: getattr(obj, s, _MISSING) for s in _slots(obj)}
            self.records.append((obj, attrs, slots, _contents(attrs or {})))
            for cls in type(obj).__mro__:
                if id(cls) not in seen and not cls.__module__.startswith("torch"):
                    seen.add(id(cls))
                    self.records.append((cls, None, {}, _contents(vars(cls))))

    def changed(self):
        for obj, attrs, slots, contents in self.records:
            if attrs is not None:
                now = _attrs(obj) or {}
                if now.keys() != attrs.keys():
                    return True
                if any(now[k] is not v for k, v in attrs.items()):
                    return True
            if any(getattr(obj, s, _MISSING) is not v for s, v in slots.items()):
                return True
            for held, before in contents:
                if len(held) != len(before):
                    return True
                if isinstance(held, dict):
                    if any(held.get(k, _MISSING) is not v for k, v in before.items()):
                        return True
                elif isinstance(held, set):
                    if held != before:
                        return True
                elif any(a is not b for a, b in zip(held, before)):
                    return True
        return False

    def restore(self):
        for record in self.records:
            try:  # (each as far as it goes: an object may refuse a write)
                _put_back(*record)
            except (AttributeError, TypeError):
                pass


def _put_back(obj, attrs, slots, contents):
    if attrs is not None and (now := _attrs(obj)) is not None:
        now.clear()
        now.update(attrs)
    for s, v in slots.items():
        if v is _MISSING:
            if hasattr(obj, s):
                object.__delattr__(obj, s)
        elif getattr(obj, s, _MISSING) is not v:
            object.__setattr__(obj, s, v)
    for held, before in contents:  # (a list a forward appends to)
        held.clear()
        if isinstance(held, dict | set):
            held.update(before)
        else:
            held.extend(before)


def _contents(attrs):
    """``(container, copy of its items)`` of the mutable containers in
    ``attrs`` (an object's or a class's attributes)."""
    return [(v, copy.copy(v)) for v in attrs.values() if type(v) in _MUTABLE]


def leaked(root, most=1_000_000):
    """Whether a ``torch.fx`` proxy is reachable from ``root`` through
    mappings, lists, tuples, sets, deques, objects' attributes and slots,
    partial functions and closures (past ``most`` objects, taken as
    reachable)."""
    stack, seen = [root], set()
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.fx.Proxy):
            return True
        if obj is None or isinstance(obj, _OPAQUE) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if len(seen) > most:
            return True
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset | deque):
            stack.extend(obj)
        elif isinstance(obj, types.FunctionType):  # (a closure's cells)
            cells = obj.__closure__ or ()
            stack.extend(c.cell_contents for c in cells if _filled(c))
            stack.extend(obj.__defaults__ or ())
            continue
        elif isinstance(obj, functools.partial):
            stack.extend((obj.func, *obj.args, *obj.keywords.values()))
        if (held := _attrs(obj)) is not None and not isinstance(obj, dict):
            stack.extend(held.values())
        stack.extend(getattr(obj, s, None) for s in _slots(obj))
    return False


def _filled(cell):
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True
