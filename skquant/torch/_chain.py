"""Chains of int8 layers that pass their activations as codes.

A quantized layer with static activations takes float32 inputs, puts them on
its grid and gives float32 outputs; the ReLU and pooling after it, and the next
layer's rounding, are passes over float32 tensors, most of the forward's time
on small convolutional networks (:ref:`runtime`). In a chain, a convolution or
Linear gives its outputs on the next quantized layer's input grid as a
``quint8`` tensor (oneDNN's convolution or fbgemm's GEMM rounds them), the
modules between run on those bytes (torch's quantized ReLU and max pooling),
and the next layer takes the codes as they are. ReLU and max pooling commute
with rounding to a grid, so the codes are those the float path rounds to, but
where the kernel's rescaling and the float path round a value on the two sides
of a step's half (a difference of one code).
"""

import inspect
import operator
import warnings

import torch
from torch import nn

from .._common._checks import check_bool
from .._common._warn import warn
from ._fold import FoldedBatchNorm
from ._graph import leaf_graph
from ._int8 import ChainLink, chains, takes_codes
from ._qlayers import QuantConv2d, QuantLinear, QuantMixin
from ._state import hooked, kept_state

__all__ = ["chain_int8"]

#: modules a chain passes through: they run on ``quint8`` tensors as on floats
#: (exact types: a subclass may have another forward)
BETWEEN = (
    nn.ReLU,
    nn.MaxPool2d,
    nn.Flatten,
    nn.Identity,
    FoldedBatchNorm,
    nn.Dropout,
)


def _starts(layer):
    """Whether ``layer`` can give its outputs as codes: a 2-D convolution on
    oneDNN's int8 kernel or a Linear on torch's int8 GEMM, with a static input
    grid, nothing hooked on it."""
    if type(layer) not in (QuantConv2d, QuantLinear) or hooked(layer):
        return False
    return chains(layer)


def _ends(layer):
    """Whether ``layer`` can take a chain's codes: a quantized layer, nothing
    hooked on it, with a static per-tensor grid of at most 8 bits."""
    if type(layer) not in (QuantConv2d, QuantLinear) or hooked(layer):
        return False
    return takes_codes(layer) is not None


def _passes(module):
    return type(module) in BETWEEN and not hooked(module)


