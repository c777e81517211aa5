"""Quantized torch models in skquant's file format (see :mod:`skquant._tensor._io`)."""

import copy

import numpy as np
import torch
from torch import nn

from .._common._checks import check_bool
from .._common._heap import release_heap
from .._tensor import _io
from ._checkpoint import (
    check_default_device,
    check_unsaved_buffers,
    is_meta,
    owner,
    plain_state,
    put,
    store_entry,
)
from ._fold import CONVS, NORMS, FoldedBatchNorm
from ._gradients import outside_inference_mode
from ._layout import layer_kind, own_forward
from ._model import contiguous_where_viewed, keep_own_forwards
from ._qlayers import (
    QuantConv1d,
    QuantConv2d,
    QuantLinear,
    QuantMixin,
    quantized_module,
)
from ._runtimes import check_runtime_names, runtime_of


def _quant_classes():
    return {
        "Linear": (nn.Linear, QuantLinear),
        "Conv1d": (nn.Conv1d, QuantConv1d),
        "Conv2d": (nn.Conv2d, QuantConv2d),
    }


def save_model(model, path):
    """Write a quantized torch model to a skquant file (no pickle, no code).

    Quantized layers (:class:`QuantLinear`, :class:`QuantConv1d`,
    :class:`QuantConv2d`) are stored as their packed codes and scales; every other
    entry of the ``state_dict`` (biases, layers left float, BatchNorm statistics)
    at its own dtype. The file is that many bytes plus a header.

    Parameters
    ----------
    model : torch.nn.Module
        A model returned by :func:`quantize_model` (or any module).
    path : str or path-like
        The file to write, replaced atomically. A new file gets the permissions
        of any new file (``0o666`` less the umask, e.g. ``0o644``); a file that
        is replaced keeps its permission bits.

    See Also
    --------
    load_into : Read it into a float model of the same architecture.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from skquant import UniformQuantizer
    >>> from skquant.torch import load_into, quantize_model, save_model
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(),
    ...                           torch.nn.Linear(4, 2))
    >>> qnet = quantize_model(net, UniformQuantizer(n_bits=3))
    >>> path = os.path.join(tempfile.mkdtemp(), "net.skq")
    >>> save_model(qnet, path)
    >>> skeleton = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(),
    ...                                torch.nn.Linear(4, 2))
    >>> loaded = load_into(skeleton, path)
    >>> x = torch.randn(3, 8)
    >>> bool(torch.equal(loaded(x), qnet(x)))
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__} instead."
        )
    writer = _io.Writer()
    layers = {}
    quantized = {
        name: m for name, m in model.named_modules() if isinstance(m, QuantMixin)
    }
    for name, m in quantized.items():
        writer.entry(name or "<root>", *m.stored_entry())
        layers[name] = {"kind": layer_kind(m), "shape": list(m._wshape)}
        act = m.get_extra_state()["activations"]
        if act is not None:
            act["n_scales"] = (
                int(m.input_scale.numel()) if "input_scale" in m._buffers else 1
            )
            layers[name]["activations"] = act
    skip = {  # under every name of a module registered under several
        f"{n}.{k}" if n else k
        for n, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, QuantMixin)
        for k in ("weight_packed", "weight_scale", "weight_zero_point", "_extra_state")
    }
    dtypes = {}
    for key, value in plain_state(model).items():  # the codes are written above
        if key not in skip:
            store_entry(writer, dtypes, key, value)
    meta = {"layers": layers, "dtypes": dtypes}
    mods = dict(model.named_modules())
    folded = {  # BatchNorms folded into convolutions: load_into drops them
        n: m.conv_name(n) for n, m in mods.items() if isinstance(m, FoldedBatchNorm)
    }
    folded = {n: c if c in mods else None for n, c in folded.items()}
    if folded:
        meta["folded"] = folded
    _io.write_file(path, "torch", writer, meta)


@outside_inference_mode
def load_into(model, path, *, runtime="auto", strict=True):
    """Load a file from :func:`save_model` into a float model of the same layers.

    The layers quantized in the file become :class:`QuantLinear` /
    :class:`QuantConv1d` / :class:`QuantConv2d` (codes, scales and bit-identical
    weights); every other state entry is copied in. Nothing from the file is
    executed.

    Parameters
    ----------
    model : torch.nn.Module
        A model of the saved architecture (e.g. ``Net()``, float weights), or one
        built on the meta device (``with torch.device("meta"): Net()``), which
        then holds only what the file gives it: no float weight of a quantized
        layer is ever materialised, and each layer's tensor is decoded when its
        turn comes. A tensor the model holds under several names (an embedding
        tied to its decoder) stays one tensor either way. Where the file's
        model had its BatchNorms folded into the convolutions
        (``quantize_model(..., fold_batchnorm=True)``), those BatchNorms
        become the identity and the convolutions take the folded bias.
    path : str or path-like
        A file written by :func:`save_model` (or by :func:`quantize_model` with
        ``output=``).
    runtime : {"auto", "packed", "int8", "float"} or dict, default="auto"
        What the quantized layers hold and how they compute, as in
        :func:`quantize_model`.
    strict : bool, default=True
        Whether every parameter and buffer of the model must get its value from
        the file (as ``load_state_dict(strict=True)``); ``False`` keeps the
        model's own values for entries the file does not hold. Entries of the
        file that have no place in the model are refused either way.

    Returns
    -------
    model : torch.nn.Module
        The model, quantized layers swapped in (the same object, unless the model
        is itself one quantized layer).

    Raises
    ------
    ValueError
        For a corrupted or foreign file, or a file of another model (layer names,
        kinds or shapes that do not match); the model is then left as it was.

    See Also
    --------
    save_model : Write one.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module (the architecture to load into), got "
            f"{type(model).__name__} instead."
        )
    check_bool(strict, "strict")
    check_default_device("load_into")
    check_unsaved_buffers(model, "file")
    header, data = _io.read_file(path)
    if header.get("kind") != "torch":
        raise _io.FileFormatError(
            f"{path!s} holds a {header.get('kind')!r}, not a torch model: read it "
            "with skquant.load(path)."
        )
    meta = header["model"]
    layers, dtypes = meta.get("layers"), meta.get("dtypes")
    folded = meta.get("folded", {})
    if (
        not isinstance(layers, dict)
        or not isinstance(dtypes, dict)
        or not isinstance(folded, dict)
        or not all(isinstance(n, str) and n for n in folded)
        or not all(c is None or isinstance(c, str) for c in folded.values())
    ):
        raise _io.FileFormatError(f"{path!s} has no valid model description.")
    # everything is checked before the model is touched: a file that does not fit
    # leaves it as it was
    mods = dict(model.named_modules())
    every = dict(model.named_modules(remove_duplicate=False))
    _check_layers(path, layers, mods, every)
    _check_folded(path, folded, mods)

    def names(of):  # every name of the modules named ``of``
        ids = {id(mods[n]) for n in of if n in mods}
        return {n for n, m in every.items() if id(m) in ids}

    gone = names(folded)
    before = {  # what the model keeps: a folded BatchNorm's entries go with it
        k: v for k, v in plain_state(model).items() if k.rpartition(".")[0] not in gone
    }
    replaced = names(layers)
    first = {id(mods[k]): k for k in layers if k in mods}  # (its other names:
    other = {n: first[id(m)] for n, m in every.items() if id(m) in first}  # its
    check_runtime_names(  # runtime, not theirs)
        runtime, list(first.values()), {n: k for n, k in other.items() if n != k}
    )
    convs = {c for c in folded.values() if c is not None}
    _check_entries(path, dtypes, data, before, strict, replaced, names(convs))
    undo = []
    try:
        for name, into in folded.items():
            _replace(model, every, name, FoldedBatchNorm(into, name), undo)
        for name in convs - set(layers):  # a float convolution's folded bias
            conv = mods[name]
            if conv.bias is None and f"{name}.bias" in dtypes:
                undo.append(lambda m=conv: setattr(m, "bias", None))
                conv.bias = _zero_bias(conv)
        model = _swap_layers(path, model, header, data, layers, runtime, undo)
        _copy_entries(path, model, dtypes, data, before)
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    del data
    release_heap()  # the layers' work arrays (tens of MB) back to the system
    return model


