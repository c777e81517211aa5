"""Forward passes that hand chosen layers' inputs to a callback: the one capture."""

import math
import re

import torch
from torch import nn

from ._data import cloned, input_batches, model_device, model_dtype
from ._rows import (
    as_float64,
    check_layer_input,
    gather_rows,
    layer_inputs_matrix,
    row_width,
    rows_per_sample,
)
from ._state import ForwardState, kept_state

#: Most bytes of sampled layer inputs that :func:`sampled_inputs` holds at once
#: (as estimated from each layer's first batch); past it, the layers are
#: captured a window at a time, each window in its own stopped passes.
HELD_ROWS_BYTES = 1 << 28

#: torch's message when ``model(x)`` does not match the forward's signature
_CALL_MISMATCH = re.compile(
    r"forward\(\) (missing \d+ required positional argument"
    r"|takes \d+ positional arguments? but \d+ (was|were) given)"
)


class StopForward(BaseException):
    """Raised by a capture hook to stop a forward pass at a layer (not an
    ``Exception``: a forward's ``except Exception`` does not catch it)."""


def layer_input(args, kwargs):
    """The input tensor of a layer's call, given as ``layer(x)`` or
    ``layer(input=x)``."""
    return args[0] if args else kwargs.get("input", next(iter(kwargs.values()), None))


def capture(block, modules, batches, take, *, stop=False, every=False, before=None):
    """Run ``block`` on each batch and hand ``modules``' inputs to ``take``.

    Without gradients, ``block(x)`` runs for a copy of every ``x`` of ``batches``
    (the batches stay as they were for the passes that follow, whatever the
    forward writes to its input); the input of each module of ``modules`` (a
    dict name -> module) goes to ``take(name, module, x, offset)``, ``offset``
    being the index of the batch's first sample.
    A module called more than once in a pass gives its first call's input
    (``every``: each call's). With ``stop``, a pass ends at the first input
    captured (what follows does not run). ``before(i)``, if given, runs before
    the pass over batch ``i``.

    Returns
    -------
    calls : dict of {str: int}
        The most times a pass called each module that ran.

    Raises
    ------
    ValueError
        When a batch does not fit the model (a ``RuntimeError`` in the forward).
    """
    state = {"offset": 0, "seen": {}}
    calls = {}

    def hook(name, module, args, kwargs):
        seen = state["seen"]
        seen[name] = seen.get(name, 0) + 1
        calls[name] = max(calls.get(name, 0), seen[name])
        if seen[name] > 1 and not every:  # called again: its first call's
            return
        take(name, module, layer_input(args, kwargs), state["offset"])
        if stop:
            raise StopForward

    hooks = [  # first of the module's pre-hooks: a pass stopped here runs none
        # of the others (a lean walk's, which would read the layer's weights)
        m.register_forward_pre_hook(
            lambda m, args, kwargs, n=n: hook(n, m, args, kwargs),
            with_kwargs=True,
            prepend=True,
        )
        for n, m in modules.items()
    ]
    try:
        with torch.no_grad():
            offset = 0
            for i, x in enumerate(batches):
                if before is not None:
                    before(i)
                state["offset"] = offset
                state["seen"] = {}
                try:
                    block(cloned(x))
                except StopForward:
                    pass
                except (RuntimeError, IndexError) as exc:  # (IndexError: token ids
                    # past an embedding's size)
                    hint = ""
                    if "view size is not compatible" in str(exc) and any(
                        getattr(m, "_int8", None) is not None
                        and hasattr(m, "kernel_size")
                        for m in block.modules()
                    ):
                        hint = (
                            " (a quantized convolution running on int8 gives a "
                            "non-contiguous (channels-last) output, which .view "
                            "refuses: use .reshape or torch.flatten in the "
                            "forward, or runtime='float' for that layer)"
                        )
                    raise ValueError(
                        f"calibration data of shape {tuple(x.shape)} (one batch) "
                        f"does not fit the model: {exc}{hint}"
                    ) from exc
                except TypeError as exc:
                    if not _CALL_MISMATCH.search(str(exc)):  # (from inside it)
                        raise
                    raise TypeError(
                        f"the model's forward does not take one tensor ({exc}): "
                        "skquant calls model(x) on each batch x (the x of (x, y) "
                        "pairs); wrap a model with several inputs in a module "
                        "whose forward takes one tensor."
                    ) from exc
                offset += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
    return calls


