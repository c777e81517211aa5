"""Kernels of per-parameter adaptive precision (Khoram & Li).

Water filling: given ``a_i = |g_i|`` (loss-gradient magnitudes), a budget ``B > 0`` and
a trust region ``delta > 0``, the margins ``tau_i = min(delta, kappa / a_i)`` meet
``sum_i a_i tau_i = B``. With ``b_i = delta * a_i`` that sum is the capped sum
``f(kappa) = sum_i min(b_i, kappa)``, continuous and increasing in ``kappa``; the
kernels find its root in two passes over the data, ``O(n)``:

1. a histogram of ``log2(b_i)`` (counts and sums per bin) locates the bin holding
   ``kappa`` from the prefix sums (``f`` at a bin edge is exact: every ``b_i`` in a
   lower bin is below the edge);
2. the few ``b_i`` inside that bin are sorted and ``kappa`` is solved exactly.

The ``*_parallel`` twins build one histogram per chunk (no shared writes) and sum them.
Zero gradients contribute nothing to the sum; their margin is the trust region.
"""

import numba as nb
import numpy as np

N_BINS = 4096


@nb.njit(nogil=True)
def _chunk_stats(a, start, stop, delta, lo, scale, counts, sums):  # pragma: no cover
    for i in range(start, stop):
        b = a[i] * delta
        if b > 0:
            k = int((np.log2(b) - lo) * scale)
            k = min(max(k, 0), counts.shape[0] - 1)
            counts[k] += 1
            sums[k] += b


@nb.njit(nogil=True)
def _range(a, delta):  # pragma: no cover
    bmin, bmax, total = np.inf, 0.0, 0.0
    for i in range(a.shape[0]):
        b = a[i] * delta
        if b > 0:
            bmin = min(bmin, b)
            bmax = max(bmax, b)
            total += b
    return bmin, bmax, total


@nb.njit(nogil=True)
def _solve(a, budget, delta, counts, sums, lo, scale, total, bmax):  # pragma: no cover
    if budget >= total:
        return bmax  # every margin clipped at delta
    n_bins = counts.shape[0]
    # f(edge_e) = (sum of b in bins < e) + edge_e * (count in bins >= e)
    above = 0
    for k in range(n_bins):
        above += counts[k]
    below_sum = 0.0
    target = n_bins - 1
    for k in range(n_bins):
        edge_hi = 2.0 ** (lo + (k + 1) / scale)
        above_k = above - counts[k]
        f_hi = below_sum + sums[k] + edge_hi * above_k
        if f_hi >= budget or k == n_bins - 1:
            target = k
            break
        below_sum += sums[k]
        above = above_k
    # elements of the target bin, sorted; above counts those in bins >= target
    m = counts[target]
    vals = np.empty(m)
    j = 0
    for i in range(a.shape[0]):
        b = a[i] * delta
        if b > 0:
            k = int((np.log2(b) - lo) * scale)
            k = min(max(k, 0), n_bins - 1)
            if k == target:
                vals[j] = b
                j += 1
    vals.sort()
    higher = above - m  # elements in bins above the target (all > kappa)
    acc = below_sum
    for t in range(m):
        # kappa in [vals[t-1], vals[t]]: f = acc + kappa * (m - t + higher)
        cnt = m - t + higher
        kappa = (budget - acc) / cnt
        prev = vals[t - 1] if t > 0 else 0.0
        if kappa <= vals[t] and kappa >= prev:
            return kappa
        acc += vals[t]
    return (budget - acc) / max(higher, 1)


@nb.njit(cache=True, nogil=True)
def water_fill(a, budget, delta):  # pragma: no cover
    """``kappa`` with ``sum_i min(delta * a_i, kappa) = budget`` (see module doc).

    Parameters
    ----------
    a : float64 ndarray of shape (n,), ``a_i = |g_i| >= 0``
    budget : float64 > 0
    delta : float64 > 0

    Returns
    -------
    kappa : float64; ``max_i delta a_i`` when the budget exceeds ``delta sum a_i``
        (every margin clipped), ``inf`` when every ``a_i`` is 0.
    """
    bmin, bmax, total = _range(a, delta)
    if bmax == 0.0:
        return np.inf
    lo = np.log2(bmin)
    span = max(np.log2(bmax) - lo, 1e-12)
    scale = (N_BINS - 1) / span
    counts = np.zeros(N_BINS, dtype=np.int64)
    sums = np.zeros(N_BINS)
    _chunk_stats(a, 0, a.shape[0], delta, lo, scale, counts, sums)
    return _solve(a, budget, delta, counts, sums, lo, scale, total, bmax)


