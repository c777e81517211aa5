"""Checks of plain arguments, with errors that name the argument and its value."""

import numbers
import os
import re

import numpy as np
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval as _SklearnInterval

__all__ = [
    "Interval",
    "check_float_dtype",
    "check_int",
    "check_matrix",
    "check_pair",
    "check_path",
    "check_positive",
    "check_squares",
    "check_rng",
    "float_array",
]


def check_int(value, name, *, low=1, none=False):
    """``value`` as an int ``>= low`` (any int with ``low=None``; or ``None`` when
    ``none``), else a ``ValueError`` naming ``name`` and the value.

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
        or (low is not None and value < low)
    ):
        bound = "" if low is None else f" >= {low}"
        raise ValueError(
            f"{name} must be an int{bound}{' or None' if none else ''}, got "
            f"{name}={value!r} instead."
        )
    return int(value)


def float_array(value, name, what="a dense array of real numbers"):
    """``value`` as a float64 array, else a ``TypeError`` naming ``name`` and
    ``what`` it must be (strings, sparse matrices, ragged lists, complex
    values: NumPy's own errors name neither).

    Examples
    --------
    >>> from skquant._common._checks import float_array
    >>> float_array([1, 2], "w")
    array([1., 2.])
    >>> float_array(["a"], "w")
    Traceback (most recent call last):
    ...
    TypeError: w must be a dense array of real numbers, got list (could not ...
    """
    if np.iscomplexobj(value):
        raise TypeError(f"{name} must be real, got a complex array.")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be {what}, got {type(value).__name__} ({exc})."
        ) from None


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


def check_rng(random_state, name="random_state"):
    """``np.random.default_rng(random_state)``, else a ``ValueError`` naming
    ``name`` and the value (NumPy's own error names neither).

    Examples
    --------
    >>> from skquant._common._checks import check_rng
    >>> float(check_rng(0).random()) == float(np.random.default_rng(0).random())
    True
    >>> check_rng("x")
    Traceback (most recent call last):
    ...
    ValueError: random_state must be an int >= 0 or None, got random_state='x' instead.
    """
    try:
        return np.random.default_rng(random_state)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be an int >= 0 or None, got {name}={random_state!r} instead."
        ) from None


def check_float_dtype(dtype, name="dtype"):
    """``dtype`` as ``np.dtype`` float32 or float64 (``None`` stays ``None``), else
    a ``ValueError`` naming ``name`` and the value.

    Examples
    --------
    >>> from skquant._common._checks import check_float_dtype
    >>> check_float_dtype(np.float32)
    dtype('float32')
    >>> check_float_dtype("int32")
    Traceback (most recent call last):
    ...
    ValueError: dtype must be float32, float64 or None, got dtype='int32' instead.
    """
    if dtype is None:
        return None
    try:
        out = np.dtype(dtype)
    except TypeError:
        out = None
    if out not in (np.float32, np.float64):
        raise ValueError(
            f"{name} must be float32, float64 or None, got {name}={dtype!r} instead."
        )
    return out


def check_pair(value, name):
    """``value``, a pair ``(X, y)`` (a tuple or list of two) or ``None``, else a
    ``TypeError`` naming ``name``.

    Examples
    --------
    >>> from skquant._common._checks import check_pair
    >>> check_pair(([1], [2]), "validation_data")
    ([1], [2])
    >>> check_pair("X", "validation_data")
    Traceback (most recent call last):
    ...
    TypeError: validation_data must be a pair (X, y) or None, got str instead.
    """
    if value is not None and not (isinstance(value, tuple | list) and len(value) == 2):
        kind = type(value).__name__
        if isinstance(value, tuple | list):
            kind = f"a {kind} of {len(value)}"
        raise TypeError(f"{name} must be a pair (X, y) or None, got {kind} instead.")
    return value


def check_bool(value, name):
    """``value`` as a ``bool`` (a Python or NumPy one), else a ``TypeError``
    naming ``name`` (``"no"`` is truthy: a string is refused, not read).

    Examples
    --------
    >>> from skquant._common._checks import check_bool
    >>> check_bool(True, "strict")
    True
    >>> check_bool("no", "strict")
    Traceback (most recent call last):
    ...
    TypeError: strict must be a bool, got strict='no' instead.
    """
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {name}={value!r:.80} instead.")
    return bool(value)


def check_path(path, name="path"):
    """``path`` (a ``str`` or path-like) as a ``str``, else a ``TypeError`` naming
    ``name``: an int, which ``open`` would take for a file descriptor (and close),
    is refused.

    Examples
    --------
    >>> from skquant._common._checks import check_path
    >>> check_path("model.skq")
    'model.skq'
    >>> check_path(3)
    Traceback (most recent call last):
    ...
    TypeError: path must be a str or path-like, got 3 (int) instead.
    """
    if not isinstance(path, str | bytes | os.PathLike):
        raise TypeError(
            f"{name} must be a str or path-like, got {path!r:.80} "
            f"({type(path).__name__}) instead."
        )
    return os.fsdecode(os.fspath(path))


# below this (about 1.5e-154), the square of the largest entry is subnormal and
# loses float64's precision: sums of squares, and the errors and bounds made of
# them, came out 0 from about 1e-170
SQUARES_LOW = float(np.sqrt(np.finfo(np.float64).tiny))


def check_squares(X, name, advice, *, high=True):
    """A ``ValueError`` naming ``name`` when the sums of squares of the float64
    array ``X``'s entries underflow (its largest magnitude, if not 0, is below
    :data:`SQUARES_LOW`) or, with ``high``, overflow float64 (the largest square
    times ``4 X.size`` above its largest number); ``advice`` ends the message."""
    top = max(float(X.max()), -float(X.min())) if X.size else 0.0
    if high and top > np.sqrt(np.finfo(np.float64).max / (4.0 * X.size)):
        raise ValueError(
            f"{name} holds values up to {top:.3g}: sums of their squares overflow "
            f"float64; {advice}"
        )
    if 0 < top < SQUARES_LOW:
        raise ValueError(
            f"{name} holds values of at most {top:.3g}: their squares underflow "
            f"float64 (below {SQUARES_LOW:.1e}), and errors made of them come out 0; "
            f"{advice}"
        )


def check_matrix(array, name, **kwargs):
    """scikit-learn's ``check_array(array, input_name=name, **kwargs)``, its
    errors naming ``name`` where its message does not ("Expected 2D array, got
    1D array instead", "Complex data not supported", sparse input); a torch
    tensor is read detached, on the CPU.

    Examples
    --------
    >>> from skquant._common._checks import check_matrix
    >>> check_matrix([1.0, 2.0], "W")
    Traceback (most recent call last):
    ...
    ValueError: W: Expected 2D array, got 1D array instead:...
    """
    if type(array).__module__.startswith("torch") and hasattr(array, "detach"):
        # a torch tensor that needs gradients (a layer's weight) refused NumPy's
        # conversion with "Can't call numpy() on Tensor that requires grad"
        # (and one read through NumPy keeps its float32, as its array would)
        array = array.detach().cpu()
        array = (
            array.float() if str(array.dtype) == "torch.bfloat16" else array
        ).numpy()
    try:
        return check_array(array, input_name=name, **kwargs)
    except (ValueError, TypeError) as exc:
        if re.search(rf"\b{re.escape(name)}\b", str(exc)):
            raise
        raise type(exc)(f"{name}: {exc}") from None


class Interval(_SklearnInterval):
    """scikit-learn's ``Interval`` constraint that refuses ``True`` and ``False``
    (``bool`` is an ``Integral``: ``scale=True`` was taken for 1.0 and
    ``n_jobs=True`` for 1). Every estimator's numeric constraints use it."""

    def is_satisfied_by(self, val):
        return not isinstance(val, bool | np.bool_) and super().is_satisfied_by(val)
