"""numba kernels: all of skquant's compiled numerics live in this sub-package.

Contract shared by every kernel here (see the Contributing page of the docs):

* arrays in, arrays out: the caller validates, allocates ``out`` and passes every
  scalar already in the data's dtype;
* ``@njit(cache=True, nogil=True)``, no ``fastmath`` on anything that rounds, clips
  or divides;
* a ``*_parallel`` kernel is a separately named function sharing its per-row helper
  with the serial kernel, because numba's disk cache ignores compile flags.

The same algorithms in torch operations (a quantizer's ``device=``) are in
:mod:`._torch`, imported by :func:`torch_kernels` when one is asked for: PyTorch
is optional, and ``import skquant`` never imports it.
"""

from pathlib import Path

#: a kernel of each family that the demo compiles: their cache files mark a warm cache
_MARKERS = ("_msq.fake_quantize-", "_rounding.greedy_path-", "_precision.water_fill-")


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


def check_device(device, owner):
    """``device`` as a string (``None`` stays ``None``): a torch device name such as
    ``"cpu"``, ``"cuda"`` or ``"cuda:1"``, or a ``torch.device``, one that torch can
    compute on here (else a ``ValueError`` naming ``device``)."""
    if device is None:
        return None
    if not isinstance(device, str) and type(device).__name__ != "device":
        raise TypeError(
            f"{owner}: device must be None, a torch device or its name, got "
            f"{type(device).__name__} instead."
        )
    torch_kernels().check_available(str(device), owner)
    return str(device)


def torch_kernels():
    """The torch layer kernels (:mod:`._torch`), imported on first use."""
    try:
        from . import _torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "a device for the layer kernels needs PyTorch: install it with `pip "
            "install skquant[torch]`, or leave device=None (numba)."
        ) from exc
    return _torch
