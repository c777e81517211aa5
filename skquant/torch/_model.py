"""Layer-by-layer quantization of torch models (Linear, Conv1d and Conv2d layers)."""

import contextlib
import copy

import numpy as np
import torch
from sklearn.base import clone
from torch import nn

from .._common._checks import check_bool, check_int
from .._common._heap import release_heap
from .._network._layers import quantize_layers
from .._quantizers._activation import ActivationQuantizer
from .._tensor import _io
from ._capture import capture, check_ran, repeated_calls
from ._checkpoint import (
    Checkpoint,
    check_default_device,
    is_meta,
    owner,
    put,
    store_entry,
    weight_key,
)
from ._data import input_batches, is_rows, model_device, model_dtype, replayable
from ._fold import fold_batchnorms
from ._gradients import outside_inference_mode
from ._graph import viewed_outputs
from ._layout import layer_kind, refused_layers
from ._network import TorchNetwork, skip_names
from ._qlayers import (
    QuantConv1d,
    QuantConv2d,
    QuantConvMixin,
    QuantLinear,
    QuantMixin,
    quantized_module,
)
from ._rows import check_layer_input
from ._runtimes import check_runtime, check_runtime_names, runtime_of
from ._state import kept_state, still_parametrizations

__all__ = [
    "QuantConv1d",
    "QuantConv2d",
    "QuantLinear",
    "QuantMixin",
    "quantize_model",
    "quantized_module",
]


def _own_forwards(module, args):
    """A forward pre-hook that does nothing: torch's fused transformer path is
    not taken by a module with hooks (see :func:`keep_own_forwards`)."""


def keep_own_forwards(model):
    """Keep torch's fused transformer paths off where quantized layers live.

    In eval mode without gradients, ``nn.TransformerEncoderLayer`` runs one
    fused kernel that reads ``linear1.weight`` and ``linear2.weight`` and calls
    no layer's forward: a quantized layer's input grid and integer kernel would
    be skipped, silently. Such a layer holding a quantized layer gets a pre-hook
    that does nothing (torch takes its own path when hooks are attached), and an
    ``nn.TransformerEncoder`` stops packing its batches as nested tensors. The
    model is changed in place.
    """
    for module in model.modules():
        if not isinstance(
            module, nn.TransformerEncoderLayer | nn.TransformerEncoder
        ) or not any(isinstance(m, QuantMixin) for m in module.modules()):
            continue
        if isinstance(module, nn.TransformerEncoderLayer):
            if _own_forwards not in module._forward_pre_hooks.values():
                module.register_forward_pre_hook(_own_forwards)
        elif isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
    return model


