"""Checkpoints read one tensor at a time, and models whose weights are not in memory.

:class:`Checkpoint` reads safetensors checkpoints (one file, or a directory of
shards with its index, as published checkpoints are) by plain file reads: a
tensor read is a seek and a read into a new tensor, with no memory map, so the
pages of a checkpoint larger than memory are never held by the process.

The helpers below put a tensor in a module's parameter or buffer slot, or take it
out (back to the meta device), which is how a walk over a model built on the meta
device holds one layer's weights at a time.
"""

import json
import os
from pathlib import Path

import torch
from torch import nn

from .._common._checks import check_path
from .._common._warn import warn
from .._tensor import _safetensors

#: torch dtypes of safetensors' dtype names
DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


def _read_header(file):
    """``{key: (begin, end, dtype name, shape)}`` of one safetensors file, offsets
    from the start of the file, checked against its size."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(_safetensors.MAX_HEADER, size - 8):
            raise ValueError(
                f"checkpoint file {str(file)!r} is not a safetensors file (its "
                "first 8 bytes are not the length of a header it holds)."
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"checkpoint file {str(file)!r} has an unreadable safetensors header."
            ) from exc
    start = 8 + n
    layout = _safetensors.layout(header, size - start, f"checkpoint file {str(file)!r}")
    return {
        key: (start + begin, start + end, dtype, list(shape))
        for key, (dtype, shape, begin, end) in layout.items()
    }


class Checkpoint:
    """The tensors of a safetensors checkpoint, read one at a time from disk.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` file, or a directory holding a sharded checkpoint: an
        index (``*.safetensors.index.json``, whose ``weight_map`` names each
        tensor's shard) and its shards, or, without an index, ``*.safetensors``
        files whose tensors are taken together.
    prefix : str, default=""
        Leading part of the checkpoint's names that the model's ``state_dict``
        names lack (``"model."`` when the checkpoint was saved from a wrapper of
        the model): tensor ``key`` is read from ``prefix + key``, and the other
        tensors are not seen.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from skquant.torch import Checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
    >>> save_file({"0.weight": torch.ones(3, 2), "0.bias": torch.zeros(3)}, path)
    >>> ckpt = Checkpoint(path)
    >>> sorted(ckpt.keys()), ckpt.read("0.weight").shape
    (['0.bias', '0.weight'], torch.Size([3, 2]))
    """

    def __init__(self, path, *, prefix=""):
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}.")
        self.path = Path(check_path(path, "checkpoint"))
        self.prefix = prefix
        if not self.path.exists():
            raise ValueError(f"checkpoint={str(path)!r} does not exist.")
        self._where = {}
        self._unprefixed = []  # the names without the prefix (for error messages)
        if self.path.is_file():
            self._add(self.path, _read_header(self.path))
            return
        indexes = sorted(self.path.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            raise ValueError(
                f"checkpoint={str(path)!r} holds {len(indexes)} indexes "
                f"({[i.name for i in indexes]}); pass the folder of one checkpoint."
            )
        if indexes:
            self._from_index(indexes[0])
            return
        shards = sorted(self.path.glob("*.safetensors"))
        if not shards:
            raise ValueError(
                f"checkpoint={str(path)!r} is a folder with no *.safetensors file "
                "and no *.safetensors.index.json."
            )
        for shard in shards:
            self._add(shard, _read_header(shard))

    def _from_index(self, index):
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"checkpoint index {str(index)!r} has no readable weight_map."
            ) from exc
        files = {}
        for key, name in weight_map.items():
            files.setdefault(str(name), []).append(key)
        for name, keys in files.items():
            shard = self.path / name
            if Path(name).name != name:  # (a path: "../x.safetensors", "/etc/x")
                raise ValueError(
                    f"checkpoint index {str(index)!r} names shard {name!r}, not a "
                    "file of its folder."
                )
            if not shard.is_file():
                raise ValueError(
                    f"checkpoint index {str(index)!r} names shard {name!r}, which "
                    "is missing."
                )
            entries = _read_header(shard)
            missing = [k for k in keys if k not in entries]
            if missing:
                raise ValueError(
                    f"checkpoint shard {str(shard)!r} lacks {missing[:5]}, which "
                    "its index puts there."
                )
            self._add(shard, {k: entries[k] for k in keys})

    def _add(self, file, entries):
        for key, entry in entries.items():
            if not key.startswith(self.prefix):
                self._unprefixed.append(key)
                continue
            key = key[len(self.prefix) :]
            if key in self._where:
                raise ValueError(
                    f"checkpoint={str(self.path)!r}: tensor {key!r} is in both "
                    f"{self._where[key][0].name!r} and {file.name!r}."
                )
            self._where[key] = (file, *entry)

    def keys(self):
        """The names of the tensors."""
        return self._where.keys()

    def files(self):
        """The files read: the safetensors files, and the index of shards."""
        found = {file for file, *_ in self._where.values()}
        if self.path.is_dir():
            return found | set(self.path.glob("*.safetensors.index.json"))
        return found | {self.path}

    def check_apart(self, output):
        """A ``ValueError`` when the file ``output`` is one this checkpoint
        reads (writing it would replace the float weights the walk reads)."""
        out = check_path(output, "output")
        for file in self.files():
            if os.path.realpath(file) == os.path.realpath(out) or (
                os.path.exists(out) and os.path.samefile(file, out)
            ):
                raise ValueError(
                    f"output={out!r} is a file of checkpoint={str(self.path)!r}, "
                    "which the walk reads: give output another path."
                )

    def check_readable(self, key):
        """A ``ValueError`` unless tensor ``key`` has a dtype skquant reads
        (said from the header, before anything is read)."""
        if self.dtype(key) is None:
            raise ValueError(
                f"checkpoint={str(self.path)!r}: tensor {key!r} has dtype "
                f"{self._where[key][3]}, "
                f"which skquant does not read (it reads {sorted(DTYPES)})."
            )

    def hint(self, missing, tied=()):
        """What the checkpoint's names say about state entries it lacks (by the
        model's names): a prefix to give, or to drop, or ``""``. ``tied``: lists
        of the names of one tensor, any of which the checkpoint may store."""
        names = [*(self.prefix + k for k in self._where), *self._unprefixed]
        held = set(names)
        others = {k: keys for keys in tied for k in keys}
        for key in missing:
            for name in names:
                lead = name[: -len(key)] if name.endswith("." + key) else None
                # a prefix of the checkpoint's names (most start with it), under
                # which every missing entry is, and not the one given
                if (
                    lead
                    and lead != self.prefix
                    and 2 * sum(n.startswith(lead) for n in names) >= len(names)
                    and all(
                        any(lead + t in held for t in others.get(k, [k]))
                        for k in missing
                    )
                ):
                    return (
                        f" Its tensor {name!r} looks like {key!r} under the prefix "
                        f"{lead!r}: pass checkpoint=Checkpoint(path, prefix={lead!r})."
                    )
            if self.prefix and key in self._unprefixed:
                return (
                    f" {key!r} is in the checkpoint without the prefix "
                    f"{self.prefix!r}, which Checkpoint(path, prefix=...) then "
                    "does not see: the model's names must all be under one prefix."
                )
        if self.prefix and not self._where:
            return (
                f" No tensor name starts with prefix={self.prefix!r}; the names "
                f"include {sorted(self._unprefixed)[:5]}."
            )
        return ""

    def __contains__(self, key):
        return key in self._where

    def dtype(self, key):
        """The torch dtype of tensor ``key``, from the header (``None`` for one
        skquant does not read)."""
        if key not in self._where:
            raise KeyError(f"checkpoint={str(self.path)!r} has no tensor {key!r}.")
        return DTYPES.get(self._where[key][3])

    def shape(self, key):
        """The shape of tensor ``key``, from the header (nothing is read)."""
        if key not in self._where:
            raise KeyError(f"checkpoint={str(self.path)!r} has no tensor {key!r}.")
        return tuple(self._where[key][4])

    def read(self, key, dtype=None):
        """Tensor ``key`` from disk, as a new CPU tensor (cast to ``dtype``)."""
        if key not in self._where:
            raise KeyError(f"checkpoint={str(self.path)!r} has no tensor {key!r}.")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(
                f"dtype must be a torch.dtype or None, got dtype={dtype!r} instead."
            )
        self.check_readable(key)
        file, begin, end, name, shape = self._where[key]
        t = torch.empty(shape, dtype=DTYPES[name])
        if end > begin:
            buf = t.reshape(-1).view(torch.uint8).numpy()
            with open(file, "rb") as f:
                f.seek(begin)
                if f.readinto(memoryview(buf)) != end - begin:
                    raise ValueError(
                        f"checkpoint file {str(file)!r} ended inside {key!r}."
                    )
        return t if dtype is None or dtype == t.dtype else t.to(dtype)


def weight_key(name):
    """The ``state_dict`` key of layer ``name``'s weight."""
    return f"{name}.weight" if name else "weight"


def owner(model, key):
    """``(module, attribute)`` holding the state entry ``key`` of ``model``."""
    prefix, _, attr = key.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), attr


def put(module, attr, value):
    """Set parameter or buffer ``attr`` of ``module`` to the tensor ``value``."""
    if attr in module._parameters:
        old = module._parameters[attr]
        module._parameters[attr] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[attr] = value


def put_all(model, keys, value):
    """Set the state entries ``keys`` of ``model`` (the names of one tensor) to
    the tensor ``value``: one parameter or buffer under all of them, so that
    they stay tied."""
    first = None
    for key in keys:
        mod, attr = owner(model, key)
        if first is None:
            put(mod, attr, value)
            first = getattr(mod, attr)
        elif attr in mod._parameters:
            mod._parameters[attr] = first
        else:
            mod._buffers[attr] = first


def drop(module, attr):
    """Put a meta tensor of the same shape and dtype in ``module``'s ``attr``."""
    old = getattr(module, attr)
    put(module, attr, torch.empty_like(old, device="meta"))


def is_meta(t):
    """Whether ``t`` is a tensor on the meta device."""
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def check_unsaved_buffers(model, what):
    """Raise when buffers on the meta device (no data) are not part of the
    model's ``state_dict`` (``persistent=False``): no ``what`` (a checkpoint,
    a file) holds them."""
    saved = {id(v) for v in model.state_dict(keep_vars=True).values()}
    lost = [n for n, b in model.named_buffers() if is_meta(b) and id(b) not in saved]
    if lost:
        raise ValueError(
            f"the model's buffers {lost[:5]} are on the meta device and are not "
            f"part of its state_dict (persistent=False), so no {what} holds them: "
            "compute them after building the model on the meta device (e.g. with "
            "model.to_empty(device='cpu') and the module's own initialisation)."
        )


def plain_state(model):
    """The model's parameters and persistent buffers by ``state_dict`` key
    (under every name of a module registered under several), without calling
    any module's ``_save_to_state_dict``: a quantized layer's stored codes are
    not packed for it (they are not among these)."""
    out = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, p in module._parameters.items():
            if p is not None:
                out[dot + name] = p.detach()
        for name, b in module._buffers.items():
            if b is not None and name not in module._non_persistent_buffers_set:
                out[dot + name] = b.detach()
    return out


def store_entry(writer, dtypes, key, value):
    """Write the state entry ``key`` (a tensor) to a file writer at its own dtype,
    recording the dtype's name in ``dtypes`` (bfloat16 as its bits: NumPy has no
    bfloat16)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"state_dict entry {key!r} is not a tensor.")
    dtypes[key] = str(value.dtype).replace("torch.", "")
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.view(torch.int16)
    writer.array(key, value.numpy())


def check_default_device(owner):
    """Raise when tensors are created on the meta device by default (a call made
    inside ``with torch.device("meta"):``): what ``owner`` builds would hold no
    data."""
    if torch.empty(0).device.type == "meta":
        raise RuntimeError(
            f"{owner} was called inside `with torch.device('meta'):`, where every "
            "new tensor is a meta tensor without data. Build the model there, and "
            f"call {owner} after the block."
        )


def check_meta(model, checkpoint):
    """Raise when state on the meta device (no data) has nowhere to come from:
    any of it without a checkpoint, and buffers a checkpoint does not hold
    (``persistent=False``) with one."""
    state = model.state_dict(keep_vars=True)
    if checkpoint is None:
        empty = [k for k, v in state.items() if is_meta(v)]
        if empty:
            raise ValueError(
                f"the model's {empty[:5]}{' ...' if len(empty) > 5 else ''} are on "
                "the meta device (built inside `with torch.device('meta'):`, so they "
                "hold no data): pass checkpoint= to read them, or build the model "
                "with its weights."
            )
    check_unsaved_buffers(model, "checkpoint")


def ties_outside(model, layers, tied):
    """``{state key: layer}`` of the weight layers' weights that are also the
    parameter of a module left float (an embedding tied to its decoder), with a
    warning that the quantized model unties them."""
    weights = {  # (a weight computed when read is no parameter of another)
        id(m._parameters["weight"]): n
        for n, m in layers.items()
        if m._parameters.get("weight") is not None
    }
    own = {weight_key(n) for n in [*layers, *tied]}
    outside = {
        key: weights[id(p)]
        for key, p in model.named_parameters(remove_duplicate=False)
        if id(p) in weights and key not in own
    }
    if outside:
        warn(
            f"{sorted(outside)} are the weights of layers "
            f"{sorted(set(outside.values()))}: they stay float there while those "
            "layers are quantized (the quantized model no longer ties them).",
            UserWarning,
        )
    return outside


def check_stored_weights(model, layers):
    """Raise when a weight layer of ``layers`` ({name: layer} of ``model``)
    computes its weight when it is read (a parametrization, torch's
    weight-rebuilding hooks): a walk over a checkpoint, or one writing a file,
    holds a layer's weight as its own state entry, which such a layer has not."""
    computed = [n for n, m in layers.items() if m._parameters.get("weight") is None]
    if not computed:
        return
    name = computed[0]
    entries = [
        k
        for k in model.state_dict(keep_vars=True)
        if k.startswith(f"{name}.") and k != f"{name}.bias"
    ]
    raise ValueError(
        f"layers {computed[:8]} compute their weight when it is read (a "
        "parametrization such as torch.nn.utils.parametrizations.weight_norm, or "
        "torch's weight-rebuilding hooks: pruning, the older weight_norm and "
        f"spectral_norm), from the state entries {entries[:4]} (layer {name!r}), "
        "not a weight entry of their own: checkpoint= and output= read and hold a "
        "weight layer's weight as its entry '<layer>.weight', so they support "
        "layers with a plain weight parameter only. Remove the parametrization "
        "before saving the checkpoint (torch.nn.utils.parametrize."
        "remove_parametrizations(layer, 'weight'), torch.nn.utils.prune.remove, "
        "torch.nn.utils.remove_weight_norm), or quantize the model in memory "
        "(without checkpoint= and output=)."
    )
