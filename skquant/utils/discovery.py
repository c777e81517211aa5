"""Discovery of skquant's public estimators (used by the common tests)."""

import importlib
import inspect
import pkgutil
from pathlib import Path

from sklearn.base import BaseEstimator

__all__ = ["all_estimators"]

#: modules left out of the search: the torch adapter and the torch kernels (they
#: import torch) and this sub-package
_SKIPPED = (
    "skquant.torch",
    "skquant._kernels._torch",
    "skquant.utils",
    "skquant.__main__",
)


def _modules(path, prefix):
    """Import and yield every module under ``path`` but the skipped sub-packages
    (walked by hand: ``pkgutil.walk_packages`` imports every package it meets)."""
    for info in pkgutil.iter_modules(path, prefix):
        if info.name.startswith(_SKIPPED):
            continue
        module = importlib.import_module(info.name)
        yield module
        if info.ispkg:
            yield from _modules(module.__path__, info.name + ".")


def all_estimators():
    """Every public estimator class of :mod:`skquant` (the NumPy package).

    Walks skquant's modules (not the torch adapter) and keeps the concrete
    :class:`~sklearn.base.BaseEstimator` classes whose names are public, the way
    scikit-learn's own ``all_estimators`` finds its estimators.

    Returns
    -------
    estimators : list of (str, type)
        ``(name, class)`` pairs, sorted by name.

    Examples
    --------
    >>> from skquant.utils.discovery import all_estimators
    >>> "UniformQuantizer" in dict(all_estimators())
    True
    """
    root = Path(__file__).resolve().parent.parent
    found = {}
    for module in _modules([str(root)], "skquant."):
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseEstimator)
                and obj.__module__.startswith("skquant.")
                and not name.startswith(("_", "Base"))
                and not inspect.isabstract(obj)
            ):
                found[name] = obj
    return sorted(found.items())
