"""Warnings that point at the user's line."""

import os
import sys
import warnings

import sklearn

#: the packages whose frames a warning skips: skquant's own, and scikit-learn's
#: wrappers its estimators run under (``fit`` through ``_fit_context``)
_INSIDE = tuple(
    os.path.dirname(os.path.abspath(m.__file__)) + os.sep
    for m in (sys.modules[__name__.partition(".")[0]], sklearn)
)


def _inside(filename):
    """Whether a frame of ``filename`` is skquant's, scikit-learn's or torch's
    module calls (a quantized layer's forward; torch is not imported with
    skquant: its folder is looked up once it is)."""
    if filename.startswith(_INSIDE):
        return True
    torch = sys.modules.get("torch")
    where = getattr(torch, "__file__", None)
    return where is not None and filename.startswith(
        os.path.join(os.path.dirname(os.path.abspath(where)), "nn", "")
    )


def warn(message, category=UserWarning):
    """``warnings.warn`` at the first frame of the call stack outside skquant
    (and scikit-learn, and torch's module calls): the user's call, however deep
    the warning is raised.

    Examples
    --------
    >>> import warnings
    >>> from skquant._common._warn import warn
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     warn("careful")
    >>> str(seen[0].message), seen[0].category.__name__
    ('careful', 'UserWarning')
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and _inside(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
