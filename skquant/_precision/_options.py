"""The options of the adaptive-precision loop, checked once for every front end."""

import math
import numbers

__all__ = ["LOOP_OPTIONS", "loop_options"]

#: The options of the adaptive-precision loop that every front end takes, with their
#: defaults: the one definition. ``adaptive_quantize_mlp`` and
#: ``skquant.torch.adaptive_quantize_model`` list them in their signatures (a test
#: checks names and defaults against this) and pass them on with
#: :func:`loop_options`; ``adaptive_quantize_network`` takes them as keywords.
LOOP_OPTIONS = {
    "loss_bound": 0.1,
    "relative": True,
    "trust_region": 0.05,
    "max_iter": 10,
    "max_bits": 24,
    "group_size": None,
    "group_margin": "smallest",
    "map_coder": "auto",
    "payload_coder": "range",
    "retrain": None,
    "retrain_steps": 50,
    "retrain_lr": 1e-3,
    "retrain_batch_size": None,
    "retrain_data": None,
    "random_state": None,
}


def loop_options(values):
    """The loop options out of a front end's arguments (``locals()``), by name."""
    return {name: values[name] for name in LOOP_OPTIONS}


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
