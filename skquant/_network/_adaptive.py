"""The adaptive-precision loop (Khoram & Li) over any Network, with retraining between
steps.
"""

import numbers

import numpy as np

from .._common._checks import check_bool, check_int, check_positive, check_rng
from .._common._jobs import check_n_jobs
from .._common._progress import progress
from .._precision._allocate import allocate_precision, precision_map_bits, round_fixed
from .._precision._options import check_bound, check_loop_params
from .._precision._result import AdaptiveQuantizationResult
from .._tensor._fixedpoint import check_group_size, check_map_coder, check_payload_coder

__all__ = ["adaptive_precision_loop", "adaptive_quantize_network"]


def adaptive_precision_loop(
    params,
    loss_and_grad,
    set_params,
    *,
    loss_bound,
    relative=True,
    trust_region=0.05,
    max_iter=10,
    max_bits=24,
    group_size=None,
    group_margin="smallest",
    channel_axes=None,
    map_coder="auto",
    payload_coder="range",
    retrain=None,
    retrain_steps=50,
    retrain_lr=1e-3,
    retrain_gradient=None,
    evaluate=None,
    verbose=False,
    n_jobs=None,
):
    """The iterative method of Khoram & Li, framework-free.

    Alternates: loss and gradient at the current parameters; margins from the
    remaining budget ``l_bar - L_k`` (one water level for all parameters); fixed-point
    quantization; loss check. A step whose measured loss exceeds the bound is
    retried with half the budget (up to 4 times). Stops when the total size stops
    shrinking, the bound binds, or after ``max_iter`` steps.

    With ``retrain``, every accepted step is followed by ``retrain_steps`` full-batch
    Adam steps on the loss before the next allocation (the next step then starts
    from a lower loss, so with a larger budget): ``"ste"`` keeps every parameter on
    its current fixed-point grid (the gradient at the rounded parameters updates
    float latent copies, a straight-through estimator; the result is on the grid,
    so no size is lost), ``"pruned"`` trains the kept parameters in float with the
    pruned ones held at zero (the next step rounds them again). Deterministic: no
    randomness is drawn.

    Parameters
    ----------
    params : list of ndarray
        The float parameters.
    loss_and_grad : callable
        ``loss_and_grad(params) -> (loss, grads)`` for a list of parameters.
    set_params : callable
        ``set_params(params) -> model``: a model holding these parameters.
    loss_bound : float
        ``l_bar`` as a fraction above the float loss (``relative=True``:
        ``l_bar = L_0 (1 + loss_bound)``) or as an absolute loss.
    relative : bool, default=True
        How to read ``loss_bound``.
    trust_region : float, default=0.05
        Largest margin, as a fraction of each tensor's power-of-two range.
    max_iter : int, default=10
        Largest number of steps.
    max_bits : int, default=24
        Largest number of fractional bits.
    group_size : None, "channel" or int, default=None
        One precision per parameter, per output channel, or per ``group_size``
        consecutive weights of a channel (see :func:`allocate_precision`).
    group_margin : {"smallest", "pooled"}, default="smallest"
        How a group's margin is chosen (see :func:`allocate_precision`).
    channel_axes : list of int, default=None
        The output-channel axis of every parameter (default 0).
    map_coder : str, default="auto"
        Coder of the stored precision maps (see :mod:`skquant._tensor._fixedpoint`).
    payload_coder : str, default="range"
        Coder of the stored payloads.
    retrain : {None, "ste", "pruned"}, default=None
        Fine-tuning between steps (off by default).
    retrain_steps : int, default=50
        Adam steps of each fine-tune.
    retrain_lr : float, default=1e-3
        Adam's learning rate, as a fraction of each tensor's power-of-two range.
    retrain_gradient : callable, default=None
        ``retrain_gradient(params, t) -> (loss, grads)`` for the ``t``-th Adam
        step (a minibatch, say); ``None`` uses ``loss_and_grad`` (full batch).
    evaluate : callable, default=None
        ``evaluate(model) -> accuracy``, recorded in the history.
    verbose : bool, default=False
        Progress bar with the loss and the size.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    result : AdaptiveQuantizationResult
        The quantized model, the history, the per-parameter bits and the stored
        tensors.
    """

    check_loop_params(trust_region, max_iter, max_bits)
    check_group_size(group_size)
    check_map_coder(map_coder)
    check_payload_coder(payload_coder)
    check_n_jobs(n_jobs)  # (0, 1.5 and True were taken; "x" raised a bare TypeError)
    check_bool(relative, "relative")  # ("no" read as True)
    check_bool(verbose, "verbose")
    if retrain not in (None, "ste", "pruned"):
        raise ValueError(
            f"retrain must be None, 'ste' or 'pruned', got retrain={retrain!r} instead."
        )
    if retrain is not None:
        check_int(retrain_steps, "retrain_steps")
        check_positive(retrain_lr, "retrain_lr")
    params = [np.asarray(p, dtype=np.float64).copy() for p in params]
    n_params = sum(p.size for p in params)
    loss, grads = loss_and_grad(params)
    l_bar = check_bound(loss_bound, relative, loss)
    if l_bar <= loss:
        raise ValueError(
            f"loss_bound gives l_bar={l_bar:.6g}, not above the current loss "
            f"{loss:.6g}: there is no budget to spend. Pass a larger loss_bound."
        )
    float_bits = 32 * n_params
    history = [
        {
            "loss": loss,
            "payload_bits": float_bits,
            "map_bits": 0,
            "map_bits_fixed": 0,
            "map_bits_entropy": 0,
            "total_bits": float_bits,
            "bits_per_param": 32.0,
            "predicted_increase": 0.0,
            "measured_increase": 0.0,
        }
    ]
    if evaluate is not None:
        history[0]["accuracy"] = evaluate(set_params(params))
    best, best_bits, best_tensors, grid_scales = None, None, None, None
    stop = f"max_iter={max_iter} reached"
    bar = progress(range(max_iter), desc="adaptive precision", enabled=verbose)
    for _ in bar:
        if retrain is not None and best is not None:
            params = _retrain(
                params,
                best_bits,
                grid_scales,
                retrain_gradient or (lambda p, t: loss_and_grad(p)),
                retrain,
                retrain_steps,
                retrain_lr,
                group_size is not None,
            )
            loss, grads = loss_and_grad(params)
        budget = l_bar - loss
        if budget <= 0:
            stop = "loss bound binds"
            break
        for _retry in range(5):
            res = allocate_precision(
                params,
                grads,
                budget,
                trust_region,
                max_bits=max_bits,
                group_size=group_size,
                group_margin=group_margin,
                channel_axes=channel_axes,
                map_coder=map_coder,
                payload_coder=payload_coder,
                n_jobs=n_jobs,
            )
            new_loss, new_grads = loss_and_grad(res["quantized"])
            if new_loss <= l_bar:
                break
            budget /= 2
        else:
            stop = "no step kept the loss under the bound"
            break
        metas = [t.encoded()[0] for t in res["tensors"]]
        payload = sum(m["payload_bits"] for m in metas)
        total = res["size_bits"]
        maps = precision_map_bits(
            np.concatenate([b.ravel() for b in res["bits"]])
        )  # formulas, for comparison with the stored map
        entry = {
            "loss": new_loss,
            "payload_bits": payload,
            "map_bits": total - payload - 16 * len(res["tensors"]),
            "map_bits_fixed": maps["fixed"],
            "map_bits_entropy": maps["entropy"],
            "total_bits": total,
            "bits_per_param": total / n_params,
            "predicted_increase": res["predicted_increase"],
            "measured_increase": new_loss - loss,
        }
        if total >= history[-1]["total_bits"] and best is not None:
            stop = "size stopped shrinking"
            break
        model = set_params(res["quantized"])
        if evaluate is not None:
            entry["accuracy"] = evaluate(model)
        history.append(entry)
        bar.set_postfix(f"loss {new_loss:.4g} bits/param {total / n_params:.2f}")
        params, loss, grads = res["quantized"], new_loss, new_grads
        best, best_bits, best_tensors = model, res["bits"], res["tensors"]
        grid_scales = res["scales"]
    if best is None:
        best, best_bits = (
            set_params(params),
            [np.full(p.shape, 32, np.int8) for p in params],
        )
    return AdaptiveQuantizationResult(
        best, history, best_bits, n_params, stop, tensors=best_tensors
    )


