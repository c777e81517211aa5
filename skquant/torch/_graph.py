"""Running a torch model in parts, for the network adapter.

* From a layer on (:func:`layer_outputs`, the sensitivity sweep): what does not
  depend on the layer runs once, through the ``nn.Sequential`` containers that
  hold it (:func:`sequence_split`) or on the model's ``torch.fx`` graph
  (:func:`graph_split`), and each call runs the rest.
* Layer to layer on a ``torch.fx`` graph (:class:`GraphWalk`, the walk's
  quantized copy of a module that is not a sequence): each operation once, each
  value dropped once read (:class:`GraphRun`).
* Which layers' outputs a forward calls ``.view`` on (:func:`viewed_outputs`:
  those need torch's layout for a contiguous input).
"""

import operator

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as _module

from ._capture import StopForward, layer_input
from ._data import cloned, output_tensor
from ._layout import matrix_to_weight, to_numpy
from ._state import ForwardState
from ._tracecopy import Undo, leaked, structure_copy

__all__ = ["GraphWalk", "layer_outputs", "leaf_graph", "trace", "viewed_outputs"]


#: Most bytes :func:`layer_outputs` keeps of what does not depend on the
#: measured layer (on all the rows); past it the model runs whole.
PREFIX_BYTES = 1 << 30


def nbytes(value):
    """Bytes of the tensors in ``value`` (nested in tuples, lists and dicts)."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, tuple | list):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


def plain_sequence(block):
    """Whether ``block`` runs as its children one after another: an
    ``nn.Sequential`` whose ``forward`` is ``nn.Sequential``'s, without hooks of
    its own (nor hooks on every module)."""
    return (
        isinstance(block, nn.Sequential)
        and type(block).forward is nn.Sequential.forward
        and not (block._forward_hooks or block._forward_pre_hooks)
        and not global_hooks()
    )


def sequence_split(model, name, mod):
    """``(start, rest)`` for :func:`layer_outputs` through the ``nn.Sequential``
    containers (without hooks of their own) that hold layer ``name``:
    ``start(x)`` runs the children before the one holding it, ``rest(kept)`` the
    rest, in forward order. ``(None, None)`` when no module runs before it
    this way, or one of those shares the layer's weight."""
    before, tails = [], []
    block, parts = model, name.split(".") if name else []
    if global_hooks():
        return None, None
    while parts and plain_sequence(block):
        children = list(block._modules.items())  # a module twice runs twice
        j = next(i for i, (c, _) in enumerate(children) if c == parts[0])
        before += [m for _, m in children[:j]]
        tails.append([m for _, m in children[j + 1 :]])
        block, parts = children[j][1], parts[1:]
    after = [block] + [m for tail in reversed(tails) for m in tail]
    if not before or holds(before, mod.weight):
        return None, None

    def run(modules, x):
        for m in modules:
            x = m(x)
        return x

    return lambda x: run(before, x), lambda kept: run(after, kept.clone())


def graph_split(model, name, mod, sample):
    """``(start, rest)`` for :func:`layer_outputs` from the model's ``torch.fx``
    graph: ``start(x)`` runs the operations that do not depend on
    layer ``name`` and keeps the values that those which do read, ``rest(kept)``
    runs those (on copies of the kept values). ``(None, None)`` when the model
    cannot be traced (see :func:`trace`; ``sample``: a batch), has hooks, writes
    to a tensor in place, or calls the layer (or reads its weight) anywhere
    else."""
    traced = None
    if not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        traced = trace(model, sample)
    if traced is None or writes_in_place(traced[0]):
        return None, None
    graph, placeholder = traced
    inputs = [placeholder]
    nodes = list(graph.graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == name]
    if len(calls) != 1:
        return None, None
    for n in nodes:
        if n.op == "get_attr":
            try:
                shared = graph.get_parameter(n.target) is mod.weight
            except AttributeError:  # a buffer or a constant
                shared = False
        elif n.op == "call_module" and n is not calls[0]:
            shared = holds([graph.get_submodule(n.target)], mod.weight)
        else:
            shared = False
        if shared:
            return None, None
    depends = reached(calls, lambda n: n.users)
    output = next((n for n in nodes if n.op == "output" and n in depends), None)
    if output is None:
        return None, None
    frontier = [
        a
        for a in dict.fromkeys(
            a for n in nodes if n in depends for a in n.all_input_nodes
        )
        if a not in depends
    ]
    needed = reached(frontier, lambda n: n.all_input_nodes)
    first = [n for n in nodes if n in needed and n.op != "placeholder"]
    then = [n for n in nodes if n in depends]
    outside = [n for n in nodes if n not in depends]

    def start(x):
        run = GraphRun(graph, [{inputs[0]: x}], done=inputs)
        run.advance(first, keep=frontier)
        return {n: run.envs[0][n] for n in frontier}

    def rest(kept):
        env = {n: cloned(v) for n, v in kept.items()}
        GraphRun(graph, [env], done=outside).advance(then, keep=[output])
        return env[output]

    return start, rest


