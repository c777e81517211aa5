"""The layer-by-layer drivers: quantize every layer of a network, measure each layer's
error.
"""

import time
import warnings

import numpy as np

from .._common._heap import release_heap
from .._common._progress import progress
from .._common._warn import warn
from .._quantizers._gram import output_errors
from .._quantizers._nullspace import NoFreedomWarning
from .._tensor._qtensor import QuantizedTensor
from ._dense import DenseNetwork
from ._plan import (
    fit_layer,
    group_slices,
    layer_steps,
    method_name,
    requires,
    resolve_quantizers,
)
from ._report import LayerQuantization

__all__ = ["layer_errors", "quantize_layers", "quantize_network"]


def _output_error(Xq, Q, Xf, W, groups=1, block=512):
    """``||Xq Q - Xf W|| / ||Xf W||`` (0 when the reference is 0), ``block``
    output columns at a time (a float32 ``W`` is not copied whole to float64,
    and a :class:`QuantizedTensor` ``Q`` is dequantized a block at a time); a
    grouped layer's groups each on their own inputs."""
    num = den = 0.0
    for rows, cols in group_slices(W, groups):
        for a in range(cols.start, cols.stop, block):
            c = slice(a, min(cols.stop, a + block))
            res, ref = output_errors(
                Xq[:, rows],
                Xf[:, rows],
                W[:, c],
                Q.dequantize(c) if isinstance(Q, QuantizedTensor) else Q[:, c],
                block=block,
            )
            num, den = num + float(res @ res), den + float(ref @ ref)
    return float(np.sqrt(num / den)) if den > 0 else 0.0


