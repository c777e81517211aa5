"""Export of quantized torch models to ONNX, checked in ONNX Runtime.

The model's quantized layers are swapped for float twins, the copy is exported with
``torch.onnx.export``, and each twin's float weight in the graph is replaced by its
codes in the narrowest ONNX integer type that holds them (INT2, INT4, INT8 or INT16;
UINT for affine grids), then a ``DequantizeLinear`` with the per-channel scales.
Layers with static activation grids get a ``QuantizeLinear -> DequantizeLinear``
pair on their input (with a ``Clip`` first for grids narrower than 8 bits); dynamic
grids are computed in the graph (``DynamicQuantizeLinear``, or its 7-bit form from
reductions). Linear layers may instead run ONNX Runtime's ``MatMulNBits``
(``matmul_nbits=``). The file is checked by ``onnx.checker`` and in ONNX Runtime
on the example input; a deviation from torch names the first layer that differs.
"""

import copy
import inspect
import warnings

import numpy as np
import torch
from torch import nn

from .._common._checks import check_bool, check_int, check_positive
from .._common._warn import warn
from .._tensor._io import check_target
from ._data import model_dtype
from ._int8 import dynamic_reduce_range
from ._layout import conv_args, conv_kwargs
from ._onnxcheck import check_dynamic_axes, check_file
from ._onnxgraph import (
    bias_apart,
    consumers,
    find_weight,
    plain_gemm,
    read_elsewhere,
    replace_product,
    warn_fixed,
)
from ._qlayers import QuantMixin
from ._state import kept_state

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

#: ``matmul_nbits`` values and the accuracy level of ONNX Runtime's MatMulNBits
#: (0: float32 products; 4: the inputs on an 8-bit grid per block, integer products)
_NBITS_LEVELS = {"float": 0, "int8": 4}

#: columns per scale block of MatMulNBits (its CPU kernels' sweet spot)
_NBITS_BLOCK = 128


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
    if isinstance(layer, nn.Linear):  # (skip_init: torch's RNG not drawn from)
        twin = nn.utils.skip_init(
            nn.Linear, layer.in_features, layer.out_features, bias=bias
        )
    else:
        cls = nn.Conv1d if isinstance(layer, nn.Conv1d) else nn.Conv2d
        twin = nn.utils.skip_init(cls, *conv_args(layer), **conv_kwargs(layer))
    with torch.no_grad():
        twin.weight.copy_(layer.weight.detach().float().cpu())
        if bias:
            twin.bias.copy_(layer.bias.detach().float().cpu())
    return twin.eval()


