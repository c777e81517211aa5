"""The options of the adaptive-precision loop, checked once for every front end."""

from .._common._checks import check_int, check_positive

__all__ = ["LOOP_OPTIONS", "LOOP_OPTIONS_DOC", "loop_options", "shared_loop_docs"]

#: The options of the adaptive-precision loop that every front end takes, with their
#: defaults: the one definition. ``adaptive_quantize_mlp`` and
#: ``skquant.torch.adaptive_quantize_model`` list them in their signatures (a test
#: checks names and defaults against this) and pass them on with
#: :func:`loop_options`; ``adaptive_quantize_network`` takes them as keywords.
LOOP_OPTIONS = {
    "loss_bound": 0.1,
    "relative": True,
    "trust_region": 0.05,
    "max_iter": 10,
    "max_bits": 24,
    "group_size": None,
    "group_margin": "smallest",
    "map_coder": "auto",
    "payload_coder": "range",
    "retrain": None,
    "retrain_steps": 50,
    "retrain_lr": 1e-3,
    "random_state": None,
    "retrain_batch_size": None,
    "retrain_data": None,
}


#: The parameter entries of the options that read the same in every front end
#: (numpydoc, indented for a function's docstring); :func:`shared_loop_docs` puts
#: them where a front end's docstring says ``{loop_options}``.
LOOP_OPTIONS_DOC = """\
    loss_bound : float, default=0.1
        Allowed loss, relative to the float loss (``relative=True``: 10% above) or
        absolute.
    relative : bool, default=True
        How to read ``loss_bound``.
    trust_region : float, default=0.05
        Largest margin, as a fraction of each tensor's power-of-two range.
    max_iter : int, default=10
        Largest number of steps.
    max_bits : int, default=24
        Largest number of fractional bits.
    group_size : None, "channel" or int, default=None
        One precision per parameter, per output channel (``"channel"``) or per
        ``group_size`` consecutive weights of a channel.
    group_margin : {"smallest", "pooled"}, default="smallest"
        With groups: the smallest member margin, or one margin per group from
        the budget solved over groups (see
        ``skquant._precision._allocate.allocate_precision``).
    map_coder : str, default="auto"
        Coder of the stored precision maps.
    payload_coder : str, default="range"
        Coder of the stored payloads.
    retrain : {None, "ste", "pruned"}, default=None
        Fine-tune between steps: ``"ste"`` on the current fixed-point grids
        (straight-through), ``"pruned"`` in float with pruned weights at zero.
    retrain_steps : int, default=50
        Adam steps of each fine-tune.
    retrain_lr : float, default=1e-3
        Adam's learning rate, relative to each tensor's range.
    random_state : int, default=None
        Seed of the fine-tune minibatches' order."""


def shared_loop_docs(func):
    """Decorator: ``{loop_options}`` in ``func``'s docstring becomes the entries."""
    func.__doc__ = func.__doc__.replace("    {loop_options}", LOOP_OPTIONS_DOC)
    return func


def loop_options(values):
    """The loop options out of a front end's arguments (``locals()``), by name."""
    return {name: values[name] for name in LOOP_OPTIONS}


def check_loop_params(trust_region, max_iter, max_bits):
    check_positive(trust_region, "trust_region")
    check_int(max_iter, "max_iter")
    check_int(max_bits, "max_bits")


def check_bound(loss_bound, relative, loss0):
    loss_bound = check_positive(loss_bound, "loss_bound")
    return loss0 * (1.0 + loss_bound) if relative else loss_bound
