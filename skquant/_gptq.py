"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh): second-order layer quantization."""

import numbers

import numpy as np
from scipy import linalg
from sklearn.utils._param_validation import Interval, StrOptions

from ._datadriven import BaseDataQuantizer

__all__ = ["GPTQQuantizer"]


class GPTQQuantizer(BaseDataQuantizer):
    """GPTQ: quantize a layer's inputs one at a time, spreading each error forward.

    With the Hessian of the layer's squared output error on the calibration inputs,
    ``H = X^T X + lambda I`` (damping ``lambda = damp * mean(diag(X^T X))``), the
    input coordinates of all neurons are quantized in order; after rounding
    coordinate ``j``, its error is spread over the coordinates not yet quantized
    through row ``j`` of the upper Cholesky factor ``U`` of ``H^-1``
    (``H^-1 = U^T U``), the Optimal Brain Quantization update. Coordinates go in
    blocks of ``block_size``: inside a block the updates are rank-one, and the
    block's accumulated update reaches the rest of the matrix as one matrix product
    over every neuron at once.

    The alphabet and the scales are those of the memoryless quantizers (as for
    :class:`GreedyPathQuantizer` and :class:`NullSpaceQuantizer`), so every
    data-driven method of skquant stores the same codes and sizes. In a network,
    layer ``l`` sees the quantized prefix's inputs ``Xq`` while the float network
    computes ``Xf @ W`` (``target_activations``). With ``target="weights"`` (the
    paper's sequential GPTQ) the weights ``W`` themselves are quantized on the
    quantized inputs' ``H``; with ``target="float_output"`` GPTQ quantizes the
    ridge least-squares weights ``W* = (Xq^T Xq + lambda I)^-1 Xq^T Xf W`` instead,
    which aim at ``||Xf W - Xq Q||`` (when ``Xq`` has fewer rows than inputs the
    ridge solution leaves the weights' range in directions the rows do not sample,
    and the grid, set from ``W``, clips them).

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    n_bits : int or {"ternary", "binary"}, default=4
        The alphabet, as for :class:`NullSpaceQuantizer`.
    scale : {"maxabs", "mse"}, default="maxabs"
        The scale per neuron: the max-abs step (level) of the alphabet, or the
        memoryless quantizer's squared-error optimum.
    damp : float, default=0.01
        Damping, a fraction of the mean diagonal of ``X^T X`` added to it (makes a
        singular ``H``, from dead or duplicate inputs, positive definite). With no
        nonzero calibration input at all, ``H`` is the identity: round to nearest.
    block_size : int, default=128
        Coordinates per block of lazy updates.
    act_order : bool, default=False
        Visit the coordinates in decreasing ``diag(H)`` (the largest inputs first).
    target : {"weights", "float_output"}, default="weights"
        With ``target_activations``: quantize ``W`` (the paper) or the
        least-squares weights ``W*`` that aim at the float output.
    n_jobs : int, default=None
        Accepted for the common interface of skquant's quantizers; the work runs
        in BLAS (its own threads).

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
        Relative error ``||Xf w - Xq q|| / ||Xf w||`` of each neuron.
    order_ : ndarray of int of shape (n_in,)
        The order the inputs were quantized in.
    n_features_in_ : int
        Number of output channels (columns of ``W``).

    See Also
    --------
    GreedyPathQuantizer : GPFQ, greedy path following.
    NullSpaceQuantizer : Pre-processing in the data's null space, then MSQ.

    References
    ----------
    E. Frantar, S. Ashkboos, T. Hoefler and D. Alistarh, "GPTQ: Accurate
    post-training quantization for generative pre-trained transformers", ICLR 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import GPTQQuantizer, UniformQuantizer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64))
    >>> W = rng.standard_normal((64, 16)) / 8
    >>> q = GPTQQuantizer(n_bits=3).fit(W, activations=X)
    >>> rtn = UniformQuantizer(n_bits=3).fit(W).transform(W)
    >>> err = lambda Q: np.linalg.norm(X @ (W - Q))
    >>> bool(err(q.transform(W)) < err(rtn))
    True
    """

    _parameter_constraints: dict = {
        **BaseDataQuantizer._parameter_constraints,
        "scale": [StrOptions({"maxabs", "mse"})],
        "damp": [Interval(numbers.Real, 0, None, closed="neither")],
        "block_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "act_order": ["boolean"],
        "target": [StrOptions({"weights", "float_output"})],
    }
    _parameter_constraints.pop("granularity")

    def __init__(
        self,
        n_bits=4,
        *,
        scale="maxabs",
        damp=0.01,
        block_size=128,
        act_order=False,
        target="weights",
        n_jobs=None,
    ):
        self.n_bits = n_bits
        self.scale = scale
        self.damp = damp
        self.block_size = block_size
        self.act_order = act_order
        self.target = target
        self.n_jobs = n_jobs

    def _fit_quantize(self, W, activations, target_activations):
        W, Xq, Xf = self._validate_fit(W, activations, target_activations)
        self._fit_alphabet(W, self.scale)
        W64 = W.astype(np.float64)
        H = Xq.T @ Xq
        mean_diag = float(np.mean(np.diag(H)))
        if mean_diag > 0:
            H[np.diag_indices_from(H)] += self.damp * mean_diag
        else:  # no signal at all: every error is as good as any other
            H = np.eye(H.shape[0])
        target = W64
        if Xf is not Xq and self.target == "float_output":
            target = linalg.solve(H, Xq.T @ (Xf @ W64), assume_a="pos")
        order = (
            np.argsort(-np.diag(H), kind="stable")
            if self.act_order
            else np.arange(W.shape[0])
        )
        codes = np.empty(W.shape)
        codes[order] = self._quantize_rows(target[order], H[np.ix_(order, order)])
        codes = self.alphabet_record_.final_codes(codes)
        self.order_ = order
        Q = self._tensor(codes).dequantize()
        ref = Xf @ W64
        norm = np.linalg.norm(ref, axis=0)
        self.calibration_error_ = np.linalg.norm(ref - Xq @ Q, axis=0) / np.where(
            norm > 0, norm, 1
        )
        return codes, W.dtype

    def _quantize_rows(self, W, H):
        """Codes (in :meth:`Alphabet.code_grid` units) of ``W``'s rows, in order."""
        n = W.shape[0]
        step = self.scale_.astype(np.float64)
        zp, inv, cmin, cmax = self.alphabet_record_.code_grid(step)
        inv = np.broadcast_to(inv, step.shape)
        U = _inverse_upper_cholesky(H)
        W = W.copy()
        codes = np.empty_like(W)
        B = self.block_size
        for start in range(0, n, B):
            stop = min(start + B, n)
            Err = np.empty((stop - start, W.shape[1]))
            for i in range(start, stop):
                c = np.clip(np.rint(W[i] * inv + zp), cmin, cmax)
                codes[i] = c
                err = (W[i] - (c - zp) / inv) / U[i, i]
                W[i + 1 : stop] -= np.outer(U[i, i + 1 : stop], err)
                Err[i - start] = err
            if stop < n:
                W[stop:] -= U[start:stop, stop:].T @ Err
        return codes


def _inverse_upper_cholesky(H):
    """Upper triangular ``U`` with ``H^-1 = U^T U``, without forming ``H^-1``.

    With ``P`` the reversal permutation and ``P H P = L L^T`` (Cholesky),
    ``H^-1 = P L^-T L^-1 P = U^T U`` for ``U = P L^-1 P``, which is upper
    triangular: one Cholesky and one triangular inverse (``2 n^3 / 3`` flops in
    all, against ``n^3`` more for an explicit inverse and a second factorisation).
    """
    L = linalg.cholesky(H[::-1, ::-1], lower=True)
    Linv, info = linalg.lapack.dtrtri(L, lower=1)
    if info != 0:  # pragma: no cover - H is positive definite after damping
        raise np.linalg.LinAlgError(f"triangular inverse failed (info={info}).")
    return np.ascontiguousarray(Linv[::-1, ::-1])