def chain_int8(model, enable=True):
    """Let the int8 convolutions and Linear layers of ``model`` give their
    outputs to the next quantized layer as codes.

    Where a :class:`~skquant.torch.QuantConv2d` that runs oneDNN's int8
    convolution, or a :class:`~skquant.torch.QuantLinear` that runs torch's
    int8 GEMM, on a static input grid is followed, in the same
    ``nn.Sequential``, by ReLUs, 2-D max poolings, flattens, identities
    (folded BatchNorms included) or dropouts, then by a quantized layer with a
    static per-tensor input grid of at most 8 bits, the layer gives that
    layer's codes: a ``quint8`` tensor on its grid (torch's quantized tensor:
    ``.dequantize()`` gives its values), which the modules between run on,
    and which the next layer takes as they are. In the forward of another
    module (a residual block), read on its ``torch.fx`` graph in eval mode,
    the same holds where the layer is called once, by that forward alone,
    and its output, and each module's between, is read by the next module
    alone, all children of that module (its output stays float). A forward
    that takes more than one tensor (another argument, or the items or fields
    of one tuple, dict, namedtuple or dataclass), keeps a value where the
    model reaches it (an attribute, a container, nested or not, a namespace,
    an object's attributes or slots, a partial function or closure, a module
    it does not register, a list on its class), that fx cannot trace or that
    is set on the instance chains nothing, nor do the modules it holds for
    the last two, nor the layers of a sequence that a forward around calls
    itself; a value kept where the model does not reach (a global list) is
    not seen: do not chain such a model. A
    chain runs in eval mode (its container's too), with nothing that needs
    gradients (under ``torch.no_grad`` or
    ``torch.inference_mode``, or frozen biases), on the next layer's grid as
    it is at the call (a ``load_state_dict`` may change it); where a hook is
    on the layer, a module between or the next layer (or on every module),
    a dropout between is in train mode (Monte-Carlo dropout), another module
    was put in the place of one of them, the input is one unbatched image, or
    (for a Linear) torch's deterministic algorithms are on, the call gives
    float32 as before. The model's output stays float32.

    torch 2.13 deprecates its quantized tensor types; where a torch makes none,
    nothing is chained (with a warning).

    The codes are those the unchained layers round to but where the kernel's
    rescaling and the float path fall on the two sides of half a step: a code
    apart (tested; none on the benchmarks' networks). Every layer called by
    itself gives float32 but a chain's first, which gives the codes: code that
    calls the layers itself (a loop over the ``nn.Sequential``, a slice of it,
    another container built of its modules) sees ``quint8`` tensors.

    Parameters
    ----------
    model : torch.nn.Module
        A model returned by :func:`quantize_model` or :func:`load_into`; changed
        in place. Files, pickles and copies do not record the chains (a layer
        copied into another model gives floats there): chain a loaded or
        copied model again.
    enable : bool, default=True
        ``False`` unchains every layer.

    Returns
    -------
    links : list of (str, str)
        The ``(layer, next quantized layer)`` names chained.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skquant import ActivationQuantizer, UniformQuantizer
    >>> from skquant.torch import chain_int8, quantize_model
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
    ...                     nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
    ...                     nn.Linear(8 * 9, 32), nn.ReLU(),
    ...                     nn.Linear(32, 10)).eval()
    >>> x = torch.randn(32, 1, 12, 12)
    >>> qnet = quantize_model(net, UniformQuantizer(n_bits=4), x,
    ...                       activations=ActivationQuantizer(n_bits=8))
    >>> with torch.no_grad():
    ...     before = qnet(x)
    >>> chain_int8(qnet)
    [('0', '3'), ('3', '6'), ('6', '8')]
    >>> with torch.no_grad():
    ...     after = qnet(x)
    >>> after.dtype, bool((after - before).abs().max() < 1e-3)
    (torch.float32, True)
    """
    enable = check_bool(enable, "enable")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__} instead."
        )
    _unchain(model)
    if not enable:
        return []
    # a convolution held in two places runs in both: it gives codes in neither
    # (the modules after it take floats too)
    seen = {}
    for _, mod in model.named_modules(remove_duplicate=False):
        seen[id(mod)] = seen.get(id(mod), 0) + 1
    links = []
    traces = _Traces(model)
    for name, parent in model.named_modules():
        sequence = isinstance(parent, nn.Sequential)
        if sequence and not _plain(parent):
            continue  # (a forward of its own: its order is not known)
        if hooked(parent) or not any(map(_starts, parent.children())):
            continue
        if sequence:
            found = traces.sequence_links(name, parent, seen)
        else:
            found = traces.links(name, parent, seen)
        for key, keys in found:
            children = parent._modules
            *between, consumer = (children[k] for k in keys)
            children[key]._chain = ChainLink(between, consumer, parent, keys)
            prefix = f"{name}." if name else ""
            links.append((prefix + key, prefix + keys[-1]))
    if links and not _quantized_tensors():
        _unchain(model)
        warn(
            "chain_int8: this torch makes no quint8 tensors (torch 2.13 deprecates "
            "them), which chains pass codes in: no layer is chained.",
            UserWarning,
        )
        return []
    return links


def _plain(module):
    """Whether ``module``'s forward calls its children alone, or no forward
    runs it (a plain ``nn.Sequential``; ``nn.ModuleList``, ``nn.ModuleDict``),
    and no forward is set on the instance."""
    forward = type(module).forward
    plain = forward is nn.Sequential.forward or forward is nn.Module.forward
    return plain and "forward" not in module.__dict__