def contiguous_where_viewed(model):
    """Give the quantized convolutions of ``model`` whose output its forward
    calls ``.view`` on (:func:`~._graph.viewed_outputs`) their int8 outputs in
    torch's layout for a contiguous input, the others as their kernel lays them
    out (channels last, which ``.view(n, -1)`` refuses). For a model whose
    layers have (or are about to have) quantized activations: the int8 kernels
    run only then. The model is changed in place."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantMixin)}
    if any(isinstance(m, QuantConvMixin) for m in layers.values()):
        viewed = viewed_outputs(model, layers)
        for name, m in layers.items():
            if isinstance(m, QuantConvMixin):
                m._contiguous_out = name in viewed
    return model


@still_parametrizations
@outside_inference_mode
def quantize_model(
    model,
    quantizer,
    calibration_data=None,
    *,
    max_rows=4096,
    skip=(),
    batch_size=256,
    random_state=0,
    loss_fn=None,
    targets=None,
    return_report=False,
    verbose=False,
    activations=None,
    runtime="auto",
    checkpoint=None,
    output=None,
    fold_batchnorm=False,
):
    """Quantize the Linear, Conv1d and Conv2d layers of a torch model, in order.

    Each layer is quantized with its quantizer. Data-driven quantizers
    (:class:`~skquant.GreedyPathQuantizer`, :class:`~skquant.NullSpaceQuantizer`)
    see the layer's inputs computed by the already quantized layers before it
    (``activations``) and aim at the float model's (``target_activations``);
    rows (samples, or conv output positions) are sampled to at most ``max_rows``
    per layer as they are produced. Memoryless quantizers need no calibration
    data and run no forward pass. Weightless layers (BatchNorm, pooling, ...)
    pass through; grouped and depthwise convolutions are quantized group by group.
    Called under ``torch.inference_mode``, it builds the model with inference mode
    off: the model it gives holds no inference tensors (it can give gradients),
    but where ``model`` holds some itself (built under inference mode), which
    torch lets only inference mode touch: the copy is built in it, as they are.
    Hooks registered on ``model``'s modules are copied with it, as
    ``copy.deepcopy`` copies them, and run on the quantized layers (and in the
    calibration passes): the handles ``register_forward_hook`` gave remove them
    from ``model`` only (remove the copy's from ``layer._forward_hooks``, or
    register them after quantizing).

    Parameters
    ----------
    model : torch.nn.Module
        The float model (left unchanged).
    quantizer : estimator or dict
        An unfitted skquant weight quantizer, cloned per layer, or a dict from
        layer name (``model.named_modules()`` names) to quantizer: layers not
        named stay float unless the key ``"*"`` gives a default.
    calibration_data : torch.Tensor, ndarray or iterable, default=None
        Calibration inputs (floating point, cast to the model's dtype and device:
        integer inputs such as ``uint8`` images are refused; a list of rows,
        of numbers or 1-D float arrays, counts as one array; so does the ``X``
        of an ``(X, y)`` pair), a torch ``Dataset``
        of samples (read ``batch_size`` at a time), or an iterable of batches
        (tensors or ``(x, y)`` pairs, as a ``DataLoader`` gives). Needed by data-driven
        quantizers. Never written to, whatever the model's forward does to its
        input.
    max_rows : int, default=4096
        Largest number of rows (samples, sequence positions or patches) per
        layer, drawn uniformly without replacement from all the rows its input
        batches give (batches of sequences of several lengths too).
    skip : sequence of str or module classes, default=()
        Modules to leave float, with all their children: by name, or by class
        (``skip=[nn.MultiheadAttention]`` leaves every attention block float).
    batch_size : int, default=256
        Batch size when ``calibration_data`` is a tensor or an array.
    random_state : int, default=0
        Seed of the row sub-sampling.
    loss_fn : callable, default=None
        Loss for :class:`~skquant.AdaptivePrecisionQuantizer`'s gradients
        (``None``: cross-entropy).
    targets : tensor or ndarray, default=None
        Labels of ``calibration_data``, needed by
        :class:`~skquant.AdaptivePrecisionQuantizer` only.
    return_report : bool, default=False
        Also return the per-layer :class:`~skquant._network.QuantizationReport`.
    verbose : bool, default=False
        Show a progress bar.
    activations : None, "dynamic" or ActivationQuantizer, default=None
        How the quantized layers' inputs are quantized. ``None``: weight-only (float
        inputs). ``"dynamic"``: 8-bit, the grid computed from each batch at run
        time (one scale per call), as torch's dynamic quantization. An unfitted
        :class:`~skquant.ActivationQuantizer`: static grids, one per layer, fitted
        on ``calibration_data`` at each quantized layer's input as the quantized
        prefix (weights and activations) produces it.
    runtime : {"auto", "packed", "int8", "float"} or dict, default="auto"
        What the quantized layers hold and how they compute (see
        :mod:`skquant.torch._qlayers`): ``"packed"`` bit-packed codes (at most 4
        bits), ``"int8"`` one byte per code (integer GEMM with quantized
        activations), ``"float"`` codes dequantized in every forward. ``"auto"``
        takes the smallest form the kernels run. A dict maps layer names to
        runtimes (``"*"``: the layers not named; ``"auto"`` without it). With
        ``output``, only ``"auto"``: :func:`load_into` takes the runtime.
    checkpoint : str, path-like or Checkpoint, default=None
        Read the model's state from this safetensors checkpoint (a file, or a
        directory of shards with their ``*.safetensors.index.json``; a
        :class:`Checkpoint` for names with a prefix the model's lack), for a model
        too large for memory: build ``model`` on the meta device (``with
        torch.device("meta"): model = Net()``); every state entry but the weight
        layers' weights is read at the start, and each weight layer's weight when
        the walk reaches it, then dropped: one layer's weight is held at a time
        (:class:`TorchNetwork`'s ``lean`` mode). Inside an ``nn.Sequential`` so
        are its inputs; a module with its own ``forward`` (a language model
        looping over its blocks) runs in float first, and the sampled inputs
        of its layers wait for their turn, up to 256 MiB of them: past it, a
        window of layers at a time, each window's taken by float passes of
        its own (see :ref:`checkpoints`).
    fold_batchnorm : bool, default=False
        Fold each BatchNorm1d/2d that reads a convolution's output (and that
        output nothing else) into the convolution before quantizing, as torch's
        own int8 flow does: the weights rounded are those that run, and the
        returned model holds a :class:`FoldedBatchNorm` (an ``nn.Identity``) in
        the BatchNorm's place (it computes the model in eval mode, in either
        mode; ``model`` is left as it was). With quantized activations this
        removes the BatchNorm's float pass between the integer kernels. Pairs
        are read on the model's ``torch.fx`` graph: nothing is folded where fx
        cannot trace it, nor where the convolution or the BatchNorm has hooks
        or a parametrization. A saved folded model records the places:
        :func:`load_into` a model built as the float one (with its
        BatchNorms, convolutions with ``bias=False``) puts the identity there
        and gives the convolutions their folded bias. Not with ``checkpoint``
        or ``output``.
    output : str or path-like, default=None
        Write the quantized model to this skquant file as the walk goes (each
        layer's codes when it is quantized, the other state at the end; the
        same file as :func:`save_model` of the returned model would write) and
        keep nothing: the function returns ``None`` for the model. Read it back
        with :func:`load_into` (into a meta-built model too). With
        ``checkpoint`` or ``output``, ``activations`` is ``None`` or
        ``"dynamic"`` (static grids are fitted on the whole model in memory) and
        no quantizer may need loss gradients.

    Returns
    -------
    qmodel : torch.nn.Module or None
        A copy of ``model`` whose quantized layers are :class:`QuantLinear`,
        :class:`QuantConv1d` or :class:`QuantConv2d`, each with ``weight_codes``,
        ``weight_scale`` and ``size_bits``; ``None`` with ``output``.
    report : QuantizationReport
        Only with ``return_report=True``.

    See Also
    --------
    export_onnx : Write the result to an ONNX file with integer weights.
    save_model : Write it to a skquant file.

    Examples
    --------
    >>> import torch
    >>> from skquant import GreedyPathQuantizer, UniformQuantizer
    >>> from skquant.torch import quantize_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(),
    ...                           torch.nn.Linear(16, 3))
    >>> qnet = quantize_model(net, GreedyPathQuantizer(n_bits=4), torch.randn(256, 20))
    >>> type(qnet[0]).__name__, qnet[0].weight_codes.dtype
    ('QuantLinear', torch.int8)
    >>> qnet, report = quantize_model(net, {"2": UniformQuantizer(n_bits=8)},
    ...                               return_report=True)
    >>> [row["method"] for row in report.rows]
    ['float', 'Uniform']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__} instead."
        )
    check_runtime(runtime)
    check_int(batch_size, "batch_size")
    check_int(max_rows, "max_rows", none=True)
    calibration_data = replayable(calibration_data)
    act_quantizer = check_activations(activations, calibration_data)
    lean = checkpoint is not None or output is not None
    if output is not None and runtime != "auto":
        raise ValueError(
            f"runtime={runtime!r} sets how the returned model runs, and with output= "
            "none is returned (the file holds the codes): pass runtime= to "
            "load_into when reading the file."
        )
    for flag, name in (
        (fold_batchnorm, "fold_batchnorm"),
        (return_report, "return_report"),
        (verbose, "verbose"),
    ):
        check_bool(flag, name)
    if lean and fold_batchnorm:
        raise ValueError(
            "fold_batchnorm=True folds the BatchNorms into a copy of the model, "
            "held in memory: it cannot be combined with checkpoint= or output=."
        )
    if fold_batchnorm:
        model, folded = fold_batchnorms(model)
        if verbose:
            print(f"quantize_model: {len(folded)} BatchNorm(s) folded: {folded}")
    if lean:
        check_default_device("quantize_model")
    if lean and act_quantizer is not None:
        raise ValueError(
            "activations=ActivationQuantizer(...) cannot be combined with "
            "checkpoint= or output=: static input grids are fitted on the whole "
            "quantized model, held in memory. Use activations='dynamic' (a grid per "
            "call, nothing to fit), or quantize a model that fits in memory."
        )
    device = model_device(model)
    if device.type == "cuda":  # the layer kernels where the model lives
        quantizer = on_device(quantizer, device)
    if isinstance(quantizer, dict) and "*" not in quantizer:
        # layers a mapping does not name stay float, whatever their kind (a
        # module the mapping names, or names a layer in, is refused as before)
        skip = skip_names(model, skip) + [
            n
            for n in refused_layers(model)
            if not any(k == n or k.startswith(n + ".") for k in quantizer)
        ]
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(checkpoint)
    if checkpoint is not None and output is not None:
        checkpoint.check_apart(output)
    network = TorchNetwork(
        model,
        skip=skip,
        loss_fn=loss_fn,
        batch_size=batch_size,
        checkpoint=checkpoint,
        lean=lean,
    )
    tied = (
        sorted(set(quantizer) & set(network.tied))
        if isinstance(quantizer, dict)
        else []
    )
    if tied:
        pairs = ", ".join(f"{t!r} shares {network.tied[t]!r}'s" for t in tied)
        raise ValueError(
            f"quantizer names layers {tied} whose weight is another layer's "
            f"({pairs}): a shared weight is quantized once, by its first layer's "
            "quantizer; name that one."
        )
    every = dict(model.named_modules(remove_duplicate=False))
    alias = {t: f for t, f in network.tied.items() if every[t] is every[f]}
    known = [*network.layer_names, *(t for t in network.tied if t not in alias)]
    check_runtime_names(runtime, known, alias)  # (a tied layer: its own runtime)

    repeated = {}  # layers called more than once a pass: their calls' grid
    if act_quantizer is not None:
        repeated = _repeated_layers(network, calibration_data, batch_size)

    def gradients():
        if lean:
            raise ValueError(
                "AdaptivePrecisionQuantizer needs loss gradients of the whole model, "
                "which quantize_model does not compute with checkpoint= or output=."
            )
        whole = isinstance(calibration_data, torch.Tensor | np.ndarray) or is_rows(
            calibration_data
        )
        if calibration_data is None or (targets is None and whole):
            raise ValueError(
                "AdaptivePrecisionQuantizer needs loss gradients: pass "
                "calibration_data and targets (and loss_fn) to quantize_model, or "
                "calibration_data as (x, y) batches (a DataLoader)."
            )
        if targets is not None and not whole:
            raise TypeError(
                "targets= goes with calibration_data as one tensor or array; got "
                f"calibration_data of type {type(calibration_data).__name__}: pass "
                "its batches as (x, y) pairs (a DataLoader) and targets=None."
            )
        data = calibration_data if targets is None else (calibration_data, targets)
        _, grads = network.loss_gradients(data)
        out = {}
        for name in network.layer_names:
            g = grads[f"{name}.weight"]
            out[name] = np.ascontiguousarray(g.reshape(g.shape[0], -1).T)
        return out

    held, layers = {}, {}
    writer = None if output is None else _io.SpooledWriter(output, "output")

    def sink(name, tensor):  # lean walks: each layer's tensor as it comes
        for n in [name, *(t for t, first in network.tied.items() if first == name)]:
            if writer is None:
                held[n] = tensor
            else:
                _write_layer(writer, layers, network.module(name), n, tensor)
                if activations is not None:  # "dynamic": as save_model records it
                    layers[n]["activations"] = {"mode": "dynamic", "n_scales": 1}

    with writer if writer is not None else contextlib.nullcontext():
        res = quantize_layers(
            network,
            quantizer,
            calibration_data,
            max_rows=max_rows,
            random_state=random_state,
            gradients=gradients,
            verbose=verbose,
            sink=sink if lean else None,
            data_name="calibration_data",
        )
        if writer is not None:
            _write_rest(writer, network, layers)
            return (None, res.report) if return_report else None
    if lean:  # the walk's copy, its weights on the meta device
        replace, qmodel = held, network.model
        _materialize(network, replace)
    else:
        replace = dict(res.tensors)
        replace.update(
            {t: replace[f] for t, f in network.tied.items() if f in res.tensors}
        )
        qmodel = _copy_but(model, replace)
    qlayers = dict(qmodel.named_modules(remove_duplicate=False))
    made = {}  # a module under several names: one quantized module for all
    for name, tensor in replace.items():
        old = qlayers[name]
        if id(old) not in made:
            made[id(old)] = quantized_module(
                old, tensor, runtime_of(runtime, name), name
            )
        new = made[id(old)]
        if name == "":  # the model is itself one layer
            qmodel = new
            continue
        parent, _, attr = name.rpartition(".")
        setattr(qlayers[parent] if parent else qmodel, attr, new)
    keep_own_forwards(qmodel)
    if activations is not None:
        contiguous_where_viewed(qmodel)  # before calibration runs int8 kernels
        names = list(replace)  # a tied layer's input gets its own grid too
        if act_quantizer is None:
            qlayers = dict(qmodel.named_modules(remove_duplicate=False))
            for name in names:
                qlayers[name]._set_activations("dynamic")
        else:
            calibrate_activations(
                qmodel, names, act_quantizer, calibration_data, batch_size, repeated
            )
    qlayers = dict(qmodel.named_modules(remove_duplicate=False))
    for row in res.report.rows:
        layer = qlayers.get(row["name"])
        if isinstance(layer, QuantMixin):
            row["activation_bits"] = layer.activation_bits
            row["bytes_held"] = layer.nbytes_held
        elif layer is not None:  # left float: its weight and bias
            row["activation_bits"] = None
            row["bytes_held"] = sum(
                p.numel() * p.element_size() for p in layer.parameters(recurse=False)
            )
    release_heap()  # the walk's and the layers' work arrays back to the system
    return (qmodel, res.report) if return_report else qmodel


