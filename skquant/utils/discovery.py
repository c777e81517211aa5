"""Discovery of skquant's public estimators (used by the common tests)."""

import inspect

from sklearn.base import BaseEstimator

__all__ = ["all_estimators"]


def all_estimators():
    """Every public estimator class exported by :mod:`skquant`.

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
    import skquant

    found = []
    for name in skquant.__all__:
        obj = getattr(skquant, name)
        if (
            inspect.isclass(obj)
            and issubclass(obj, BaseEstimator)
            and not inspect.isabstract(obj)
            and not name.startswith("Base")
        ):
            found.append((name, obj))
    return sorted(found)
