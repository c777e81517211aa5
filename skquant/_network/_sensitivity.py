"""The sensitivity driver (Zhou et al.): every layer quantized alone at every choice.

For every weight layer ``i`` and choice ``j`` (a bit-width, or the binary and ternary
alphabets), the layer alone is quantized and the network's outputs (its logits ``Z``)
are compared with the float network's on a data sample:

* ``noise[i, j] = mean_n ||Z_n(Q) - Z_n(W)||^2``, the noise power Zhou's law
  ``p_i exp(-alpha_i b)`` is fitted to (least squares on ``log p``; the slope
  ``-alpha_i`` is near ``-ln 4`` per bit for rounding);
* ``size[i, j]``: the bits of the quantized tensor (codes + scales), as stored;
* ``weight_error[i, j] = ||W - Q||^2`` (the SQNR allocation of Lin et al. and the
  Hessian-trace criterion of HAWQ use it);
* ``accuracy[i, j]``: the accuracy with that layer alone quantized (classifiers; on
  the labels, or against the float model's decisions without labels).

The tolerated noise ``t_i`` (the noise power on ``Z`` from layer ``i`` at which the
accuracy drops by ``tolerance``) comes from two measurements: ``"margin"``, a fast
estimate from the logit margins and the direction of the layer's measured noise
(no extra forward pass), and ``"empirical"``, a search over the strength of random
noise injected into the layer's weights. The additivity of the noise is checked on
several configurations (all layers quantized together against the sum of the
singles). One driver over the :class:`~skquant._network._protocol.Network` protocol; the
public front ends are :func:`skquant.measure_sensitivity` (scikit-learn MLPs) and
:func:`skquant.torch.measure_sensitivity`.
"""

import math
import numbers
import time
from itertools import chain

import numpy as np
from joblib import delayed, effective_n_jobs
from sklearn.utils.validation import column_or_1d

from .._common._checks import check_int, check_rng
from .._common._jobs import (
    check_n_jobs,
    configured_n_jobs,
    hold_freed_memory,
    run_tasks,
    shippable,
)
from .._common._progress import progress
from .._layerbits._choices import check_choices, check_quantizer, choice_quantizer
from .._layerbits._law import (
    SensitivityResult,
    accuracy_of,
    choice_label,
    decisions,
    fit_law,
    margin_threshold,
    noise_power,
    noise_spread,
)
from ._plan import fit_layer, layer_steps, requires

__all__ = ["sensitivity", "subsample"]


HESSIAN_SAMPLES = 512  # samples of the measured subset the Hessian traces use


def _fit_choice(quantizer, choice, W, X, groups):
    """The quantized tensor of ``W`` at ``choice`` (data-driven: inputs ``X``)."""
    est = choice_quantizer(quantizer, choice)
    inputs = (X, X) if requires(est, "data") else None
    return fit_layer(est, W, inputs=inputs, groups=groups)[1]


def _measure_choices(network, X, name, quantizer, choices, W, Xin, groups):
    """Layer ``name`` alone at each of ``choices``: per choice, the quantized
    tensor's stored bits and code bits, its dequantized weight and the network's
    outputs on ``X`` with it (one independent task of the sweep; it runs in a
    joblib worker with ``n_jobs``). The layers before ``name`` run once for all
    the choices (:meth:`~skquant._network._protocol.Network.layer_outputs`)."""
    hold_freed_memory()
    outputs = network.layer_outputs(X, name)
    results = []
    for choice in choices:
        tensor = _fit_choice(quantizer, choice, W, Xin, groups)
        Q = tensor.dequantize().astype(np.float64)
        Z = np.asarray(outputs(Q), dtype=np.float64)
        results.append((tensor.size_bits, tensor.n_bits, Q, Z))
    return results