def _copy_but(model, names):
    """``copy.deepcopy(model)`` but for the weights of layers ``names`` (about to
    be replaced by quantized layers): the copy shares those with ``model`` rather
    than holding a second float copy of every weight it drops. A weight another
    module of the copy keeps (tied to a layer left float) is copied as usual."""
    mods = dict(model.named_modules(remove_duplicate=False))
    kept = {
        id(p)
        for name, mod in mods.items()
        if name not in names
        for p in mod.parameters(recurse=False)
    }
    memo = {}
    for name in names:
        w = mods[name]._parameters.get("weight")
        if w is not None and id(w) not in kept:
            memo[id(w)] = w
    return copy.deepcopy(model, memo)


def on_device(quantizer, device):
    """``quantizer`` (an estimator, or a dict or sequence of them) with ``device``
    set in every estimator that takes one and has none: their kernels then run in
    torch on the model's device (see :ref:`devices`)."""

    def one(est):
        if est is None or not hasattr(est, "get_params"):
            return est
        if "device" not in est.get_params() or est.get_params()["device"] is not None:
            return est
        return clone(est).set_params(device=str(device))

    if isinstance(quantizer, dict):
        return {name: one(est) for name, est in quantizer.items()}
    if isinstance(quantizer, (list, tuple)):
        return type(quantizer)(one(est) for est in quantizer)
    return one(quantizer)


