"""Mapping of scikit-learn's ``n_jobs`` onto numba's thread pool."""

import contextlib
import os
import sys
import threading

import numba
from threadpoolctl import ThreadpoolController


def effective_n_jobs(n_jobs):
    """Number of threads ``n_jobs`` asks for, clipped to numba's pool.

    Parameters
    ----------
    n_jobs : int or None
        ``None`` means 1, ``-1`` means every thread numba has, ``-2`` all but one.

    Returns
    -------
    n_threads : int
        A count in ``[1, numba.config.NUMBA_NUM_THREADS]``.
    """
    max_threads = numba.config.NUMBA_NUM_THREADS
    if n_jobs is None:
        return 1
    if n_jobs < 0:
        n_jobs = max_threads + 1 + n_jobs
    return int(min(max(n_jobs, 1), max_threads))


@contextlib.contextmanager
def numba_threads(n_jobs):
    """Run the body with numba's thread count set from ``n_jobs``; restore it after.

    Parameters
    ----------
    n_jobs : int or None
        As in :func:`effective_n_jobs`.

    Yields
    ------
    n_threads : int
        The thread count in force inside the block.
    """
    n_threads = effective_n_jobs(n_jobs)
    if os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        yield n_threads
        return
    # numba's OpenMP pool, started by the first call, can leave the calling
    # thread's OpenMP thread count at numba's, which torch reads as its own: a
    # worker limited to one thread then ran its passes on every core
    torch = sys.modules.get("torch")
    torch_threads = getattr(torch, "get_num_threads", lambda: None)()
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        yield n_threads
    finally:
        numba.set_num_threads(previous)
        if torch_threads is not None and torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


#: threadpoolctl's view of the loaded BLAS libraries, and ``len(sys.modules)``
#: when it was taken
_BLAS = [None, -1]


@contextlib.contextmanager
def one_blas_thread():
    """Run the body with the BLAS libraries limited to one thread each.

    For kernels that call LAPACK and BLAS from numba's threads: BLAS threads on
    top of them fight for the cores (measured: 3x to 8x slower). The libraries
    are found once (threadpoolctl reads the process's memory map, milliseconds
    that added up over a network's many small fits) and again only after new
    modules were imported.
    """
    with _blas().limit(limits=1, user_api="blas"):
        yield


def _blas():
    """threadpoolctl's controller of the loaded BLAS libraries (cached, see
    :func:`one_blas_thread`)."""
    if _BLAS[0] is None or _BLAS[1] != len(sys.modules):
        _BLAS[:] = [ThreadpoolController().select(user_api="blas"), len(sys.modules)]
    return _BLAS[0]


def blas_n_jobs():
    """The ``n_jobs`` of a kernel that follows the BLAS libraries' threads.

    As many threads as the loaded BLAS libraries run on now (the largest count:
    their defaults, the ``*_NUM_THREADS`` variables or a
    ``threadpoolctl.threadpool_limits`` block in force), so that a numba kernel
    doing a fit's main work takes the cores the BLAS products of the other
    quantizers take, and no more. One off the main thread: fits run from a
    thread pool (joblib's threading backend, Dask's threads) share the cores
    already, and numba's ``workqueue`` threading layer aborts the process on
    parallel launches from two threads at once.

    Returns
    -------
    n_jobs : int
        At least 1 (clipped to numba's pool by :func:`effective_n_jobs`).
    """
    if threading.current_thread() is not threading.main_thread():
        return 1
    counts = [lib.num_threads for lib in _blas().lib_controllers]
    return max(counts, default=1)


#: A null-space fit whose layer does fewer multiply-adds than this in one product
#: of its calibration data with its weights (``m * n_in * n_out``) runs its BLAS
#: calls on one thread (:func:`blas_threads_for`): its ladder's products are too
#: small to share out, and the threads of two BLAS libraries (numpy's and
#: scipy's wheels each carry one) spin against each other between its calls.
#: Measured on 2 cores (``benchmarks/bench_blas_threads.py``, one run): VGG-8's
#: layers 1.6x to 4.6x faster on one thread (but the 9-input one, the same), a
#: 1024 x 1024 layer with 1024 rows 1.05x, a 2048 x 2048 one 0.88x (slower).
#: GPFQ's fits keep the libraries' threads, with which they ran up to 1.8x
#: faster there.
SMALL_FIT = 2**31


@contextlib.contextmanager
def blas_threads_for(work):
    """:func:`one_blas_thread` when ``work`` (a fit's ``m * n_in * n_out``) is
    below :data:`SMALL_FIT`; the BLAS libraries as they are otherwise."""
    if work < SMALL_FIT:
        with one_blas_thread():
            yield
    else:
        yield