def export_onnx(
    model,
    example_input,
    path,
    *,
    opset=None,
    check=True,
    rtol=None,
    matmul_nbits=None,
    integer_products=True,
    dynamic_axes=None,
):
    """Write a model from :func:`quantize_model` to an ONNX file with integer weights.

    Every quantized layer's weight is stored as its codes, in the narrowest ONNX
    integer type that holds them (INT2 for binary, ternary and 2-bit grids, INT4 up to
    4 bits, INT8 up to 8, INT16 above; UINT types with zero points for affine grids),
    with its per-channel float32 scales, and dequantized by a ``DequantizeLinear``.
    ONNX has no 1-, 3- or 5- to 7-bit types: such grids take the next type's bits.
    Static activation grids become ``QuantizeLinear``/``DequantizeLinear`` pairs on the
    layers' inputs; dynamic ones a ``DynamicQuantizeLinear`` (8 bits) or the same
    grid computed from ``ReduceMin``/``ReduceMax`` (7 bits, for weights whose codes
    exceed 64 in magnitude, as the torch runtime does). Layers left float and every
    other module are exported as ``torch.onnx.export`` writes them, in eval mode
    (a model in train mode is exported and checked as ``model.eval()`` runs, and
    given back in its modes). The batch dimension is dynamic, also for a forward
    that takes ``*args`` (``nn.DataParallel``, ``torch.compile``'s wrapper).

    Parameters
    ----------
    model : torch.nn.Module
        A model returned by :func:`quantize_model` (or :func:`load_into`).
    example_input : torch.Tensor or ndarray
        One input batch of the model; the export traces the model on it (a
        batch of one sample as two copies of it, so that the batch size stays
        free in the file; where the model refuses two, the file's batch is 1,
        with a warning, as is an axis the forward fixes: an example without a
        batch axis gives a file of its one shape) and checks the file on it.
        Never written to, whatever the forward does to its input.
    path : str or path-like
        The ``.onnx`` file to write.
    opset : int, default=None
        The ONNX opset of the file; ``None`` takes the lowest that every layer's
        integer type needs (21 for INT4 and INT16, 25 for INT2) and at least the
        exporter's. An opset too old for a layer's type is refused with the reason.
    check : bool, default=True
        Check the file with ``onnx.checker`` and run it in ONNX Runtime (graph
        optimisations off) on ``example_input`` against the torch model; a
        deviation above ``rtol`` raises, naming the first quantized layer whose
        output differs. The run with ONNX Runtime's default optimisations (which
        fuse some patterns into integer kernels) is reported, and warned about
        when it deviates beyond ``rtol``.
    rtol : float, default=None
        Largest deviation of ONNX Runtime's output from the torch model's, relative
        to the largest output; ``None``: 1e-4 for weight-only models, 1e-2 with
        static activation grids (a value at a rounding tie can fall on either
        side), 2e-2 with dynamic ones (torch's dynamic int8 kernel computes its
        grid and rounds in its own arithmetic) and 3e-2 with
        ``matmul_nbits="int8"``.
    matmul_nbits : {None, "float", "int8"}, default=None
        Write Linear layers whose codes fit 2, 4 or 8 bits as ONNX Runtime's
        ``MatMulNBits`` (domain ``com.microsoft``; the file then runs in ONNX
        Runtime only): ``"float"`` multiplies in float32 (accuracy level 0),
        ``"int8"`` puts the inputs on an 8-bit grid per block of 128 and multiplies
        in integers (accuracy level 4; faster at small batches, about 1e-2 off).
        The codes are packed in the operator's unsigned layout with one scale per
        block of 128 columns (the channel's scale, repeated). ``None`` writes
        ``DequantizeLinear`` for every layer.
    integer_products : bool, default=True
        Linear layers with quantized inputs (static grids of at most 8 bits, or
        dynamic ones) multiply the integer codes: ``QuantizeLinear ->
        MatMulInteger``, then the scales. The input codes are unsigned; weights
        are signed, except for 8-bit input grids with weight codes beyond +-64,
        whose ``uint8 x int8`` pair sums x86 CPUs without VNNI saturate in int16:
        those weights are stored as ``UINT8`` with zero point 128 (the same
        values, an exact ``uint8 x uint8`` product). ``False`` writes dequantized
        weights (``DequantizeLinear``) for every layer.
    dynamic_axes : dict of {int: str}, default=None
        Axes of the input besides the batch that the file leaves free, by name
        (``{1: "sequence"}`` for a language model's token ids). Each needs a size
        of at least 2 in ``example_input``; with ``check``, the file is also run
        on ``example_input`` cut by one along them.

    Returns
    -------
    report : dict
        ``opset``, ``file_bytes``, per quantized layer the ONNX type of its codes
        (``layers``) and the node that uses them (``nodes``: ``DequantizeLinear``,
        ``MatMulInteger`` or ``MatMulNBits``); with ``check``, ``max_rel_deviation`` and
        ``optimized_max_rel_deviation`` (ONNX Runtime's default optimisations).

    Raises
    ------
    ImportError
        Without onnx, onnxruntime and onnxscript (``pip install 'skquant[onnx]'``).
    ValueError
        For a model without quantized layers, an opset too old for a layer's
        integer type, or a file that ONNX Runtime runs differently from the model.

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
    from onnx import helper, numpy_helper

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__} instead."
        )
    check_bool(integer_products, "integer_products")
    check_target(path, "path")  # (a folder or a missing folder: said before work)
    if matmul_nbits is not None and matmul_nbits not in _NBITS_LEVELS:
        raise ValueError(
            f"matmul_nbits must be None, 'float' or 'int8', got {matmul_nbits!r}."
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
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    floats += [m._wdtype for m in quantized.values() if hasattr(m, "_wdtype")]
    wide = sorted({str(d) for d in floats if d != torch.float32})
    if wide:
        raise ValueError(
            f"model computes in {wide}: export_onnx writes float32 graphs "
            "(ONNX's DequantizeLinear gives float32 weights). Export a float32 copy: "
            "copy.deepcopy(model).float()."
        )
    per_feature = [
        n
        for n, m in quantized.items()
        if m._act_mode == "static" and m._act_meta["per_channel"]
    ]
    if per_feature:
        raise ValueError(
            f"layers {per_feature} have per-feature input grids: export_onnx writes "
            "one input scale per layer (ActivationQuantizer(granularity='per_tensor'))."
        )
    if isinstance(example_input, np.ndarray):
        example_input = torch.from_numpy(example_input)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            "example_input must be one tensor, an input batch of the model (the "
            "exported graph takes one input), got "
            f"{type(example_input).__name__} instead."
        )
    check_int(opset, "opset", none=True)
    check_bool(check, "check")
    want = model_dtype(model)
    if example_input.is_floating_point() and example_input.dtype != want:
        raise ValueError(
            f"example_input has dtype {example_input.dtype}, the model's parameters "
            f"{want}: pass example_input.to({want})."
        )
    if (
        check
        and example_input.is_floating_point()
        and not bool(torch.isfinite(example_input).all())
    ):
        raise ValueError(
            "example_input holds NaN or inf: the ONNX Runtime check compares the "
            "outputs on it (a NaN deviation proves nothing); pass finite inputs."
        )
    if rtol is not None:
        rtol = check_positive(rtol, "rtol")
    # the graph is the model in eval mode; the caller's tensor is never run on
    # (a forward may write to its input)
    x = example_input.detach().clone()
    stand = copy.deepcopy(model).eval()
    mods = dict(stand.named_modules(remove_duplicate=False))
    twins = {}  # one twin a layer, under each of its names (self.b = self.a)
    for name, mod in list(mods.items()):
        if name and isinstance(mod, QuantMixin):
            twin = twins.setdefault(id(mod), _float_twin(mod))
            parent, _, attr = name.rpartition(".")
            setattr(mods[parent] if parent else stand, attr, twin)
    try:  # (its own error, not the exporter's on a graph it cannot trace)
        with torch.no_grad():
            stand(x.clone())
    except Exception as exc:
        raise ValueError(
            f"example_input of shape {tuple(x.shape)} does not run through the "
            f"model: {type(exc).__name__}: {exc}"
        ) from exc
    free = check_dynamic_axes(dynamic_axes, x)
    program, doubled = None, x.dim() > 0 and x.shape[0] == 1
    if doubled:  # the exporter fixes an axis of size 1: trace two copies
        try:
            program = _export(stand, torch.cat([x, x]), free, opset, batch=True)
        except Exception:  # e.g. an unbatched input: its first axis is no batch
            pass
    if program is None:
        try:
            program = _export(
                stand, x, free, opset, batch=x.dim() > 0 and x.shape[0] > 1
            )
        except Exception as exc:  # (torch's TorchExportError, with a graph dump)
            if type(exc).__name__ != "TorchExportError":
                raise
            raise RuntimeError(
                "export_onnx: torch.export could not trace the model's forward "
                "(the quantized layers are not the cause: they are exported as float "
                "twins). Data-dependent Python control flow (.item(), early exits) "
                "does not trace: express it with tensor operations or torch.cond, or "
                "export the part of the model that traces. torch's error follows."
            ) from exc
        if doubled:  # (the one sample traced; two copies did not)
            warn(
                "export_onnx: the model does not run on two copies of the example's "
                "one sample, so the file's batch size is 1: pass an example of "
                "two samples or more to leave it free.",
                UserWarning,
            )
    proto = program.model_proto
    graph = proto.graph
    warn_fixed(graph, {0: "batch", **free} if x.dim() > 0 and x.shape[0] > 1 else free)
    inits = {i.name: i for i in graph.initializer}
    version = max(
        op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")
    )
    if opset is not None and version < opset:
        raise ValueError(
            f"opset={opset} is above what torch's exporter writes (it wrote opset "
            f"{version}): pass opset<={version}, or None."
        )
    layers, nodes, probes = {}, {}, {}
    new_nodes = []
    for name, layer in quantized.items():
        qt = layer.quantized_tensor()
        codes = np.ascontiguousarray(qt.codes.T).reshape(layer._wshape)
        kind, need = onnx_type(codes)
        if kind.endswith("int2") and layer._act_mode == "static" and codes.ndim > 2:
            # ONNX Runtime's optimiser fuses the static pattern of a convolution
            # into QLinearConv, which rejects INT2 weights: the next type
            kind, need = _TYPES[kind == "int2", 4]
        layers[name] = kind
        found = find_weight(f"{name}.weight", layer, inits, numpy_helper)
        if found is None:
            raise ValueError(
                f"layer {name!r}: its weight is not an initializer of the exported "
                "graph; it cannot be stored as integers."
            )
        key, transposed = found
        sites = [node for _, node in consumers(graph, key)]
        probes[name] = sites[0].input[0]
        # a weight some other node reads too stays defined: dequantized
        elsewhere = read_elsewhere(graph, key)
        integer = (
            matmul_nbits is None
            and integer_products
            and layer._act_mode is not None
            and isinstance(layer, nn.Linear)
            and kind in ("int2", "int4", "int8")
            and qt.zero_point is None
            and qt.precision_bits is None
            and (layer._act_mode == "dynamic" or layer._act_meta["n_bits"] <= 8)
            and all(n.op_type == "MatMul" or plain_gemm(n, helper) for n in sites)
            and not elsewhere
        )
        # 8-bit input codes times weight codes beyond +-64: an unsigned product
        wide = (
            integer
            and layer._act_mode == "static"
            and layer._act_meta["n_bits"] == 8
            and dynamic_reduce_range(layer._largest_code)
        )
        if wide:
            kind = layers[name] = "uint8"
        if layer._act_mode == "static" and layer._act_meta["n_bits"] > 8:
            version = max(version, 21)  # 16-bit QuantizeLinear
        graph.initializer.remove(inits.pop(key))
        if layer._act_mode is not None:
            names = _quantize_input(graph, key, layer, helper, numpy_helper, integer)
            if integer:
                _integer_linear(
                    graph, key, codes, kind, qt.scale, names, helper, numpy_helper
                )
                nodes[name] = "MatMulInteger"
                version = max(version, need)
                continue
        if (
            matmul_nbits is not None
            and not elsewhere
            and isinstance(layer, nn.Linear)
            and kind[-1] in "248"
            and _matmul_nbits(
                graph,
                key,
                codes,
                qt,
                kind,
                _NBITS_LEVELS[matmul_nbits],
                helper,
                numpy_helper,
            )
        ):
            nodes[name] = "MatMulNBits"
            continue
        nodes[name] = "DequantizeLinear"
        version = max(version, need)
        if layer._act_mode == "static":  # (see bias_apart)
            bias_apart(graph, key, len(layer._wshape) - 2, helper, numpy_helper)
        axis = 0
        if transposed:
            codes, axis = np.ascontiguousarray(codes.T), 1
        typed = codes.astype(_numpy_type(kind))
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
    if opset is not None:
        # the codes stored as ONNX tensors (MatMulNBits packs them in bytes)
        needs = {
            n: _TYPES_OPSET[k] for n, k in layers.items() if nodes[n] != "MatMulNBits"
        }
        need = max(needs.values(), default=0)
        if opset < need:
            worst = [n for n, v in needs.items() if v == need]
            raise ValueError(
                f"opset={opset} is too old for the integer types of layers {worst} "
                f"({layers[worst[0]].upper()} tensors need opset {need}); "
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
    if "MatMulNBits" in nodes.values():
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    proto.ir_version = helper.find_min_ir_version_for(
        [helper.make_opsetid("", version)]
    )
    onnx.save(proto, str(path))
    report = {"opset": version, "layers": layers, "nodes": nodes}
    report["file_bytes"] = int(len(proto.SerializeToString()))
    if check:
        if matmul_nbits is None:
            onnx.checker.check_model(str(path), full_check=True)
        else:  # the checker knows no contrib operators' shapes
            onnx.checker.check_model(str(path))
        if rtol is None:
            modes = {m._act_mode for m in quantized.values()}
            rtol = 1e-2 if "static" in modes else 1e-4
            if "dynamic" in modes:
                # torch's dynamic int8 kernel picks its grid and rounds in its
                # own arithmetic: 1.0e-2 on the 4096 MLP (bench_onnx.py --nets mlp)
                rtol = 2e-2
            if matmul_nbits == "int8":
                rtol = 3e-2

        with kept_state(model):  # checked as exported: in eval mode
            model.eval()
            report.update(check_file(model, x, path, proto, probes, rtol, ort, helper))
            if free.keys() - {0}:  # the free axes, on another size
                cut = x[
                    tuple(
                        slice(0, n - 1) if a in free else slice(None)
                        for a, n in enumerate(x.shape)
                    )
                ]
                more = check_file(model, cut, path, proto, probes, rtol, ort, helper)
                for k, v in more.items():
                    report[k] = max(report[k], v)
    return report


def _export(model, x, free, opset, batch):
    """``torch.onnx.export``'s program of ``model`` on ``x`` with axes ``free``
    (``{axis: name}``) left free, and the batch with ``batch``."""
    free = {0: "batch", **free} if batch else free
    shapes = ({a: torch.export.Dim(n) for a, n in free.items()},) if free else None
    if shapes and _takes_varargs(model):  # forward(*xs), as DataParallel's: a tuple
        shapes = (shapes,)
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter's own deprecation notices are not the caller's business
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            model,
            (x.clone(),),
            dynamo=True,
            dynamic_shapes=shapes,
            verbose=False,
            opset_version=opset,
            # the exporter's optimiser folds BatchNorm into the weights before it:
            # the weights in the graph must stay the layers' own
            optimize=False,
        )


def _takes_varargs(model):
    """Whether the model's forward takes its inputs as ``*args``."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - a forward with no signature
        return False
    return bool(params) and params[0].kind is inspect.Parameter.VAR_POSITIONAL


