"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh): second-order layer quantization."""

import contextlib
import numbers

import numpy as np
from scipy import linalg
from sklearn.utils._param_validation import StrOptions

from .._common._checks import Interval
from .._kernels import _gptq, check_device, torch_kernels
from .._tensor._alphabets import round_on_grid
from ._datadriven import BaseDataQuantizer
from ._gram import gram, inverse_upper_cholesky, output_errors

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

    Memory and time: with at least as many calibration rows ``m`` as inputs (the
    usual conv layer), ``H`` is formed and factored in place: one float64
    ``n_in x n_in`` matrix (``8 n_in^2`` bytes; two for a moment with
    ``act_order`` or ``target="float_output"``) and ``2 n_in^3 / 3`` flops. With
    fewer rows than that (a wide layer, e.g. the first Linear after a Flatten),
    the same codes come from the data through ``m x m`` matrices (``5 n_in m^2``
    flops, no ``n_in x n_in`` matrix); the form projected faster is picked.

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
    device : None, str or torch.device, default=None
        Where the layer's kernel runs: ``None``, the NumPy/numba kernels; a
        torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``), the same algorithm
        (the Cholesky form, float64) in torch operations on it (needs PyTorch). The
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
    order_ : ndarray of int of shape (n_in,)
        The order the inputs were quantized in.
    n_features_in_ : int
        Number of output channels (columns of ``W``).
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        The channels' names: ``W``'s string column names in :meth:`fit`.

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
    _parameter_constraints["device"] = "no_validation"
    _parameter_constraints.pop("granularity")

    #: for instances pickled before the parameter existed
    device = None

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
        device=None,
    ):
        self.n_bits = n_bits
        self.scale = scale
        self.damp = damp
        self.block_size = block_size
        self.act_order = act_order
        self.target = target
        self.n_jobs = n_jobs
        self.device = device

    def _fit_quantize(self, W, activations, target_activations):
        W, Xq, Xf = self._validate_fit(W, activations, target_activations)
        self._fit_alphabet(W, self.scale)
        W64 = W.astype(np.float64)
        m, n = Xq.shape
        energy = np.einsum("ij,ij->j", Xq, Xq)  # diag(X^T X)
        mean_diag = float(energy.mean())
        # no signal at all: H = I, every error is as good as any other (round to
        # nearest)
        lam = self.damp * mean_diag if mean_diag > 0 else 1.0
        order = np.argsort(-energy, kind="stable") if self.act_order else np.arange(n)
        lowrank = _use_lowrank(m, n)
        target = W64
        if Xf is not Xq and self.target == "float_output" and self.device is None:
            c = Xq.T @ (Xf @ W64)
            if lowrank:  # Woodbury: (lam I + X^T X)^-1 c through an m x m solve
                K = gram(Xq.T)
                K.flat[:: m + 1] += lam
                with _explained_damp(self.damp):
                    Kc = linalg.solve(K, Xq @ c, assume_a="pos")
                target = (c - Xq.T @ Kc) / lam
            else:
                H = _damped_gram(Xq, lam)
                with _explained_damp(self.damp):
                    target = linalg.solve(H, c, assume_a="pos", overwrite_a=True)
        codes = np.empty(W.shape)
        G = None
        device = check_device(self.device, type(self).__name__)
        if device is not None:  # torch's kernel on that device (Cholesky form)
            codes = torch_kernels().gptq_codes(
                W64,
                Xq,
                lam,
                self.alphabet_record_.code_grid(self.scale_.astype(np.float64)),
                order,
                self.block_size,
                device,
                target=(Xq, Xf)
                if Xf is not Xq and self.target == "float_output"
                else None,
            )
        elif lowrank:
            codes[order] = self._quantize_rows_lowrank(target[order], Xq[:, order], lam)
        else:
            # one n x n float64 matrix throughout (H, then U in its memory), a
            # second one only while act_order permutes it; on tall data (at least
            # twice as many rows as inputs) the undamped Gram matrix is kept too
            # (fewer floats than the data): the output errors come from it, in
            # n^2 n_out flops, not 4 m n n_out
            G = gram(Xq)
            if Xf is not Xq or m < 2 * n:
                H, G = G, None
            else:
                H = G.copy()
            H.flat[:: n + 1] += lam
            if self.act_order:
                H = H[np.ix_(order, order)]
            with _explained_damp(self.damp):
                U = inverse_upper_cholesky(H, overwrite=True)
            del H
            codes[order] = self._quantize_rows(target[order], U)
        codes = self.alphabet_record_.final_codes(codes)
        self.order_ = order
        Q = self._tensor(codes).dequantize()
        if device is None:  # from G, or a block of columns at a time
            residual, norm = output_errors(Xq, Xf, W64, Q, G)
        else:  # the two products where the kernel ran
            residual, norm = torch_kernels().output_errors(Xq, Xf, W64, Q, device)
        self.calibration_error_ = residual / np.where(norm > 0, norm, 1)
        return codes, W.dtype

    def _rounder(self):
        """``round(w) -> (codes, values)`` on the fitted grid, for one row."""
        step = self.scale_.astype(np.float64)
        zp, inv, cmin, cmax = self.alphabet_record_.code_grid(step)
        grid = (zp, np.broadcast_to(inv, step.shape), cmin, cmax)
        return lambda w: round_on_grid(w, grid)

    def _quantize_rows(self, W, U):
        """Codes (in :meth:`Alphabet.code_grid` units) of ``W``'s rows, in order,
        with ``U`` the upper Cholesky factor of ``H^-1`` (its upper triangle is
        all that is read)."""
        n = W.shape[0]
        round_row = self._rounder()
        W = W.copy()
        codes = np.empty_like(W)
        B = self.block_size
        for start in range(0, n, B):
            stop = min(start + B, n)
            Err = np.empty((stop - start, W.shape[1]))
            for i in range(start, stop):
                codes[i], value = round_row(W[i])
                err = (W[i] - value) / U[i, i]
                W[i + 1 : stop] -= np.outer(U[i, i + 1 : stop], err)
                Err[i - start] = err
            if stop < n:
                W[stop:] -= U[start:stop, stop:].T @ Err
        return codes

    def _quantize_rows_lowrank(self, W, X, lam):
        """The codes of :meth:`_quantize_rows` from the data ``X`` (``m`` rows,
        fewer than ``W``'s) instead of ``H``'s factor: row ``t`` is rounded at
        ``w_t - v_t^T r_t`` with ``r_t = sum_{s<t} x_s (q_s - w_s)`` and the
        directions ``v_t`` of :func:`~skquant._kernels._gptq.lowrank_directions`
        (``O(n m^2)`` flops, ``n x m`` numbers held). Blocks of ``block_size`` rows
        update ``r`` as one matrix product."""
        n, m = X.shape[1], X.shape[0]
        V = np.empty((n, m))
        _gptq.lowrank_directions(np.ascontiguousarray(X.T), float(lam), V)
        round_row = self._rounder()
        R = np.zeros((m, W.shape[1]))
        codes = np.empty_like(W)
        B = self.block_size
        for start in range(0, n, B):
            stop = min(start + B, n)
            A = W[start:stop] - V[start:stop] @ R
            C = V[start:stop] @ X[:, start:stop]
            D = np.empty_like(A)  # q - w of the block's rows
            for i in range(stop - start):
                codes[start + i], value = round_row(A[i] - C[i, :i] @ D[:i])
                D[i] = value - W[start + i]
            R += X[:, start:stop] @ D
        return codes


