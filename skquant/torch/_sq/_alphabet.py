"""Binary and ternary in torch: the projection and the baselines' levels."""

import torch

from ..._tensor._alphabets import Alphabet, alphabet_from


def as_alphabet(alphabet):
    """An :class:`~skquant._tensor._alphabets.Alphabet`, or the one its name gives."""
    return alphabet if isinstance(alphabet, Alphabet) else alphabet_from(alphabet)


def project_onto(w, a, alphabet):
    """``w`` on ``a * {-1, 1}`` (``sign(0) = +1``) or on the nearest of
    ``a * {-1, 0, 1}`` (ties at ``a/2`` to 0), as :class:`~skquant.BinaryQuantizer`
    and :class:`~skquant.TernaryQuantizer` round; ``alphabet`` is
    :data:`~skquant._tensor._alphabets.BINARY` or
    :data:`~skquant._tensor._alphabets.TERNARY`."""
    if alphabet.is_binary:
        return a * torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    return a * torch.where(w.abs() > a / 2, torch.sign(w), 0.0).to(w.dtype)


def baseline_level(w, alphabet):
    """The per-tensor level of a baseline: ``mean|w|`` for binary (XNOR-Net's
    rule), ternary weight networks' ``mean{|w| : |w| > 0.7 mean|w|}``."""
    A = w.detach().abs()
    if alphabet.is_binary:
        return A.mean()
    kept = A[A > 0.7 * A.mean()]
    return kept.mean() if kept.numel() else A.mean()
