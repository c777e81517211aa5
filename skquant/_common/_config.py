"""Global configuration: the one place where skquant's defaults are decided.

``set_config`` changes the process-wide setting; ``config_context`` overrides it
inside a ``with`` block, for the current thread (or asyncio task) only, through a
:class:`contextvars.ContextVar`; ``get_config`` reads the overrides on top of the
process-wide setting. The process-wide default of ``progress`` comes from the
environment variable ``SKQUANT_PROGRESS`` (``0``, ``false``, ``no`` or ``off``
turn the bars off).
"""

import contextvars
import os
import threading
from contextlib import contextmanager

__all__ = ["config_context", "get_config", "set_config"]

_FALSE = {"0", "false", "no", "off"}


def _env_flag(name, default):
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in _FALSE


_global_config = {"progress": _env_flag("SKQUANT_PROGRESS", True)}
_lock = threading.Lock()
# overrides of config_context blocks: a dict, None outside every block
_overrides = contextvars.ContextVar("skquant_config", default=None)


def _check(progress, caller):
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(
            f"{caller}: progress must be True, False or None, got {progress!r} instead."
        )


def get_config():
    """The current values of skquant's global settings.

    Returns
    -------
    config : dict
        ``{"progress": bool}``: whether progress bars may be drawn. A copy:
        changing it changes nothing; use :func:`set_config` or
        :func:`config_context`.

    See Also
    --------
    set_config : Change a setting for the whole process.
    config_context : Change a setting inside a ``with`` block.

    Examples
    --------
    >>> import skquant
    >>> with skquant.config_context(progress=False):
    ...     skquant.get_config()["progress"]
    False
    """
    with _lock:
        config = dict(_global_config)
    config.update(_overrides.get() or {})
    return config


def set_config(progress=None):
    """Change skquant's global settings for the whole process.

    Parameters
    ----------
    progress : bool, default=None
        Whether progress bars may be drawn (on stderr) for long work: the
        per-neuron walks of the data-driven quantizers and the loops run with
        ``verbose=True``. ``False`` silences every bar, whatever ``verbose``
        says; ``True`` allows them (a bar is still drawn only for work projected
        to take more than about two seconds, or when ``verbose=True`` asks for
        it). ``None`` leaves the setting as it is. Its default at import is
        ``True``, or ``False`` when the environment variable
        ``SKQUANT_PROGRESS`` is ``0``, ``false``, ``no`` or ``off``.

    See Also
    --------
    get_config : Read the settings.
    config_context : Change a setting inside a ``with`` block only.

    Notes
    -----
    A :func:`config_context` block in progress keeps its own value until it ends.

    Examples
    --------
    >>> import skquant
    >>> before = skquant.get_config()["progress"]
    >>> skquant.set_config(progress=False)
    >>> skquant.get_config()
    {'progress': False}
    >>> skquant.set_config(progress=before)
    """
    _check(progress, "set_config")
    with _lock:
        if progress is not None:
            _global_config["progress"] = progress


@contextmanager
def config_context(*, progress=None):
    """Change skquant's global settings inside a ``with`` block.

    The settings come back to what they were when the block ends (also on an
    exception). The change is seen only by the code that runs in the block in
    this thread (or asyncio task); other threads keep the process-wide setting
    of :func:`set_config`.

    Parameters
    ----------
    progress : bool, default=None
        Whether progress bars may be drawn in the block (see :func:`set_config`).
        ``None`` keeps the current value.

    Yields
    ------
    None
        Nothing; use it as a context manager.

    See Also
    --------
    set_config : Change a setting for the whole process.
    get_config : Read the settings.

    Examples
    --------
    >>> import numpy as np
    >>> import skquant
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((64, 8))
    >>> X = rng.standard_normal((32, 64))
    >>> before = skquant.get_config()
    >>> with skquant.config_context(progress=False):   # no bar, however long
    ...     q = skquant.NullSpaceQuantizer(n_bits=3).fit(W, activations=X)
    >>> skquant.get_config() == before   # back as it was
    True
    """
    _check(progress, "config_context")
    overrides = dict(_overrides.get() or {})
    if progress is not None:
        overrides["progress"] = progress
    token = _overrides.set(overrides)
    try:
        yield
    finally:
        _overrides.reset(token)
