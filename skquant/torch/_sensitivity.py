"""Per-layer sensitivity of torch models (the front end of the shared driver)."""

import numbers

import numpy as np
import torch

from .._network._sensitivity import (
    HESSIAN_SAMPLES,
    labels_1d,
    sensitivity,
    subsample,
)
from ._data import as_tensor, batches
from ._gradients import gradients_enabled
from ._network import TorchNetwork
from ._state import kept_state, seeded, still_parametrizations


@still_parametrizations
def measure_sensitivity(
    model,
    X,
    y=None,
    *,
    quantizer=None,
    bits=(2, 3, 4, 5, 6, 8),
    tolerance=0.005,
    threshold="margin",
    additivity=True,
    hessian=False,
    n_probes=16,
    max_samples=2000,
    classifier=None,
    skip=(),
    loss_fn=None,
    batch_size=256,
    max_rows=4096,
    random_state=0,
    verbose=False,
    n_jobs=None,
):
    """Per-layer sensitivity of a torch model (Zhou et al.).

    Every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` layer is quantized alone at
    every choice of ``bits`` and the noise power on the model's outputs (the
    logits) is measured on ``X``; Zhou's law is fitted per layer, the tolerated
    noise ``t`` measured and the additivity checked. The parameters shared with
    :func:`skquant.measure_sensitivity` mean the same.

    What does not depend on a layer runs once per layer (through the
    ``nn.Sequential`` containers that hold it, or on the model's ``torch.fx``
    graph; the values the rest reads kept while the layer is measured, up to
    1 GiB), and each choice runs the layer and what depends on it; a model
    ``torch.fx`` cannot trace runs whole for every choice (see
    :meth:`TorchNetwork.layer_outputs`).

    Parameters
    ----------
    model : torch.nn.Module
        The float model (not modified).
    X : torch.Tensor, ndarray, Dataset or DataLoader
        Inputs (a batch dimension first), or a ``Dataset`` of ``(x, y)`` samples
        or a ``DataLoader`` of ``(x, y)`` batches, gathered (their labels are
        ``y``; the sweep holds the measured inputs, at most ``max_samples``).
    y : torch.Tensor or ndarray of int, default=None
        Class indices (needed by ``hessian=True``); without them accuracy is the
        agreement with the float model's decisions.
    quantizer : estimator, default=None
        A skquant weight quantizer with ``n_bits``; ``None`` means per-channel
        :class:`~skquant.UniformQuantizer`. Data-driven quantizers are fitted on
        at most ``max_rows`` of each layer's float input rows.
    bits : sequence, default=(2, 3, 4, 5, 6, 8)
        Bit-widths and the alphabets ``"binary"`` and ``"ternary"``.
    tolerance : float, default=0.005
        The accuracy drop that defines ``t``.
    threshold : {"margin", "empirical", "both"} or None, default="margin"
        How ``t`` is measured.
    additivity : bool, default=True
        Measure the noise of all layers together against the sum of the singles.
    hessian : bool, default=False
        Hutchinson estimate of each layer's Hessian trace (by autograd; needs
        ``y``). Frozen models work, also under ``torch.no_grad()`` (the layers'
        weights require grad for the call only); inside
        ``torch.inference_mode()`` it raises a ``RuntimeError``.
    n_probes : int, default=16
        Hutchinson probes.
    max_samples : int or None, default=2000
        Largest number of samples of ``X`` measured on.
    classifier : bool, default=None
        Whether the outputs are a classifier's logits; ``None``: when they have
        at least two columns, unless ``y`` holds float targets of their shape
        (a regressor's several outputs).
    skip : sequence of str or module classes, default=()
        Modules left out (with their children), by name or by class.
    loss_fn : callable, default=None
        Loss of the Hessian; ``None`` means ``nn.CrossEntropyLoss()``.
    batch_size : int, default=256
        Batch size of the forward passes.
    max_rows : int, default=4096
        Calibration rows per layer for data-driven quantizers.
    random_state : int, default=0
        Seed of the subset, the noise and the probes (and of the order in
        which a shuffling DataLoader gives its samples).
    verbose : bool, default=False
        Progress bar over the layers.
    n_jobs : int, default=None
        Joblib workers for the choices of each layer, as in
        :func:`skquant.measure_sensitivity` (the model travels to them).

    Returns
    -------
    result : SensitivityResult
        Tables by layer and choice (see :func:`skquant.measure_sensitivity`).

    See Also
    --------
    skquant.measure_sensitivity : The same for scikit-learn MLPs.
    skquant.LayerBitAllocator : Measures and allocates bit-widths.

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import measure_sensitivity
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
    ...                             torch.nn.Linear(16, 3))
    >>> res = measure_sensitivity(model, torch.randn(256, 8), bits=(3, 5, 7))
    >>> res.layer_names, res.noise.shape
    (['0', '2'], (2, 3))
    """
    network = TorchNetwork(model, skip=skip, loss_fn=loss_fn, batch_size=batch_size)
    X, y = _tensors(X, y, batch_size, random_state)
    if X.is_floating_point() and not bool(torch.isfinite(X).all()):
        # (every noise and exponent came out NaN)
        raise ValueError(
            f"X holds {int((~torch.isfinite(X)).sum())} NaN or inf values: the "
            "measured outputs would be NaN."
        )
    Xs, ys = subsample(X, y, max_samples, random_state)
    if hessian and ys is None:
        raise ValueError("hessian=True needs the labels y for the loss.")
    weights = [network.module(name).weight for name in network.layer_names]
    with (
        gradients_enabled(
            model, "skquant.torch.measure_sensitivity(hessian=True)", weights
        )
        if hessian
        else kept_state(model)
    ):
        try:
            out = network.outputs(Xs[:1])
        except (RuntimeError, IndexError) as exc:  # (torch's own, from the forward)
            raise ValueError(f"X does not fit the model: {exc}") from exc
        if classifier is None:  # (float targets of the outputs' shape: regression)
            classifier = (
                out.ndim == 2
                and out.shape[1] >= 2
                and not (
                    ys is not None
                    and ys.is_floating_point()
                    and tuple(ys.shape[1:]) == tuple(out.shape[1:])
                )
            )
        if classifier and ys is not None:
            # (n, C) logits, or (n, C, 1, 1); one logit is a binary classifier
            ys = class_labels(ys, max(out.shape[1], 2) if out.ndim >= 2 else 2)
        labels = None if ys is None or not classifier else ys.numpy()
        return sensitivity(
            network,
            Xs,
            labels,
            quantizer=quantizer,
            bits=bits,
            classifier=classifier,
            tolerance=tolerance,
            threshold=threshold,
            additivity=additivity,
            hessian=hessian,
            hessian_data=(
                Xs[:HESSIAN_SAMPLES],
                None if ys is None else ys[:HESSIAN_SAMPLES],
            ),
            n_probes=n_probes,
            max_rows=max_rows,
            random_state=random_state,
            verbose=verbose,
            n_jobs=n_jobs,
        )