def _write_layer(writer, layers, module, name, tensor):
    """Write a quantized layer's tensor as :func:`save_model` does."""
    writer.tensor(name or "<root>", tensor)
    layers[name] = {"kind": layer_kind(module), "shape": list(module.weight.shape)}


def _write_rest(writer, network, layers):
    """Finish a lean walk's file: every state entry of the model but the
    quantized weights (a float weight layer's weight read when its turn comes),
    then the description."""
    dtypes, written = {}, {weight_key(n) for n in layers}
    for key, value in network.model.state_dict().items():
        if key in written:
            continue
        if is_meta(value):  # a weight layer left float
            name = key.rpartition(".")[0]
            value = network.float_weight(network.tied.get(name, name))
        store_entry(writer, dtypes, key, value)
    writer.write("torch", {"layers": layers, "dtypes": dtypes})


def _materialize(network, tensors):
    """Give the lean walk's model its weights back: an empty (untouched, so not
    resident) weight where a quantized layer takes the place of the float one,
    the float weight read where a layer stays float."""
    for key, value in network.model.state_dict(keep_vars=True).items():
        if not is_meta(value):
            continue
        mod, attr = owner(network.model, key)
        name = key.rpartition(".")[0]
        if name in tensors:
            put(mod, attr, torch.empty(value.shape, dtype=value.dtype))
        else:
            put(mod, attr, network.float_weight(network.tied.get(name, name)))


