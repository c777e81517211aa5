"""Which front end a model needs: adapter packages register theirs here.

The network layer never imports an adapter package (``skquant.torch``) as code: an
adapter registers its front ends for the models it knows with
:func:`register_adapter` when it is imported, and :func:`adapter_for` imports the
package named in :data:`ADAPTER_PACKAGES` for a model of that library on first use,
so a torch model works whether or not ``skquant.torch`` was imported yet.
"""

import importlib

__all__ = ["ADAPTER_PACKAGES", "adapter_for", "register_adapter"]

#: the adapter package of each model library (by the top-level module of a class in
#: the model's type hierarchy)
ADAPTER_PACKAGES = {"torch": "skquant.torch"}

_REGISTERED = []


def register_adapter(accepts, **functions):
    """Register front ends for the models ``accepts(model)`` is true of.

    Parameters
    ----------
    accepts : callable
        ``accepts(model) -> bool``.
    **functions : callable
        The front ends, by name (``measure_sensitivity``, ``check_autograd``).
    """
    _REGISTERED.append((accepts, dict(functions)))


def _libraries(model):
    return {c.__module__.split(".")[0] for c in type(model).__mro__}


def adapter_for(model):
    """The registered front ends for ``model`` (a dict), or ``None`` for NumPy models.

    Parameters
    ----------
    model : object
        A model of some library.

    Returns
    -------
    functions : dict or None
        The front ends its adapter registered.
    """
    for lib in _libraries(model) & ADAPTER_PACKAGES.keys():
        importlib.import_module(ADAPTER_PACKAGES[lib])  # registers on first import
    for accepts, functions in _REGISTERED:
        if accepts(model):
            return functions
    return None