def holds(modules, weight):
    """Whether one of ``modules`` has ``weight`` among its parameters."""
    return any(p is weight for m in modules for p in m.parameters())


def trace(block, sample):
    """``block``'s ``torch.fx`` graph and its one input node, or ``None`` when it
    cannot be traced, takes more than one input, has hooks (of its own or on
    every module) that a run of the graph would skip, or gives on the batch
    ``sample`` other outputs than ``block`` itself (bit for bit: fx records
    ``a += b`` as ``a = a + b``, which differs where ``a`` has another name).
    The check runs on the batch's first 4 samples (two whole passes over a
    batch of ResNet-18's cost 1.4 s), each run from the block's state before
    it, which comes back after (:class:`~._state.ForwardState`)."""
    if global_hooks() or block._forward_hooks or block._forward_pre_hooks:
        return None
    state = ForwardState(block)
    before = state.save()
    try:
        graph = torch.fx.symbolic_trace(block)
        inputs = [n for n in graph.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            return None
        with torch.no_grad():
            got = graph(sample[:4].clone())
            state.restore(before)
            if not same(got, block(sample[:4].clone())):
                return None
    except Exception:  # any block fx cannot trace or run runs as before
        return None
    finally:
        state.restore(before)
    return graph, inputs[0]


def same(a, b):
    """Whether two outputs (tensors, nested in tuples, lists and dicts) are
    equal, bit for bit (a NaN never equals: such outputs count as different)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        both = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        return both and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def writes_in_place(graph):
    """Whether an operation of ``graph`` may write to a tensor it reads
    (``x.add_``, ``inplace=True``, an in-place module): keeping values across
    calls is then unsafe."""
    for n in graph.graph.nodes:
        if n.op == "call_method" and n.target.endswith("_"):
            return True
        if n.op == "call_function" and (
            n.kwargs.get("inplace")
            or getattr(n.target, "__name__", "").endswith("_")
            or n.target in _IN_PLACE
        ):
            return True
        if n.op == "call_module" and getattr(
            graph.get_submodule(n.target), "inplace", False
        ):
            return True
    return False


_IN_PLACE = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.imatmul,
    operator.setitem,
}


class GraphRun:
    """Nodes of a ``torch.fx`` graph evaluated on one environment per batch (node
    -> value), each value dropped as soon as every node that reads it has run
    (the nodes in ``done`` count as run)."""

    def __init__(self, graph, envs, done=()):
        self.interpreter = torch.fx.Interpreter(graph)
        self.envs = envs
        self.done = set(done)

    def advance(self, nodes, keep=()):
        """Evaluate ``nodes`` (in graph order) on every batch; values in ``keep``
        stay."""
        now = set(nodes)
        last = {}
        for i, n in enumerate(nodes):
            for a in n.all_input_nodes:
                last[a] = i
        drop = {}
        for a, i in last.items():
            if a not in keep and all(u in self.done or u in now for u in a.users):
                drop.setdefault(i, []).append(a)
        with torch.no_grad():
            for env in self.envs:
                self.interpreter.env = env
                for i, n in enumerate(nodes):
                    env[n] = self.interpreter.run_node(n)
                    for a in drop.get(i, ()):
                        env.pop(a, None)
        self.done |= now


class GraphWalk:
    """The quantized copy of a traced block evaluated layer by layer: each layer's
    input batches computed from what the previous layers' computed (one pass of
    the block over the walk, not one stopped pass per layer)."""

    def __init__(self, traced, batches):
        self.graph, placeholder = traced
        self.nodes = list(self.graph.graph.nodes)
        copy = cloned if writes_in_place(self.graph) else (lambda x: x)
        self.run = GraphRun(  # the batches stay as they were for later passes
            self.graph, [{placeholder: copy(x)} for x in batches], done=[placeholder]
        )

    def inputs(self, target, module):
        """The input batches of the first call of submodule ``target`` (the
        layer ``module``), as the layer gets them (after its pre-hooks), or
        ``None`` when the graph does not call it. Every operation before that
        call runs first, in the graph's order (as the forward runs them: an
        in-place write before the call is seen)."""
        at = next(
            (
                i
                for i, n in enumerate(self.nodes)
                if n.op == "call_module" and n.target == target
            ),
            None,
        )
        if at is None:
            return None
        self.run.advance([n for n in self.nodes[:at] if n not in self.run.done])
        got = []

        def grab(mod, args, kwargs):
            got.append(layer_input(args, kwargs))
            raise StopForward

        handle = module.register_forward_pre_hook(grab, with_kwargs=True, prepend=True)
        try:
            with torch.no_grad():
                for env in self.run.envs:
                    self.run.interpreter.env = env
                    try:
                        self.run.interpreter.run_node(self.nodes[at])
                    except StopForward:
                        pass
        finally:
            handle.remove()
        return got if len(got) == len(self.run.envs) else None


def global_hooks():
    """Whether forward hooks registered for every module are in force (they
    would see the containers that a split run does not call)."""
    return bool(
        getattr(_module, "_global_forward_hooks", None)
        or getattr(_module, "_global_forward_pre_hooks", None)
    )


def reached(starts, step):
    """The nodes reached from ``starts`` (included) by ``step(node)``."""
    seen, stack = set(), list(starts)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(step(n))
    return seen


def layer_outputs(model, name, inputs):
    """``outputs(W)`` of :meth:`TorchNetwork.layer_outputs
    <skquant.torch.TorchNetwork.layer_outputs>` for ``model`` (a copy in eval
    mode, whose layer ``name`` the calls write to) on the batches ``inputs``."""
    mod = model.get_submodule(name)
    start, rest = sequence_split(model, name, mod)
    if start is None:
        start, rest = graph_split(model, name, mod, inputs[0])
    cache, held = [], 0
    with torch.no_grad():
        for x in inputs if start is not None else ():
            kept = start(x.clone())  # the batches stay as they were
            held += nbytes(kept)
            if held > PREFIX_BYTES:  # too large to keep: run it all each call
                start = None
                break
            cache.append(kept)
    if start is None:
        cache, rest = inputs, lambda x: model(x.clone())

    def outputs(W):
        with torch.no_grad():
            mod.weight.copy_(matrix_to_weight(W, mod))
            out = [output_tensor(rest(kept)) for kept in cache]
            return to_numpy(torch.cat(out)).astype(np.float64)

    return outputs


#: the tensor methods that need a layout (strides) their input may not have
VIEWS = ("view", "view_as")
#: the tensor methods that read a tensor's shape, not its values or layout
SHAPE_READS = ("size", "dim", "numel", "stride", "is_contiguous")


class _LeafTracer(torch.fx.Tracer):
    """torch.fx's tracer with the modules ``leaves`` kept as calls."""

    def __init__(self, leaves):
        super().__init__()
        self.leaves = {id(m) for m in leaves}

    def is_leaf_module(self, m, qualname):
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def leaf_graph(model, leaves, stores=None):
    """``model``'s ``torch.fx`` graph with the modules ``leaves`` (and torch's
    own) kept as calls, or ``None`` where fx cannot trace it. The trace runs the
    forward on :func:`~._tracecopy.structure_copy` of ``model`` (its modules
    but ``leaves`` and its built-in containers copied; tensors and every other
    object shared), so that what the forward keeps lands in the copy; what it
    sets on ``leaves`` and on the objects shared comes back as it was
    (:class:`~._tracecopy.Undo`). ``stores``, a list, gets whether there were
    any: a value of the trace reachable from the copy, or a change (values the
    graph does not show being read)."""
    leaves = list(leaves)
    shared = []
    try:
        traced = structure_copy(model, {id(m): m for m in leaves}, shared)
    except Exception:  # (a module that cannot be made: traced itself)
        traced, shared = model, []
    # (the originals too: a hook, a closure or a helper object holds them)
    undo = Undo([*traced.modules(), *model.modules(), *leaves, *shared])
    try:
        return _LeafTracer(leaves).trace(traced)
    except Exception:  # a forward fx cannot trace
        return None
    finally:
        if stores is not None:
            stores.append(undo.changed() or leaked(traced))
        undo.restore()


