"""
=====================================================================
Single-layer error against the layer width: MSQ, GPFQ and null space
=====================================================================

For a layer ``X @ w`` with ``m`` calibration samples and ``n_in`` inputs, the
data-driven quantizers leave most of the rounding where the data cannot see it, so
their relative error on the calibration data falls as ``n_in`` grows while ``m``
stays fixed; memoryless scalar quantization (MSQ) does not use the data and stays
flat. :func:`skquant.theory.error_decay` measures this on Gaussian layers (``X``
with i.i.d. N(0, 1) entries, ``W`` with N(0, 1/n_in) entries) for

* ``"msq"``: :class:`~skquant.UniformQuantizer`, max-abs step;
* ``"gpfq"``: greedy path following, :class:`~skquant.GreedyPathQuantizer`;
* ``"grid"``: the null-space pre-processing on the b-bit grid,
  :class:`~skquant.NullSpaceQuantizer` (``variant="grid"``);
* ``"lp"``: the scale-free ternary variant, ``NullSpaceQuantizer(n_bits="ternary",
  variant="lp")``, whose level ``c`` comes out of a linear program (it is run once,
  whatever the bit-width).

The null-space methods round their off-grid coordinates to the nearest point here
(``rounding="nearest"``), the method as analysed. See :ref:`nullspace` for the
derivations of the rates and of the bounds drawn dashed.
"""

# %%
# Run the experiment
# ------------------
# Sixteen calibration samples, five widths from 64 to 1024, 2 and 4 bits, four
# neurons per layer, and 500 fresh samples from the same distribution to measure
# the error on data the quantizers have not seen.
import time

import matplotlib.pyplot as plt
import numpy as np

from skquant.theory import error_decay, plot_error_decay, predicted_rate

tic = time.perf_counter()
result = error_decay(
    n_in_values=(64, 128, 256, 512, 1024),
    m=16,
    n_bits=(2, 4),
    n_out=4,
    n_test=500,
    random_state=0,
)
print(f"error_decay took {time.perf_counter() - tic:.1f} s")

# %%
# Slopes
# ------
# The log-log slope of the calibration error against ``n_in``, next to the slope of
# the predicted rate (:func:`skquant.theory.predicted_rate`) over the same widths,
# and the errors at the largest width, on the calibration data and on the held-out
# data. The LP variant's predicted rate, ``m sqrt(log(n_in / m)) / n_in``, has a
# slope of -1 only asymptotically: its logarithm still grows fast over these
# widths.
n_in = [64, 128, 256, 512, 1024]
rows = result["rows"]
print(
    f"{'method':<6} {'n_bits':>7} {'slope':>7} {'predicted':>9} "
    f"{'calib@1024':>10} {'test@1024':>9}"
)
for (method, n_bits), slope in result["slopes"].items():
    rate = predicted_rate(method, result["m"], n_in)
    pred_slope = np.polyfit(np.log(n_in), np.log(rate), 1)[0]
    last = next(
        r
        for r in rows
        if (r["method"], r["n_bits"], r["n_in"]) == (method, n_bits, n_in[-1])
    )
    print(
        f"{method:<6} {n_bits!s:>7} {slope:>+7.2f} {pred_slope:>+9.2f} "
        f"{last['error']:>10.4f} {last['test_error']:>9.3f}"
    )

# %%
# The plot
# --------
# Left: the calibration error (solid) and each method's a-priori bound (dashed,
# relative to the smallest ``||X w||`` of the layer): :func:`~skquant.theory.msq_bound`,
# :func:`~skquant.theory.gpfq_bound` and :func:`~skquant.theory.nullspace_bound`
# (with the certified :func:`~skquant.theory.max_subset_norm_bound`). Right: the
# same quantized weights on the held-out data.
#
# On the calibration data the rates hold: MSQ is flat, the grid variant and GPFQ
# fall like ``n_in^(-1/2)`` (up to logarithms) and the LP variant like
# ``n_in^(-1)``. On held-out data the picture turns over: with ``m = 16`` samples of
# structureless Gaussian data, what the calibration data pins down says nothing about
# new data, and every data-driven method does worse than MSQ; the LP variant, which
# moves ``w`` furthest, has a relative error close to 1, no better than zero
# weights. The guarantee is about the calibration data; real data (see
# :ref:`sphx_glr_auto_examples_plot_mnist_mlp.py`) has structure that carries over.
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
plot_error_decay(result, ax=ax0)
plot_error_decay(result, ax=ax1, test=True)
ax0.set_ylim(bottom=1e-3)  # room for the legend below the curves
ax0.legend(fontsize=7, loc="lower left", ncol=2)
ax0.set_title("calibration data (bounds dashed)")
ax1.set_title("held-out data")
fig.suptitle(f"Gaussian layers, m = {result['m']}")
fig.tight_layout()
plt.show()