def _repeated_layers(network, data, batch_size):
    """``{name: calls}`` of the layers the forward calls more than once (on the
    first batch of ``data``)."""
    model = network.model
    batches = input_batches(data, batch_size, model_dtype(model), model_device(model))
    first = next(iter(batches), None)
    if first is None:
        return {}
    modules = {name: network.module(name) for name in network.layer_names}
    try:
        return repeated_calls(model, modules, first)
    except (TypeError, ValueError):  # the walk says what does not fit, by layer
        return {}


def check_activations(activations, calibration_data):
    """The :class:`~skquant.ActivationQuantizer` of ``activations`` (``None``
    for weight-only or dynamic); raise for anything else."""
    if activations is None or (
        isinstance(activations, str) and activations == "dynamic"
    ):
        return None
    if not isinstance(activations, ActivationQuantizer):
        raise TypeError(
            "activations must be None, 'dynamic' or an ActivationQuantizer, got "
            f"activations={activations!r} instead."
        )
    if calibration_data is None:
        raise ValueError(
            "activations=ActivationQuantizer(...) calibrates static scales at each "
            "layer's input: pass calibration_data (for scales computed at run "
            "time, use activations='dynamic')."
        )
    return activations


#: the most input values one layer's static calibration keeps (rows are sampled)
MAX_CALIBRATION_VALUES = 1 << 24


