"""numba kernels: all of skquant's compiled numerics live in this sub-package.

Contract shared by every kernel here (see the Contributing page of the docs):

* arrays in, arrays out: the caller validates, allocates ``out`` and passes every
  scalar already in the data's dtype;
* ``@njit(cache=True, nogil=True)``, no ``fastmath`` on anything that rounds, clips
  or divides;
* a ``*_parallel`` kernel is a separately named function sharing its per-row helper
  with the serial kernel, because numba's disk cache ignores compile flags.
"""

from pathlib import Path

#: a kernel of each family that the demo compiles: their cache files mark a warm cache
_MARKERS = ("_msq.fake_quantize-", "_nullspace.greedy_path-", "_precision.water_fill-")


def cache_is_warm(cache=None):
    """Whether numba's disk cache already holds the main kernels (no compile wait).

    numba writes ``<module>.<function>-<line>.py<ver>.nbi`` index files next to
    the kernels (in ``__pycache__``) the first time each kernel compiles.
    """
    cache = Path(__file__).parent / "__pycache__" if cache is None else Path(cache)
    try:
        names = [p.name for p in cache.iterdir() if p.suffix == ".nbi"]
    except OSError:
        return False
    return all(any(n.startswith(m) for n in names) for m in _MARKERS)
