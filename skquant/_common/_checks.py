"""Checks of plain arguments, with errors that name the argument and its value."""

import numbers

import numpy as np

__all__ = ["check_int", "check_positive"]


def check_int(value, name, *, low=1, none=False):
    """``value`` as an int ``>= low`` (or ``None`` when ``none``), else a
    ``ValueError`` naming ``name`` and the value.

    Examples
    --------
    >>> from skquant._common._checks import check_int
    >>> check_int(3, "batch_size")
    3
    >>> check_int(0, "batch_size")
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be an int >= 1, got batch_size=0 instead.
    """
    if value is None and none:
        return None
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool | np.bool_)
        or value < low
    ):
        raise ValueError(
            f"{name} must be an int >= {low}{' or None' if none else ''}, got "
            f"{name}={value!r} instead."
        )
    return int(value)


def check_positive(value, name, *, zero=False):
    """``value`` as a float, finite and ``> 0`` (``>= 0`` with ``zero``), else a
    ``ValueError`` naming ``name`` and the value.

    Examples
    --------
    >>> from skquant._common._checks import check_positive
    >>> check_positive(0.5, "rtol")
    0.5
    >>> check_positive(float("nan"), "rtol")
    Traceback (most recent call last):
    ...
    ValueError: rtol must be a finite number > 0, got rtol=nan instead.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    ok = ok and bool(np.isfinite(value)) and (value >= 0 if zero else value > 0)
    if not ok:
        raise ValueError(
            f"{name} must be a finite number {'>= 0' if zero else '> 0'}, got "
            f"{name}={value!r} instead."
        )
    return float(value)
