"""numba kernels: all of skquant's compiled numerics live in this sub-package.

Contract shared by every kernel here (see STYLE.md):

* arrays in, arrays out: the caller validates, allocates ``out`` and passes every
  scalar already in the data's dtype;
* ``@njit(cache=True, nogil=True)``, no ``fastmath`` on anything that rounds, clips
  or divides;
* a ``*_parallel`` kernel is a separately named function sharing its per-row helper
  with the serial kernel, because numba's disk cache ignores compile flags.
"""