@nb.njit(cache=True, nogil=True, parallel=True)
def water_fill_parallel(a, budget, delta):  # pragma: no cover
    """Chunk-parallel :func:`water_fill` (same arguments, same result)."""
    n = a.shape[0]
    n_chunks = max(1, min(64, n // 65536))
    size = (n + n_chunks - 1) // n_chunks
    bmins = np.full(n_chunks, np.inf)
    bmaxs = np.zeros(n_chunks)
    totals = np.zeros(n_chunks)
    for c in nb.prange(n_chunks):
        stop = min(n, (c + 1) * size)
        bmins[c], bmaxs[c], totals[c] = _range(a[c * size : stop], delta)
    bmin, bmax, total = bmins.min(), bmaxs.max(), totals.sum()
    if bmax == 0.0:
        return np.inf
    lo = np.log2(bmin)
    span = max(np.log2(bmax) - lo, 1e-12)
    scale = (N_BINS - 1) / span
    counts = np.zeros((n_chunks, N_BINS), dtype=np.int64)
    sums = np.zeros((n_chunks, N_BINS))
    for c in nb.prange(n_chunks):
        stop = min(n, (c + 1) * size)
        _chunk_stats(a, c * size, stop, delta, lo, scale, counts[c], sums[c])
    return _solve(
        a, budget, delta, counts.sum(axis=0), sums.sum(axis=0), lo, scale, total, bmax
    )


@nb.njit(nogil=True)
def _precision_chunk(
    w, a, kappa, delta, max_bits, start, stop, tau, bits, out
):  # pragma: no cover
    for i in range(start, stop):
        t = delta if a[i] * delta <= kappa else kappa / a[i]
        tau[i] = t
        x = w[i]
        if abs(x) <= t:
            bits[i] = 0  # pruned: the margin covers the whole weight
            out[i] = 0.0
            continue
        # fewest fractional bits N with 2^-(N+1) <= t
        n_frac = int(np.ceil(-np.log2(t) - 1.0))
        n_frac = min(max(n_frac, 0), max_bits)
        while n_frac > 0 and 2.0 ** (-n_frac) <= t:  # guard log2 round-off
            n_frac -= 1
        while n_frac < max_bits and 2.0 ** (-(n_frac + 1)) > t:
            n_frac += 1
        p = 2.0**n_frac
        q = np.rint(x * p) / p
        out[i] = q
        if q == 0.0:
            bits[i] = 0  # rounded to zero: nothing to store
            continue
        # store q with the fewest fractional bits that hold it exactly (a value
        # already on a coarser grid, e.g. from an earlier iteration, keeps its width)
        while n_frac > 0:
            half = q * 2.0 ** (n_frac - 1)
            if half != np.floor(half):
                break
            n_frac -= 1
        bits[i] = n_frac + 1  # fractional bits + sign


@nb.njit(cache=True, nogil=True)
def fixed_point_quantize(
    w, a, kappa, delta, max_bits, tau, bits, out
):  # pragma: no cover
    """Margins, per-parameter bits and fixed-point rounding in one pass.

    ``tau_i = min(delta, kappa / a_i)``; a weight with ``|w_i| <= tau_i`` is pruned
    (0 bits, value 0); otherwise it is rounded to ``q_i = rint(2^N_i w_i) / 2^N_i``
    with ``N_i`` the fewest fractional bits with ``2^-(N_i + 1) <= tau_i`` (capped at
    ``max_bits``), and costs ``M_i + 1`` bits (with its sign), ``M_i <= N_i`` the
    fewest fractional bits that hold ``q_i`` exactly (0 bits when ``q_i = 0``).
    Rounding ``w_i`` on the coarser grid of ``M_i`` bits gives ``q_i`` again, since
    ``|w_i - q_i| <= 2^-(N_i+1)``.

    Parameters
    ----------
    w : float64 ndarray of shape (n,), weights in (-1, 1)
    a : float64 ndarray of shape (n,), ``|g_i|``
    kappa, delta : float64
    max_bits : int, largest number of fractional bits
    tau : float64 ndarray of shape (n,), written: margins
    bits : int8 ndarray of shape (n,), written: stored bits per parameter
    out : float64 ndarray of shape (n,), written: quantized weights.
    """
    _precision_chunk(w, a, kappa, delta, max_bits, 0, w.shape[0], tau, bits, out)


@nb.njit(cache=True, nogil=True, parallel=True)
def fixed_point_quantize_parallel(
    w, a, kappa, delta, max_bits, tau, bits, out
):  # pragma: no cover
    """Chunk-parallel :func:`fixed_point_quantize` (same arguments, same result)."""
    n = w.shape[0]
    n_chunks = max(1, min(256, n // 16384))
    size = (n + n_chunks - 1) // n_chunks
    for c in nb.prange(n_chunks):
        _precision_chunk(
            w,
            a,
            kappa,
            delta,
            max_bits,
            c * size,
            min(n, (c + 1) * size),
            tau,
            bits,
            out,
        )
