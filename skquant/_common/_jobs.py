"""Independent tasks in this process or on joblib's workers (any joblib backend)."""

import numbers

from joblib import Parallel

__all__ = ["check_n_jobs", "run_tasks", "shippable"]


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


def run_tasks(tasks, n_jobs):
    """The results of ``tasks`` (``joblib.delayed`` calls), in order: in this
    process for ``n_jobs`` None or 1, else on ``joblib.Parallel(n_jobs)``'s
    workers (a ``parallel_config`` backend, Dask's included, decides where)."""
    if n_jobs is None or n_jobs == 1:
        return [task(*args, **kw) for task, args, kw in tasks]
    return Parallel(n_jobs=n_jobs)(tasks)


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
