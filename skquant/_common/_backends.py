"""Layer kernels in another array library: adapter packages register theirs here.

The quantizers never import an adapter package (``skquant.torch``) as code. A
quantizer given a ``device`` asks :func:`kernels` for the library's kernels;
:func:`kernels` imports the package named in :data:`KERNEL_PACKAGES` on first
use, which registers them with :func:`register_kernels`.
"""

import importlib

__all__ = ["KERNEL_PACKAGES", "check_device", "kernels", "register_kernels"]

#: the package that registers each library's kernels
KERNEL_PACKAGES = {"torch": "skquant.torch"}

_REGISTERED = {}


def register_kernels(library, **functions):
    """Register a library's layer kernels (``msq_codes``, ``gptq_codes``, ...)."""
    _REGISTERED.setdefault(library, {}).update(functions)


def kernels(library="torch"):
    """The kernels ``library`` registered (a dict), importing its package first.

    Raises
    ------
    ImportError
        When the library is not installed, with the extra to install.
    """
    if library not in _REGISTERED:
        try:
            importlib.import_module(KERNEL_PACKAGES[library])
        except ImportError as exc:
            raise ImportError(
                f"a device for the layer kernels needs {library}: install it with "
                f"`pip install skquant[{library}]`, or leave device=None (numba)."
            ) from exc
    return _REGISTERED[library]


def check_device(device, owner):
    """``device`` as a string (``None`` stays ``None``): a torch device name such as
    ``"cpu"``, ``"cuda"`` or ``"cuda:1"``, or a ``torch.device``."""
    if device is None:
        return None
    text = str(device)
    if not isinstance(device, str) and type(device).__name__ != "device":
        raise TypeError(
            f"{owner}: device must be None, a torch device or its name, got "
            f"{type(device).__name__} instead."
        )
    return text
