"""Greedy path following quantization, GPFQ (Lybrand & Saab)."""

import numpy as np
from sklearn.utils._param_validation import StrOptions

from .._kernels import check_device, torch_kernels
from .._tensor._alphabets import round_on_grid
from ._datadriven import BaseDataQuantizer
from ._gram import gram, lower_product, output_errors, triangle_product

__all__ = ["GreedyPathQuantizer"]


class GreedyPathQuantizer(BaseDataQuantizer):
    """Greedy path following quantization, GPFQ (Lybrand & Saab).

    Quantizes each neuron's weights one coordinate at a time, choosing each value so
    that the running error of the layer's output on the calibration data stays
    small::

        q_t = Q(<X_t, u_{t-1} + w_t X_t> / ||X_t||^2)
        u_t = u_{t-1} + w_t X_t - q_t X_t

    For Gaussian data the relative error decays like ``sqrt(m log n_in / n_in)``.
    In a network, layer ``l`` sees the quantized prefix's activations ``Xq`` and
    follows the float network's ``Xf`` (``target_activations``):
    ``u_t = u_{t-1} + w_t Xf_t - q_t Xq_t``.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    n_bits : int or {"ternary", "binary"}, default=4
        The alphabet, as for :class:`NullSpaceQuantizer`.
    scale : {"maxabs", "mse"}, default="maxabs"
        The scale per neuron: the max-abs step (level) of the alphabet, or the
        memoryless quantizer's squared-error optimum (MSE search for grids, the
        L2-optimal level for ternary and binary).
    n_jobs : int, default=None
        Number of numba threads (over neurons); ``None`` means 1, ``-1`` all.
    device : None, str or torch.device, default=None
        Where the layer's kernel runs: ``None``, the NumPy/numba kernels; a
        torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``), the same algorithm
        (the Gram form, float64) in torch operations on it (needs PyTorch). The
        codes are the numba kernels' up to summation order: a value within
        rounding error of a decision boundary may round the other way (see
        :ref:`devices`). :func:`skquant.torch.quantize_model` sets it for a
        model on a CUDA device.

    Attributes
    ----------
    scale_ : ndarray of shape (n_out,)
        Step (or level) of each neuron's alphabet.
    qmin_ : int
        Smallest code.
    qmax_ : int
        Largest code.
    n_bits_ : int
        Bits stored per weight.
    n_in_ : int
        Number of inputs of the layer (rows of ``W``).
    codes_ : ndarray of int of shape (n_in, n_out)
        Codes of the fitted weights (the calibration activations are not kept).
    calibration_error_ : ndarray of shape (n_out,)
        Relative error ``||Xf w - Xq q|| / ||Xf w||`` of each neuron (absolute,
        ``||Xq q||``, where ``Xf w = 0``).
    n_features_in_ : int
        Number of output channels (columns of ``W``).
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        The channels' names: ``W``'s string column names in :meth:`fit`.

    See Also
    --------
    NullSpaceQuantizer : Pre-processing in the data's null space, then MSQ.

    References
    ----------
    E. Lybrand and R. Saab, "A greedy algorithm for quantizing neural networks",
    JMLR 22 (2021).

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import GreedyPathQuantizer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((64, 256))
    >>> W = rng.standard_normal((256, 8)) / 16
    >>> q = GreedyPathQuantizer(n_bits=4).fit(W, activations=X)
    >>> bool(q.calibration_error_.max() < 0.1)
    True
    """

    _parameter_constraints: dict = {
        **BaseDataQuantizer._parameter_constraints,
        "scale": [StrOptions({"maxabs", "mse"})],
    }
    _parameter_constraints["device"] = "no_validation"
    _parameter_constraints.pop("granularity")

    #: for instances pickled before the parameter existed
    device = None

    def __init__(self, n_bits=4, *, scale="maxabs", n_jobs=None, device=None):
        self.n_bits = n_bits
        self.scale = scale
        self.n_jobs = n_jobs
        self.device = device

    def _fit_quantize(self, W, activations, target_activations):
        device = check_device(self.device, type(self).__name__)
        # (the shapes an array holds: np.shape of an array-like may convert it)
        shape = tuple(getattr(activations, "shape", ())) + tuple(
            getattr(W, "shape", ())
        )
        # the per-neuron path reads the data by column: taken in that order at
        # once (float32 data would otherwise be copied twice, to float64 then
        # transposed)
        by_column = (
            device is None and len(shape) == 4 and not use_gram(*shape[:2], shape[3])
        )
        W, Xq, Xf = self._validate_fit(
            W, activations, target_activations, "F" if by_column else None
        )
        self._fit_alphabet(W, self.scale)
        if device is not None or use_gram(*Xq.shape, W.shape[1]):
            W64 = W.astype(np.float64)
            G = None
            if device is None:
                codes, G = self._codes_gram(W64, Xq, Xf)
            else:  # the Gram form in torch on that device
                step = self.scale_.astype(np.float64)
                codes = self.alphabet_record_.final_codes(
                    torch_kernels().gpfq_codes(
                        Xq,
                        Xf,
                        W64,
                        W64,
                        self.alphabet_record_.code_grid(step),
                        128,
                        device,
                    )
                )
            Q = self._tensor(codes).dequantize()
            if device is None:
                residual, norm = output_errors(Xq, Xf, W64, Q, G)
            else:
                residual, norm = torch_kernels().output_errors(Xq, Xf, W64, Q, device)
        else:
            codes, residual, norm = self._codes(W, Xq, Xf)
        self.calibration_error_ = residual / np.where(norm > 0, norm, 1)
        return codes, W.dtype

    def _codes(self, W, Xq, Xf, block=256):
        """Codes, residual norms and reference norms from the per-neuron path
        (numba kernel), ``block`` neurons at a time: the float64 copies and the
        kernel's buffers are a block's, not the layer's (the neurons are
        independent, so the codes are the same)."""
        n, n_out = W.shape
        step = np.broadcast_to(self.scale_.astype(np.float64), (n_out,))
        codes = np.empty((n, n_out), dtype=self.alphabet_record_.dtype)
        residual, norm = np.empty(n_out), np.empty(n_out)
        idx = np.tile(np.arange(n, dtype=np.int64), (min(block, n_out), 1)).T.copy()
        for a in range(0, n_out, block):
            b = min(n_out, a + block)
            Wb = W[:, a:b].astype(np.float64)
            norm[a:b] = np.linalg.norm(Xf @ Wb, axis=0)
            U = np.zeros((b - a, Xq.shape[0]))
            out = np.zeros((n, b - a))
            ids = (
                idx if b - a == idx.shape[1] else np.ascontiguousarray(idx[:, : b - a])
            )
            self._greedy_path(Xq, Xf, Wb, ids, U, step[a:b], out)
            codes[:, a:b] = self.alphabet_record_.final_codes(out)
            residual[a:b] = np.linalg.norm(U, axis=1)
        return codes, residual, norm

    def _codes_gram(self, W, Xq, Xf, block_size=128):
        """Codes of the same path for all neurons at once, from Gram matrices.

        With ``u_{t-1} = sum_{s<t} (w_s Xf_s - q_s Xq_s)``, the rounded value is
        ``(sum_{s<=t} Gqf[t, s] w_s - sum_{s<t} Gqq[t, s] q_s) / Gqq[t, t]`` with
        ``Gqf = Xq^T Xf`` and ``Gqq = Xq^T Xq``: the ``w`` part is one product
        (``tril(Gqf) @ W``) and the ``q`` part is subtracted block by block (see
        :func:`greedy_path_gram`). ``tril(Gqf) @ W`` comes from the data by a
        running sum (:func:`~skquant._quantizers._gram.triangle_product`), so ``Gqq`` is
        the one ``n_in x n_in`` matrix held. After it (``m n_in^2``), nothing depends
        on ``m``; with one data set (``Xf is Xq``) ``tril(Gqq) @ W`` comes from
        ``Gqq`` itself (:func:`~skquant._quantizers._gram.lower_product`). Returns
        the codes and ``Gqq`` (the output errors are read from it).
        """
        G = gram(Xq)
        A = lower_product(G, W) if Xf is Xq else triangle_product(Xq, Xf, W, "lower")
        codes = greedy_path_gram(
            A, G, W, self.alphabet_record_, self.scale_, block_size
        )
        return codes, G


