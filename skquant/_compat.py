"""Pickles made before the rooms load: the old module paths, resolved to the new ones.

A pickle names a class by the module that defined it when it was written. Before the
package moved into its sub-packages, those were flat modules (``skquant._mlp``,
``skquant._uniform``, ...). :func:`install` registers each old path that no longer
exists as a small alias module whose attributes are looked up, on first use, in the
modules that define those names now; the three old paths that are packages today
(``skquant._precision``, ``skquant._network``, ``skquant._layerbits``) ask
:func:`moved_name` from their own ``__getattr__``. Nothing here is imported by code
that runs a quantizer; the names are strings, resolved only when an old pickle asks.
"""

import importlib
import importlib.util
import sys
import types

__all__ = ["MOVED", "install", "moved_name"]

#: each module path of the flat layout, and the modules its names live in now
MOVED = {
    "skquant._config": ("skquant._common._config",),
    "skquant._progress": ("skquant._common._progress",),
    "skquant._alphabets": ("skquant._tensor._alphabets",),
    "skquant._packing": ("skquant._tensor._qtensor", "skquant._tensor._bits"),
    "skquant._fixedpoint": ("skquant._tensor._fixedpoint",),
    "skquant._io": ("skquant._tensor._io",),
    "skquant._base": ("skquant._quantizers._base",),
    "skquant._uniform": ("skquant._quantizers._uniform",),
    "skquant._activation": ("skquant._quantizers._activation",),
    "skquant._functional": ("skquant._quantizers._functional",),
    "skquant._datadriven": ("skquant._quantizers._datadriven",),
    "skquant._gram": ("skquant._quantizers._gram",),
    "skquant._gpfq": ("skquant._quantizers._gpfq",),
    "skquant._gptq": ("skquant._quantizers._gptq",),
    "skquant._nullspace": ("skquant._quantizers._nullspace",),
    "skquant._allocation": ("skquant._layerbits._allocation",),
    "skquant._sensitivity": (
        "skquant._layerbits._law",
        "skquant._layerbits._choices",
        "skquant._network._sensitivity",
        "skquant._sklearn._sensitivity",
    ),
    "skquant._mlp": ("skquant._sklearn._mlp",),
    "skquant._precision": (
        "skquant._precision._estimator",
        "skquant._precision._result",
        "skquant._precision._allocate",
        "skquant._network._adaptive",
        "skquant._sklearn._adaptive",
    ),
    "skquant._network": (
        "skquant._network._protocol",
        "skquant._network._dense",
        "skquant._network._layers",
        "skquant._network._report",
        "skquant._network._plan",
    ),
    "skquant._layerbits": ("skquant._sklearn._layerbits",),
}


def moved_name(old, name):
    """The object an old module path ``old`` called ``name``, from where it is now.

    Parameters
    ----------
    old : str
        A module path of the flat layout (a key of :data:`MOVED`).
    name : str
        A name that module defined.

    Returns
    -------
    obj : object
        The object, from the module that defines it now.
    """
    for path in MOVED.get(old, ()):
        module = importlib.import_module(path)
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module {old!r} has no attribute {name!r}")


def install():
    """Register an alias module for every old path that is no module today."""
    for old in MOVED:
        if old in sys.modules or importlib.util.find_spec(old) is not None:
            continue  # a package today: its own __getattr__ asks moved_name
        alias = types.ModuleType(old, f"Old path of {MOVED[old][0]} (for pickles).")
        alias.__getattr__ = lambda name, old=old: moved_name(old, name)
        sys.modules[old] = alias