#: the state entries a quantized layer makes for its input grid (the file holds
#: them; the float model has no place for them before the layer is swapped in)
ACTIVATION_ENTRIES = ("input_scale", "input_zero_point")


def _check_layers(path, layers, mods, every):
    """ValueError unless every quantized layer of the file is a layer of the model
    of the same kind and weight shape."""
    classes = _quant_classes()
    for name, info in layers.items():
        if name not in mods and name in every:  # another name of a module
            continue  # loaded under its first name, and set under all of them
        module = mods.get(name)
        kind = info.get("kind") if isinstance(info, dict) else None
        if (
            kind not in classes
            or module is None
            or not isinstance(module, classes[kind][0])
        ):
            raise ValueError(
                f"{path!s} is not a file of this model: it has a quantized {kind} "
                f"layer {name!r}, the model has "
                f"{type(module).__name__ if module is not None else 'no such layer'}."
            )
        if own_forward(module) is not None:
            raise ValueError(
                f"layer {name!r} of the model ({type(module).__name__}) computes with "
                f"a forward of its own, which the quantized layer of {path!s} would "
                f"not run (it computes as nn.{kind} does): load the file into a "
                f"model with an nn.{kind} there."
            )
        if list(module.weight.shape) != info.get("shape"):
            raise ValueError(
                f"{path!s} is not a file of this model: layer {name!r} has weight "
                f"shape {info.get('shape')} in the file and "
                f"{list(module.weight.shape)} in the model."
            )


