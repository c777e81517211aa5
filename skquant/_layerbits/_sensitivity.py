"""Per-layer sensitivity (Zhou et al.): what quantizing each layer does to the output.

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
singles). One driver over the :class:`~skquant._network.Network` protocol; the
public front ends are :func:`measure_sensitivity` (scikit-learn MLPs) and
:func:`skquant.torch.measure_sensitivity`.
"""

import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr
from sklearn.base import clone

from .._common._progress import progress
from .._network._drivers import _fit_data_driven, _plain_steps
from .._quantizers._base import BaseWeightQuantizer
from .._quantizers._datadriven import BaseDataQuantizer
from .._quantizers._uniform import BinaryQuantizer, TernaryQuantizer, UniformQuantizer

__all__ = ["SensitivityResult", "measure_sensitivity", "sensitivity"]

ALPHABETS = ("binary", "ternary")
CRITERIA = ("noise", "sqnr", "hessian", "accuracy")
HESSIAN_SAMPLES = 512  # samples of the measured subset the Hessian traces use


# ---------------------------------------------------------------- choices
def check_choices(bits):
    """The measured choices: distinct bit-widths (2-16), ``"binary"``, ``"ternary"``."""
    if isinstance(bits, str | numbers.Number):
        bits = [bits]
    choices = []
    for b in bits:
        if isinstance(b, str) and b in ALPHABETS:
            choices.append(b)
        elif (
            isinstance(b, numbers.Integral) and not isinstance(b, bool) and 2 <= b <= 16
        ):
            choices.append(int(b))
        else:
            raise ValueError(
                "bits must hold bit-widths from 2 to 16 and the alphabets 'binary' "
                f"and 'ternary', got {b!r} in bits={list(bits)!r} instead."
            )
    if len(choices) < 2 or len(set(choices)) != len(choices):
        raise ValueError(
            f"bits must hold at least two different choices, got bits={choices!r} "
            "instead."
        )
    return choices


def check_quantizer(quantizer):
    """The quantizer the choices are applied to (``None``: per-channel rounding)."""
    quantizer = UniformQuantizer() if quantizer is None else quantizer
    if not isinstance(quantizer, BaseWeightQuantizer) or (
        "n_bits" not in quantizer.get_params()
    ):
        raise TypeError(
            "quantizer must be a skquant weight quantizer with an n_bits parameter "
            "(UniformQuantizer, GreedyPathQuantizer or NullSpaceQuantizer), got "
            f"{quantizer!r:.80} instead."
        )
    return quantizer


def choice_quantizer(quantizer, choice):
    """An unfitted clone of ``quantizer`` at ``choice`` (a bit-width or an alphabet).

    Data-driven quantizers take the alphabets through ``n_bits``; for a memoryless
    quantizer, ``"binary"`` and ``"ternary"`` mean :class:`BinaryQuantizer` and
    :class:`TernaryQuantizer` with its granularity.
    """
    if isinstance(choice, str) and not isinstance(quantizer, BaseDataQuantizer):
        cls = BinaryQuantizer if choice == "binary" else TernaryQuantizer
        params = {
            k: v
            for k, v in quantizer.get_params().items()
            if k in ("granularity", "n_jobs")
        }
        return cls(**params)
    return clone(quantizer).set_params(n_bits=choice)


def _fit_choice(quantizer, choice, W, X, groups):
    """The quantized tensor of ``W`` at ``choice`` (data-driven: inputs ``X``)."""
    est = choice_quantizer(quantizer, choice)
    if isinstance(est, BaseDataQuantizer):
        return _fit_data_driven(est, W, X, X, groups)[1]
    return est.fit(W).compress(W)


# ----------------------------------------------------------------- fitting
def _fit(bits, noise):
    """Least squares of ``log p = log p0 + slope b`` over the positive noises."""
    b = np.asarray(bits, dtype=np.float64)
    p = np.asarray(noise, dtype=np.float64)
    ok = p > 0
    if ok.sum() < 2 or np.unique(b[ok]).size < 2:
        return float("nan"), float("nan"), float("nan")
    slope, intercept = np.polyfit(b[ok], np.log(p[ok]), 1)
    pred = intercept + slope * b[ok]
    resid = np.log(p[ok]) - pred
    total = np.log(p[ok]) - np.log(p[ok]).mean()
    r2 = 1.0 - float(resid @ resid) / float(total @ total) if total @ total > 0 else 1.0
    return float(math.exp(intercept)), float(slope), r2


