"""Per-layer sensitivity (Zhou et al.): output noise of each layer quantized alone.

For every weight layer ``i`` and bit-width ``b``, the layer alone is quantized (a
memoryless quantizer's clone with ``n_bits=b``) and the noise power on the network's
output (its logits) is measured, ``p_i(b) = mean_n ||z_n(Q) - z_n(W)||^2``. Zhou's
law ``p_i(b) = p_i exp(-alpha_i b)`` is fitted by least squares on ``log p``; its
slope ``-alpha_i`` is near ``-ln 4`` per bit for uniform rounding. One driver over
the :class:`~skquant._network.Network` protocol.
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone

from ._base import BaseWeightQuantizer
from ._datadriven import BaseDataQuantizer
from ._uniform import UniformQuantizer

__all__ = ["SensitivityResult", "measure_layer_noise"]


@dataclass
class SensitivityResult:
    """Measured output noise per layer and bit-width, and Zhou's fit.

    Attributes
    ----------
    bits : list of int
        The bit-widths measured.
    rows : list of dict
        One per layer: ``name``, ``n_params``, ``noise`` (the measured ``p_i(b)``,
        one per bit-width), ``p`` (the fitted noise at 0 bits), ``slope`` (the
        fitted ``d log p / d b``), ``r2`` (the fit's coefficient of
        determination on ``log p``) and ``seconds``.
    """

    bits: list
    rows: list = field(default_factory=list)

    def __str__(self):
        head = f"{'layer':<20}{'params':>9}{'p':>11}{'slope':>8}{'r2':>7}" + "".join(
            f"{f'p({b})':>11}" for b in self.bits
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r['name']:<20.20}{r['n_params']:>9d}{r['p']:>11.3e}"
                f"{r['slope']:>8.3f}{r['r2']:>7.3f}"
                + "".join(f"{v:>11.3e}" for v in r["noise"])
            )
        return "\n".join(lines)


def _fit(bits, noise):
    """Least squares of ``log p = log p0 + slope b`` over the positive noises."""
    b = np.asarray(bits, dtype=np.float64)
    p = np.asarray(noise, dtype=np.float64)
    ok = p > 0
    if ok.sum() < 2:
        return float("nan"), float("nan"), float("nan")
    slope, intercept = np.polyfit(b[ok], np.log(p[ok]), 1)
    pred = intercept + slope * b[ok]
    resid = np.log(p[ok]) - pred
    total = np.log(p[ok]) - np.log(p[ok]).mean()
    r2 = 1.0 - float(resid @ resid) / float(total @ total) if total @ total > 0 else 1.0
    return float(math.exp(intercept)), float(slope), r2


def measure_layer_noise(network, data, *, quantizer=None, bits=(2, 3, 4, 5, 6, 8)):
    """Output noise of every layer quantized alone, at several bit-widths.

    Parameters
    ----------
    network : Network
        The float network (an adapter such as :class:`~skquant._network.MLPNetwork`).
    data : object
        Inputs in the adapter's format (rows of ``X`` for scikit-learn MLPs).
    quantizer : estimator, default=None
        A memoryless weight quantizer with an ``n_bits`` parameter, cloned per layer
        and bit-width; ``None`` means per-channel max-abs :class:`UniformQuantizer`.
    bits : sequence of int, default=(2, 3, 4, 5, 6, 8)
        The bit-widths.

    Returns
    -------
    result : SensitivityResult
        The measured noise and Zhou's fit per layer; ``print(result)`` shows a
        table.
    """
    quantizer = UniformQuantizer() if quantizer is None else quantizer
    if not isinstance(quantizer, BaseWeightQuantizer) or isinstance(
        quantizer, BaseDataQuantizer
    ):
        raise TypeError(
            "quantizer must be a memoryless skquant weight quantizer with n_bits "
            f"(e.g. UniformQuantizer()), got {quantizer!r:.80} instead."
        )
    if "n_bits" not in quantizer.get_params():
        raise TypeError(
            f"quantizer must have an n_bits parameter, got {quantizer!r:.80} instead."
        )
    bits = [int(b) for b in bits]
    if len(bits) < 2 or len(set(bits)) != len(bits):
        raise ValueError(
            f"bits must hold at least two different bit-widths, got bits={bits!r} "
            "instead."
        )
    reference = np.asarray(network.outputs(data), dtype=np.float64)
    if reference.size == 0:
        raise ValueError("data holds no sample.")
    result = SensitivityResult(bits=bits)
    for name in network.layer_names:
        start = time.perf_counter()
        W = network.weight(name)
        noise = []
        for b in bits:
            est = clone(quantizer).set_params(n_bits=b)
            Q = est.fit(W).transform(W)
            out = np.asarray(network.outputs(data, {name: Q}), dtype=np.float64)
            diff = (out - reference).reshape(reference.shape[0], -1)
            noise.append(float(np.mean(np.sum(diff**2, axis=1))))
        p0, slope, r2 = _fit(bits, noise)
        result.rows.append(
            {
                "name": name,
                "n_params": int(W.size),
                "noise": noise,
                "p": p0,
                "slope": slope,
                "r2": r2,
                "seconds": time.perf_counter() - start,
            }
        )
    return result