def _quantize_input(graph, key, layer, helper, numpy_helper, integer=False):
    """Put the input of each product by weight ``key`` on the layer's grid.

    Static: ``Clip -> QuantizeLinear -> DequantizeLinear`` with the calibrated
    grid. Dynamic: the grid of :func:`~skquant.torch._int8.fake_dynamic`, per call,
    as ``DynamicQuantizeLinear`` (8 bits) or from reductions (7 bits). With
    ``integer``, no ``DequantizeLinear`` (the caller consumes the codes) and a
    signed static grid is written unsigned (codes and zero point up by ``-qmin``:
    the same values; the fast integer kernels take unsigned inputs).

    Returns
    -------
    list of (codes, scale, zero point)
        The names of the quantized input, one triple per product by ``key`` (a
        layer called twice has two), in graph order.
    """
    sites = consumers(graph, key)
    names = []
    for k, (index, node) in reversed(list(enumerate(sites))):  # (indices stay)
        prefix = f"{key}_input{k or ''}"
        names.append(
            _quantize_site(
                graph, index, node, prefix, layer, helper, numpy_helper, integer
            )
        )
    return names[::-1]


def _quantize_site(graph, index, node, prefix, layer, helper, numpy_helper, integer):
    """:func:`_quantize_input` at one product, ``node`` (``graph.node[index]``);
    the new tensors' names start with ``prefix``."""
    x_name = node.input[0]

    def const(value, dtype, suffix):
        name = f"{prefix}_{suffix}"
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype), name))
        return name

    def op(kind, inputs, suffix, n_out=1, **attrs):
        outs = [f"{prefix}_{suffix}"] + [
            f"{prefix}_{suffix}{k}" for k in range(1, n_out)
        ]
        nodes.append(helper.make_node(kind, inputs, outs, **attrs))
        return outs if n_out > 1 else outs[0]

    nodes = []
    if layer._act_mode == "static":
        meta = layer._act_meta
        scale = float(layer.input_scale[0])
        zp = int(layer.input_zero_point[0])
        signed = meta["qmin"] < 0
        if meta["n_bits"] <= 8:
            dtype = np.int8 if signed else np.uint8
        else:
            dtype = np.int16 if signed else np.uint16
        lo = const((meta["qmin"] - zp) * scale, np.float32, "lo")
        hi = const((meta["qmax"] - zp) * scale, np.float32, "hi")
        if integer and dtype == np.int8:
            # codes from 0: a 7-bit grid stays below 128 (no x86 saturation)
            dtype, zp = np.uint8, zp - meta["qmin"]
        s, z = const(scale, np.float32, "scale"), const(zp, dtype, "zero_point")
        q = op("QuantizeLinear", [op("Clip", [x_name, lo, hi], "clip"), s, z], "q")
    elif not dynamic_reduce_range(layer._largest_code):
        q, s, z = op("DynamicQuantizeLinear", [x_name], "q", n_out=3)
    else:
        # 7 bits: the range of x (with 0), (hi - lo) / 127 a step
        zero = const(0.0, np.float32, "zero")
        lo = op("Min", [op("ReduceMin", [x_name], "min", keepdims=0), zero], "lo")
        hi = op("Max", [op("ReduceMax", [x_name], "max", keepdims=0), zero], "hi")
        step = op(
            "Div",
            [op("Sub", [hi, lo], "range"), const(127.0, np.float32, "top")],
            "step",
        )
        s = op(
            "Max", [step, const(np.finfo(np.float32).tiny, np.float32, "tiny")], "scale"
        )
        zf = op(
            "Clip",
            [
                op("Round", [op("Div", [op("Neg", [lo], "neg"), s], "zf0")], "zf1"),
                zero,
                const(127.0, np.float32, "zmax"),
            ],
            "zf",
        )
        z = op("Cast", [zf], "zero_point", to=2)  # uint8
        q8 = op("QuantizeLinear", [x_name, s, z], "q8")
        q = op(
            "Clip", [q8, const(0, np.uint8, "qmin"), const(127, np.uint8, "qmax")], "q"
        )
    if not integer:
        node.input[0] = op("DequantizeLinear", [q, s, z], "dq")
    for n in reversed(nodes):
        graph.node.insert(index, n)
    return q, s, z


