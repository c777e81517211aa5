"""BatchNorm folded into the convolution before it, for
:func:`~skquant.torch.quantize_model`'s ``fold_batchnorm=True``.

A BatchNorm in eval mode is an affine map per channel; after a convolution whose
output only it reads, it folds into that convolution's weight and bias (torch's
``fuse_conv_bn_eval``), and the quantizer then rounds the weights that run. The
pairs are read on the model's ``torch.fx`` graph (torch's layers as calls);
where fx cannot trace it nothing is folded (neighbours in a container say
nothing of how the forward uses them), nor where a hook would see the fold.
"""

import collections
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ._graph import global_hooks, leaf_graph
from ._state import hooked

__all__ = ["FoldedBatchNorm", "fold_batchnorms", "foldable_pairs"]

CONVS = (nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class FoldedBatchNorm(nn.Identity):
    """Where a BatchNorm was before it was folded into the convolution before
    it: the identity. :func:`~skquant.torch.save_model` records these places,
    and :func:`~skquant.torch.load_into` puts one in each of them (a model
    built with its BatchNorms, as the float architecture is, takes the file).

    Parameters
    ----------
    into : str
        The name of the convolution it was folded into.
    at : str, default=None
        This module's name in the model where ``into`` names the convolution
        (``None``: the same model, whatever it is named).
    """

    def __init__(self, into, at=None):
        super().__init__()
        self.into, self.at = into, at

    def conv_name(self, name):
        """The name of the convolution, for this module named ``name`` in the
        model at hand (which may hold the model it was folded in, or be part
        of it); ``None`` where the convolution is outside it."""
        if self.at is None or self.at == name:
            return self.into
        at, into = self.at.split("."), self.into.split(".")
        k = 0  # (the path the two names share)
        while k < min(len(at) - 1, len(into)) and at[k] == into[k]:
            k += 1
        here = name.split(".") if name else []
        up = len(at) - k
        if len(here) < up:
            return None
        return ".".join(here[: len(here) - up] + into[k:])

    def extra_repr(self):
        return f"into={self.into!r}"


def _fits(conv, norm):
    """Whether ``norm`` (with running statistics) matches ``conv``'s outputs,
    neither hooked."""
    return (
        isinstance(conv, CONVS)
        and not hooked(conv)
        and not hooked(norm)
        and isinstance(norm, NORMS)
        and norm.running_mean is not None
        and norm.num_features == conv.out_channels
        and len(conv.kernel_size) + 1 == (2 if isinstance(norm, nn.BatchNorm1d) else 3)
    )


def foldable_pairs(model):
    """``(convolution name, BatchNorm name)`` pairs of ``model`` to fold: the
    norm reads the convolution's output and nothing else does, each is called
    once in a forward and held under one name, neither hooked. None where fx
    cannot trace the model, or hooks on every module are in force."""
    names = collections.Counter(
        n for n, _ in model.named_modules(remove_duplicate=False)
    )
    held = collections.Counter(
        id(m) for _, m in model.named_modules(remove_duplicate=False)
    )
    mods = dict(model.named_modules())

    def single(name):
        return names[name] == 1 and held[id(mods[name])] == 1

    graph = None if global_hooks() else leaf_graph(model, ())
    if graph is None:
        return []
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        src = node.args[0] if node.op == "call_module" and node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and len(node.args) == 1
            and not node.kwargs
            and len(src.users) == 1
            and calls[node.target] == calls[src.target] == 1
            and _fits(mods.get(src.target), mods.get(node.target))
            and single(src.target)
            and single(node.target)
        ):
            pairs.append((src.target, node.target))
    return pairs


def fold_batchnorms(model):
    """A copy of ``model`` with its :func:`foldable_pairs` folded: each
    convolution takes its BatchNorm's affine map (running statistics, eval
    mode), and the BatchNorm becomes a :class:`FoldedBatchNorm` (the
    identity). ``model`` is left as it was.

    Returns
    -------
    folded : torch.nn.Module
        The copy (in ``model``'s training mode).
    pairs : list of (str, str)
        The ``(convolution, BatchNorm)`` names folded.
    """
    pairs = foldable_pairs(model)
    # the copy shares the model's tensors (nothing here writes to them; the
    # folded convolutions get new ones), not a second float copy of them all
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    folded = copy.deepcopy(model, memo)
    for conv_name, norm_name in pairs:
        conv = folded.get_submodule(conv_name)
        norm = folded.get_submodule(norm_name)
        fused = fuse_conv_bn_eval(
            copy.deepcopy(conv).eval(), copy.deepcopy(norm).eval()
        )
        fused.train(conv.training)
        # the folded bias is the BatchNorm's shift and the convolution's bias:
        # trainable where either was (torch's fusion took a bias-less
        # convolution's zeros, frozen)
        fused.bias.requires_grad_(
            any(b is not None and b.requires_grad for b in (conv.bias, norm.bias))
        )
        for name, new in (
            (conv_name, fused),
            (norm_name, FoldedBatchNorm(conv_name, norm_name)),
        ):
            parent, _, attr = name.rpartition(".")
            setattr(folded.get_submodule(parent) if parent else folded, attr, new)
    return folded, pairs
