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

GPTQ and GPFQ round row by row inside blocks of rows, a few small operations a
row; on a CUDA device each block's loop is captured once as a CUDA graph and
replayed for every block (:func:`_replayed`), so a row costs the GPU's time
for its operations rather than Python's and the launches' for each.

The quantizers call them through :func:`skquant._kernels.torch_kernels` when
their ``device`` is set (the arrays come in as NumPy and go back as NumPy; what
the kernels compute stays on the device).
"""

import numpy as np
import torch


def check_available(name, owner):
    """ValueError unless torch computes on the device ``name`` here."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"{owner}: device={name!r} is not a torch device ({exc})."
        ) from None
    if dev.type == "meta":
        raise ValueError(
            f"{owner}: device={name!r} holds no values; the kernels need a device "
            "that computes ('cpu', 'cuda', ...)."
        )
    backends = {
        "cuda": (torch.cuda.is_available, torch.cuda.device_count),
        "mps": (torch.backends.mps.is_available, lambda: 1),
    }
    if dev.type in backends:
        available, count = backends[dev.type]
        if not available() or (dev.index is not None and dev.index >= count()):
            raise ValueError(
                f"{owner}: device={name!r} is not available to this torch "
                f"({torch.__version__}); pass device=None (numba) or 'cpu'."
            )


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


def _replayed(block, buffers, device):
    """``block(*buffers)`` as a function of no arguments that reruns it on the
    buffers' current contents: on a CUDA device one CUDA graph of its many small
    operations, captured once and replayed (a row-by-row loop otherwise pays
    Python's and the launch's overhead on every operation of every row), directly
    elsewhere. ``block`` must only read and write ``buffers`` in place."""
    if torch.device(device).type != "cuda":
        return lambda: block(*buffers)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up, as capture needs
        block(*buffers)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        block(*buffers)
    return graph.replay


def _blocks(n, size):
    """``(start, stop)`` of the blocks of ``size`` rows covering ``n``."""
    return [(a, min(a + size, n)) for a in range(0, n, size)]


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

    def block(Wb, Ub, Cb, Err):
        # rows of one block: each rounded, its error spread over the block's rows
        # below it (the rest of W gets the block's errors at once, after)
        for i in range(Wb.shape[0]):
            Cb[i], value = round_row(Wb[i])
            Err[i] = (Wb[i] - value) / Ub[i, i]
            Wb[i + 1 :] -= torch.outer(Ub[i, i + 1 :], Err[i])

    runs = {}
    for start, stop in _blocks(n, block_size):
        size = stop - start
        if size not in runs:  # a full block, and the last one if shorter
            like = torch.zeros((size, Wt.shape[1]), dtype=Wt.dtype, device=device)
            eye = torch.eye(size, dtype=Wt.dtype, device=device)
            bufs = [like, eye, torch.zeros_like(like), torch.zeros_like(like)]
            runs[size] = (bufs, _replayed(block, bufs, device))
        (Wb, Ub, Cb, Err), run = runs[size]
        Wb.copy_(Wt[start:stop])
        Ub.copy_(U[start:stop, start:stop])
        run()
        codes[start:stop] = Cb
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
    live = den > 0
    den = torch.where(live, den, 1.0)  # (a dead coordinate takes its fallback)
    cmin, cmax = float(cmin), float(cmax)
    codes = torch.empty_like(A)

    def block(Ab, Gb, db, lb, bb, Cb, Vb):
        # coordinates of one block, each less the rounded ones before it in the
        # block (the blocks before were subtracted from A at once)
        for t in range(Ab.shape[0]):
            if t:
                Ab[t] -= Gb[t, :t] @ Vb[:t]
            target = torch.where(lb[t], Ab[t] / db[t], bb[t])
            Cb[t] = torch.clamp(torch.round(target * inv + zp), cmin, cmax)
            Vb[t] = (Cb[t] - zp) / inv

    runs = {}
    for s0, s1 in _blocks(n, block_size):
        size = s1 - s0
        if size not in runs:
            like = torch.zeros((size, n_out), dtype=A.dtype, device=device)
            bufs = [
                like,
                torch.eye(size, dtype=A.dtype, device=device),
                torch.ones(size, dtype=A.dtype, device=device),
                torch.ones(size, dtype=torch.bool, device=device),
                torch.zeros_like(like),
                torch.zeros_like(like),
                torch.zeros_like(like),
            ]
            runs[size] = (bufs, _replayed(block, bufs, device))
        (Ab, Gb, db, lb, bb, Cb, Vb), run = runs[size]
        for buf, src in zip(
            (Ab, Gb, db, lb, bb),
            (A[s0:s1], G[s0:s1, s0:s1], den[s0:s1], live[s0:s1], back[s0:s1]),
            strict=True,
        ):
            buf.copy_(src)
        run()
        codes[s0:s1] = Cb
        if s1 < n:
            A[s1:] -= G[s1:, s0:s1] @ Vb
    return codes.cpu().numpy()


def output_errors(Xq, Xf, W, Q, device):
    """``(||Xf w - Xq q||, ||Xf w||)`` per column of ``W`` and ``Q``, computed
    on ``device`` in float64 (the two products a calibration error needs, where
    the kernel ran, rather than on the CPU)."""
    ref = _on(Xf, device) @ _on(W, device)
    norm = torch.linalg.vector_norm(ref, dim=0)
    ref -= _on(Xq, device) @ _on(Q, device)
    return torch.linalg.vector_norm(ref, dim=0).cpu().numpy(), norm.cpu().numpy()
