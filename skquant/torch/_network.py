"""The torch adapter of skquant's network layer.

:class:`TorchNetwork` wraps an ``nn.Module`` behind the protocol of
:class:`skquant._network._protocol.Network`. Its :meth:`TorchNetwork.walk` yields
each weight layer with its inputs on calibration data, as the float model computes
them and as the already quantized prefix does, and is built to be cheap:

* rows (samples, or output positions of a convolution) are sampled **at capture
  time**, per batch, and conv patches are gathered only at the sampled positions
  (all patches of all images are never materialised);
* inside an ``nn.Sequential`` the activations of both models are carried from
  child to child, so each child runs once per model (the quantized prefix's
  output is reused by the next layer);
* any other module runs once in float to capture all its layers' inputs (in windows
  of layers, one stopped pass each, when their sampled rows would be more than
  ``_capture.HELD_ROWS_BYTES``); its quantized copy, when ``torch.fx`` traces it
  into a graph that gives its outputs on a batch, is carried from layer to layer on
  the graph (each operation once, in the graph's order; each value dropped once
  read), else run once per layer, stopped at that layer.
"""

import copy

import numpy as np
import torch
from torch import nn

from .._common._warn import warn
from .._network._protocol import LayerStep, Network
from . import _graph
from ._capture import capture, check_ran, sampled_inputs
from ._checkpoint import (
    check_meta,
    check_stored_weights,
    drop,
    is_meta,
    owner,
    put,
    put_all,
    ties_outside,
    weight_key,
)
from ._data import (
    CallerBatches,
    batches,
    cloned,
    input_batches,
    model_device,
    model_dtype,
    output_tensor,
)
from ._gradients import loss_gradients
from ._layout import (
    check_supported,
    matrix_to_weight,
    to_numpy,
    weight_identity,
    weight_to_matrix,
)
from ._rows import RowSampler, as_float64, check_layer_input, gather_rows
from ._state import kept_state


def _fresh(x, cache, module):
    """``x`` itself, or a copy when ``cache`` may share the caller's memory and
    ``module`` may write to its input (any module but a weight layer without
    hooks: copying every batch only to read it left the heap fragmented, 300
    MiB held for 300 MiB of data)."""
    if not isinstance(cache, CallerBatches):
        return x
    reads_only = type(module) in (nn.Linear, nn.Conv1d, nn.Conv2d) and not (
        module._forward_pre_hooks or module._forward_hooks
    )
    return x if reads_only else cloned(x)


def skip_names(model, skip):
    """``skip`` as module names: a name stays, a module class names the modules
    of ``model`` that are instances of it (none, if it has none)."""
    if isinstance(skip, str | type):
        skip = [skip]
    if not isinstance(skip, list | tuple | set | frozenset) or not all(
        isinstance(s, str) or (isinstance(s, type) and issubclass(s, nn.Module))
        for s in skip
    ):
        raise TypeError(
            "skip must be a module name, a module class (e.g. nn.MultiheadAttention) "
            f"or a sequence of them, got skip={skip!r} instead."
        )
    kinds = tuple(s for s in skip if isinstance(s, type))
    found = [  # every name of a module held under several
        n
        for n, m in model.named_modules(remove_duplicate=False)
        if kinds and isinstance(m, kinds)
    ]
    return [s for s in skip if isinstance(s, str)] + found