def _retrain(params, bits, scales, gradient, mode, steps, lr, grouped):
    """Full-batch Adam on the loss between two steps of the loop.

    ``"ste"``: the loss and gradient are taken at the latent parameters rounded
    to their fixed-point grids (``bits``, ``scales``), and the result is rounded;
    ``"pruned"``: float parameters, the pruned ones (0 bits) held at zero.
    """
    n_frac = [b.astype(np.int64) - 1 for b in bits]
    keep = [b > 0 for b in bits]

    def snap(z):
        if mode == "pruned":
            return [np.where(k, v, 0.0) for v, k in zip(z, keep)]
        return [
            round_fixed(np.clip(v / s, -1.0, 1.0), n, clip=grouped) * s
            for v, s, n in zip(z, scales, n_frac)
        ]

    z = [np.array(p, dtype=np.float64) for p in params]
    m = [np.zeros_like(v) for v in z]
    v2 = [np.zeros_like(v) for v in z]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        _, grads = gradient(snap(z), t - 1)
        for i, g in enumerate(grads):
            g = np.where(keep[i], g, 0.0)
            m[i] = b1 * m[i] + (1 - b1) * g
            v2[i] = b2 * v2[i] + (1 - b2) * g * g
            step = lr * scales[i] * (m[i] / (1 - b1**t))
            z[i] = z[i] - step / (np.sqrt(v2[i] / (1 - b2**t)) + eps)
    return snap(z)


