"""Zhou et al.'s measures: the noise law fitted per layer, decision margins, the
tolerated noise, and the result record.
"""

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from .._common._plot import axes
from ._choices import CRITERIA

__all__ = [
    "SensitivityResult",
    "decisions",
    "flip_rate",
    "margin_threshold",
    "noise_spread",
]


# ----------------------------------------------------------------- fitting
def fit_law(bits, noise):
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


def noise_power(R):
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
        p = noise_power(R)
        if p > 0:
            parts.append((R - R[n, c][:, None]) ** 2 / (2 * p))
    return np.mean(parts, axis=0) if parts else None


def margin_threshold(Z, spread, tolerance, counted):
    """The noise power on ``Z`` at which :func:`flip_rate` reaches ``tolerance``."""
    scale = noise_power(Z) or 1.0
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
        Forward passes over the sample, all measurements together (a single
        layer's measurement counts its pass from that layer on as one).
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
        labels = [choice_label(c) for c in self.choices]
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
        ax = axes(ax, (6, 4))
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


def choice_label(choice):
    return choice if isinstance(choice, str) else f"{choice} b"


# ------------------------------------------------------------------ driver
def accuracy_of(Z, labels):
    return float(np.mean(decisions(Z) == labels))
