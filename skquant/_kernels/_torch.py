"""The layer kernels of MSQ, GPTQ and GPFQ (Gram form) in torch operations.

They run where the tensors are (a CUDA device, or the CPU when asked) and follow
the NumPy/numba kernels step for step, in float64 (the rounding, GPTQ's
Cholesky factors and GPFQ's divisions need it, as in :mod:`skquant._quantizers._gram`):

* :func:`msq_codes` is bit for bit the numba kernel (one product, one rounding
  half to even, one clip, in the weights' dtype);
* :func:`gptq_codes` and :func:`gpfq_codes` make the same decisions from the same
  matrices; a product's summation order differs between BLAS libraries (and
  GPUs), so a value that lands within rounding error of a decision boundary may
  round the other way. The tests compare codes on random and real layers.

The quantizers call them through :func:`skquant._kernels.torch_kernels` when
their ``device`` is set (the arrays come in as NumPy and go back as NumPy; what
the kernels compute stays on the device).
"""

import numpy as np
import torch


def _on(a, device, dtype=torch.float64):
    """``a`` as a tensor on ``device`` (a copy of a read-only or strided array)."""
    a = np.asarray(a)
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, order="C")
    return torch.as_tensor(a, dtype=dtype, device=device)


def msq_codes(W, inv_step, zero_point, qmin, qmax, device):
    """``clip(round(W * inv_step) + zero_point, qmin, qmax)`` per column, in
    ``W``'s dtype (NumPy in, NumPy out, computed on ``device``)."""
    dtype = torch.from_numpy(np.empty(0, dtype=W.dtype)).dtype
    x = _on(W, device, dtype)
    inv = _on(inv_step, device, dtype)
    zp = _on(zero_point, device, dtype)
    q = torch.round(x * inv) + zp
    return q.clamp_(float(qmin), float(qmax)).cpu().numpy()


def _round_rows(inv, zp, cmin, cmax):
    def round_row(w):
        c = torch.clamp(torch.round(w * inv + zp), cmin, cmax)
        return c, (c - zp) / inv

    return round_row


def gptq_codes(W, X, lam, grid, order, block_size, device, target=None):
    """GPTQ's codes (in the grid's code units) of ``W``'s rows, Cholesky form.

    ``H = X^T X + lam I`` is formed and factored on ``device``:
    ``H^-1 = U^T U`` with ``U`` upper, and the rows are rounded in ``order`` in
    blocks of ``block_size``, each error spread over the rows not yet rounded
    (the Optimal Brain Quantization update), as
    :meth:`skquant.GPTQQuantizer._quantize_rows`.

    Parameters
    ----------
    W : ndarray of shape (n, n_out)
        The weights (rounded when ``target`` is None).
    X : ndarray of shape (m, n)
        The calibration inputs.
    lam : float
        The damping.
    grid : tuple
        ``(zero_point, inv_step, cmin, cmax)`` of :meth:`Alphabet.code_grid`.
    order : ndarray of shape (n,)
        The order of the rows.
    block_size : int
        Rows per block of lazy updates.
    device : str
        The torch device.
    target : tuple of ndarray, default=None
        ``(Xq, Xf)``: quantize the ridge least-squares weights that aim at
        ``Xf @ W`` from ``Xq`` instead of ``W``.

    Returns
    -------
    codes : ndarray of shape (n, n_out)
        Float64 codes in code units.
    """
    Xt = _on(X, device)
    n = Xt.shape[1]
    H = Xt.T @ Xt
    H.diagonal().add_(lam)
    Wt = _on(W, device)
    if target is not None:
        Xf = _on(target[1], device)
        c = Xt.T @ (Xf @ Wt)
        Wt = torch.cholesky_solve(c, torch.linalg.cholesky(H))
    idx = torch.as_tensor(np.asarray(order), device=device)
    H = H[idx][:, idx]
    L = torch.linalg.cholesky(H)
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    del H, L
    zp, inv, cmin, cmax = grid
    round_row = _round_rows(
        _on(np.broadcast_to(inv, (W.shape[1],)), device),
        float(zp),
        float(cmin),
        float(cmax),
    )
    Wt = Wt[idx].clone()
    codes = torch.empty_like(Wt)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        Err = torch.empty((stop - start, Wt.shape[1]), dtype=Wt.dtype, device=device)
        for i in range(start, stop):
            codes[i], value = round_row(Wt[i])
            err = (Wt[i] - value) / U[i, i]
            Wt[i + 1 : stop] -= torch.outer(U[i, i + 1 : stop], err)
            Err[i - start] = err
        if stop < n:
            Wt[stop:] -= U[start:stop, stop:].T @ Err
    out = torch.empty_like(codes)
    out[idx] = codes
    return out.cpu().numpy()


def gpfq_codes(Xq, Xf, W, fallback, grid, block_size, device):
    """GPFQ's codes (code units) of every neuron at once, from Gram matrices.

    Coordinate ``t`` is rounded at ``(A[t] - sum_{s<t} G[t, s] q_s) / G[t, t]``
    with ``A = tril(Xq^T Xf) W`` and ``G = Xq^T Xq`` (``fallback[t]`` where
    ``G[t, t] = 0``), the ``q`` part subtracted lazily by blocks, as
    :func:`skquant._quantizers._gpfq.greedy_path_gram`.
    """
    Q = _on(Xq, device)
    G = Q.T @ Q
    Gqf = G if Xf is Xq else Q.T @ _on(Xf, device)
    A = torch.tril(Gqf) @ _on(W, device)
    del Gqf
    back = _on(fallback, device)
    n, n_out = A.shape
    zp, inv, cmin, cmax = grid
    inv = _on(np.broadcast_to(inv, (n_out,)), device)
    zp = float(zp)
    den = torch.diagonal(G).clone()
    live = (den > 0).cpu().numpy()  # one transfer, not one per coordinate
    cmin, cmax = float(cmin), float(cmax)
    codes = torch.empty_like(A)
    values = torch.empty_like(A)
    for s0 in range(0, n, block_size):
        s1 = min(n, s0 + block_size)
        for t in range(s0, s1):
            if t > s0:
                A[t] -= G[t, s0:t] @ values[s0:t]
            target = A[t] / den[t] if live[t] else back[t]
            c = torch.clamp(torch.round(target * inv + zp), cmin, cmax)
            codes[t] = c
            values[t] = (c - zp) / inv
        if s1 < n:
            A[s1:] -= G[s1:, s0:s1] @ values[s0:s1]
    return codes.cpu().numpy()