# --------------------------------------------------------- decisions, margins
def decisions(Z):
    """Class index per row of logits (one column: the sign, as a logistic output)."""
    Z = np.asarray(Z)
    if Z.ndim == 1 or Z.shape[1] == 1:
        return (Z.reshape(len(Z)) > 0).astype(np.int64)
    return np.argmax(Z, axis=1)


def _power(R):
    """Mean squared norm of the rows of ``R``: ``mean_n ||R_n||^2``."""
    R = np.asarray(R, dtype=np.float64)
    return float(np.mean(np.sum(R.reshape(len(R), -1) ** 2, axis=1)))


def _two_columns(Z):
    """Logits with at least two columns (a single logit ``z`` becomes ``[0, z]``)."""
    Z = np.asarray(Z, dtype=np.float64).reshape(len(Z), -1)
    return np.hstack([np.zeros_like(Z), Z]) if Z.shape[1] == 1 else Z


def flip_rate(Z, spread, power, counted):
    """Expected fraction of decisions flipped by noise of power ``power`` on ``Z``.

    Sample ``n`` with decision ``c`` flips to ``k`` when the noise along
    ``u = (e_k - e_c) / sqrt 2`` exceeds the margin ``(z_c - z_k) / sqrt 2``. The
    noise along ``u`` is taken Gaussian with variance ``power * spread[n, k]``
    (``spread`` from :func:`noise_spread`: how the layer's measured noise, scaled
    to unit power, falls on that sample and direction). The probability of a flip
    is bounded by the sum over ``k`` (capped at 1); only ``counted`` samples (those
    the model gets right) can lose accuracy.
    """
    Z = _two_columns(Z)
    c = decisions(Z)
    n = np.arange(len(Z))
    margin = (Z[n, c][:, None] - Z) / math.sqrt(2)  # (n, K), 0 at k = c
    var = np.maximum(spread, 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = ndtr(-margin / np.sqrt(power * var))
    tail[n, c] = 0.0
    p = np.minimum(tail.sum(axis=1), 1.0)
    return float(np.sum(p[counted]) / len(Z))


def noise_spread(Z, diffs):
    """Per sample and class, the variance along the decision direction of unit noise.

    ``spread[n, k] = mean_j ((r_jn . u_nk)^2 / P_j)`` over the measured noises
    ``r_j`` (one per choice, of power ``P_j > 0``), ``u_nk = (e_k - e_c) / sqrt 2``;
    ``None`` when no noise was measured.
    """
    Z = _two_columns(Z)
    c = decisions(Z)
    n = np.arange(len(Z))
    parts = []
    for R in diffs:
        R = _two_columns(R)
        p = _power(R)
        if p > 0:
            parts.append((R - R[n, c][:, None]) ** 2 / (2 * p))
    return np.mean(parts, axis=0) if parts else None


def margin_threshold(Z, spread, tolerance, counted):
    """The noise power on ``Z`` at which :func:`flip_rate` reaches ``tolerance``."""
    scale = _power(Z) or 1.0
    lo, hi = math.log(scale) - 40, math.log(scale) + 20
    if flip_rate(Z, spread, math.exp(hi), counted) < tolerance:
        return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        if flip_rate(Z, spread, math.exp(mid), counted) < tolerance:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


# ------------------------------------------------------------------ result
@dataclass
class SensitivityResult:
    """Measured sensitivity of every layer; prints as a table, plots noise vs bits.

    Made by :func:`measure_sensitivity` (its fields are its parameters and
    attributes).

    Parameters
    ----------
    layer_names : list of str
        The layers, in forward order.
    choices : list
        The measured choices (bit-widths, ``"binary"``, ``"ternary"``).
    n_params : ndarray of shape (n_layers,)
        Weights per layer.
    code_bits : ndarray of shape (n_layers, n_choices)
        Bits per code of each quantized tensor (1 for binary, 2 for ternary).
    noise : ndarray of shape (n_layers, n_choices)
        Measured noise power on the outputs, ``mean_n ||Z_n(Q) - Z_n(W)||^2``.
    size : ndarray of shape (n_layers, n_choices)
        Size in bits of each quantized layer (codes + scales).
    weight_error : ndarray of shape (n_layers, n_choices)
        ``||W - Q||^2``.
    weight_norm : ndarray of shape (n_layers,)
        ``||W||^2``.
    p, slope, r2 : ndarray of shape (n_layers,)
        Zhou's law ``noise = p exp(slope b)`` fitted on ``log noise``, and the
        fit's coefficient of determination.
    accuracy : ndarray of shape (n_layers, n_choices) or None
        Accuracy with the layer alone quantized (classifiers only).
    reference_accuracy : float or None
        The float model's accuracy on the sample (1 without labels: accuracy is
        then agreement with the float model's decisions).
    t_margin, t_empirical : ndarray of shape (n_layers,) or None
        Tolerated noise power from the margins and from the noise-injection
        search (``inf`` where no measured noise level costs ``tolerance``).
    tolerance : float
        The tolerated accuracy drop behind ``t``.
    hessian_trace : ndarray of shape (n_layers,) or None
        Hutchinson estimate of the trace of each layer's loss Hessian.
    additivity : list of dict
        Per configuration: ``choices`` (by layer), ``measured`` noise with those
        layers quantized together, ``sum`` of the single-layer noises, ``ratio``.
    seconds : ndarray of shape (n_layers,)
        Measurement time per layer (quantization, forward passes, threshold).
    forward_passes : int
        Forward passes over the sample, all measurements together.
    total_seconds : float
        Wall time of the whole measurement.
    """

    layer_names: list
    choices: list
    n_params: np.ndarray
    code_bits: np.ndarray
    noise: np.ndarray
    size: np.ndarray
    weight_error: np.ndarray
    weight_norm: np.ndarray
    p: np.ndarray
    slope: np.ndarray
    r2: np.ndarray
    accuracy: np.ndarray = None
    reference_accuracy: float = None
    t_margin: np.ndarray = None
    t_empirical: np.ndarray = None
    tolerance: float = None
    hessian_trace: np.ndarray = None
    additivity: list = field(default_factory=list)
    seconds: np.ndarray = None
    forward_passes: int = 0
    total_seconds: float = 0.0

    def threshold(self, which="margin"):
        """The tolerated noise per layer.

        Parameters
        ----------
        which : {"margin", "empirical"}, default="margin"
            The estimate from the logit margins or the noise-injection search.

        Returns
        -------
        t : ndarray of shape (n_layers,)
            Tolerated noise power on the outputs.
        """
        t = {"margin": self.t_margin, "empirical": self.t_empirical}.get(which)
        if which not in ("margin", "empirical"):
            raise ValueError(
                f"threshold must be 'margin' or 'empirical', got threshold={which!r} "
                "instead."
            )
        if t is None:
            raise ValueError(
                f"the {which} threshold was not measured (measure with "
                f"threshold={which!r}; a regression model has none)."
            )
        return t

    def cost(self, criterion="noise", threshold="margin"):
        """The cost table ``(n_layers, n_choices)`` an allocator minimises.

        Parameters
        ----------
        criterion : {"noise", "sqnr", "hessian", "accuracy"}, default="noise"
            ``"noise"``: Zhou et al.'s normalised noise ``noise / t`` (the raw
            output noise for regression models); ``"sqnr"``: Lin et al.'s
            inverse signal-to-quantization-noise ratio ``||W - Q||^2 / ||W||^2``,
            every layer alike; ``"hessian"``: HAWQ's ``trace(H) / n * ||W - Q||^2``;
            ``"accuracy"``: the accuracy drop with the layer alone quantized.
        threshold : {"margin", "empirical"}, default="margin"
            Which ``t`` the ``"noise"`` criterion divides by.

        Returns
        -------
        cost : ndarray of shape (n_layers, n_choices)
            Cost of every layer at every choice.
        """
        if criterion == "noise":
            if self.t_margin is None and self.t_empirical is None:
                return self.noise.copy()
            t = self.threshold(threshold)
            with np.errstate(divide="ignore"):
                return self.noise / t[:, None]
        if criterion == "sqnr":
            return self.weight_error / np.maximum(self.weight_norm, 1e-300)[:, None]
        if criterion == "hessian":
            if self.hessian_trace is None:
                raise ValueError(
                    "criterion='hessian' needs the Hessian traces: measure with "
                    "hessian=True (and labels)."
                )
            h = np.maximum(self.hessian_trace, 0) / self.n_params
            return h[:, None] * self.weight_error
        if criterion == "accuracy":
            if self.accuracy is None:
                raise ValueError(
                    "criterion='accuracy' needs a classifier's accuracies; this "
                    "model's outputs have no decisions."
                )
            return np.maximum(self.reference_accuracy - self.accuracy, 0.0)
        raise ValueError(
            f"criterion must be one of {CRITERIA}, got criterion={criterion!r} instead."
        )

    @property
    def rows(self):
        """One dict per layer: name, n_params, p, slope, r2, t, seconds, noise."""
        out = []
        for i, name in enumerate(self.layer_names):
            out.append(
                {
                    "name": name,
                    "n_params": int(self.n_params[i]),
                    "p": float(self.p[i]),
                    "slope": float(self.slope[i]),
                    "r2": float(self.r2[i]),
                    "t_margin": None if self.t_margin is None else self.t_margin[i],
                    "t_empirical": (
                        None if self.t_empirical is None else self.t_empirical[i]
                    ),
                    "seconds": float(self.seconds[i]),
                    "noise": self.noise[i].tolist(),
                }
            )
        return out

    def __str__(self):
        head = (
            f"{'layer':<18}{'params':>9}{'p':>10}{'slope':>7}{'r2':>6}"
            f"{'t margin':>10}{'t empir.':>10}{'s':>6}"
        )
        lines = [head, "-" * len(head)]

        def num(a, i):
            return f"{'-':>10}" if a is None else f"{a[i]:>10.3g}"

        for i, name in enumerate(self.layer_names):
            lines.append(
                f"{name:<18.18}{self.n_params[i]:>9d}{self.p[i]:>10.3g}"
                f"{self.slope[i]:>7.2f}{self.r2[i]:>6.2f}"
                f"{num(self.t_margin, i)}{num(self.t_empirical, i)}"
                f"{self.seconds[i]:>6.1f}"
            )
        lines.append("")
        labels = [_label(c) for c in self.choices]
        lines.append(f"{'noise power':<18}" + "".join(f"{c:>10}" for c in labels))
        for i, name in enumerate(self.layer_names):
            lines.append(
                f"{name:<18.18}" + "".join(f"{v:>10.3g}" for v in self.noise[i])
            )
        for row in self.additivity:
            lines.append(
                f"additivity {row['label']}: together {row['measured']:.3g}, "
                f"sum of singles {row['sum']:.3g}, ratio {row['ratio']:.3f}"
            )
        lines.append(
            f"{self.forward_passes} forward passes, {self.total_seconds:.1f} s"
        )
        return "\n".join(lines)

    def plot(self, ax=None):
        """Noise power against bits per layer (log scale), with Zhou's fit.

        Dashed horizontal lines mark each layer's tolerated noise (margin
        estimate) when measured.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, default=None
            Where to draw; a new figure when ``None``.

        Returns
        -------
        ax : matplotlib.axes.Axes
            The axes drawn on.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        for i, name in enumerate(self.layer_names):
            b = self.code_bits[i]
            (line,) = ax.semilogy(b, self.noise[i], "o", label=name)
            grid = np.linspace(b.min(), b.max(), 50)
            if np.isfinite(self.p[i]):
                ax.semilogy(
                    grid,
                    self.p[i] * np.exp(self.slope[i] * grid),
                    "-",
                    color=line.get_color(),
                    lw=1,
                )
            if self.t_margin is not None and np.isfinite(self.t_margin[i]):
                ax.axhline(self.t_margin[i], color=line.get_color(), ls="--", lw=0.8)
        ax.set_xlabel("bits per weight (codes)")
        ax.set_ylabel("noise power on the logits")
        ax.legend(fontsize="small")
        return ax


def _label(choice):
    return choice if isinstance(choice, str) else f"{choice} b"


# ------------------------------------------------------------------ driver
def _accuracy(Z, labels):
    return float(np.mean(decisions(Z) == labels))


def _empirical_threshold(
    network, X, name, W, ref, labels, base, tolerance, guess, rng, count
):
    """Noise power on the outputs at which injected weight noise costs ``tolerance``.

    Uniform noise ``sigma * maxabs_j * U(-1/2, 1/2)`` per output channel ``j`` (the
    error of rounding to a grid of step ``sigma * maxabs_j``); ``sigma`` is searched
    on a log scale (bracketing from ``guess``, then 8 bisections).
    """
    E = rng.uniform(-0.5, 0.5, W.shape) * np.abs(W).max(axis=0, keepdims=True)

    def measure(log_sigma):
        Z = network.outputs(X, {name: W + math.exp(log_sigma) * E})
        count[0] += 1
        return _power(Z.reshape(len(Z), -1) - ref), base - _accuracy(Z, labels)

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

    Returns
    -------
    result : SensitivityResult
    """
    quantizer = check_quantizer(quantizer)
    choices = check_choices(bits)
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
    rng = np.random.default_rng(random_state)
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
        base = _accuracy(ref, labels)
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
    data_driven = isinstance(quantizer, BaseDataQuantizer)
    steps = (
        network.walk(X, max_rows=max_rows, random_state=random_state)
        if data_driven
        else _plain_steps(network, names)
    )
    for step in progress(steps, desc="sensitivity", total=L, enabled=verbose):
        name, W, groups = step.name, step.weight, step.groups
        Xin = step.inputs()[1] if data_driven else None  # the float network's
        i = names.index(name)
        t0 = time.perf_counter()
        W = np.asarray(W)  # its own dtype: the scales are stored in it
        wnorm[i] = float(np.sum(W.astype(np.float64) ** 2))
        diffs = []
        for j, choice in enumerate(choices):
            tensor = _fit_choice(quantizer, choice, W, Xin, groups)
            Q = tensor.dequantize().astype(np.float64)
            Z = np.asarray(network.outputs(X, {name: Q}), dtype=np.float64)
            count[0] += 1
            R = Z.reshape(n, -1) - ref
            diffs.append(R)
            noise[i, j] = _power(R)
            size[i, j] = tensor.size_bits
            code_bits[i, j] = tensor.n_bits
            werr[i, j] = float(np.sum((W - Q) ** 2))  # (Q is float64)
            if classifier:
                acc[i, j] = _accuracy(Z, labels)
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
                network, X, name, W, ref, labels, base, tolerance, guess, rng, count
            )
        seconds[i] = time.perf_counter() - t0
    fits = [_fit(code_bits[i], noise[i]) for i in range(L)]
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
        configs = [(f"all {_label(c)}", [j] * L) for j, c in enumerate(choices)]
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
            measured = _power(Z - ref)
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