def _row_bytes(module, x, sampler):
    """Bytes of the rows ``sampler`` keeps of ``module``'s inputs, estimated from
    one input batch ``x`` (every batch taken to have its rows per sample)."""
    n = rows_per_sample(module, x) * sampler.n_samples
    if sampler.max_rows is not None:
        n = min(n, sampler.max_rows)
    return n * row_width(module) * x.element_size()


def _most_bytes(modules, sampler, itemsize):
    """The most bytes of rows ``sampler`` can keep of ``modules``' inputs."""
    if sampler.max_rows is None:
        return math.inf
    return sum(sampler.max_rows * row_width(m) * itemsize for m in modules.values())


def sampled_inputs(block, modules, batches, sampler, budget=None):
    """Yield ``(name, X, calls)`` for each layer of ``modules`` (a dict name ->
    layer inside ``block``), in the order the forward first calls them: its
    input rows kept by ``sampler`` (a float64 array; conv patches as rows; the
    first call's input) and the most times a pass called it.

    A first pass runs every batch whole: it draws every layer's rows, in forward
    order, records the forward's state at the start of each batch where windows
    may come (the layers' rows at ``max_rows`` are more than ``budget``;
    :class:`~skquant.torch._state.ForwardState`) and keeps the rows of the
    layers that come first and whose estimated rows fit in ``budget`` bytes
    together (``None``: :data:`HELD_ROWS_BYTES`): all of them, usually. Past
    it, the later layers are taken in windows of consecutive layers that fit
    (one layer at least), each in a pass of its own, run when the caller asks
    for the window's first layer (the previous window's rows are gone by then):
    each batch starts from the state the first pass started it in and stops
    once every layer of the window has had its input; the state the first pass
    left, and the caller's random number generators, come back after. A deep
    module's walk then holds about ``budget`` bytes of rows, for extra float
    passes over its prefix, and every layer gets the rows it gets in one pass.

    Raises
    ------
    ValueError
        When a layer does not run on the calibration data, or a batch does not
        fit it (before any layer is yielded).
    """
    budget = HELD_ROWS_BYTES if budget is None else budget
    order, store, calls, cost = [], {}, {}, {}
    window = set()
    state = {"held": 0, "closed": False, "at": None, "seen": set()}
    forward, starts = ForwardState(block), []

    def keep(name, module, x, offset):
        rows = sampler.rows(name, module, x, offset)  # the draw, at its first call
        if name in window:
            store.setdefault(name, []).append(gather_rows(module, x, rows).cpu())

    def complete(wanted, name, offset):
        """Whether every layer of ``wanted`` has had this batch's input."""
        if state["at"] != offset:
            state["at"], state["seen"] = offset, set()
        state["seen"].add(name)
        return wanted <= state["seen"]

    def first(name, module, x, offset):
        if name not in cost:
            order.append(name)
            check_layer_input(name, module, x)
            cost[name] = _row_bytes(module, x, sampler)
            if not state["closed"]:
                over = state["held"] + cost[name] > budget
                state["closed"] = record and bool(window) and over
            if not state["closed"]:
                window.add(name)
                state["held"] += cost[name]
        keep(name, module, x, offset)

    def run(wanted, take, before):
        state["at"] = None
        got = capture(
            block, {n: modules[n] for n in wanted}, batches, take, before=before
        )
        for n, k in got.items():
            calls[n] = max(calls.get(n, 0), k)

    def again(wanted):
        """A stopped pass over every batch for the layers ``wanted``."""
        wanted = set(wanted)

        def take(name, module, x, offset):
            keep(name, module, x, offset)
            if complete(wanted, name, offset):
                raise StopForward

        for name in wanted:
            store[name] = []
        if not record:  # one window (sequences of several lengths, drawn
            run(wanted, keep, None)  # again): whole passes, as the first
            return
        rng = forward.rng()
        try:
            run(wanted, take, lambda i: forward.restore(starts[i]))
        finally:
            forward.restore(end)
            forward.set_rng(rng)

    # the state at each batch's start, where windows may come (rows of at most
    # max_rows a layer could pass the budget)
    record = _most_bytes(modules, sampler, batches[0].element_size()) > budget
    run(modules, first, (lambda i: starts.append(forward.save())) if record else None)
    end = forward.save() if record else None
    check_ran(modules, cost)
    unsettled = sampler.unsettled()  # drawn now, whatever the windows
    for name in unsettled:  # (rows from every batch's count)
        sampler.settle(name)
    if any(n in window for n in unsettled):
        again([n for n in unsettled if n in window])
    done = set()
    while True:
        for name in [n for n in order if n in window]:
            done.add(name)
            yield name, as_float64(store.pop(name)), calls[name]
        pending = [n for n in order if n not in done]
        if not pending:
            return
        window.clear()
        held = 0
        for name in pending:
            if window and held + cost[name] > budget:
                break
            window.add(name)
            held += cost[name]
        again(window)