def _gradient_on(network, names, data, params):
    """Loss on ``data`` and its gradient, as a list in the order of ``names``."""
    loss, grads = network.loss_gradients(data, dict(zip(names, params)))
    return loss, [np.asarray(grads[k], dtype=np.float64) for k in names]


def _minibatch_gradient(network, names, data, batch_size, rng):
    """``(params, t) -> (loss, grads)`` on the ``t``-th minibatch of ``data``.

    A pair ``(X, y)`` is cut into shuffled batches of ``batch_size`` rows, one new
    permutation per pass (drawn from the generator ``rng``); a list of batches is
    cycled through in order.
    """
    if batch_size is None:  # full batches of the retraining data
        return lambda params, t: _gradient_on(network, names, data, params)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(
            "retrain_batch_size must be a positive int or None, got "
            f"retrain_batch_size={batch_size!r} instead."
        )
    if isinstance(data, tuple) and len(data) == 2:
        X, y = data
        n = len(X)
        order, pos = rng.permutation(n), 0
        batches = None
    else:
        batches = list(data)

    def gradient(params, t):
        nonlocal order, pos
        if batches is not None:
            batch = batches[t % len(batches)]
        else:
            if pos >= n:
                order, pos = rng.permutation(n), 0
            idx = np.sort(order[pos : pos + batch_size])
            pos += batch_size
            batch = (X[idx], y[idx])
        return _gradient_on(network, names, batch, params)

    return gradient


def adaptive_quantize_network(network, data, **options):
    """The adaptive-precision loop over any network adapter.

    The network is a :class:`~skquant._network._protocol.Network`.

    Every parameter of the network gets its own precision (the one driver behind
    :func:`adaptive_quantize_mlp` and ``skquant.torch.adaptive_quantize_model``).

    Parameters
    ----------
    network : Network
        The float network (left unchanged).
    data : object
        Data for the loss, in the adapter's format.
    **options : dict
        Passed to :func:`adaptive_precision_loop` (``loss_bound``, ...).

    Returns
    -------
    result : AdaptiveQuantizationResult
        ``result.model`` is the quantized copy of ``network.model``;
        ``result.names`` the parameters' names, in the order of
        ``result.tensors``.
    """
    start = network.parameters()
    names = list(start)
    batch_size = options.pop("retrain_batch_size", None)
    rng = check_rng(options.pop("random_state", None))
    retrain_data = options.pop("retrain_data", None)
    if options.get("retrain") is not None and (
        batch_size is not None or retrain_data is not None
    ):
        options["retrain_gradient"] = _minibatch_gradient(
            network,
            names,
            data if retrain_data is None else retrain_data,
            batch_size,
            rng,
        )

    first = []

    def loss_and_grad(params):
        loss, grads = _gradient_on(network, names, data, params)
        if not first and not np.isfinite(loss):  # the float model's own loss
            raise ValueError(
                f"the loss of the float model on the data is {loss}: the data "
                "(X or y) or the model holds NaN or inf, or y lies outside the "
                "loss's domain."
            )
        first.append(loss)
        return loss, grads

    def set_params(params):
        return network.with_parameters(dict(zip(names, params))).model

    options.setdefault("channel_axes", [network.output_axis(n) for n in names])
    result = adaptive_precision_loop(
        [start[n] for n in names], loss_and_grad, set_params, **options
    )
    result.names = list(names)
    return result