def quantize_layers(
    network,
    quantizer,
    data=None,
    *,
    max_rows=None,
    random_state=0,
    gradients=None,
    calibrate=None,
    verbose=False,
    sink=None,
    data_name="data",
):
    """Quantize a network layer by layer: the one driver every front end calls.

    Layer ``l`` is quantized by its quantizer; data-driven quantizers see the
    layer's inputs computed by the already quantized prefix (``activations``) and
    aim at the float network's (``target_activations``). Memoryless quantizers
    need no calibration pass, and none is run unless one is asked for.

    Parameters
    ----------
    network : Network
        The network adapter.
    quantizer : estimator, mapping or sequence
        See :func:`resolve_quantizers`.
    data : object, default=None
        Calibration data in the adapter's format (needed by data-driven
        quantizers and by ``calibrate=True``).
    max_rows : int, default=None
        Largest number of calibration rows per layer (sampled at capture time).
    random_state : int, default=0
        Seed of the row sampling.
    gradients : callable, default=None
        ``gradients() -> {layer name: (n_in, n_out) gradient}``, called once when
        a layer's quantizer is an :class:`~skquant.AdaptivePrecisionQuantizer`.
    calibrate : bool, default=None
        Walk the calibration data (and report each layer's calibration error)
        even when no quantizer needs it; ``None`` walks only when one does.
    verbose : bool, default=False
        Progress bar over the layers.
    sink : callable, default=None
        ``sink(name, tensor)`` receives each quantized layer's tensor as soon as
        it is fitted, and the result keeps none of it (no quantizer, tensor or
        weights): the walk then holds one layer at a time.
    data_name : str, default="data"
        The caller's name for ``data``, in the error when data is needed and
        missing.

    Returns
    -------
    result : LayerQuantization
        ``quantizers``, ``tensors`` and ``weights`` (dequantized, ``(n_in,
        n_out)``) by layer name, for the quantized layers (empty with a
        ``sink``), and the ``report``.
    """
    names = network.layer_names
    plan = resolve_quantizers(names, quantizer)
    for name, est in plan.items():
        reason = None if est is None else est._network_error()
        if reason is not None:
            raise ValueError(f"layer {name!r}: {reason}")
    needs_data = any(requires(e, "data") for e in plan.values())
    walk = needs_data if calibrate is None else (bool(calibrate) or needs_data)
    if walk and data is None:
        raise ValueError(
            f"data-driven quantizers need calibration data; got {data_name}=None "
            "instead."
        )
    grads = None
    needy = [e for e in plan.values() if requires(e, "gradient")]
    if needy:
        if gradients is None:
            raise ValueError(
                f"{type(needy[0]).__name__} needs loss gradients, which this driver "
                "cannot compute here: pass the labels (and loss) it asks for."
            )
        grads = gradients()
    steps = layer_steps(
        network, data if walk else None, max_rows=max_rows, random_state=random_state
    )
    result = LayerQuantization()
    no_freedom, first_calls = [], {}
    for step in progress(
        steps, desc="quantize layers", total=len(names), enabled=verbose
    ):
        est = plan[step.name]
        W = step.weight
        row = {
            "name": step.name,
            "shape": tuple(W.shape),
            "method": method_name(est),
            "bits": 32.0,
            "size_bits": 32 * W.size,
            "calibration_error": float("nan"),
            "seconds": 0.0,
        }
        if est is not None:
            start = time.perf_counter()
            inputs = step.inputs() if requires(est, "data") else None
            if inputs is not None and step.calls > 1:
                first_calls[step.name] = step.calls
            if inputs is not None and not all(np.isfinite(X).all() for X in inputs):
                raise ValueError(
                    f"layer {step.name!r}: its input on the calibration data holds "
                    "NaN or inf (from the data, or from an earlier layer's output)."
                )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NoFreedomWarning)
                try:
                    est, tensor = fit_layer(
                        est,
                        W,
                        inputs=inputs,
                        gradient=None if grads is None else grads.get(step.name),
                        groups=step.groups,
                    )
                except ValueError as exc:  # e.g. a NaN weight: say which layer
                    raise _naming(exc, step.name) from exc
            for w in caught:  # gathered below; others pass on as they came
                if not issubclass(w.category, NoFreedomWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if any(issubclass(w.category, NoFreedomWarning) for w in caught):
                no_freedom.append(f"{step.name} ({W.shape[0]} inputs)")  # once
            row["seconds"] = time.perf_counter() - start
            row.update(
                bits=tensor.bits_per_param,
                size_bits=tensor.size_bits,
                n_bits=tensor.n_bits,
            )
            step.tensor = tensor
            if sink is None:
                if walk:  # the walk runs the quantized prefix on it
                    step.quantized = tensor.dequantize()
                result.quantizers[step.name] = est
                result.tensors[step.name] = tensor
            else:  # the walk takes the tensor; nothing of the layer is kept
                sink(step.name, tensor)
                plan[step.name] = None  # the fitted quantizer holds its codes
            est = tensor = None
        if step.has_inputs:
            Xq, Xf = step.inputs()
            if step.tensor is None:
                Q = W
            else:  # (a lean walk holds the tensor only)
                Q = step.tensor if step.quantized is None else step.quantized
            row["calibration_error"] = _output_error(Xq, Q, Xf, W, step.groups)
            Q = Xq = Xf = None
        result.report.rows.append(row)
        if sink is not None:  # hold no layer while the walk makes the next one
            step.weight = W = None
            release_heap()
    if first_calls:
        warn(
            f"layers {first_calls} (name: calls) run more than once in a forward "
            "pass: their data-driven quantizers fitted them on their first call's "
            "inputs only (static input grids are fitted on every call's).",
            UserWarning,
        )
    if no_freedom:
        warn(
            f"NullSpaceQuantizer: the calibration data leaves no freedom in "
            f"{len(no_freedom)} of {len(names)} layers ({', '.join(no_freedom)}): "
            "their rank reaches the number of inputs, so every coordinate was "
            "rounded (greedy path following, or MSQ with rounding='nearest'). Pass "
            "a rank cap below n_in to keep only the main directions.",
            NoFreedomWarning,
        )
    return result


def _naming(exc, name):
    """``exc`` again, of its own type, its message led by the layer's name."""
    try:
        return type(exc)(f"layer {name!r}: {exc}")
    except TypeError:  # an exception class that takes other arguments
        return ValueError(f"layer {name!r}: {exc}")


def layer_errors(network, weights, data, *, max_rows=None, random_state=0):
    """Relative error of each layer's output, both networks fed their own prefix.

    Parameters
    ----------
    network : Network
        The float network.
    weights : dict of {str: ndarray}
        Quantized ``(n_in, n_out)`` weights by layer name (layers not named stay
        float).
    data : object
        Data in the adapter's format.
    max_rows : int, default=None
        Largest number of rows per layer.
    random_state : int, default=0
        Seed of the row sampling.

    Returns
    -------
    errors : dict of {str: float}
        ``||Xq Q - Xf W|| / ||Xf W||`` per layer.
    """
    network.check_layer_names(list(weights), "weights")
    errors = {}
    for step in network.walk(data, max_rows=max_rows, random_state=random_state):
        Q = weights.get(step.name, step.weight)
        Xq, Xf = step.inputs()
        errors[step.name] = _output_error(Xq, Q, Xf, step.weight, step.groups)
        step.quantized = Q
    return errors


def quantize_network(layers, quantizer, X, *, verbose=False):
    """Quantize dense layers in order, each on the quantized prefix's activations.

    The framework-free entry of the network layer (:class:`DenseNetwork` and
    :func:`quantize_layers`).

    Parameters
    ----------
    layers : list of (W, b, activation)
        ``W`` of shape ``(n_in, n_out)``, bias ``b`` of shape ``(n_out,)`` (or
        ``None``), and the activation applied after the layer: a callable or one of
        ``"identity"``, ``"relu"``, ``"tanh"``, ``"logistic"``.
    quantizer : estimator, mapping or list
        An unfitted weight quantizer, cloned for every layer; a mapping from layer
        name (``"layer_0"``, ...) to quantizer; or one per layer.
    X : array-like of shape (m, n_in)
        Calibration inputs of the first layer.
    verbose : bool, default=False
        Show a progress bar.

    Returns
    -------
    result : LayerQuantization
        Fitted quantizers, quantized tensors and dequantized weights by layer
        name, and the per-layer report.

    See Also
    --------
    QuantizedMLP : The same for scikit-learn's MLPs, as an estimator.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import GreedyPathQuantizer
    >>> from skquant._network._layers import quantize_network
    >>> rng = np.random.default_rng(0)
    >>> layers = [(rng.standard_normal((20, 30)) / 5, np.zeros(30), "relu"),
    ...           (rng.standard_normal((30, 3)) / 5, np.zeros(3), "identity")]
    >>> res = quantize_network(layers, GreedyPathQuantizer(n_bits=4),
    ...                        rng.standard_normal((64, 20)))
    >>> [w.shape for w in res.weights.values()]
    [(20, 30), (30, 3)]
    """
    return quantize_layers(
        DenseNetwork(layers), quantizer, X, calibrate=True, verbose=verbose
    )