def _check_folded(path, folded, mods):
    """ValueError unless each place the file's model had a BatchNorm folded
    (``folded``: its name, the convolution's) holds a BatchNorm (or the
    identity) in the model, and the convolution a convolution."""
    for name, into in folded.items():
        for at, want, what in (
            (name, (*NORMS, nn.Identity), f"its BatchNorm {name!r} was folded"),
            (into, CONVS, f"BatchNorm {name!r} was folded into its convolution"),
        ):
            module = mods.get(at)
            if at is not None and not isinstance(module, want):
                has = type(module).__name__ if module is not None else "no such layer"
                raise ValueError(
                    f"{path!s} is not a file of this model: {what} {at!r}, the "
                    f"model has {has} there."
                )


def _replace(model, every, name, new, undo):
    """Put ``new`` in place of the module named ``name`` in ``model`` (under
    each of its names; ``every``: the model's modules, duplicates included),
    logging in ``undo`` how to take it back."""
    old = every[name]
    for n, m in every.items():
        if m is old:
            parent, _, attr = n.rpartition(".")
            holder = every[parent] if parent else model
            undo.append(lambda h=holder, a=attr, m=old: setattr(h, a, m))
            setattr(holder, attr, new)


def _check_entries(path, dtypes, data, before, strict, replaced, biased):
    """ValueError unless every plain entry of the file has a place of its shape in
    the model (a quantized layer's activation scales come with the layer, and a
    bias with a convolution named in ``biased``, a BatchNorm folded into it), and,
    with ``strict``, every entry of the model a value in the file, but those of
    the modules the file's quantized layers replace (named ``replaced``)."""
    for key in dtypes:
        if key not in data:
            raise ValueError(f"{path!s} is not a file of this model: it lacks {key!r}.")
        target = before.get(key)
        prefix, _, attr = key.rpartition(".")
        if target is None:
            if (
                prefix in replaced
                and attr in ACTIVATION_ENTRIES
                or (prefix in biased and attr == "bias")
            ):
                continue  # made with the quantized layer
            raise ValueError(
                f"{path!s} is not a file of this model: its entry {key!r} has no "
                "place in the model."
            )
        shape = tuple(data[key].shape)
        if shape != tuple(target.shape):
            raise ValueError(
                f"{path!s} is not a file of this model: {key!r} has shape {shape} in "
                f"the file and {tuple(target.shape)} in the model."
            )
    missing = [  # a replaced layer's own entries go with it (those of its
        k  # weight's parametrization too: weight_norm's), but its bias
        for k in before
        if k not in dtypes
        and (k.rpartition(".")[0] not in replaced or k.rpartition(".")[2] == "bias")
        and f".{k}".partition(".parametrizations.weight.")[0][1:] not in replaced
    ]
    meta = [k for k in missing if is_meta(before[k])]
    if meta:
        raise ValueError(
            f"{path!s} is not a file of this model: the model's entries {meta[:8]} "
            "are on the meta device and the file has no value for them."
        )
    if missing and strict:
        raise ValueError(
            f"{path!s} is not a file of this model: the model's entries "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''} have no value in the "
            "file (pass strict=False to keep the model's own values for them)."
        )


