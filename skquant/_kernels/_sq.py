"""Kernel of the Smart Quantization penalty (Razani et al.): one pass over a layer.

``r(w) = min(|(|w| - a)|^p, t |w|^p)`` with ``t = tan(beta)``, summed over the
layer's weights, together with its gradients: ``dR/dw`` per weight times a
constant ``c`` (written into ``grad_w``; ``c`` folds the penalty's weight in),
``dR/da`` and ``dR/dt`` (returned). Elementwise autograd makes about
ten passes over the weights and as many temporaries; this is one pass.

The loop is branch-free (selects, not jumps: which well is nearer is a coin flip
per weight, and mispredicted branches cost 8x) and its three sums are accumulated
in float64 with ``fastmath={"reassoc"}`` so that they vectorise: only the order of
the additions changes, nothing here rounds, clips or divides. A weight where the
two wells are equal takes the outer well's gradient.
"""

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, fastmath={"reassoc"})
def sq_wells(w, a, t, p, c, grad_w):  # pragma: no cover - compiled
    total = 0.0
    d_a = 0.0
    d_t = 0.0
    one = w.dtype.type(1.0)
    two = w.dtype.type(2.0)
    if p == 2.0:
        for i in range(w.shape[0]):
            x = w[i]
            ax = abs(x)
            s = one if x >= 0 else -one
            e = ax - a
            outer = e * e
            inner = t * ax * ax
            o = outer <= inner
            total += np.float64(min(outer, inner))
            grad_w[i] = c * ((two * e * s) if o else (two * t * ax * s))
            d_a += np.float64(-two * e) if o else 0.0
            d_t += 0.0 if o else np.float64(ax * ax)
    else:
        q = w.dtype.type(p)
        for i in range(w.shape[0]):
            x = w[i]
            ax = abs(x)
            s = one if x >= 0 else -one
            e = ax - a
            ae = abs(e)
            se = one if e >= 0 else -one
            outer = ae**q
            axp = ax**q
            inner = t * axp
            o = outer <= inner
            total += np.float64(min(outer, inner))
            g_out = q * ae ** (q - one) * se if ae > 0 else w.dtype.type(0.0)
            g_in = t * q * ax ** (q - one) * s if ax > 0 else w.dtype.type(0.0)
            grad_w[i] = c * ((g_out * s) if o else g_in)
            d_a += np.float64(-g_out) if o else 0.0
            d_t += 0.0 if o else np.float64(axp)
    return total, d_a, d_t


@nb.njit(cache=True, nogil=True, parallel=True)
def sq_wells_parallel(w, a, t, p, c, k, grad_w):  # pragma: no cover - compiled
    n = w.shape[0]
    size = (n + k - 1) // k
    sums = np.zeros((k, 3))
    for j in nb.prange(k):
        lo = min(n, j * size)
        hi = min(n, lo + size)
        sums[j, 0], sums[j, 1], sums[j, 2] = sq_wells(
            w[lo:hi], a, t, p, c, grad_w[lo:hi]
        )
    return sums[:, 0].sum(), sums[:, 1].sum(), sums[:, 2].sum()


#: below this many weights the serial kernel is faster than waking threads
PARALLEL_MIN_SIZE = 1 << 16


def wells_sum(w, a, t, p, scale=1.0):
    """``c * (sum r, dR/dw, dR/da, dR/dt)``, ``c = scale``, for a flat contiguous
    float array ``w`` (chunks on numba's threads for large layers)."""
    grad = np.empty_like(w)
    typ = w.dtype.type
    args = (w, typ(a), typ(t), float(p), typ(scale))
    if w.shape[0] >= PARALLEL_MIN_SIZE and nb.get_num_threads() > 1:
        total, d_a, d_t = sq_wells_parallel(*args, nb.get_num_threads(), grad)
    else:
        total, d_a, d_t = sq_wells(*args, grad)
    return scale * total, grad, scale * d_a, scale * d_t
