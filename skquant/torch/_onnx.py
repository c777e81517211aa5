"""Export of quantized torch models to ONNX, checked in ONNX Runtime.

The model's quantized layers are swapped for float twins, the copy is exported with
``torch.onnx.export``, and each twin's float weight in the graph is replaced by its
codes, stored as the narrowest ONNX integer type that holds them (INT2, INT4, INT8 or
INT16; UINT types for affine grids), followed by a ``DequantizeLinear`` with the
per-channel scales. Layers with static activation grids get a
``QuantizeLinear -> DequantizeLinear`` pair on their input (with a ``Clip`` first for
grids narrower than 8 bits). The file is then checked: ``onnx.checker`` and ONNX
Runtime on the example input against the torch model.
"""

import copy
import warnings

import numpy as np
import torch
from torch import nn

from ._qlayers import QuantMixin, conv_args, conv_kwargs

__all__ = ["export_onnx"]

#: ONNX integer types by (signed, bits), with the opset their DequantizeLinear needs
_TYPES = {
    (True, 2): ("int2", 25),
    (True, 4): ("int4", 21),
    (True, 8): ("int8", 13),
    (True, 16): ("int16", 21),
    (False, 2): ("uint2", 25),
    (False, 4): ("uint4", 21),
    (False, 8): ("uint8", 13),
    (False, 16): ("uint16", 21),
}


_TYPES_OPSET = {name: op for name, op in _TYPES.values()}


def _require():
    try:
        import ml_dtypes  # noqa: F401
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "export_onnx needs onnx, onnxruntime and onnxscript: pip install "
            f"'skquant[onnx]' ({exc})."
        ) from exc
    return onnx, onnxruntime


def onnx_type(codes):
    """``(type name, opset)``: the narrowest ONNX integer type holding ``codes``."""
    lo, hi = (int(codes.min()), int(codes.max())) if codes.size else (0, 0)
    signed = lo < 0
    for bits in (2, 4, 8, 16):
        if signed and -(2 ** (bits - 1)) <= lo and hi < 2 ** (bits - 1):
            return _TYPES[True, bits]
        if not signed and hi < 2**bits:
            return _TYPES[False, bits]
    raise ValueError(
        f"codes in [{lo}, {hi}] need more than 16 bits: ONNX has no integer type "
        "for them."
    )


