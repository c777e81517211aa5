"""The rows a weight layer multiplies by its matrix: inputs or conv patches, sampled.

A Linear layer's rows are its inputs flattened to 2-D; a convolution's are the
patches under the kernel at each output position, channel first then kernel
offsets (``torch.nn.functional.unfold``'s layout), so that the layer is
``rows @ weight_to_matrix(layer)``. :func:`gather_rows` is the one patch extractor:
it gathers chosen rows only, and :func:`layer_inputs_matrix` all of them.
"""

import numpy as np
import torch
from torch import nn

from ._layout import to_numpy


def rows_per_sample(module, x):
    """Rows one sample contributes to the layer's input matrix."""
    if isinstance(module, nn.Linear):
        return int(x[0].numel() // x.shape[-1]) if x.dim() > 1 else 1
    spatial = x.shape[2:]
    out = 1
    conv1d = isinstance(module, nn.Conv1d)
    pads = module._reversed_padding_repeated_twice
    for i, size in enumerate(spatial):
        # _reversed_padding_repeated_twice lists the last dimension first
        j = len(spatial) - 1 - i
        size = size + pads[2 * j] + pads[2 * j + 1]
        k = module.kernel_size[0 if conv1d else i]
        s = module.stride[0 if conv1d else i]
        d = module.dilation[0 if conv1d else i]
        out *= (size - d * (k - 1) - 1) // s + 1
    return out


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


def check_layer_input(name, module, x):
    """Raise a clear error when ``x`` cannot be the input of ``module``."""
    if isinstance(module, nn.Linear):
        ok, want = (
            x.dim() >= 1 and x.shape[-1] == module.in_features,
            (f"last dimension {module.in_features}"),
        )
    else:
        dims = 3 if isinstance(module, nn.Conv1d) else 4
        ok = x.dim() == dims and x.shape[1] == module.in_channels
        want = f"{dims}-D with {module.in_channels} channels"
    if ok and not x.is_floating_point():
        ok, want = False, f"of a floating dtype (not {x.dtype}), {want}"
    if not ok:
        raise ValueError(
            f"calibration data does not fit the model: layer {name!r} "
            f"({type(module).__name__}) expects input {want}, got shape "
            f"{tuple(x.shape)} instead."
        )


class RowSampler:
    """The calibration rows kept per layer, drawn when the layer is first reached.

    With ``n`` rows in all (samples times rows per sample), a layer keeps every
    row when ``n <= max_rows``, else ``max_rows`` rows drawn without replacement
    (sorted). One generator draws for all layers, in forward order.
    """

    def __init__(self, n_samples, max_rows, random_state):
        self.n_samples = n_samples
        self.max_rows = max_rows
        self.rng = np.random.default_rng(random_state)
        self.index = {}
        self.kept = {}

    def trimmed(self, name, X):
        """``X`` (a layer's gathered rows) cut to ``max_rows`` rows drawn without
        replacement, the same rows for every call of the layer (its float and its
        quantized inputs). Only batches whose rows per sample differ (sequences
        of several lengths) gather more than ``max_rows`` rows: the draw made at
        the first batch counts its rows per sample for every batch."""
        if self.max_rows is None or X.shape[0] <= self.max_rows:
            return X
        keep = self.kept.get(name)
        if keep is None or keep[0] != X.shape[0]:
            rows = np.sort(self.rng.choice(X.shape[0], self.max_rows, replace=False))
            keep = self.kept[name] = (X.shape[0], rows)
        return X[keep[1]]

    def rows(self, name, module, x, sample_offset):
        """Kept row indices within this batch (a tensor), or None for all."""
        per = rows_per_sample(module, x)
        if name not in self.index:
            total = per * self.n_samples
            if self.max_rows is not None and total > self.max_rows:
                self.index[name] = np.sort(
                    self.rng.choice(total, self.max_rows, replace=False)
                )
            else:
                self.index[name] = None
        idx = self.index[name]
        lo = sample_offset * per
        hi = lo + x.shape[0] * per
        if idx is None:
            return torch.arange(hi - lo, device=x.device)
        sel = idx[np.searchsorted(idx, lo) : np.searchsorted(idx, hi)] - lo
        return torch.from_numpy(sel).to(x.device)


def as_float64(chunks):
    if not chunks:
        return np.empty((0, 0))
    return to_numpy(torch.cat(chunks).to(torch.float64))