def calibrate_activations(qmodel, names, quantizer, data, batch_size, every=()):
    """Fit a clone of ``quantizer`` at the input of each layer of ``names``, in order.

    Each layer's grid is set before the next layer is calibrated, so a layer sees
    the input the quantized prefix (weights and activations) gives it. A layer
    of ``every`` (one the forward calls more than once) is fitted on the inputs
    of all its calls, in whole passes.
    """
    mods = dict(qmodel.named_modules(remove_duplicate=False))
    batches = input_batches(data, batch_size, model_dtype(qmodel), model_device(qmodel))
    rng = np.random.default_rng(0)
    with kept_state(qmodel):
        qmodel.eval()
        for name in names:
            layer = mods[name]
            got = []

            def take(n, module, x, offset, got=got):
                check_layer_input(n, module, x, unbatched=True)  # (as the layer)
                if not isinstance(module, nn.Linear):  # one column per channel
                    x = x.movedim(x.dim() - len(module.kernel_size) - 1, -1)
                got.append(x.detach().reshape(-1, x.shape[-1]).float().cpu())

            repeated = name in every
            capture(
                qmodel, {name: layer}, batches, take, stop=not repeated, every=repeated
            )
            check_ran([name], [name] if got else ())
            X = torch.cat(got).numpy()
            if not np.isfinite(X).all():
                raise ValueError(
                    f"the input of layer {name!r} on the calibration data holds NaN "
                    "or inf: activation scales cannot be calibrated on it."
                )
            if X.size > MAX_CALIBRATION_VALUES:
                keep = MAX_CALIBRATION_VALUES // X.shape[1]
                X = X[np.sort(rng.choice(X.shape[0], keep, replace=False))]
            q = clone(quantizer).fit(X)
            meta = {
                "n_bits": int(q.n_bits),
                "qmin": int(q.qmin_),
                "qmax": int(q.qmax_),
                "per_channel": bool(np.size(q.scale_) > 1),
            }
            layer._set_activations("static", meta, q.scale_, q.zero_point_)
