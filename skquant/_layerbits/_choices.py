"""The measured choices of a layer (bit-widths, the binary and ternary alphabets) and
the quantizer at each.
"""

import numbers

from sklearn.base import clone

from .._quantizers._base import BaseWeightQuantizer
from .._quantizers._uniform import UniformQuantizer, level_quantizer

__all__ = ["as_choice", "check_choices", "check_quantizer", "choice_quantizer"]


ALPHABETS = ("binary", "ternary")


CRITERIA = ("noise", "sqnr", "hessian", "accuracy")


# ---------------------------------------------------------------- choices
def as_choice(b):
    """``b`` as a choice (an int bit-width from 2 to 16, ``"binary"`` or
    ``"ternary"``), or ``None`` when it is none."""
    if isinstance(b, str):
        return b if b in ALPHABETS else None
    if isinstance(b, numbers.Integral) and not isinstance(b, bool) and 2 <= b <= 16:
        return int(b)
    return None


def check_choices(bits):
    """The measured choices: distinct bit-widths (2-16), ``"binary"``, ``"ternary"``."""
    if isinstance(bits, str | numbers.Number):
        bits = [bits]
    choices = []
    for b in bits:
        choice = as_choice(b)
        if choice is None:
            raise ValueError(
                "bits must hold bit-widths from 2 to 16 and the alphabets 'binary' "
                f"and 'ternary', got {b!r} in bits={list(bits)!r} instead."
            )
        choices.append(choice)
    if len(choices) < 2 or len(set(choices)) != len(choices):
        raise ValueError(
            f"bits must hold at least two different choices, got bits={choices!r} "
            "instead."
        )
    return choices


def check_quantizer(quantizer):
    """The quantizer the choices are applied to (``None``: per-channel rounding)."""
    quantizer = UniformQuantizer() if quantizer is None else quantizer
    if not isinstance(quantizer, BaseWeightQuantizer) or (
        "n_bits" not in quantizer.get_params()
    ):
        raise TypeError(
            "quantizer must be a skquant weight quantizer with an n_bits parameter "
            "(UniformQuantizer, GreedyPathQuantizer or NullSpaceQuantizer), got "
            f"{quantizer!r:.80} instead."
        )
    # its parameters, checked here: a caller that skips nested validation (the
    # allocator's fit) took a misspelt one, which the clones fitted silently
    quantizer._validate_params()
    return quantizer


def choice_quantizer(quantizer, choice):
    """An unfitted clone of ``quantizer`` at ``choice`` (a bit-width or an alphabet).

    Data-driven quantizers take the alphabets through ``n_bits``; for a memoryless
    quantizer, ``"binary"`` and ``"ternary"`` mean :class:`BinaryQuantizer` and
    :class:`TernaryQuantizer` with its granularity.
    """
    if isinstance(choice, str) and quantizer._fit_requires != "data":
        cls = level_quantizer(choice)
        params = {
            k: v
            for k, v in quantizer.get_params().items()
            if k in ("granularity", "n_jobs")
        }
        return cls(**params)
    return clone(quantizer).set_params(n_bits=choice)
