"""The check of an exported file: ONNX Runtime against the torch model, the
first quantized layer whose output deviates, and the axes left free in it."""

import copy

import numpy as np
import torch

from .._common._warn import warn

__all__ = ["check_dynamic_axes", "check_file", "session"]


def session(ort, model_bytes, optimise):
    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model_bytes, options, providers=["CPUExecutionProvider"]
    )


def _deviation(got, want):
    """Largest ``|got - want|`` relative to the largest ``|want|``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def check_file(model, x, path, proto, probes, rtol, ort, helper):
    """Run the file in ONNX Runtime against ``model``; name the first layer off."""
    feed = {proto.graph.input[0].name: x.numpy()}
    with torch.no_grad():
        want = [t.detach().float().numpy() for t in _outputs(model(x.clone()))]
    data = proto.SerializeToString()

    def deviation(optimized):
        got = session(ort, data, optimized).run(None, feed)
        return max(_deviation(g, w) for g, w in zip(got, want, strict=True))

    dev, opt = deviation(False), deviation(True)
    if dev > rtol:
        raise ValueError(
            f"ONNX Runtime runs {path!s} differently from the model: relative "
            f"deviation {dev:.2e} on example_input, above rtol={rtol}; "
            + _first_off(model, x, proto, probes, rtol, ort, helper)
        )
    if opt > rtol:
        warn(
            f"with its default graph optimisations ONNX Runtime runs {path!s} with "
            f"a relative deviation of {opt:.2e} from the model (above rtol={rtol}; "
            f"{dev:.2e} without them): it fuses some patterns into integer "
            "kernels. Check accuracy in the session you deploy; the session config "
            "entry 'session.disable_quant_qdq' = '1' keeps the float products.",
            UserWarning,
        )
    return {"max_rel_deviation": dev, "optimized_max_rel_deviation": opt}


def _outputs(out):
    """The tensors of a model's output (a tensor, or nested tuples, lists and
    dicts of them), in the order the exported graph lists its outputs."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _outputs(o)]


def _first_off(model, x, proto, probes, rtol, ort, helper):
    """Which quantized layer's output first deviates, from the layers' inputs."""
    seen = {}

    def keep(name):
        def hook(module, args):
            seen.setdefault(name, args[0].detach().float().numpy())

        return hook

    hooks = [
        m.register_forward_pre_hook(keep(name))
        for name, m in model.named_modules()
        if name in probes
    ]
    try:
        with torch.no_grad():
            model(x.clone())
    finally:
        for h in hooks:
            h.remove()
    order = list(seen)  # the order the layers run in
    graph_inputs = {i.name for i in proto.graph.input}
    wanted = [n for n in order if probes[n] not in graph_inputs]
    probe = copy.deepcopy(proto)
    for n in wanted:
        probe.graph.output.append(helper.make_empty_tensor_value_info(probes[n]))
    outs = session(ort, probe.SerializeToString(), False).run(
        [probes[n] for n in wanted], {proto.graph.input[0].name: x.numpy()}
    )
    got = dict(zip(wanted, outs))
    for before, name in zip(order, order[1:]):
        if name in got and _deviation(got[name], seen[name]) > rtol:
            return (
                f"the first quantized layer whose output differs is {before!r} (the "
                f"input of {name!r} deviates by "
                f"{_deviation(got[name], seen[name]):.2e}; the earlier layers' "
                "inputs agree)."
            )
    return (
        f"the inputs of all quantized layers agree: the last one, {order[-1]!r}, "
        "or what follows it differs."
    )


def check_dynamic_axes(dynamic_axes, x):
    """``dynamic_axes`` checked against the input ``x`` (``{}`` for ``None``)."""
    if dynamic_axes is None:
        return {}
    if not isinstance(dynamic_axes, dict) or not all(
        isinstance(a, int) and not isinstance(a, bool) and isinstance(n, str)
        for a, n in dynamic_axes.items()
    ):
        raise TypeError(
            "dynamic_axes must be a dict {axis: name} of ints to strs (e.g. "
            f"{{1: 'sequence'}}), got dynamic_axes={dynamic_axes!r} instead."
        )
    for a, n in dynamic_axes.items():
        if not 1 <= a < x.dim() or x.shape[a] < 2 or not n.isidentifier():
            raise ValueError(
                f"dynamic_axes={dynamic_axes!r}: axis {a} ({n!r}) must be an axis of "
                f"example_input past the batch (1 to {x.dim() - 1}) of size at least "
                f"2, named by an identifier; example_input has shape "
                f"{tuple(x.shape)}."
            )
    if len(set(dynamic_axes.values()) | {"batch"}) != len(dynamic_axes) + 1:
        raise ValueError(
            f"dynamic_axes={dynamic_axes!r} names two axes alike (or one 'batch')."
        )
    return dict(dynamic_axes)