def repeated_calls(model, modules, batch):
    """``{name: calls}`` of the modules of ``modules`` that ``model`` (in eval
    mode) calls more than once in its forward pass on ``batch``."""
    with kept_state(model):
        model.eval()
        calls = capture(model, modules, [batch], lambda *args: None)
    return {name: n for name, n in calls.items() if n > 1}


def capture_inputs(model, modules, data, *, batch_size=256, device=None):
    """Inputs of the given layers (as matrices, conv patches as rows) on ``data``.

    The model runs in eval mode and is given back in its modes; a layer called
    more than once in a forward pass gives the input of its first call.

    Parameters
    ----------
    model : torch.nn.Module
        The model to run.
    modules : dict of {str: torch.nn.Module}
        Layers (Linear or Conv2d) of ``model`` whose inputs to capture, by name.
    data : torch.Tensor, ndarray or iterable
        Inputs, or an iterable of batches (tensors or ``(x, y)`` pairs).
    batch_size : int, default=256
        Batch size when ``data`` is a tensor or an array.
    device : torch.device, default=None
        Where to run; the model's device when ``None``.

    Returns
    -------
    inputs : dict of {str: torch.Tensor}
        For each name, a ``(n_rows, n_in)`` tensor on the CPU: one row per sample
        (Linear) or per output position (Conv2d).

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import capture_inputs
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4 * 6 * 6, 2))
    >>> got = capture_inputs(net, {"0": net[0], "2": net[2]}, torch.ones(5, 1, 8, 8))
    >>> tuple(got["0"].shape), tuple(got["2"].shape)
    ((180, 9), (5, 144))
    """
    if not hasattr(modules, "items") or not all(  # a dict or an nn.ModuleDict
        isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) for _, m in modules.items()
    ):
        raise TypeError(
            "modules must be a dict {name: layer} of nn.Linear, nn.Conv1d or "
            f"nn.Conv2d layers of the model, got {_describe(modules)} instead."
        )
    device = device or model_device(model)
    batches = input_batches(data, batch_size, model_dtype(model), device)
    store = {}  # filled in the order the layers run

    def take(name, module, x, offset):
        store.setdefault(name, []).append(layer_inputs_matrix(module, x).cpu())

    with kept_state(model):
        model.eval()
        capture(model, modules, batches, take)
    check_ran(modules, store)
    return {name: torch.cat(rows) for name, rows in store.items()}


def check_ran(names, ran):
    """ValueError naming the layers of ``names`` not in ``ran``: those the
    model's forward did not call on the calibration data."""
    missing = [n for n in names if n not in ran]
    if missing:
        raise ValueError(
            f"layers {missing} did not run in the model's forward pass on the "
            "calibration data; leave them out with skip=[...]."
        )


def _describe(modules):
    if not hasattr(modules, "items"):
        return f"a {type(modules).__name__}"
    kinds = {n: type(m).__name__ for n, m in modules.items()}
    return f"layers {kinds}"
