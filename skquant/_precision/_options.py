"""The options of the adaptive-precision loop, checked once for every front end."""

import math
import numbers

__all__ = []


def _check_positive(value, name):
    """A positive finite number, or a ValueError naming ``name``."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"{name} must be a positive finite number, got {name}={value!r} instead."
        )
    return float(value)


def _check_loop_params(trust_region, max_iter, max_bits):
    _check_positive(trust_region, "trust_region")
    for name, value, low in (("max_iter", max_iter, 1), ("max_bits", max_bits, 1)):
        if not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(
                f"{name} must be an int >= {low}, got {name}={value!r} instead."
            )


def _check_bound(loss_bound, relative, loss0):
    loss_bound = _check_positive(loss_bound, "loss_bound")
    return loss0 * (1.0 + loss_bound) if relative else loss_bound
