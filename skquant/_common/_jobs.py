"""Independent tasks in this process or on joblib's workers (any joblib backend)."""

import ctypes
import multiprocessing
import numbers
import os
import sys
import uuid
import warnings

import sklearn
from joblib import Parallel

try:  # how joblib's process workers get their tasks (loky's dependency)
    from cloudpickle import dumps as _dumps
except ImportError:  # pragma: no cover
    from pickle import dumps as _dumps
from ._checks import Interval
from ._config import config_context, get_config
from ._warn import warn

__all__ = [
    "N_JOBS",
    "check_n_jobs",
    "configured_n_jobs",
    "hold_freed_memory",
    "run_tasks",
    "shippable",
]

#: glibc's mallopt parameters, and the threshold given to both (1 GiB)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _HOLD = -1, -3, 1 << 30
_HELD = []


#: the parameter constraint of ``n_jobs`` (scikit-learn's validation): ``None``
#: or a non-zero int, as :func:`check_n_jobs` checks it
N_JOBS = [
    None,
    Interval(numbers.Integral, None, -1, closed="right"),
    Interval(numbers.Integral, 1, None, closed="left"),
]


def check_n_jobs(n_jobs):
    """``n_jobs`` checked: ``None`` or a non-zero int (joblib's meaning)."""
    if n_jobs is not None and (
        not isinstance(n_jobs, numbers.Integral)
        or isinstance(n_jobs, bool)
        or n_jobs == 0
    ):
        raise ValueError(
            f"n_jobs must be None or a non-zero int, got n_jobs={n_jobs!r} instead."
        )
    return n_jobs


def configured_n_jobs(n_jobs):
    """The workers of a sweep's ``n_jobs`` (checked): ``None`` takes the
    ``n_jobs`` of a ``joblib.parallel_config`` in force, as scikit-learn's
    estimators do (``None`` again without one: this process)."""
    check_n_jobs(n_jobs)
    if n_jobs is not None:
        return n_jobs
    try:
        from joblib.parallel import get_active_backend

        configured = get_active_backend()[1]
    except (ImportError, TypeError, IndexError):  # pragma: no cover (old joblib)
        return None
    return check_n_jobs(configured) if configured not in (None, 1) else None


def run_tasks(tasks, n_jobs):
    """The results of ``tasks`` (``joblib.delayed`` calls, any iterable), in
    order, as an iterator: in this process for ``n_jobs`` None or 1 (each task
    runs when its result is asked for), else on ``joblib.Parallel(n_jobs)``'s
    workers (a ``parallel_config`` backend, Dask's included, decides where),
    which take the tasks as they come and hand back each result as soon as it
    and those before it are done (all at the end on a backend that cannot)."""
    if n_jobs is None or n_jobs == 1:
        return (task(*args, **kw) for task, args, kw in tasks)
    caller = _caller()
    tasks = ((_in_worker, (task, args, kw, caller), {}) for task, args, kw in tasks)
    try:
        parallel = Parallel(n_jobs=n_jobs, return_as="generator")
    except ValueError:  # e.g. the "multiprocessing" backend
        return _delivered(iter(Parallel(n_jobs=n_jobs)(tasks)))
    return _delivered(parallel(tasks))


#: this process, as told apart from a copy of it forked (the pid) and from a
#: process on another machine (the token)
_TOKEN = uuid.uuid4().hex


def _caller():
    """What a task takes from the calling process: who it is, skquant's and
    scikit-learn's settings in force, and its warning filters."""
    return {
        "process": (os.getpid(), _TOKEN),
        "skquant": get_config(),
        "sklearn": sklearn.get_config(),
        "filters": [f for f in warnings.filters if _pickles(f)],
    }


def _pickles(value):
    """Whether ``value`` travels to a worker process as joblib sends tasks
    (cloudpickle); a warning filter that does not stays behind."""
    try:
        _dumps(value)
    except Exception:
        return False
    return True


def _in_worker(task, args, kw, caller):
    """``(task's result, its warnings)`` run under the caller's settings.

    In another process the task runs under the caller's warning filters and
    its warnings come back, to be given again in the calling process
    (:func:`_delivered`): a warning is seen, caught (``pytest.warns``) or
    filtered as in a serial run. In the calling process (joblib's threads) the
    warnings are given as they come: the filters are the process's.
    """
    settings = sklearn.config_context(**caller["sklearn"])
    with config_context(**caller["skquant"]), settings:
        if caller["process"] == (os.getpid(), _TOKEN):
            return task(*args, **kw), []
        with warnings.catch_warnings(record=True) as caught:
            warnings.filters[:] = caller["filters"]
            result = task(*args, **kw)
    return result, [(str(w.message), w.category) for w in caught]


def _delivered(results):
    """The results of :func:`_in_worker`, each task's warnings given here."""
    for result, caught in results:
        for message, category in caught:
            warn(message, category)
        yield result


def shippable(X):
    """What the tasks of a sweep should carry for the inputs ``X``: a torch
    tensor cloned into storage of its own, anything else as it is.

    A torch tensor pickles its whole storage: 2000 images sliced from the
    10 000 of Fashion-MNIST's test set travelled as 31 MB in each task of a
    sweep, 6 MB once cloned (what a cluster's network carries).
    """
    clone = getattr(X, "clone", None)
    if clone is None or not hasattr(X, "untyped_storage"):
        return X
    return clone()


def hold_freed_memory():
    """In a worker process on glibc, keep freed memory for reuse instead of
    giving it back to the system (once per process; nothing elsewhere).

    A pass of a network allocates and frees buffers of tens of MB per batch. A
    fresh worker process handed them back to the system and paid for new pages
    on every batch, which made VGG-8's passes in joblib's workers much slower
    than the same pass on one thread in the main process; with glibc's mmap and
    trim thresholds raised to 1 GiB (``mallopt``) they ran at that speed
    (``benchmarks/bench_sweeps.py`` shows the sweep). The main process (a serial
    run, joblib's threading backend) is left alone.
    """
    if _HELD or multiprocessing.current_process().name == "MainProcess":
        return
    _HELD.append(True)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _HOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _HOLD)
    except (OSError, AttributeError):  # not glibc
        pass