def class_labels(y, n_classes):
    """Labels ``y`` of a classifier with ``n_classes`` outputs as an int64 tensor
    of shape ``(n,)`` (a column ``(n, 1)`` raveled, with scikit-learn's
    DataConversionWarning), else a ValueError naming ``y``: labels outside
    ``[0, n_classes)`` made every accuracy 0 and every layer look insensitive."""
    arr = labels_1d(y.detach().cpu().numpy())
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"y must hold class labels (ints), got y of dtype {arr.dtype} instead."
        )
    labels = arr.astype(np.int64)
    if arr.dtype.kind == "f" and not np.array_equal(labels, arr):
        raise ValueError(
            "y must hold class labels (ints), got y with fractional values, e.g. "
            f"{arr[labels != arr][0]!r}."
        )
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise ValueError(
            f"y holds labels {np.unique(labels[bad])[:8].tolist()} outside the "
            f"model's {n_classes} outputs [0, {n_classes - 1}]."
        )
    return torch.from_numpy(labels)


def _tensors(X, y, batch_size, seed):
    """``(X, y)`` as tensors; a ``Dataset`` or ``DataLoader`` of ``(x, y)``
    gathered, its labels ``y``, with torch's generators seeded with ``seed``
    (a shuffling loader's order, which the subsample draws rows of, is then
    the same from run to run; the caller's generators are left as they were)."""
    loader = isinstance(X, torch.utils.data.Dataset | torch.utils.data.DataLoader)
    if not loader:
        return as_tensor(X), None if y is None else as_tensor(y)
    if y is not None:
        raise ValueError(
            f"y must be None when X is a {type(X).__name__}: the labels come from "
            "its (x, y) samples."
        )
    with seeded(int(seed) if isinstance(seed, numbers.Integral) else None, "cpu"):
        pairs = list(batches(X, batch_size, copy=False))
    if not pairs:
        raise ValueError(f"X ({type(X).__name__}) holds no sample.")
    return torch.cat([x for x, _ in pairs]), torch.cat([t for _, t in pairs])