def _swap_layers(path, model, header, data, layers, runtime, undo):
    """Give the model room for the file's values (meta entries materialised) and
    its quantized layers, logging in ``undo`` how to take each change back."""
    made = {}  # a tensor under several names (tied): one for all of them
    for key, value in model.state_dict(keep_vars=True).items():
        if is_meta(value):  # a model built on the meta device: room for the file's
            mod, attr = owner(model, key)
            table = mod._parameters if attr in mod._parameters else mod._buffers
            undo.append(lambda t=table, a=attr, v=value: t.__setitem__(a, v))
            if id(value) in made:
                table[attr] = made[id(value)]
            else:
                put(mod, attr, torch.empty(value.shape, dtype=value.dtype))
                made[id(value)] = table[attr]
    mods = dict(model.named_modules())
    every = dict(model.named_modules(remove_duplicate=False))
    root = model
    for name, info in layers.items():
        if name not in mods and name in every:
            continue
        module = mods[name]
        if module.bias is None and (f"{name}.bias" if name else "bias") in data:
            module = _with_bias(module)  # a convolution a BatchNorm was folded into
        tensor = _io.tensor_named(header, data, path, name or "<root>")
        new = quantized_module(module, tensor, runtime_of(runtime, name), name)
        del tensor
        act = info.get("activations")
        if act is not None:
            act = dict(act)
            mode = act.pop("mode", None)
            n = act.pop("n_scales", 1)
            new._set_activations(mode, act, np.ones(n), np.zeros(n))
        if name == "":
            model = new
            mods = dict(model.named_modules())
            continue
        _replace(root, every, name, new, undo)
        mods[name] = new
    keep_own_forwards(model)
    if any(getattr(m, "_act_mode", None) is not None for m in model.modules()):
        contiguous_where_viewed(model)
    return model


def _zero_bias(module):
    """A bias for the bias-less layer ``module`` (zeros, the file's values come
    later), on its weight's dtype and device."""
    w = module.weight
    return nn.Parameter(
        torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
        requires_grad=w.requires_grad,
    )


def _with_bias(module):
    """A shallow copy of the bias-less layer ``module`` with a bias
    (:func:`_zero_bias`), for the quantized layer to be made from."""
    src = copy.copy(module)
    src._parameters = dict(module._parameters)
    src.bias = _zero_bias(module)
    return src


def _copy_entries(path, model, dtypes, data, before):
    """Copy the file's plain entries into the model (checked by
    :func:`_check_entries`; the new layers' own entries first, so that a failure
    there changes nothing the model had)."""
    state = plain_state(model)
    order = sorted(dtypes, key=lambda k: k in before)
    with torch.no_grad():
        for key in order:
            dtype, arr, target = dtypes[key], data[key], state[key]
            value = torch.from_numpy(np.require(arr, requirements="C"))
            if dtype == "bfloat16":
                value = value.view(torch.bfloat16)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"{path!s} is not a file of this model: {key!r} has shape "
                    f"{tuple(value.shape)} in the file and {tuple(target.shape)} in "
                    "the model."
                )
            target.copy_(value.to(target.dtype))