def viewed_outputs(model, layers):
    """The names of ``layers`` (name to module, modules of ``model``) whose
    output ``model``'s forward calls ``.view`` or ``.view_as`` on, or returns,
    directly or through operations other than another of ``layers`` (read on
    its ``torch.fx`` graph, those layers as calls); an empty set where fx
    cannot trace it (:func:`leaf_graph`)."""
    graph = leaf_graph(model, layers.values())
    if graph is None:  # a forward fx cannot trace: nothing is known
        return set()

    def after(node):  # what a layer's output flows into, up to another layer
        if node.op == "call_method" and node.target in SHAPE_READS:
            return ()
        return [
            u for u in node.users if not (u.op == "call_module" and u.target in layers)
        ]

    def views(n, flow):  # (the caller may view what the model returns)
        method = n.op == "call_method" and n.target in VIEWS
        return n.op == "output" or (method and n.args[0] in flow)

    viewed = set()
    for node in graph.nodes:
        if node.op == "call_module" and node.target in layers:
            flow = reached(after(node), after) | {node}
            if any(views(n, flow) for n in flow):
                viewed.add(node.target)
    return viewed


def fx_call(layer, x):
    """A quantized layer's call in a ``torch.fx`` trace (``x``: a proxy) of a
    model that holds it, as fx records torch's own layers (its forward branches
    on values, which fx cannot trace): fx-based tools see one call of the
    layer, which runs its kernels."""
    tracer = x.tracer
    try:
        name = tracer.path_of_module(layer)
    except NameError:
        name = ""
    if not name:  # (the traced module itself, or one outside it)
        raise TypeError(
            f"torch.fx traces a {type(layer).__name__} as a call of the model "
            "that holds it: trace that model (or a module around the layer)."
        )
    return tracer.create_proxy("call_module", name, (x,), {})