class TorchNetwork(Network):
    """The torch adapter of the network layer.

    Weight layers are ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (any stride,
    padding, dilation and groups); other layers (BatchNorm, pooling,
    activations, ...) pass through. A layer named in ``skip`` is left as it is,
    and so are its children.

    Parameters
    ----------
    model : torch.nn.Module
        The float model (never modified; copies are made).
    skip : sequence of str or module classes, default=()
        Modules to leave float (with all their children), by name, or by class
        (every module of the model that is an instance of it).
    loss_fn : callable, default=None
        ``loss_fn(output, target)``, a mean over the batch, for
        :meth:`loss_gradients`; ``None`` means ``nn.CrossEntropyLoss()``.
    batch_size : int, default=256
        Batch size when data is a tensor or an array.
    checkpoint : Checkpoint, default=None
        Where the model's state comes from (the model may be built on the meta
        device): every entry is read from it, the weight layers' weights one at a
        time when the walk needs them (implies ``lean``).
    lean : bool, default=False
        Hold one weight layer at a time in the walk (the walk's quantized copy
        keeps no float weights: each quantized layer its compact tensor, until
        the walk is past it), for :func:`quantize_model`'s ``output=`` and
        ``checkpoint=``. Only :meth:`walk` and :meth:`weight` serve then.

    Attributes
    ----------
    layer_names : list of str
        The weight layers (module names), in the order of ``named_modules``
        until a walk has run, then in forward order.
    tied : dict of {str: str}
        Layers whose weight is the same tensor as an earlier layer's: quantized
        once (with the first), counted once.
    """

    def __init__(
        self,
        model,
        *,
        skip=(),
        loss_fn=None,
        batch_size=256,
        checkpoint=None,
        lean=False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__} instead."
            )
        skip = skip_names(model, skip)
        names = {n for n, _ in model.named_modules(remove_duplicate=False)}
        unknown = [s for s in skip if s not in names]
        if unknown:
            raise ValueError(
                f"skip names modules {unknown} that the model does not have; its "
                f"modules include {sorted(n for n in names if n)[:12]}."
            )
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                "loss_fn must be a callable loss_fn(outputs, targets) -> scalar "
                "tensor (e.g. torch.nn.MSELoss()) or None (cross-entropy), got "
                f"loss_fn={loss_fn!r} instead."
            )
        self.model = model
        self.skip = tuple(skip)
        self.loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        self.batch_size = batch_size
        self._modules = {}
        self.tied = {}
        owner = {}
        for name, mod in model.named_modules(remove_duplicate=False):
            if any(
                s == "" or name == s or name.startswith(s + ".") for s in self.skip
            ):  # '' is the model itself, with all its children
                continue
            if not check_supported(name, mod):
                continue
            key = weight_identity(mod)
            if key in owner:
                self.tied[name] = owner[key]
                continue
            owner[key] = name
            self._modules[name] = mod
        if not self._modules:
            raise ValueError(
                f"model ({type(model).__name__}) has no nn.Linear, nn.Conv1d or "
                f"nn.Conv2d layer to quantize (skip={list(self.skip)})."
            )
        if self.tied:
            warn(
                f"layers {sorted(self.tied)} share their weight with "
                f"{sorted(set(self.tied.values()))}: each shared weight is quantized "
                "once (with its first layer) and counted once.",
                UserWarning,
            )
        self.layer_names = list(self._modules)
        self._lean = lean or checkpoint is not None
        self._outside = ties_outside(model, self._modules, self.tied)
        check_meta(model, checkpoint)
        self._checkpoint = checkpoint
        self._held = {}
        # [name, float weight] last read from the checkpoint while the walk
        # runs (None outside it: nothing kept)
        self._last_read = None
        if self._lean:
            check_stored_weights(model, self._modules)
            self._lean_copy()

    # ------------------------------------------------------------- lean walks
    def _lean_copy(self):
        """Work on a copy of the model whose weight layers' weights are on the meta
        device (the source: the model's own weights, or the checkpoint's), with
        every other state entry read from the checkpoint, if any."""
        source = self.model
        memo = {}
        for mod in self._modules.values():
            w = mod.weight
            memo[id(w)] = nn.Parameter(
                torch.empty_like(w, device="meta"), requires_grad=w.requires_grad
            )
        self.model = copy.deepcopy(source, memo)
        work = dict(self.model.named_modules(remove_duplicate=False))
        self._source = {name: self._modules[name] for name in self._modules}
        self._modules = {name: work[name] for name in self._modules}
        ckpt = self._checkpoint
        if ckpt is not None:
            self._read_state(ckpt)
        for key, name in self._outside.items():  # untied: the float module's own
            mod, attr = owner(self.model, key)
            w = self.float_weight(name)
            put(mod, attr, w if ckpt is not None else w.clone())

    def _read_state(self, ckpt):
        """Read every state entry but the weight layers' weights from ``ckpt``,
        after checking that it holds them all. A tensor held under several names
        (tied: a weight shared by layers or with a module left float, any
        parameter or buffer of a module registered under two names) may be
        stored under any one of them, as checkpoints that drop tied copies store
        it: it is read once and stays one tensor. ``self._stored`` records which
        name each weight layer's weight is read from."""
        names = {name: [weight_key(name)] for name in self._modules}
        for t, first in self.tied.items():
            names[first].append(weight_key(t))
        for key, name in self._outside.items():
            names[name].append(key)
        aliases = {k for keys in names.values() for k in keys}
        state = self.model.state_dict(keep_vars=True)
        shared = {}  # every other entry, by tensor: its names
        for key, value in state.items():
            if key not in aliases:
                shared.setdefault(id(value), []).append(key)
        groups = [*names.values(), *shared.values()]
        stored = {
            keys[0]: next((k for k in keys if k in ckpt), None) for keys in groups
        }
        self._stored = {name: stored[weight_key(name)] for name in names}
        missing = sorted(k for k, found in stored.items() if found is None)
        if missing:
            raise ValueError(
                f"checkpoint={str(ckpt.path)!r} lacks {len(missing)} of the model's "
                f"state entries: {missing[:8]} (its tensors include "
                f"{sorted(ckpt.keys())[:8]}).{ckpt.hint(missing, groups)}"
            )
        for first, key in stored.items():  # (said before the walk, not at the layer)
            ckpt.check_readable(key)
            kind = ckpt.dtype(key)
            if state[first].is_floating_point() and not kind.is_floating_point:
                raise ValueError(  # (another tool's packed codes, read as numbers)
                    f"checkpoint={str(ckpt.path)!r}: {key!r} holds {kind} values, "
                    f"the model's {first!r} is {state[first].dtype}: skquant reads "
                    "float weights."
                )
        unread = sorted(set(ckpt.keys()) - set(state) - aliases)
        if unread:
            warn(
                f"checkpoint={str(ckpt.path)!r} holds {len(unread)} tensors the "
                f"model has no place for: {unread[:8]}"
                f"{' ...' if len(unread) > 8 else ''}; they are not read (a model "
                "built from another configuration, or names under a prefix: "
                "Checkpoint(path, prefix=...)).",
                UserWarning,
            )
        for keys in shared.values():
            put_all(self.model, keys, self._read(stored[keys[0]], state[keys[0]]))

    def _read(self, key, like):
        """Checkpoint entry ``key`` as ``like``'s dtype, its shape checked."""
        shape = self._checkpoint.shape(key)
        if tuple(shape) != tuple(like.shape):
            raise ValueError(
                f"checkpoint={str(self._checkpoint.path)!r}: {key!r} has shape "
                f"{tuple(shape)}, the model's {tuple(like.shape)}."
            )
        return self._checkpoint.read(key, like.dtype)

    def float_weight(self, name):
        """The float weight tensor of layer ``name`` (read from the checkpoint
        when the model holds it on the meta device)."""
        mod = self._modules[name]
        if self._lean and self._checkpoint is None:
            return self._source[name].weight.detach()
        if is_meta(mod.weight):
            # in the walk, the last one read is kept: a layer's batches read it
            # once (each read it from disk: 58 times the checkpoint's bytes
            # over 64 batches)
            last = self._last_read
            if last is None:  # (outside the walk)
                return self._read(self._stored[name], mod.weight)
            if not last or last[0] != name:
                last.clear()  # (not two at once)
                last.extend((name, self._read(self._stored[name], mod.weight)))
            return last[1]
        return mod.weight.detach()

    def _lean_hooks(self, qmods):
        """Forward hooks that give each weight layer its weights for one call and
        take them back after: the float layers read theirs (checkpoint), the
        quantized copy's layers dequantize what the walk holds for them (or read
        the float weights of a layer left float)."""
        handles = []

        def load(weight):
            def pre(mod, args):
                put(mod, "weight", weight(mod))

            def post(mod, args, out):
                drop(mod, "weight")

            return pre, post

        fmods = dict(self.model.named_modules(remove_duplicate=False))
        # a layer tied to an earlier one's weight takes that layer's weights
        owners = {name: name for name in self._modules} | self.tied
        for name, src in owners.items():
            pairs = [(qmods[name], lambda m, n=src: self._quantized_weight(n, m))]
            if is_meta(fmods[name].weight):
                pairs.append((fmods[name], lambda m, n=src: self.float_weight(n)))
            for m, weight in pairs:
                pre, post = load(weight)
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
        return handles

    def _quantized_weight(self, name, qmod):
        held = self._held.get(name)
        if held is None:
            return self.float_weight(name).to(qmod.weight.dtype)
        if not isinstance(held, np.ndarray):
            held = held.dequantize()
        return matrix_to_weight(held, qmod, device=self._device)

    def module(self, name):
        """The float module of layer ``name``."""
        if name not in self._modules:
            self.check_layer_names([name], "name")
        return self._modules[name]

    def weight(self, name):
        """The ``(n_in, n_out)`` weight matrix of layer ``name`` (NumPy)."""
        self.module(name)  # a clear error for an unknown name
        if self._lean:
            return weight_to_matrix(
                self._modules[name], self.float_weight(name), copy=False
            )
        return weight_to_matrix(self._modules[name], copy=False)

    def groups(self, name):
        """Input groups of layer ``name``."""
        return getattr(self._modules[name], "groups", 1)

    # ------------------------------------------------------------------ walk
    def walk(self, data, *, max_rows=4096, random_state=0):
        """Yield each weight layer with its calibration inputs, in forward order.

        Parameters
        ----------
        data : torch.Tensor, ndarray or iterable
            Calibration inputs, or an iterable of batches (tensors or ``(x, y)``).
        max_rows : int, default=4096
            Largest number of rows (samples or conv positions) per layer.
        random_state : int, default=0
            Seed of the row sampling.

        Yields
        ------
        step : LayerStep
            Set ``step.quantized`` (an ``(n_in, n_out)`` matrix) before advancing;
            the quantized copy then uses it for the layers that follow.
        """
        dtype, device = model_dtype(self.model), model_device(self.model)
        if device.type == "meta":  # a model built there, its state read as needed
            device = next(
                (t.device for t in self.model.state_dict().values() if not is_meta(t)),
                torch.device("cpu"),
            )
        self._device = device
        inputs = input_batches(data, self.batch_size, dtype, device)
        sampler = RowSampler(sum(x.shape[0] for x in inputs), max_rows, random_state)
        # a lean walk's quantized copy shares the float model's other parameters
        # (an embedding left float is held once; a forward does not write to
        # them), not its buffers (a streaming module's state is written)
        memo = {
            id(t): t for t in self.model.parameters() if self._lean and not is_meta(t)
        }
        qmodel = copy.deepcopy(self.model, memo)
        qmods = dict(qmodel.named_modules(remove_duplicate=False))
        qmodel.eval()
        order = []
        self._quantized = set()
        handles = self._lean_hooks(qmods) if self._lean else []
        self._last_read = []
        try:
            with kept_state(self.model):
                self.model.eval()
                steps = self._walk_block(
                    self.model, qmodel, "", inputs, inputs, sampler, qmods, False
                )
                while (step := self._next_step(steps)) is not None:
                    order.append(step.name)
                    yield step
        finally:
            for h in handles:
                h.remove()
            self._held.clear()
            self._last_read = None
        check_ran(self.layer_names, order)
        self.layer_names = order

    def _next_step(self, steps):
        """The walk's next step (``None`` at its end). A forward's error
        (``RuntimeError``) says that the calibration data does not fit the model;
        in a lean walk, a forward that meets a weight on the meta device gets an
        error that says why."""
        try:
            return next(steps, None)
        except (RuntimeError, IndexError, ValueError) as exc:
            if not self._lean or "meta" not in str(exc):
                if isinstance(exc, RuntimeError | IndexError):  # (IndexError: token
                    # ids past an embedding's size)
                    raise ValueError(
                        f"calibration data does not fit the model: {exc}"
                    ) from exc
                raise
            raise ValueError(
                "with checkpoint= or output=, a weight layer holds its weight only "
                "during its own call, and the model's forward reads one outside "
                "it, where it is an empty meta tensor (as F.linear(x, "
                "self.fc.weight) or a use of self.fc.weight.norm() do). Call the "
                "layer as a module there, or quantize the model in memory (without "
                f"checkpoint= and output=). The forward raised: {exc}"
            ) from exc

    def _contains(self, prefix):
        if prefix == "":
            return bool(self._modules)
        return any(n == prefix or n.startswith(prefix + ".") for n in self._modules)

    def _apply(self, qmods, step):
        """Put the step's quantized weights into the quantized copy."""
        if step.quantized is None and step.tensor is None:
            return
        self._quantized.add(step.name)
        if self._lean:  # compact until the quantized copy runs the layer
            self._held[step.name] = (
                step.quantized if step.tensor is None else step.tensor
            )
            return
        mod = qmods[step.name]
        with torch.no_grad():
            mod.weight.copy_(matrix_to_weight(step.quantized, mod))

    def _step(self, name, inputs):
        return LayerStep(name, self.weight(name), inputs, self.groups(name))

    def _walk_block(
        self, fblock, qblock, prefix, fcache, qcache, sampler, qmods, need_output
    ):
        """Walk the layers inside one module, given its input batches in both models.

        Returns the module's output batches ``(fcache, qcache)`` when it computed
        them (sequences) and ``need_output`` asks for them, else ``None``.
        """
        if prefix in self._modules:  # a weight layer: its inputs are the caches
            mod = self._modules[prefix]

            def inputs():
                Xf = self._rows_of(mod, prefix, fcache, sampler)
                Xq = (
                    Xf
                    if qcache is fcache
                    else self._rows_of(mod, prefix, qcache, sampler)
                )
                return Xq, Xf

            step = self._step(prefix, inputs)
            step.inputs()
            yield step
            self._apply(qmods, step)
            return None
        if not _graph.plain_sequence(fblock):
            yield from self._walk_generic(
                fblock, qblock, prefix, fcache, qcache, sampler, qmods
            )
            return None
        children = list(fblock._modules.items())  # a module twice runs twice
        full = [f"{prefix}.{c}" if prefix else c for c, _ in children]
        has = [self._contains(f) for f in full]
        last = max((j for j, h in enumerate(has) if h), default=-1)
        j = 0
        while j < len(children) and (need_output or j <= last):
            name, fchild = children[j]
            qchild = qblock._modules[name]
            if not has[j]:
                fcache, qcache = self._forward_pair(fchild, qchild, fcache, qcache)
                j += 1
                continue
            later = need_output or j < last
            if full[j] in self._modules:
                # a weight layer and the layer-free children after it, as one segment
                end = j + 1
                while end < len(children) and not has[end]:
                    end += 1
                segment = [(fc, qblock._modules[c]) for c, fc in children[j:end]]
                shared = qcache is fcache
                yield from self._walk_block(
                    fchild, qchild, full[j], fcache, qcache, sampler, qmods, False
                )
                if not later:
                    return None
                fnext = self._forward_all([f for f, _ in segment], fcache)
                quantized = full[j] in self._quantized
                qcache = (
                    fnext
                    if shared and not quantized
                    else self._forward_all([q for _, q in segment], qcache)
                )
                if full[j] not in self.tied.values():  # the walk is past it
                    self._held.pop(full[j], None)
                fcache = fnext
                j = end
                continue
            out = yield from self._walk_block(
                fchild, qchild, full[j], fcache, qcache, sampler, qmods, later
            )
            if out is not None:
                fcache, qcache = out
            elif later:
                fcache, qcache = self._forward_pair(
                    fchild, qchild, fcache, qcache, True
                )
            j += 1
        return (fcache, qcache) if need_output else None

    @staticmethod
    def _forward_all(modules, cache):
        with torch.no_grad():
            for m in modules:
                cache = [m(_fresh(x, cache, m)) for x in cache]
        return cache

    def _forward_pair(self, fchild, qchild, fcache, qcache, changed=False):
        """Both models' batches through one child (once while they are shared)."""
        with torch.no_grad():
            if qcache is fcache and changed:  # both run on them: keep them as they are
                out = [fchild(cloned(x)) for x in fcache]
                return out, [qchild(_fresh(x, qcache, qchild)) for x in qcache]
            shared = qcache is fcache
            out = [fchild(_fresh(x, fcache, fchild)) for x in fcache]
            qcache = (
                out if shared else [qchild(_fresh(x, qcache, qchild)) for x in qcache]
            )
        return out, qcache

    def _walk_generic(self, fblock, qblock, prefix, fcache, qcache, sampler, qmods):
        """Any module: its layers' float inputs from float passes
        (:func:`~skquant.torch._capture.sampled_inputs`: usually one), their
        quantized inputs on its graph or from one stopped pass per layer."""
        inner = [
            n
            for n in self._modules
            if n == prefix or n.startswith(prefix + ".") or not prefix
        ]
        fmods = {n: self._modules[n] for n in inner}
        first, walk = True, None  # the traced graph, when a layer first needs it
        for name, Xf, calls in sampled_inputs(fblock, fmods, fcache, sampler):
            if first and qcache is fcache:
                Xq = Xf  # nothing before this layer is quantized yet
            else:
                if walk is None:  # once: a graph walk, or False (stopped passes)
                    traced = _graph.trace(qblock, qcache[0])
                    walk = _graph.GraphWalk(traced, qcache) if traced else False
                local = name[len(prefix) + 1 :] if prefix else name
                batches = walk.inputs(local, qmods[name]) if walk else None
                Xq = (
                    self._rows_of(qmods[name], name, batches, sampler)
                    if batches is not None  # the graph, carried layer to layer
                    else self._stopped_rows(qblock, qmods[name], name, qcache, sampler)
                )
            first = False
            step = self._step(name, lambda Xq=Xq, Xf=Xf: (Xq, Xf))
            step.calls = calls
            step.inputs()
            yield step
            self._apply(qmods, step)

    def _stopped_rows(self, qblock, qmod, name, qcache, sampler):
        """The layer's sampled input rows in the quantized copy (stopped passes)."""
        chunks = []

        def take(name, module, x, offset):
            chunks.append(
                gather_rows(module, x, sampler.rows(name, module, x, offset)).cpu()
            )

        capture(qblock, {name: qmod}, qcache, take, stop=True)
        return as_float64(chunks)

    def _rows_of(self, mod, name, cache, sampler):
        chunks, offset = [], 0
        for x in cache:
            check_layer_input(name, mod, x)
        sampler.plan(name, mod, cache)
        with torch.no_grad():
            for x in cache:
                rows = sampler.rows(name, mod, x, offset)
                chunks.append(gather_rows(mod, x, rows).cpu())
                offset += x.shape[0]
        return as_float64(chunks)

    # ------------------------------------------------------- copies, loss
    def with_weights(self, weights):
        """A :class:`TorchNetwork` of a copy with some ``(n_in, n_out)`` weights set."""
        self.check_layer_names(list(weights), "weights")
        model = copy.deepcopy(self.model)
        mods = dict(model.named_modules(remove_duplicate=False))
        with torch.no_grad():
            for name, W in weights.items():
                mods[name].weight.copy_(matrix_to_weight(W, mods[name]))
        return TorchNetwork(
            model, skip=self.skip, loss_fn=self.loss_fn, batch_size=self.batch_size
        )

    def parameters(self):
        """Every named parameter as a float64 NumPy copy."""
        return {
            n: to_numpy(p).astype(np.float64) for n, p in self.model.named_parameters()
        }

    def _load(self, model, params):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in params:
                    p.copy_(torch.from_numpy(np.asarray(params[name])).to(p.dtype))
        return model

    def with_parameters(self, params):
        """A :class:`TorchNetwork` of a copy holding ``params`` (by name)."""
        model = self._load(copy.deepcopy(self.model), params)
        return TorchNetwork(
            model, skip=self.skip, loss_fn=self.loss_fn, batch_size=self.batch_size
        )

    def loss_gradients(self, data, params=None):
        """Mean loss on ``data`` and its gradient for every named parameter.

        Parameters
        ----------
        data : tuple of (X, y) tensors, or iterable of (x, y) batches
            The data.
        params : dict of {str: ndarray}, default=None
            Parameters to evaluate at; ``None`` takes the model's own. A scratch
            copy of the model is reused between calls.

        Returns
        -------
        loss : float
            The mean loss.
        grads : dict of {str: ndarray}
            Gradient of that mean loss for every named parameter.
        """
        model = self.model
        if params is not None:
            if getattr(self, "_scratch", None) is None:
                self._scratch = copy.deepcopy(self.model)
            model = self._load(self._scratch, params)
        return loss_gradients(model, self.loss_fn, data, batch_size=self.batch_size)

    def hessian_vector(self, data, vector):
        """The loss Hessian times ``vector`` (by parameter name), by autograd.

        Double backward over the batches of ``data`` (``(X, y)`` tensors or an
        iterable of batches), the model in eval mode.
        """
        model = self.model
        params = dict(model.named_parameters())
        keys = list(vector)
        ps = [params[k] for k in keys]
        vs = [torch.as_tensor(np.asarray(vector[k])).to(p) for k, p in zip(keys, ps)]
        out = [torch.zeros_like(p) for p in ps]
        n = 0
        with kept_state(model):
            model.eval()
            for xb, yb in batches(data, self.batch_size):
                xb, yb = xb.to(ps[0].device), yb.to(ps[0].device)
                loss = self.loss_fn(model(xb.to(ps[0].dtype)), yb)
                grads = torch.autograd.grad(loss, ps, create_graph=True)
                dot = sum((g * v).sum() for g, v in zip(grads, vs))
                for o, h in zip(out, torch.autograd.grad(dot, ps)):
                    o += h.detach() * len(xb)
                n += len(xb)
        if n == 0:
            raise ValueError("data holds no batch: nothing to compute the loss on.")
        return {k: to_numpy(o / n).astype(np.float64) for k, o in zip(keys, out)}

    def layer_outputs(self, data, name):
        """``outputs(W)``: the model's outputs on ``data`` (a NumPy array) with
        layer ``name``'s weight set to ``W``, an ``(n_in, n_out)`` matrix.

        The model is copied once. What does not depend on the layer runs on
        ``data`` once, here, and what the rest needs of it is kept; each call
        runs the rest, giving what ``outputs(data, {name: W})`` gives. Through
        the ``nn.Sequential`` containers that hold the layer (the model itself,
        ``features``, ...), that is the children before the one that holds it;
        in a model with its own ``forward`` that ``torch.fx`` can trace (a
        ResNet), the operations of its graph that do not depend on the layer.
        A container with hooks of its own, a layer whose weight runs elsewhere
        too, a model ``torch.fx`` cannot trace (or whose graph writes to a
        tensor in place, or does not give the model's outputs on the first
        batch bit for bit), or kept values that would pass ``PREFIX_BYTES``
        (1 GiB: an image model's early activations on thousands of rows) make
        the whole model run each call.
        """
        self.check_layer_names([name], "name")
        model = copy.deepcopy(self.model)
        model.eval()
        dtype, device = model_dtype(model), model_device(model)
        inputs = input_batches(data, self.batch_size, dtype, device)
        return _graph.layer_outputs(model, name, inputs)

    def outputs(self, data, weights=None):
        """The model's outputs on ``data`` as a NumPy array, some weights replaced."""
        net = self.with_weights(weights) if weights else self
        return to_numpy(net.predict(data)).astype(np.float64)

    def predict(self, X):
        """The model's outputs on ``X`` (a tensor or an array), as a tensor."""
        dtype, device = model_dtype(self.model), model_device(self.model)
        with kept_state(self.model), torch.no_grad():
            self.model.eval()
            inputs = input_batches(X, self.batch_size, dtype, device)
            return torch.cat([output_tensor(self.model(cloned(x))) for x in inputs])
