"""The ``runtime=`` option of the quantized layers: its values, checked, and
resolved per layer; the warning a layer gives when it runs a slower path."""

from .._common._warn import warn

#: the runtimes a quantized layer can run
RUNTIMES = ("auto", "packed", "int8", "float")


def check_runtime(runtime):
    """Raise unless ``runtime`` is one of :data:`RUNTIMES`, or a dict of them."""
    values = runtime.values() if isinstance(runtime, dict) else [runtime]
    for value in values:
        if not isinstance(value, str) or value not in RUNTIMES:
            raise ValueError(
                f"runtime must be one of {RUNTIMES} or a dict from layer name to one "
                f"of them, got runtime={runtime!r} instead."
            )
    return runtime


def runtime_of(runtime, name):
    """The runtime of layer ``name``: ``runtime`` itself, or its dict's entry
    (the key ``"*"`` for layers not named, ``"auto"`` without it)."""
    if isinstance(runtime, dict):
        return runtime.get(name, runtime.get("*", "auto"))
    return runtime


def check_runtime_names(runtime, names, shared=None):
    """ValueError where ``runtime``, a dict, names a layer not among the
    quantized layers ``names`` (nor ``"*"``); ``shared`` maps the other names
    of those layers (a layer under two names, which takes its first name's
    runtime) to theirs."""
    if not isinstance(runtime, dict):
        return
    for key in runtime:
        if key in (shared or {}):
            raise ValueError(
                f"runtime names layer {key!r}, another name of layer "
                f"{shared[key]!r} (one quantized layer, one runtime): name "
                f"{shared[key]!r}."
            )
    unknown = [k for k in runtime if k not in {*names, "*"}]
    if unknown:
        raise ValueError(
            f"runtime names layers {unknown} that are not quantized layers of "
            f"the model; its layers are {list(names)[:12]} (and '*' for the "
            "others)."
        )


class RuntimeFallbackWarning(UserWarning):
    """A quantized layer runs a slower path than asked for (said once per reason)."""


_ANNOUNCED = set()


def announce(key, message):
    """Warn ``message`` once per process and ``key``."""
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    warn(message, RuntimeFallbackWarning)