def _integer_linear(
    graph, key, codes, kind, scale, quantized_inputs, helper, numpy_helper
):
    """Replace the products by weight ``key`` with ``MatMulInteger`` on the codes.

    ``codes`` (n_out, n_in) are signed and at most 8 bits, ``scale`` their float32
    scales (one, or one per output); ``quantized_inputs`` the names of each
    product's input codes, scale and zero point (:func:`_quantize_input`). Writes
    ``MatMulInteger -> Cast -> Mul (input scale x weight scales) [-> Add bias]``;
    codes narrower than INT8 are stored as their type and cast to INT8 in the
    graph (ONNX Runtime folds the cast at load); ``kind="uint8"`` stores them
    moved up by 128 with zero point 128. The nodes must be ``MatMul`` or plain
    ``Gemm`` (:func:`~._onnxgraph.plain_gemm`).
    """
    weights = np.ascontiguousarray(codes.T).astype(np.int16)  # (n_in, n_out)
    weight_inputs = [f"{key}_q"]
    if kind == "uint8":  # signed codes moved up by 128, zero point 128
        weights += 128
        graph.initializer.append(
            numpy_helper.from_array(np.array(128, np.uint8), f"{key}_zero_point")
        )
        weight_inputs.append(f"{key}_zero_point")
    graph.initializer.append(
        numpy_helper.from_array(weights.astype(_numpy_type(kind)), f"{key}_q")
    )
    graph.initializer.append(
        numpy_helper.from_array(
            np.asarray(scale, np.float32).reshape(-1), f"{key}_scale"
        )
    )
    cast = kind not in ("int8", "uint8")
    if cast:  # (once, before the first product)
        weight_inputs[0] = f"{key}_int8"
        first = consumers(graph, key)[0][0]
        graph.node.insert(
            first, helper.make_node("Cast", [f"{key}_q"], [f"{key}_int8"], to=3)
        )
    sites = list(zip(consumers(graph, key), quantized_inputs, strict=True))
    for k, ((index, node), (q, s, z)) in reversed(list(enumerate(sites))):
        prefix = f"{key}_integer{k or ''}"
        new = [
            helper.make_node(
                "MatMulInteger",
                [q, weight_inputs[0], z, *weight_inputs[1:]],
                [f"{prefix}_int32"],
            ),
            helper.make_node("Cast", [f"{prefix}_int32"], [f"{prefix}_float"], to=1),
            helper.make_node("Mul", [s, f"{key}_scale"], [f"{prefix}_scale"]),
            helper.make_node(
                "Mul",
                [f"{prefix}_float", f"{prefix}_scale"],
                [node.output[0]],
            ),
        ]
        replace_product(graph, index, key, new, helper)


