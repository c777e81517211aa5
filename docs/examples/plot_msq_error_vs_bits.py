"""
==========================================================
Quantization error against stored bits per weight (MSQ)
==========================================================

Memoryless scalar quantization (MSQ) rounds every weight on its own to the nearest
point of an alphabet. This example measures, on a random Gaussian weight matrix, how
the signal-to-quantization-noise ratio (SQNR, in dB) grows with the number of bits
that storing the quantized matrix really takes per weight,
:attr:`skquant.QuantizedTensor.bits_per_param`: the packed codes plus the scales
(one float32 per output channel, or a single one per tensor).

It compares

* uniform grids of 2 to 8 bits (:class:`~skquant.UniformQuantizer`), with the
  max-abs step and with the MSE-optimal clipping (``scale="mse"``);
* the ternary alphabet ``{-a, 0, +a}`` (:class:`~skquant.TernaryQuantizer`, two
  stored bits per weight) with the exact L2-optimal level and with the TWN rule;
* the binary alphabet ``{-a, +a}`` (:class:`~skquant.BinaryQuantizer`, one bit);

each with one scale per output channel (``granularity="per_channel"``) and one per
tensor (``"per_tensor"``).
"""

# %%
# A random layer
# --------------
# A weight matrix has shape ``(n_in, n_out)``: one column per output channel. To make
# per-channel scales matter, the channels get different spreads, as the output
# channels of trained layers do.
import matplotlib.pyplot as plt
import numpy as np

from skquant import BinaryQuantizer, TernaryQuantizer, UniformQuantizer
from skquant.metrics import sqnr

rng = np.random.default_rng(0)
n_in, n_out = 512, 256
channel_std = np.exp(rng.normal(scale=0.5, size=n_out))
W = (rng.standard_normal((n_in, n_out)) * channel_std / np.sqrt(n_in)).astype(
    np.float32
)

# %%
# Quantize with every configuration
# ---------------------------------
# ``compress`` returns a :class:`~skquant.QuantizedTensor`; its ``bits_per_param``
# counts the packed codes and every scale at its dtype's width, so the per-channel
# curves sit slightly to the right of the per-tensor ones.
configs = []
for granularity in ("per_channel", "per_tensor"):
    for scale in ("maxabs", "mse"):
        for n_bits in range(2, 9):
            q = UniformQuantizer(n_bits=n_bits, granularity=granularity, scale=scale)
            configs.append((f"uniform, {scale}", granularity, n_bits, q))
    for scale in ("optimal", "twn"):
        q = TernaryQuantizer(granularity=granularity, scale=scale)
        configs.append((f"ternary, {scale}", granularity, "3 levels", q))
    q = BinaryQuantizer(granularity=granularity)
    configs.append(("binary, mean", granularity, "2 levels", q))

rows = []
for name, granularity, bits, q in configs:
    qt = q.fit(W).compress(W)
    rows.append((name, granularity, bits, qt.bits_per_param, sqnr(W, qt.dequantize())))

# %%
# The table
# ---------
header = ("method", "granularity", "n_bits", "bits/weight", "SQNR dB")
print("{:<18} {:<12} {:>8} {:>11} {:>8}".format(*header))
for name, granularity, bits, bpp, db in rows:
    print(f"{name:<18} {granularity:<12} {bits!s:>8} {bpp:>11.3f} {db:>8.2f}")

# %%
# The plot
# --------
# Each added bit halves the step of a uniform grid and buys about 6 dB
# (``20 log10 2 = 6.02``) once the grid is fine; the MSE-optimal clipping gains most
# at few bits, where trading a little clipping for a finer step pays. The ternary
# alphabet is the alphabet of the 2-bit grid: with the optimal level it beats the
# max-abs step by far and matches the MSE search, which finds the same level to 1%.
# One scale per tensor suffers from the spread of the channels: the largest channel
# sets the step of all the others.
fig, ax = plt.subplots(figsize=(7, 4.5))
styles = {"per_channel": "-", "per_tensor": "--"}
markers = {
    "uniform, maxabs": "o",
    "uniform, mse": "s",
    "ternary, optimal": "^",
    "ternary, twn": "v",
    "binary, mean": "D",
}
colors = dict(zip(markers, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
for name in markers:
    for granularity in styles:
        pts = [(r[3], r[4]) for r in rows if r[0] == name and r[1] == granularity]
        x, y = np.array(pts).T
        ax.plot(
            x,
            y,
            linestyle=styles[granularity] if len(x) > 1 else "none",
            marker=markers[name],
            color=colors[name],
            fillstyle="full" if granularity == "per_channel" else "none",
            label=f"{name} ({granularity.replace('_', '-')})",
        )
ax.set_xlabel("stored bits per weight (codes + scales)")
ax.set_ylabel("SQNR (dB)")
ax.set_title(f"MSQ of a {n_in} x {n_out} Gaussian layer")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()
plt.show()