@contextlib.contextmanager
def _explained_damp(damp):
    """A failed factorisation of the damped ``H`` as a ``ValueError`` naming
    ``damp`` (NumPy's error says neither why nor what to change)."""
    try:
        yield
    except np.linalg.LinAlgError as exc:
        raise ValueError(
            "damp must be large enough that H = X^T X + damp * mean(diag(X^T X)) I "
            f"is positive definite in float64, got damp={damp!r} instead "
            f"({str(exc).rstrip('.')}). "
            "The activations' Gram matrix X^T X is singular (fewer samples than "
            "inputs, dead or duplicate inputs): give a larger damp, such as the "
            "default 0.01."
        ) from exc


def _damped_gram(X, lam):
    """``X^T X + lam I`` (float64, one n x n matrix)."""
    H = gram(X)
    H.flat[:: H.shape[0] + 1] += lam
    return H


def _use_lowrank(m, n):
    """Whether GPTQ's low-rank form is cheaper than the Cholesky of ``H``.

    The low-rank form costs about ``5 n m^2`` flops in a compiled serial loop; the
    Cholesky form ``m n^2 + 2 n^3 / 3`` in BLAS, many times faster per flop.
    """
    return LOWRANK_FLOP_RATIO * 5 * m * m < m * n + 2 * n * n / 3


#: How many times slower a flop of the low-rank kernel is than one of the BLAS
#: factorisations (measured in ``benchmarks/bench_gram_memory.py``).
LOWRANK_FLOP_RATIO = 6.4
