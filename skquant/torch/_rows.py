"""The rows a weight layer multiplies by its matrix: inputs or conv patches, sampled.

A Linear layer's rows are its inputs flattened to 2-D; a convolution's are the
patches under the kernel at each output position, channel first then kernel
offsets (``torch.nn.functional.unfold``'s layout), so that the layer is
``rows @ weight_to_matrix(layer)``. :func:`gather_rows` is the one patch extractor:
it gathers chosen rows only, and :func:`layer_inputs_matrix` all of them.
"""

import math

import numpy as np
import torch
from torch import nn

from .._common._checks import check_rng
from ._layout import to_numpy


def output_sizes(module, x):
    """The output positions of convolution ``module`` along each spatial
    dimension of its input ``x`` (below 1 where the input is smaller than the
    kernel)."""
    spatial = x.shape[2:]
    sizes = []
    conv1d = isinstance(module, nn.Conv1d)
    pads = module._reversed_padding_repeated_twice
    for i, size in enumerate(spatial):
        # _reversed_padding_repeated_twice lists the last dimension first
        j = len(spatial) - 1 - i
        size = size + pads[2 * j] + pads[2 * j + 1]
        k = module.kernel_size[0 if conv1d else i]
        s = module.stride[0 if conv1d else i]
        d = module.dilation[0 if conv1d else i]
        sizes.append((size - d * (k - 1) - 1) // s + 1)
    return sizes


def kernel_padding(module):
    """``(padding, pads)`` of convolution ``module`` for a kernel that pads with
    zeros on both sides alike: its ``padding`` per spatial dimension, and
    ``None``; or, where the module pads otherwise (``padding="same"`` of an
    odd total, ``padding_mode="reflect"``...), zeros and the ``pads`` of
    ``F.pad(x, pads, mode)`` to apply before it (torch's own layer does the
    same)."""
    pads = list(module._reversed_padding_repeated_twice)  # last dimension first
    pairs = [(pads[2 * j], pads[2 * j + 1]) for j in reversed(range(len(pads) // 2))]
    if module.padding_mode == "zeros" and all(a == b for a, b in pairs):
        return tuple(a for a, _ in pairs), None
    return (0,) * len(pairs), pads


def rows_per_sample(module, x):
    """Rows one sample contributes to the layer's input matrix."""
    if isinstance(module, nn.Linear):
        return int(x[0].numel() // x.shape[-1]) if x.dim() > 1 else 1
    return math.prod(output_sizes(module, x))


def row_width(module):
    """Entries of one row of the layer's input matrix (conv patches: every
    input channel's kernel window)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels * math.prod(module.kernel_size)


def gather_rows(module, x, rows):
    """Rows ``rows`` of the matrix a layer multiplies by its weight matrix.

    Parameters
    ----------
    module : nn.Linear, nn.Conv1d or nn.Conv2d
        The layer.
    x : torch.Tensor
        Its input batch.
    rows : torch.Tensor of int64
        Row indices within the batch: for Linear, positions of the flattened
        leading dimensions; for convolutions, ``image * n_positions + position``
        (the row order of ``unfold``).

    Returns
    -------
    X : torch.Tensor of shape (len(rows), n_in)
        Conv patches are gathered at the given positions only, channel first then
        kernel offsets (``unfold``'s layout), all input channels (every group).
        Zero padding is not materialised: out-of-range taps read as 0.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])[rows]
    pads = list(module._reversed_padding_repeated_twice)
    if module.padding_mode != "zeros" and any(pads):
        x = nn.functional.pad(x, pads, mode=module.padding_mode)
        pads = [0] * len(pads)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        (kw,), (sw,), (dw,) = module.kernel_size, module.stride, module.dilation
        kh, sh, dh = 1, 1, 1
        left, right, top, bottom = pads[0], pads[1], 0, 0
    else:
        (kh, kw), (sh, sw), (dh, dw) = (
            module.kernel_size,
            module.stride,
            module.dilation,
        )
        left, right, top, bottom = pads
    N, C, H, W = x.shape
    Ho = (H + top + bottom - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + left + right - dw * (kw - 1) - 1) // sw + 1
    n = rows // (Ho * Wo)
    pos = rows % (Ho * Wo)
    dev = x.device
    # (R, kh*kw) input coordinates of every tap of every kept output position
    iy = ((pos // Wo) * sh - top)[:, None] + (
        torch.arange(kh, device=dev) * dh
    ).repeat_interleave(kw)[None, :]
    ix = ((pos % Wo) * sw - left)[:, None] + (torch.arange(kw, device=dev) * dw).repeat(
        kh
    )[None, :]
    inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    flat = n[:, None] * (C * H * W) + iy.clamp(0, H - 1) * W + ix.clamp(0, W - 1)
    # (R, C, kh*kw): channel first, then taps (unfold's layout)
    idx = flat[:, None, :] + (torch.arange(C, device=dev) * (H * W))[None, :, None]
    vals = x.reshape(-1)[idx]
    if not bool(inside.all()):
        vals = torch.where(
            inside[:, None, :], vals, torch.zeros((), dtype=x.dtype, device=dev)
        )
    return vals.reshape(rows.shape[0], C * kh * kw)  # (a batch may give no row)


def layer_inputs_matrix(module, x):
    """The rows a layer multiplies by its matrix: ``x`` itself or conv patches.

    Parameters
    ----------
    module : torch.nn.Linear, torch.nn.Conv1d or torch.nn.Conv2d
        The layer.
    x : torch.Tensor
        Its input batch.

    Returns
    -------
    rows : torch.Tensor of shape (n_rows, n_in)
        For Linear, ``x`` flattened to 2-D; for a convolution, one row per sample
        and output position (im2col patches): :func:`gather_rows` of every row.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    n = x.shape[0] * rows_per_sample(module, x)
    return gather_rows(module, x, torch.arange(n, device=x.device))


def check_layer_input(name, module, x, *, unbatched=False):
    """Raise a clear error when ``x`` cannot be the input of ``module``
    (``unbatched``: an input without the batch dimension, as torch's layers
    take it, is one too)."""
    if isinstance(module, nn.Linear):
        low = 1 if unbatched else 2
        ok, want = (
            x.dim() >= low and x.shape[-1] == module.in_features,
            (f"a batch ({low}-D or more) with last dimension {module.in_features}"),
        )
    else:
        dims = 3 if isinstance(module, nn.Conv1d) else 4
        ok = x.dim() in ((dims - 1, dims) if unbatched else (dims,))
        ok = ok and x.shape[-dims + 1] == module.in_channels
        want = f"{dims}-D with {module.in_channels} channels"
        want += f" (or {dims - 1}-D, unbatched)" if unbatched else ""
    if ok and not x.is_floating_point():
        ok, want = False, f"of a floating dtype (not {x.dtype}), {want}"
    if not ok:
        raise ValueError(
            f"calibration data does not fit the model: layer {name!r} "
            f"({type(module).__name__}) expects input {want}, got shape "
            f"{tuple(x.shape)} instead."
        )


class RowSampler:
    """The calibration rows kept per layer: at most ``max_rows`` of them.

    A layer's rows are those of all its input batches (samples times rows per
    sample, batch after batch). With ``n`` of them, the layer keeps every row
    when ``n <= max_rows``, else ``max_rows`` rows drawn uniformly without
    replacement (in their order); the same rows in every pass over the batches
    (the layer's float and quantized inputs). One generator draws for all
    layers, in the order their draws are made.

    A draw needs ``n``. :meth:`plan` counts it when a layer's input batches are
    all at hand. A pass that meets them one at a time (:meth:`rows` before any
    plan) takes the first batch's rows per sample for all; a batch that has
    another number (sequences of several lengths) leaves the layer in
    :meth:`unsettled`: its rows from that pass are not to be kept, and after
    :meth:`settle` (a draw from the counts that pass saw) the caller runs it
    again.
    """

    def __init__(self, n_samples, max_rows, random_state):
        self.n_samples = n_samples
        self.max_rows = max_rows
        self.rng = check_rng(random_state)
        self._plans = {}  # name -> (starts by offset or rows per sample, draw)
        self._seen = {}  # name -> {sample offset: rows}, while the plan assumes
        self._unsettled = set()

    def _draw(self, total):
        if self.max_rows is not None and total > self.max_rows:
            return np.sort(self.rng.choice(total, self.max_rows, replace=False))
        return None

    def _counted(self, name, counts):
        starts, total = {}, 0
        for offset, n in counts.items():
            starts[offset], total = total, total + n
        self._plans[name] = (starts, self._draw(total))

    def plan(self, name, module, batches):
        """Draw ``name``'s rows from the row counts of all its input ``batches``
        (nothing when it has a plan already)."""
        if name in self._plans:
            return
        counts, offset = {}, 0
        for x in batches:
            counts[offset] = x.shape[0] * rows_per_sample(module, x)
            offset += x.shape[0]
        self._counted(name, counts)

    def unsettled(self):
        """Layers whose last pass met batches of several rows per sample."""
        return sorted(self._unsettled)

    def settle(self, name):
        """Draw ``name``'s rows from the counts its last pass saw."""
        self._unsettled.discard(name)
        self._counted(name, self._seen.pop(name))

    def rows(self, name, module, x, sample_offset):
        """Kept row indices within this batch (a tensor)."""
        n = x.shape[0] * rows_per_sample(module, x)
        if name not in self._plans:  # the first batch's rows per sample for all
            per = rows_per_sample(module, x)
            self._plans[name] = (per, self._draw(per * self.n_samples))
            self._seen[name] = {}
        starts, idx = self._plans[name]
        if isinstance(starts, dict):
            lo = starts[sample_offset]
        else:
            self._seen[name][sample_offset] = n
            if n != starts * x.shape[0]:
                self._unsettled.add(name)
            if name in self._unsettled:  # gathered again once settled
                return torch.zeros(0, dtype=torch.int64, device=x.device)
            lo = sample_offset * starts
        if idx is None:
            return torch.arange(n, device=x.device)
        sel = idx[np.searchsorted(idx, lo) : np.searchsorted(idx, lo + n)] - lo
        return torch.from_numpy(sel).to(x.device)


def as_float64(chunks):
    if not chunks:
        return np.empty((0, 0))
    return to_numpy(torch.cat(chunks).to(torch.float64))