def _float_twin(layer):
    """A plain Linear/Conv layer with the dequantized weight of ``layer``."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        twin = nn.Linear(layer.in_features, layer.out_features, bias=bias)
    else:
        cls = nn.Conv1d if isinstance(layer, nn.Conv1d) else nn.Conv2d
        twin = cls(*conv_args(layer), **conv_kwargs(layer))
    with torch.no_grad():
        twin.weight.copy_(layer.weight.detach().float().cpu())
        if bias:
            twin.bias.copy_(layer.bias.detach().float().cpu())
    return twin.eval()


def export_onnx(model, example_input, path, *, opset=None, check=True, rtol=None):
    """Write a model from :func:`quantize_model` to an ONNX file with integer weights.

    Every quantized layer's weight is stored as its codes, in the narrowest ONNX
    integer type that holds them (INT2 for binary, ternary and 2-bit grids, INT4 up to
    4 bits, INT8 up to 8, INT16 above; UINT types with zero points for affine grids),
    with its per-channel float32 scales, and dequantized by a ``DequantizeLinear``.
    ONNX has no 1-, 3- or 5- to 7-bit types: such grids take the next type's bits.
    Static activation grids become ``QuantizeLinear``/``DequantizeLinear`` pairs on the
    layers' inputs. Layers left float and every other module are exported as
    ``torch.onnx.export`` writes them. The batch dimension is dynamic.

    Parameters
    ----------
    model : torch.nn.Module
        A model returned by :func:`quantize_model` (or :func:`load_into`).
    example_input : torch.Tensor
        An input of the model (a batch of at least 2 samples keeps the batch size
        dynamic); the export traces the model on it and checks the file on it.
    path : str or path-like
        The ``.onnx`` file to write.
    opset : int, default=None
        The ONNX opset of the file; ``None`` takes the lowest that every layer's
        integer type needs (21 for INT4 and INT16, 25 for INT2) and at least the
        exporter's. An opset too old for a layer's type is refused with the reason.
    check : bool, default=True
        Check the file with ``onnx.checker`` and run it in ONNX Runtime (graph
        optimisations off) on ``example_input`` against the torch model.
    rtol : float, default=None
        Largest deviation of ONNX Runtime's output from the torch model's, relative
        to the largest output; ``None``: 1e-4 for weight-only models, 1e-2 with
        quantized activations (a value at a rounding tie can fall on either side).

    Returns
    -------
    report : dict
        ``opset``, ``file_bytes`` and, per quantized layer, the ONNX type of its
        codes (``layers``); with ``check``, ``max_rel_deviation``.

    Raises
    ------
    ImportError
        Without onnx, onnxruntime and onnxscript (``pip install 'skquant[onnx]'``).
    ValueError
        For a model without quantized layers, layers with dynamic activation grids
        (not exported yet), or a file that ONNX Runtime runs differently from the
        model.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from skquant import UniformQuantizer
    >>> from skquant.torch import export_onnx, quantize_model
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 3))
    >>> qnet = quantize_model(net, UniformQuantizer(n_bits=4))
    >>> path = os.path.join(tempfile.mkdtemp(), "net.onnx")
    >>> report = export_onnx(qnet, torch.randn(4, 16), path)
    >>> report["layers"], report["max_rel_deviation"] < 1e-4
    ({'0': 'int4', '2': 'int4'}, True)
    """
    onnx, ort = _require()
    import ml_dtypes
    from onnx import helper, numpy_helper

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__} instead."
        )
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantMixin)}
    if not quantized:
        raise ValueError(
            "model has no quantized layer: export_onnx exports models returned by "
            "skquant.torch.quantize_model or load_into (a float model exports with "
            "torch.onnx.export)."
        )
    if "" in quantized:
        raise ValueError(
            "the model is itself one quantized layer: wrap it, e.g. "
            "torch.nn.Sequential(layer), to export it."
        )
    dynamic = [n for n, m in quantized.items() if m._act_mode == "dynamic"]
    if dynamic:
        raise ValueError(
            f"layers {dynamic} quantize their inputs dynamically: export_onnx does "
            "not export dynamic activation grids yet (static ones, from an "
            "ActivationQuantizer, it does)."
        )
    x = torch.as_tensor(example_input)
    stand = copy.deepcopy(model).eval()
    mods = dict(stand.named_modules())
    entries = {}
    for name, layer in quantized.items():
        parent, _, attr = name.rpartition(".")
        twin = _float_twin(mods[name])
        setattr(mods[parent] if parent else stand, attr, twin)
        entries[name] = layer
    shapes = None
    if x.dim() > 0 and x.shape[0] > 1:
        shapes = ({0: torch.export.Dim("batch")},)
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter's own deprecation notices are not the caller's business
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            stand,
            (x,),
            dynamo=True,
            dynamic_shapes=shapes,
            verbose=False,
            opset_version=opset,
            # the exporter's optimiser folds BatchNorm into the weights before it:
            # the weights in the graph must stay the layers' own
            optimize=False,
        )
    proto = program.model_proto
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    version = max(
        op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")
    )
    layers = {}
    new_nodes = []
    for name, layer in entries.items():
        qt = layer.quantized_tensor()
        codes = np.ascontiguousarray(qt.codes.T).reshape(layer._wshape)
        kind, need = onnx_type(codes)
        version = max(version, need)
        layers[name] = kind
        key = _find_weight(f"{name}.weight", layer, inits, numpy_helper)
        axis = 0
        if key is None:
            raise ValueError(
                f"layer {name!r}: its weight is not an initializer of the exported "
                "graph; it cannot be stored as integers."
            )
        key, transposed = key
        if transposed:
            codes, axis = np.ascontiguousarray(codes.T), 1
        graph.initializer.remove(inits.pop(key))
        typed = codes.astype(getattr(ml_dtypes, kind) if kind[-1] in "24" else kind)
        graph.initializer.append(numpy_helper.from_array(typed, f"{key}_q"))
        scale = np.asarray(qt.scale, np.float32).reshape(-1)
        per_tensor = scale.size == 1  # one scale: a scalar, no axis
        if per_tensor:
            scale = scale.reshape(())
        graph.initializer.append(numpy_helper.from_array(scale, f"{key}_scale"))
        inputs = [f"{key}_q", f"{key}_scale"]
        if qt.zero_point is not None:
            zp = np.asarray(qt.zero_point).reshape(scale.shape).astype(typed.dtype)
            graph.initializer.append(numpy_helper.from_array(zp, f"{key}_zero_point"))
            inputs.append(f"{key}_zero_point")
        attrs = {} if per_tensor else {"axis": axis}
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear", inputs, [key], name=f"{key}_dq", **attrs
            )
        )
        if layer._act_mode == "static":
            _quantize_input(graph, key, name, layer, helper, numpy_helper)
    if opset is not None:
        need = max((_TYPES_OPSET[k] for k in layers.values()), default=0)
        if opset < need:
            worst = [n for n, k in layers.items() if _TYPES_OPSET[k] == need]
            raise ValueError(
                f"opset={opset} is too old for the integer types of layers {worst} "
                f"({layers[worst[0]].upper()} needs DequantizeLinear of opset {need}); "
                f"pass opset>={need}, or None."
            )
    for node in reversed(new_nodes):
        graph.node.insert(0, node)
    # the exporter's notes (source locations, module paths) and intermediate
    # shapes: not needed to run, and tens of kB on a small network
    for node in graph.node:
        node.ClearField("metadata_props")
        node.doc_string = ""
    graph.ClearField("value_info")
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = version
    proto.ir_version = helper.find_min_ir_version_for(
        [helper.make_opsetid("", version)]
    )
    onnx.save(proto, str(path))
    report = {"opset": version, "layers": layers}
    report["file_bytes"] = int(len(proto.SerializeToString()))
    if check:
        onnx.checker.check_model(str(path), full_check=True)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = model(x).detach().float().numpy()
        dev = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        acts = any(m._act_mode is not None for m in quantized.values())
        tol = rtol if rtol is not None else (1e-2 if acts else 1e-4)
        report["max_rel_deviation"] = dev
        if not dev <= tol:
            raise ValueError(
                f"ONNX Runtime runs {path!s} differently from the model: relative "
                f"deviation {dev:.2e} on example_input, above rtol={tol}."
            )
    return report


def _find_weight(name, layer, inits, numpy_helper):
    """``(initializer name, transposed)`` of a layer's float weight in the graph."""
    if name in inits:
        return name, False
    W = layer.weight.detach().float().numpy()
    for key, init in inits.items():
        a = numpy_helper.to_array(init)
        if a.shape == W.shape and np.array_equal(a, W):
            return key, False
        if W.ndim == 2 and a.shape == W.T.shape and np.array_equal(a, W.T):
            return key, True
    return None