def subsample(X, y, max_samples, random_state):
    """At most ``max_samples`` rows of ``X`` (and ``y``), drawn without replacement."""
    if max_samples is not None and (
        not isinstance(max_samples, numbers.Integral) or max_samples < 1
    ):
        raise ValueError(
            f"max_samples must be a positive integer or None, got "
            f"max_samples={max_samples!r} instead."
        )
    n = len(X)
    if n == 0:
        raise ValueError("X holds no sample: the measurement needs at least one row.")
    if y is not None and len(y) != n:
        raise ValueError(
            f"y must have one label per row of X ({n}), got len(y)={len(y)} instead."
        )
    if max_samples is None or n <= max_samples:
        return X, y
    rows = np.sort(np.random.default_rng(random_state).choice(n, max_samples, False))
    return X[rows], None if y is None else y[rows]


def measure_sensitivity(
    estimator,
    X,
    y=None,
    *,
    quantizer=None,
    bits=(2, 3, 4, 5, 6, 8),
    tolerance=0.005,
    threshold="margin",
    additivity=True,
    hessian=False,
    n_probes=16,
    max_samples=2000,
    random_state=0,
    verbose=False,
):
    """Per-layer sensitivity of a fitted scikit-learn MLP (Zhou et al.).

    Every layer is quantized alone at every choice of ``bits`` and the noise power
    on the logits is measured on ``X``; Zhou's law ``p exp(-alpha b)`` is fitted per
    layer, the tolerated noise ``t`` is measured, and the additivity of the noise
    checked. The result feeds :class:`~skquant.LayerBitAllocator` and
    :func:`~skquant.allocate_bits`.

    Parameters
    ----------
    estimator : MLPClassifier or MLPRegressor
        A fitted network (or one wrapped in ``FrozenEstimator``). For a
        regressor the output is the measured ``Z`` and no accuracy or ``t`` is
        measured.
    X : array-like of shape (n_samples, n_features)
        Data to measure on (held out from training ideally).
    y : array-like of shape (n_samples,), default=None
        Labels: accuracy is measured on them (and they are needed by
        ``hessian=True``); without them, accuracy is the agreement with the
        float model's decisions.
    quantizer : estimator, default=None
        A skquant weight quantizer with ``n_bits`` (cloned per layer and choice);
        ``None`` means :class:`~skquant.UniformQuantizer` per channel. Data-driven
        quantizers (:class:`~skquant.GreedyPathQuantizer`,
        :class:`~skquant.NullSpaceQuantizer`) are fitted on the layer's float
        inputs.
    bits : sequence, default=(2, 3, 4, 5, 6, 8)
        The choices: bit-widths and the alphabets ``"binary"`` and
        ``"ternary"``.
    tolerance : float, default=0.005
        The accuracy drop that defines the tolerated noise ``t`` (0.005: half a
        point).
    threshold : {"margin", "empirical", "both"} or None, default="margin"
        How ``t`` is measured: from the logit margins (no extra pass), by
        injecting noise into each layer's weights (about 12 passes per layer),
        both, or not at all.
    additivity : bool, default=True
        Also measure all layers quantized together (at each choice, and at three
        random mixtures) against the sum of the single-layer noises.
    hessian : bool, default=False
        Also estimate each layer's Hessian trace (Hutchinson, ``n_probes``
        probes on the first 512 samples of the subset; needs ``y``) for the HAWQ
        criterion.
    n_probes : int, default=16
        Hutchinson probes.
    max_samples : int or None, default=2000
        Largest number of rows of ``X`` measured on (a random subset).
    random_state : int, default=0
        Seed of the subset, the noise and the probes.
    verbose : bool, default=False
        Progress bar over the layers.

    Returns
    -------
    result : SensitivityResult
        Tables by layer and choice; ``print(result)`` shows them, ``result.plot()``
        draws noise against bits.

    See Also
    --------
    skquant.torch.measure_sensitivity : The same for torch models.
    LayerBitAllocator : Measures and allocates bit-widths in one estimator.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neural_network import MLPClassifier
    >>> from skquant import measure_sensitivity
    >>> X, y = load_digits(return_X_y=True)
    >>> mlp = MLPClassifier((32,), max_iter=400, random_state=0).fit(X[:1000] / 16,
    ...                                                             y[:1000])
    >>> res = measure_sensitivity(mlp, X[1000:] / 16, y[1000:], bits=(2, 4, 6, 8))
    >>> res.noise.shape
    (2, 4)
    >>> bool(all(-2.0 < s < -1.0 for s in res.slope))  # about -ln 4 per bit
    True
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.neural_network import MLPClassifier

    from .._network._drivers import MLPNetwork, _check_mlp
    from .._sklearn._mlp import _unwrap

    mlp = _check_mlp(_unwrap(estimator))
    try:
        network = MLPNetwork(mlp)
    except NotFittedError as exc:
        raise NotFittedError(
            f"estimator must be a fitted network, got an unfitted {type(mlp).__name__} "
            "(sklearn.base.clone unfits MLPs: wrap a fitted one in "
            "sklearn.frozen.FrozenEstimator to keep it through clone and grid search)."
        ) from exc
    X = network._check_X(X)
    y = None if y is None else np.asarray(y)
    Xs, ys = subsample(X, y, max_samples, random_state)
    classifier = isinstance(mlp, MLPClassifier)
    labels = None
    if classifier and ys is not None:
        Xs, ys = network.check_targets(Xs, ys)
        labels = np.searchsorted(mlp.classes_, ys)
    if hessian and (ys is None or not classifier):
        raise ValueError(
            "hessian=True needs a classifier and its labels y (the loss is the "
            "log-loss)."
        )
    return sensitivity(
        network,
        Xs,
        labels,
        quantizer=quantizer,
        bits=bits,
        classifier=classifier,
        tolerance=tolerance,
        threshold=threshold,
        additivity=additivity,
        hessian=hessian,
        hessian_data=(
            Xs[:HESSIAN_SAMPLES],
            None if ys is None else ys[:HESSIAN_SAMPLES],
        ),
        n_probes=n_probes,
        max_rows=None,
        random_state=random_state,
        verbose=verbose,
    )