def _numpy_type(kind):
    """The NumPy (or ml_dtypes) type of ONNX integer type ``kind``."""
    import ml_dtypes

    return getattr(ml_dtypes, kind) if kind[-1] in "24" else np.dtype(kind)


def _pack(u, bits):
    """Unsigned codes ``u`` (rows, n) packed little-end first, ``8 // bits`` a byte."""
    per = 8 // bits
    rows, n = u.shape
    width = -(-n // per) * per
    padded = np.zeros((rows, width), np.uint8)
    padded[:, :n] = u
    out = np.zeros((rows, width // per), np.uint8)
    for j in range(per):
        out |= (padded[:, j::per] << (bits * j)).astype(np.uint8)
    return out


def _matmul_nbits(graph, key, codes, qt, kind, level, helper, numpy_helper):
    """Replace the products by weight ``key`` with ONNX Runtime's MatMulNBits.

    ``codes`` are the layer's (n_out, n_in). Returns False (nothing changed) when
    the exporter wrote the product in a form this does not rewrite.
    """
    sites = consumers(graph, key)
    if not all(n.op_type == "MatMul" or plain_gemm(n, helper) for _, n in sites):
        return False
    bits = int(kind.removeprefix("u").removeprefix("int"))
    n_out, n_in = codes.shape
    block = min(_NBITS_BLOCK, max(16, 1 << (n_in - 1).bit_length()))
    n_blocks = -(-n_in // block)
    signed = kind.startswith("int")
    offset = 2 ** (bits - 1) if signed else 0
    zp = None
    if not signed:
        zp = np.zeros(n_out, np.int64)
        if qt.zero_point is not None:
            zp[:] = np.broadcast_to(np.asarray(qt.zero_point, np.int64), (n_out,))
    u = np.empty((n_out, n_blocks * block), np.uint8)
    u[:] = offset if zp is None else zp[:, None]  # padding: value 0
    u[:, :n_in] = codes.astype(np.int64) + offset
    packed = _pack(u.reshape(n_out * n_blocks, block), bits).reshape(
        n_out, n_blocks, -1
    )
    scale = np.broadcast_to(np.asarray(qt.scale, np.float32).reshape(-1), (n_out,))
    inputs = [f"{key}_nbits", f"{key}_scale"]
    graph.initializer.append(numpy_helper.from_array(packed, f"{key}_nbits"))
    graph.initializer.append(
        numpy_helper.from_array(
            np.repeat(scale[:, None], n_blocks, axis=1).reshape(-1), f"{key}_scale"
        )
    )
    if zp is not None:
        zps = _pack(np.repeat(zp[:, None], n_blocks, axis=1).astype(np.uint8), bits)
        graph.initializer.append(
            numpy_helper.from_array(zps.reshape(-1), f"{key}_zero_point")
        )
        inputs.append(f"{key}_zero_point")
    for k, (index, node) in reversed(list(enumerate(sites))):
        new = [
            helper.make_node(
                "MatMulNBits",
                [node.input[0], *inputs],
                [node.output[0]],
                name=f"{key}_matmul_nbits{k or ''}",
                domain="com.microsoft",
                K=n_in,
                N=n_out,
                bits=bits,
                block_size=block,
                accuracy_level=level,
            )
        ]
        replace_product(graph, index, key, new, helper)
    return True