def _task_choices(choices, n_layers, n_jobs):
    """The choices of a layer cut into the groups that go out as tasks: one
    group in this process (the layers before it run once per layer); with
    workers, enough groups for about two tasks a worker over the layers."""
    if n_jobs is None or n_jobs == 1:
        return [list(choices)]
    C = len(choices)
    k = min(C, -(-2 * effective_n_jobs(n_jobs) // n_layers))
    return [list(choices[i * C // k : (i + 1) * C // k]) for i in range(k)]


def _empirical_threshold(outputs, W, ref, labels, base, tolerance, guess, rng, count):
    """Noise power on the outputs at which injected weight noise costs ``tolerance``.

    Uniform noise ``sigma * maxabs_j * U(-1/2, 1/2)`` per output channel ``j`` (the
    error of rounding to a grid of step ``sigma * maxabs_j``); ``sigma`` is searched
    on a log scale (bracketing from ``guess``, then 8 bisections).
    """
    E = rng.uniform(-0.5, 0.5, W.shape) * np.abs(W).max(axis=0, keepdims=True)

    def measure(log_sigma):
        Z = outputs(W + math.exp(log_sigma) * E)
        count[0] += 1
        return noise_power(Z.reshape(len(Z), -1) - ref), base - accuracy_of(Z, labels)

    p1, _ = measure(0.0)  # sigma = 1: noise as large as the weights
    if p1 == 0:
        return math.inf
    start = 0.5 * math.log(guess / p1) if math.isfinite(guess) and guess > 0 else -3.0
    lo = hi = None
    x = min(start, 3.0)
    cache = {}
    for _ in range(10):
        cache[x] = measure(x)
        if cache[x][1] >= tolerance:
            hi = x
            if lo is not None:
                break
            x -= math.log(4)
        else:
            lo = x
            if hi is not None:
                break
            if x >= 3.0:  # noise 20x the weights and still within tolerance
                return math.inf
            x = min(x + math.log(4), 3.0)
    if hi is None:
        return math.inf
    if lo is None:
        return cache[hi][0]
    for _ in range(8):
        mid = (lo + hi) / 2
        cache[mid] = measure(mid)
        if cache[mid][1] >= tolerance:
            hi = mid
        else:
            lo = mid
    return math.sqrt(cache[lo][0] * cache[hi][0])


def sensitivity(
    network,
    X,
    labels=None,
    *,
    quantizer=None,
    bits=(2, 3, 4, 5, 6, 8),
    classifier=True,
    tolerance=0.005,
    threshold="margin",
    additivity=True,
    hessian=False,
    hessian_data=None,
    n_probes=16,
    max_rows=2048,
    random_state=0,
    verbose=False,
    n_jobs=None,
):
    """Measure every layer's sensitivity: the one driver behind the front ends.

    Parameters
    ----------
    network : Network
        The float network adapter.
    X : object
        Inputs in the adapter's format (already subsampled).
    labels : ndarray of int, default=None
        Class index per row of ``X``; ``None`` measures accuracy as agreement
        with the float model's decisions.
    quantizer, bits, tolerance, threshold, additivity, hessian, n_probes,
    max_rows, random_state, verbose :
        See :func:`measure_sensitivity`.
    classifier : bool, default=True
        Whether the outputs are logits of a classifier (regression models have
        no accuracy and no ``t``).
    hessian_data : object, default=None
        ``(X, y)`` in the adapter's format for the Hessian traces.
    n_jobs : int, default=None
        See :func:`measure_sensitivity`.

    Returns
    -------
    result : SensitivityResult
    """
    quantizer = check_quantizer(quantizer)
    choices = check_choices(bits)
    check_n_jobs(n_jobs)
    check_int(n_probes, "n_probes")
    if threshold not in ("margin", "empirical", "both", None):
        raise ValueError(
            "threshold must be 'margin', 'empirical', 'both' or None, got "
            f"threshold={threshold!r} instead."
        )
    if not (isinstance(tolerance, numbers.Real) and 0 < tolerance < 1):
        raise ValueError(
            "tolerance must be an accuracy drop in (0, 1), got "
            f"tolerance={tolerance!r} instead."
        )
    rng = check_rng(random_state)
    start_all = time.perf_counter()
    count = [1]
    ref = np.asarray(network.outputs(X), dtype=np.float64)
    if ref.shape[0] == 0:
        raise ValueError("X holds no sample: the measurement needs at least one row.")
    ref = ref.reshape(ref.shape[0], -1)
    n = ref.shape[0]
    if labels is not None and len(labels) != n:
        raise ValueError(
            f"y must have one label per sample ({n}), got len(y)={len(labels)} instead."
        )
    base = None
    if classifier:
        labels = decisions(ref) if labels is None else np.asarray(labels)
        base = accuracy_of(ref, labels)
        counted = decisions(ref) == labels
    names = network.layer_names
    L, C = len(names), len(choices)
    noise = np.zeros((L, C))
    size = np.zeros((L, C))
    code_bits = np.zeros((L, C))
    werr = np.zeros((L, C))
    wnorm = np.zeros(L)
    acc = np.zeros((L, C)) if classifier else None
    t_m = np.full(L, np.nan) if classifier and threshold in ("margin", "both") else None
    t_e = (
        np.full(L, np.nan)
        if classifier and threshold in ("empirical", "both")
        else None
    )
    seconds = np.zeros(L)
    keep = {} if additivity else None
    data = X if requires(quantizer, "data") else None
    steps = layer_steps(network, data, max_rows=max_rows, random_state=random_state)
    n_jobs = configured_n_jobs(n_jobs)  # (None: a parallel_config's)
    X_task = X if n_jobs is None or n_jobs == 1 else shippable(X)
    layers = []  # (name, weight) of each layer, in the order its tasks go out
    measure = delayed(_measure_choices)
    parts = _task_choices(choices, L, n_jobs)

    def layer_tasks(step):
        name, W, groups = step.name, step.weight, step.groups
        Xin = step.inputs()[1] if data is not None else None  # the float network's
        W = np.asarray(W)  # its own dtype: the scales are stored in it
        layers.append((name, W))
        return [
            measure(network, X_task, name, quantizer, part, W, Xin, groups)
            for part in parts
        ]

    # the choices are independent. Without layer inputs, every layer's choices
    # go out as one stream (workers never wait on a layer; joblib may draw the
    # stream from its own thread). Inputs take passes of the network, which stay
    # in this thread: one layer at a time, each when its results are asked for.
    if data is None:
        runs = run_tasks((t for step in steps for t in layer_tasks(step)), n_jobs)
    else:
        runs = chain.from_iterable(
            run_tasks(layer_tasks(step), n_jobs) for step in steps
        )
    runs = chain.from_iterable(runs)  # each task's choices, in order
    t0 = time.perf_counter()
    for k in progress(range(L), desc="sensitivity", total=L, enabled=verbose):
        diffs = []
        for j in range(C):
            size_bits, n_bits, Q, Z = next(runs)
            if j == 0:  # the stream has handed out this layer's tasks by now
                name, W = layers[k]
                layers[k] = None
                i = names.index(name)
                wnorm[i] = float(np.sum(W.astype(np.float64) ** 2))
            count[0] += 1
            R = Z.reshape(n, -1) - ref
            diffs.append(R)
            noise[i, j] = noise_power(R)
            size[i, j] = size_bits
            code_bits[i, j] = n_bits
            werr[i, j] = float(np.sum((W - Q) ** 2))  # (Q is float64)
            if classifier:
                acc[i, j] = accuracy_of(Z, labels)
            if keep is not None:
                keep[(i, j)] = Q
        if t_m is not None:
            spread = noise_spread(ref, diffs)
            t_m[i] = (
                math.inf
                if spread is None
                else margin_threshold(ref, spread, tolerance, counted)
            )
        if t_e is not None:
            guess = t_m[i] if t_m is not None else float(np.median(noise[i]))
            t_e[i] = _empirical_threshold(
                network.layer_outputs(X, name),
                W,
                ref,
                labels,
                base,
                tolerance,
                guess,
                rng,
                count,
            )
        seconds[i] = time.perf_counter() - t0
        t0 += seconds[i]
    fits = [fit_law(code_bits[i], noise[i]) for i in range(L)]
    result = SensitivityResult(
        layer_names=list(names),
        choices=choices,
        n_params=np.array([network.n_params(nm) for nm in names], dtype=np.int64),
        code_bits=code_bits,
        noise=noise,
        size=size,
        weight_error=werr,
        weight_norm=wnorm,
        p=np.array([f[0] for f in fits]),
        slope=np.array([f[1] for f in fits]),
        r2=np.array([f[2] for f in fits]),
        accuracy=acc,
        reference_accuracy=base,
        t_margin=t_m,
        t_empirical=t_e,
        tolerance=float(tolerance) if classifier else None,
        seconds=seconds,
    )
    if keep is not None and L > 1:
        configs = [(f"all {choice_label(c)}", [j] * L) for j, c in enumerate(choices)]
        for k in range(3):
            configs.append((f"mixed #{k + 1}", list(rng.integers(0, C, size=L))))
        for label, pick in configs:
            Z = np.asarray(
                network.outputs(
                    X, {nm: keep[(i, pick[i])] for i, nm in enumerate(names)}
                ),
                dtype=np.float64,
            ).reshape(n, -1)
            count[0] += 1
            measured = noise_power(Z - ref)
            total = float(sum(noise[i, pick[i]] for i in range(L)))
            result.additivity.append(
                {
                    "label": label,
                    "choices": {nm: choices[pick[i]] for i, nm in enumerate(names)},
                    "measured": measured,
                    "sum": total,
                    "ratio": measured / total if total > 0 else float("nan"),
                }
            )
    if hessian:
        if hessian_data is None:
            raise ValueError("hessian=True needs labels y for the loss.")
        result.hessian_trace = np.asarray(
            network.hessian_traces(
                hessian_data, n_probes=n_probes, random_state=random_state
            ),
            dtype=np.float64,
        )
    result.forward_passes = count[0]
    result.total_seconds = time.perf_counter() - start_all
    return result


def labels_1d(y):
    """A classifier's labels as a 1-D array: a column vector raveled (with
    scikit-learn's ``DataConversionWarning``), any other 2-D ``y`` refused (it
    crashed the measurement with an IndexError or a broadcast error)."""
    y = np.asarray(y)
    if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise ValueError(
            "y must hold one label per sample, a 1-D array or a column vector, got "
            f"y.shape={y.shape} instead."
        )
    return column_or_1d(y, warn=True)


def subsample(X, y, max_samples, random_state):
    """At most ``max_samples`` rows of ``X`` (and ``y``), drawn without replacement."""
    check_int(max_samples, "max_samples", none=True)
    rng = check_rng(random_state)
    n = X.shape[0]  # (len() of a SciPy sparse matrix raises)
    if n == 0:
        raise ValueError("X holds no sample: the measurement needs at least one row.")
    if y is not None and len(y) != n:
        raise ValueError(
            f"y must have one label per row of X ({n}), got len(y)={len(y)} instead."
        )
    if max_samples is None or n <= max_samples:
        return X, y
    rows = np.sort(rng.choice(n, max_samples, False))
    return X[rows], None if y is None else y[rows]