def greedy_path_gram(A, G, fallback, alphabet, scale, block_size=128, keep=None):
    """Greedy path following of every neuron at once, from a Gram matrix.

    Coordinate ``t`` of every neuron is rounded to the alphabet at
    ``(A[t] - sum_{s<t} G[t, s] q_s) / G[t, t]`` (``fallback[t]`` where
    ``G[t, t] = 0``: an input that is always zero), in order ``t = 0, 1, ...``.
    ``A[t]`` holds what the path follows (for GPFQ, ``sum_{s<=t} (Xq^T Xf)[t, s]
    w_s``). The ``q`` part is subtracted lazily: inside a block of
    ``block_size`` coordinates one row at a time, and from the rest of ``A`` as
    one matrix product per block (BLAS-3 over all neurons, as GPTQ's updates).

    Parameters
    ----------
    A : ndarray of shape (n, n_out)
        The followed part (overwritten).
    G : ndarray of shape (n, n)
        ``Xq^T Xq``.
    fallback : ndarray of shape (n, n_out)
        Values rounded where ``G[t, t] = 0``.
    alphabet : Alphabet
        The fitted alphabet.
    scale : ndarray of shape (n_out,)
        Step (or level) per neuron.
    block_size : int, default=128
        Coordinates per block.
    keep : ndarray of bool of shape (n, n_out), default=None
        Entries already on the alphabet: kept as ``fallback`` (their error is 0,
        so they change nothing downstream), as the per-neuron path skips them.

    Returns
    -------
    codes : ndarray of int of shape (n, n_out)
        The codes, in the alphabet's dtype.
    """
    n, n_out = A.shape
    step = np.asarray(scale, dtype=np.float64)
    zp, inv, cmin, cmax = alphabet.code_grid(step)
    grid = (zp, np.broadcast_to(inv, (n_out,)), cmin, cmax)
    den = np.diag(G).copy()
    codes = np.empty_like(A)
    values = np.empty_like(A)
    for s0 in range(0, n, block_size):
        s1 = min(n, s0 + block_size)
        for t in range(s0, s1):
            if t > s0:
                A[t] -= G[t, s0:t] @ values[s0:t]
            target = A[t] / den[t] if den[t] > 0 else fallback[t]
            if keep is not None:
                target = np.where(keep[t], fallback[t], target)
            codes[t], values[t] = round_on_grid(target, grid)
        if s1 < n:
            A[s1:] -= G[s1:, s0:s1] @ values[s0:s1]
    return alphabet.final_codes(codes)


#: the Gram form runs where ``n_in (m + n_out) < GRAM_RATIO m n_out``. Measured
#: with ``benchmarks/bench_layer_kernels.py --crossover`` (2 threads, medians of
#: 5): at a ratio ``n_in (m + n_out) / (m n_out)`` of 9 to 10 (3x3 convolutions
#: of C -> C channels on 4096 rows, 144x16 to 4608x512) the path took 1.05x to
#: 3.45x the Gram form's time; at 17 to 19, 0.39x to 1.13x; from 27 on, 0.26x
#: to 0.50x (and 1.08x once)
GRAM_RATIO = 12


def use_gram(m, n_in, n_out):
    """Whether the Gram form is cheaper than the per-neuron path.

    The path costs about ``4 m n_in n_out`` flops in a loop per neuron (16
    neurons a pass); the Gram form ``2 (m + n_out) n_in^2`` in BLAS, several
    times faster per flop (:data:`GRAM_RATIO`).
    """
    return n_in * (m + n_out) < GRAM_RATIO * m * n_out