class _Traces:
    """The ``torch.fx`` graphs of ``model``'s modules with forwards of their own
    (each traced in eval mode, its children as calls), read for chains in a
    forward: which layers a forward calls that are not its children's (a
    layer a block holds, called by the model around it, gave codes there),
    and which forwards fx cannot trace, or are set on the instance (fx traces
    the class's): what they call is not known, no chain in the modules they
    hold."""

    def __init__(self, model):
        self.graphs, self.outside, self.unknown = {}, set(), set()
        for name, module in model.named_modules():
            if _plain(module) or not module._modules:  # (no forward that
                continue  # calls others: a layer)
            if not any(_starts(m) for m in module.modules()):
                continue
            graph = None if "forward" in module.__dict__ else self.graph(module)[0]
            if graph is None:
                self.unknown.add(name)
                continue
            for n in graph.nodes:
                if n.op == "call_module" and "." in n.target:  # (not a child)
                    self.outside.add(id(module.get_submodule(n.target)))

    def graph(self, module):
        """``(graph or None, whether its run stores values)``."""
        if id(module) not in self.graphs:
            stores = []
            with kept_state(module):
                module.eval()  # (the branches the chains run in)
                # every module with a forward is a call (a list's blocks too;
                # a sequence too: a call of one of its layers then shows)
                leaves = [
                    m
                    for m in module.modules()
                    if m is not module
                    and (not _plain(m) or isinstance(m, nn.Sequential))
                ]
                graph = leaf_graph(module, leaves, stores)
            self.graphs[id(module)] = graph, stores[0]
        return self.graphs[id(module)]

    def blocked(self, name):
        """Whether module ``name`` or one around it has a forward that is not
        known (:attr:`unknown`)."""
        parts = name.split(".") if name else []
        return any(".".join(parts[:i]) in self.unknown for i in range(len(parts) + 1))

    def sequence_links(self, name, seq, seen):
        """``(layer, keys of the modules between and of the next layer)`` of the
        chains among ``seq``'s children, one after another: none in a sequence
        held by a forward that is not known, nor from a layer that a forward
        around calls itself (a loop over the sequence)."""
        if self.blocked(name):
            return
        children = list(seq._modules.items())
        for i, (key, layer) in enumerate(children):
            if seen[id(layer)] > 1 or id(layer) in self.outside or not _starts(layer):
                continue
            j = i + 1
            while j < len(children) and _passes(children[j][1]):
                j += 1
            if j < len(children) and _ends(children[j][1]):
                yield key, [k for k, _ in children[i + 1 : j + 1]]

    def links(self, name, parent, seen):
        """The chains of :meth:`sequence_links` in the forward of ``parent``, a
        module other than a sequence: a layer called once, by ``parent`` alone,
        whose output only a module to pass through reads, whose output only the
        next reads, ..., up to a quantized layer, all children of ``parent``
        (the output of ``parent`` is never codes). None where the forward takes
        other inputs than one tensor (fx traces a default ``None``, or an
        item of a tuple, as a value: a branch on it took the other path),
        stores values (``self.h = h``, a list's ``append``, anywhere the
        module reaches: the stored codes), or fx cannot trace it or a forward
        around it. A forward that takes another path later (a flag
        changed since) would give codes to what reads floats: chain again."""
        if self.blocked(name):
            return
        try:
            params = list(inspect.signature(parent.forward).parameters.values())
        except (TypeError, ValueError):
            return
        if len(params) != 1 or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            return
        graph, stores = self.graph(parent)
        if graph is None or stores or any(map(_unpacks, graph.nodes)):
            return
        children = {k: m for k, m in parent._modules.items() if m is not None}
        calls = [n for n in graph.nodes if n.op == "call_module"]
        times = {}
        for n in calls:
            times[n.target] = times.get(n.target, 0) + 1

        def child(node, of):  # the child ``node`` calls on ``of`` alone, or None
            if node.op != "call_module" or node.args != (of,) or node.kwargs:
                return None
            return children.get(node.target)

        for node in calls:
            layer = children.get(node.target)
            if layer is None or times[node.target] > 1 or seen[id(layer)] > 1:
                continue
            if id(layer) in self.outside or not _starts(layer):
                continue
            keys, at = [], node
            while len(at.users) == 1:
                nxt = next(iter(at.users))
                module = child(nxt, at)
                if module is None:
                    break
                keys.append(nxt.target)
                if _passes(module):
                    at = nxt
                    continue
                if _ends(module):
                    yield node.target, keys
                break


def _unpacks(node):
    """Whether ``node`` takes an item or a field of the forward's input (a
    tuple, dict, namedtuple or dataclass given as one argument: fx traces its
    items, a default ``None`` among them as a value, and a branch on it took
    the other path); a tensor's indexing (slices, ``None``, ``...``) and its
    attributes (``x.shape``) are not."""
    of = node.args[0] if node.args else None
    if not (isinstance(of, torch.fx.Node) and of.op == "placeholder"):
        return False
    if node.op == "call_method":
        return node.target in ("get", "items", "values", "keys")
    if node.op != "call_function" or len(node.args) < 2:
        return False
    key = node.args[1]
    if node.target is operator.getitem:
        return isinstance(key, int | str) and not isinstance(key, bool)
    return node.target is getattr and not hasattr(torch.Tensor, key)


def _unchain(model):
    for mod in model.modules():
        if isinstance(mod, QuantMixin):
            mod._chain = None


def _quantized_tensors():
    """Whether this torch makes ``quint8`` tensors. torch 2.13 deprecates them,
    with one warning a process at the first one made: taken here, where the
    caller asked for them (it named this module's kernels, not the call)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            codes = torch.zeros(1, dtype=torch.uint8)
            torch._make_per_tensor_quantized_tensor(codes, 1.0, 0)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True