def _quantize_input(graph, key, name, layer, helper, numpy_helper):
    """Put the input of the node using weight ``key`` on the layer's static grid."""
    meta = layer._act_meta
    if meta["per_channel"]:
        raise ValueError(
            f"layer {name!r} has a per-feature input grid: export_onnx writes one "
            "input scale per layer."
        )
    index = next(i for i, n in enumerate(graph.node) if key in n.input)
    node = graph.node[index]
    x_name = node.input[0]
    scale = float(layer.input_scale[0])
    zp = int(layer.input_zero_point[0])
    qmin, qmax = meta["qmin"], meta["qmax"]
    signed = qmin < 0
    dtype = np.int8 if signed else np.uint8
    prefix = f"{key}_input"
    init = [
        numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(np.array(zp, dtype), f"{prefix}_zero_point"),
        numpy_helper.from_array(
            np.array((qmin - zp) * scale, np.float32), f"{prefix}_lo"
        ),
        numpy_helper.from_array(
            np.array((qmax - zp) * scale, np.float32), f"{prefix}_hi"
        ),
    ]
    graph.initializer.extend(init)
    nodes = [
        helper.make_node(
            "Clip", [x_name, f"{prefix}_lo", f"{prefix}_hi"], [f"{prefix}_clip"]
        ),
        helper.make_node(
            "QuantizeLinear",
            [f"{prefix}_clip", f"{prefix}_scale", f"{prefix}_zero_point"],
            [f"{prefix}_q"],
        ),
        helper.make_node(
            "DequantizeLinear",
            [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zero_point"],
            [f"{prefix}_dq"],
        ),
    ]
    node.input[0] = f"{prefix}_dq"
    for n in reversed(nodes):
        graph.node.insert(index, n)
