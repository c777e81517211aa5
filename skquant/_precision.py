"""Per-parameter adaptive precision from loss gradients (Khoram & Li, ICLR 2018)."""

import math
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_array, metadata_routing
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from ._alphabets import _kernel, code_dtype
from ._kernels import _precision
from ._kernels._threads import numba_threads

__all__ = [
    "AdaptivePrecisionQuantizer",
    "AdaptiveQuantizationResult",
    "adaptive_precision_loop",
    "adaptive_quantize_mlp",
    "adaptive_quantize_network",
    "allocate_precision",
    "mlp_loss_gradient",
    "precision_map_bits",
]


def power_of_two_scale(W):
    """Smallest power of two strictly above ``max|W|`` (1 for an all-zero ``W``)."""
    m = float(np.max(np.abs(W))) if np.size(W) else 0.0
    if m == 0.0:
        return 1.0
    e = math.floor(math.log2(m)) + 1
    return 2.0**e


def water_fill(abs_gradient, budget, trust_region, *, n_jobs=None):
    """Scalar ``kappa`` of the margins ``tau_i = min(trust_region, kappa / |g_i|)``.

    Chosen so that ``sum_i |g_i| tau_i = budget`` (the linearised loss increase meets
    the budget exactly), unless even ``tau_i = trust_region`` everywhere stays below
    the budget, in which case every margin is clipped. ``O(n)``: see
    :mod:`skquant._kernels._precision`.

    Parameters
    ----------
    abs_gradient : ndarray of shape (n,)
        ``|g_i|``, non-negative.
    budget : float
        Allowed linearised loss increase, positive.
    trust_region : float
        Largest margin, positive.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    kappa : float
        The water level (``inf`` when every gradient is 0).
    """
    a = np.ascontiguousarray(abs_gradient, dtype=np.float64).ravel()
    with numba_threads(n_jobs):
        return float(
            _kernel(_precision, "water_fill", n_jobs)(
                a, float(budget), float(trust_region)
            )
        )


def allocate_precision(
    weights, gradients, budget, trust_region, *, max_bits=24, n_jobs=None
):
    """Margins, per-parameter bits and fixed-point weights for a set of tensors.

    Every tensor ``W`` is stored as ``s * F`` with ``s`` the smallest power of two
    above ``max|W|`` and ``F`` in (-1, 1) in fixed point. One water level is shared by
    all tensors (the budget is global), in the normalised units where the trust
    region is a fraction of each tensor's range.

    Parameters
    ----------
    weights : list of ndarray
        The tensors (any shapes).
    gradients : list of ndarray
        Loss gradients, shaped like ``weights``.
    budget : float
        Allowed linearised loss increase ``sum_i |g_i| tau_i``.
    trust_region : float
        Largest margin, as a fraction of each tensor's power-of-two range ``s``.
    max_bits : int, default=24
        Largest number of fractional bits per parameter.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    result : dict
        ``quantized``, ``margins``, ``bits`` (lists like ``weights``; margins in the
        weights' units, bits include the sign, 0 means pruned), ``scales`` (the
        ``s`` of each tensor), ``kappa`` and ``predicted_increase``
        (``sum_i |g_i| |w_i - q_i|``, at most ``budget``).
    """
    scales = [power_of_two_scale(W) for W in weights]
    a = (
        np.concatenate(
            [
                (np.abs(np.asarray(G, dtype=np.float64)) * s).ravel()
                for G, s in zip(gradients, scales)
            ]
        )
        if weights
        else np.zeros(0)
    )
    kappa = water_fill(a, budget, trust_region, n_jobs=n_jobs) if a.size else np.inf
    out = {
        "quantized": [],
        "margins": [],
        "bits": [],
        "scales": scales,
        "kappa": kappa,
        "predicted_increase": 0.0,
    }
    start = capped = 0
    worst = 0.0
    for W, s in zip(weights, scales):
        W = np.asarray(W, dtype=np.float64)
        n = W.size
        w = np.ascontiguousarray(W).ravel() / s
        tau = np.empty(n)
        bits = np.empty(n, dtype=np.int8)
        q = np.empty(n)
        with numba_threads(n_jobs):
            _kernel(_precision, "fixed_point_quantize", n_jobs)(
                w,
                a[start : start + n],
                kappa,
                float(trust_region),
                int(max_bits),
                tau,
                bits,
                q,
            )
        out["quantized"].append((q * s).reshape(W.shape))
        out["margins"].append((tau * s).reshape(W.shape))
        out["bits"].append(bits.reshape(W.shape))
        out["predicted_increase"] += float(np.sum(a[start : start + n] * np.abs(w - q)))
        over = np.abs(w - q) > tau
        capped += int(over.sum())
        if over.any():
            worst = max(worst, float(np.max(np.abs(w - q)[over] / tau[over])))
        start += n
    if capped:
        warnings.warn(
            f"max_bits={max_bits} caps {capped} parameter(s) below the precision "
            f"their margin asks: their error exceeds the margin (up to {worst:.3g} "
            "times; a large gradient asks for a tiny margin), so the loss may grow "
            "by more than the budget. Raise max_bits to honour every margin.",
            UserWarning,
            stacklevel=2,
        )
    return out


def precision_map_bits(bits):
    """Bits to store which precision every parameter has, two ways.

    Parameters
    ----------
    bits : array-like of int
        Stored bits per parameter (0 for pruned ones).

    Returns
    -------
    sizes : dict
        ``fixed``: a fixed-width index per parameter, ``ceil(log2(#levels))`` bits
        each plus a table of the levels (8 bits per level); ``entropy``: the
        empirical entropy of the levels times their count (what an ideal entropy
        coder needs, the table included).
    """
    bits = np.asarray(bits).ravel()
    levels, counts = np.unique(bits, return_counts=True)
    table = 8 * levels.size
    width = math.ceil(math.log2(levels.size)) if levels.size > 1 else 0
    p = counts / max(bits.size, 1)
    entropy = float(-(p * np.log2(p)).sum()) if bits.size else 0.0
    return {
        "fixed": int(width * bits.size + table),
        "entropy": int(math.ceil(entropy * bits.size)) + table,
    }


class AdaptivePrecisionQuantizer(TransformerMixin, BaseEstimator):
    """Per-parameter fixed-point precision from loss gradients (Khoram & Li).

    Gives every weight its own number of fractional bits so that the total is small
    while the linearised loss increase stays within a budget:
    ``min -sum_i log2(tau_i)`` subject to ``sum_i |g_i| tau_i <= budget`` and
    ``tau_i <= trust_region``, whose KKT solution is ``tau_i = min(delta, kappa /
    |g_i|)`` (water filling, solved exactly in ``O(n)``). A weight then keeps the
    fewest fractional bits ``N_i`` with ``2^-(N_i+1) <= tau_i``, and a weight smaller
    than its margin is pruned (0 bits). The matrix is stored as ``s * F``, ``s`` a
    power of two above ``max|W|`` and ``F`` in fixed point.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    budget : float, default=1e-3
        Allowed linearised loss increase (in the loss's units), positive.
    trust_region : float, default=0.05
        Largest margin, as a fraction of the power-of-two range ``s``: keeps the
        linearisation honest.
    max_bits : int, default=24
        Largest number of fractional bits of a parameter.
    n_jobs : int, default=None
        Number of numba threads; ``None`` means 1, ``-1`` all.

    Attributes
    ----------
    scale_ : float
        The power of two ``s``.
    margins_ : ndarray of shape (n_in, n_out)
        Error margin of every weight, in the weights' units.
    bits_ : ndarray of int8 of shape (n_in, n_out)
        Stored bits of every weight (fractional bits + sign; 0 when pruned).
        Fractional bits whose step would fall below the dtype's smallest normal
        number are not kept (a tensor of subnormal weights is pruned).
    kappa_ : float
        The water level.
    predicted_loss_increase_ : float
        ``sum_i |g_i| |w_i - q_i|``: the linearised loss increase of the rounding
        actually done (at most ``budget``).
    payload_bits_ : int
        ``sum_i bits_i``.
    precision_map_bits_ : dict
        Bits to store the per-parameter precisions: ``fixed`` (fixed-width index)
        and ``entropy`` (ideal entropy coder); see :func:`precision_map_bits`.
    size_bits_ : int
        ``payload_bits_ + precision_map_bits_["fixed"] + 8`` (the exponent of ``s``).
    bits_per_param_ : float
        ``size_bits_`` per weight.
    n_features_in_ : int
        Number of columns of ``W``.

    See Also
    --------
    UniformQuantizer : One bit-width for every weight.

    References
    ----------
    S. Khoram and J. Li, "Adaptive quantization of neural networks", ICLR 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import AdaptivePrecisionQuantizer
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((100, 10))
    >>> G = rng.standard_normal((100, 10)) * 1e-2
    >>> q = AdaptivePrecisionQuantizer(budget=1e-2).fit(W, gradient=G)
    >>> bool(np.all(np.abs(W - q.transform(W)) <= q.margins_))
    True
    >>> bool(q.predicted_loss_increase_ <= 1e-2)
    True
    """

    __metadata_request__fit = {"W": metadata_routing.UNUSED}
    __metadata_request__transform = {"W": metadata_routing.UNUSED}
    _parameter_constraints: dict = {
        "budget": [Interval(numbers.Real, 0, None, closed="neither")],
        "trust_region": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_bits": [Interval(numbers.Integral, 1, 52, closed="both")],
        "n_jobs": [None, Interval(numbers.Integral, None, None, closed="neither")],
    }

    def __init__(self, budget=1e-3, *, trust_region=0.05, max_bits=24, n_jobs=None):
        self.budget = budget
        self.trust_region = trust_region
        self.max_bits = max_bits
        self.n_jobs = n_jobs

    def _validate_W(self, W, reset):
        W = check_array(W, dtype=[np.float64, np.float32], input_name="W")
        return validate_data(self, W, reset=reset, skip_check_array=True)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, W, y=None, *, gradient=None):
        """Allocate a precision to every weight from the loss gradient.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weights.
        y : None
            Ignored.
        gradient : array-like of shape (n_in, n_out)
            Loss gradient with respect to ``W``.

        Returns
        -------
        self : object
            Fitted quantizer.
        """
        W = self._validate_W(W, reset=True)
        if gradient is None:
            raise ValueError(
                "AdaptivePrecisionQuantizer.fit requires the loss gradient: pass "
                f"gradient=G with G of shape {W.shape}; got gradient=None instead."
            )
        G = check_array(gradient, dtype=np.float64, input_name="gradient")
        if G.shape != W.shape:
            raise ValueError(
                f"gradient must have the shape of W {W.shape}, got gradient.shape="
                f"{G.shape} instead."
            )
        res = allocate_precision(
            [W],
            [G],
            self.budget,
            self.trust_region,
            max_bits=self.max_bits,
            n_jobs=self.n_jobs,
        )
        self.scale_ = res["scales"][0]
        self.margins_ = res["margins"][0]
        # steps below the dtype's smallest normal number are unusable (the rule of
        # every scale, _alphabets.safe_scale): fewer fractional bits, or pruned
        tiny = np.finfo(W.dtype).tiny
        max_frac = (
            np.floor(np.log2(self.scale_) - np.log2(tiny)) if self.scale_ > 0 else -1
        )
        bits = res["bits"][0]
        self.bits_ = (
            np.zeros_like(bits)
            if max_frac < 0
            else np.minimum(bits, int(min(max_frac, 126)) + 1).astype(bits.dtype)
        )
        self.kappa_ = res["kappa"]
        self.predicted_loss_increase_ = res["predicted_increase"]
        self.payload_bits_ = int(self.bits_.sum(dtype=np.int64))
        self.precision_map_bits_ = precision_map_bits(self.bits_)
        self.size_bits_ = self.payload_bits_ + self.precision_map_bits_["fixed"] + 8
        self.bits_per_param_ = self.size_bits_ / W.size
        return self

    def _check_fitted_shape(self, W, name="W"):
        if W.shape != self.bits_.shape:
            raise ValueError(
                f"{name} must have the fitted shape {self.bits_.shape}, got "
                f"{name}.shape={W.shape} instead."
            )

    def _quantized64(self, W):
        """The rounded weights in float64 (exact multiples of the finest step)."""
        n_frac = np.maximum(self.bits_.astype(np.float64) - 1, 0)
        p = np.exp2(n_frac)
        Q = np.rint(W.astype(np.float64) / self.scale_ * p) / p * self.scale_
        Q[self.bits_ == 0] = 0.0
        return Q

    def transform(self, W):
        """Round ``W`` with the fitted per-parameter precisions.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weights of the fitted shape.

        Returns
        -------
        W_q : ndarray of shape (n_in, n_out)
            ``s * rint(2^N_i w_i / s) / 2^N_i``, 0 where pruned, in ``W``'s dtype.
        """
        check_is_fitted(self)
        W = self._validate_W(W, reset=False)
        self._check_fitted_shape(W)
        return self._quantized64(W).astype(W.dtype)

    @property
    def step_(self):
        """The finest step ``s / 2^N_max``: every rounded weight is a multiple of it."""
        check_is_fitted(self)
        n_frac = max(int(self.bits_.max(initial=1)) - 1, 0)
        return self.scale_ / 2.0**n_frac

    def _code_range(self):
        k = int(round(self.scale_ / self.step_))
        return -k, k

    def encode(self, W):
        """Integer codes of ``W`` on the finest step: ``W_q = codes * step_``.

        A weight with ``N_i`` fractional bits has a code that is a multiple of
        ``2^(N_max - N_i)``; pruned weights have code 0.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weights of the fitted shape.

        Returns
        -------
        codes : ndarray of int of shape (n_in, n_out)
            The codes, in the smallest integer dtype that holds them.
        """
        check_is_fitted(self)
        W = self._validate_W(W, reset=False)
        self._check_fitted_shape(W)
        qmin, qmax = self._code_range()
        return np.rint(self._quantized64(W) / self.step_).astype(code_dtype(qmin, qmax))

    def decode(self, codes, dtype=np.float64):
        """Return the weights of integer codes from :meth:`encode`.

        Parameters
        ----------
        codes : array-like of int of shape (n_in, n_out)
            Codes.
        dtype : {np.float32, np.float64}, default=np.float64
            Output dtype.

        Returns
        -------
        W_q : ndarray of shape (n_in, n_out)
            ``codes * step_``.
        """
        check_is_fitted(self)
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            raise TypeError(
                "codes of AdaptivePrecisionQuantizer.decode must be integers, got "
                f"codes.dtype={codes.dtype!s} instead."
            )
        self._check_fitted_shape(codes, "codes")
        return self.compress_codes(codes, dtype).dequantize()

    def compress_codes(self, codes, dtype=None):
        """A :class:`~skquant.QuantizedTensor` of codes from :meth:`encode`.

        Parameters
        ----------
        codes : ndarray of int of shape (n_in, n_out)
            Codes.
        dtype : dtype, default=None
            Float dtype of the dequantized values (float64 when ``None``).

        Returns
        -------
        qt : QuantizedTensor
            Alphabet ``"fixed_point"``, one power-of-two scale (the finest step),
            and the per-parameter bits as its precision map.
        """
        from ._packing import QuantizedTensor

        qmin, qmax = self._code_range()
        return QuantizedTensor(
            codes=codes,
            scale=np.array([self.step_]),
            n_bits=int(self.bits_.max(initial=1)),
            qmin=qmin,
            qmax=qmax,
            alphabet="fixed_point",
            float_dtype=np.dtype(dtype) if dtype is not None else None,
            precision_bits=self.bits_,
        )

    def compress(self, W):
        """Quantize ``W`` into a :class:`~skquant.QuantizedTensor`.

        Parameters
        ----------
        W : array-like of shape (n_in, n_out)
            Weights of the fitted shape.

        Returns
        -------
        qt : QuantizedTensor
            ``qt.dequantize()`` equals ``transform(W)``; ``qt.size_bits`` equals
            ``size_bits_`` (payload, fixed-width precision map, exponent).
        """
        W = self._validate_W(W, reset=False)
        return self.compress_codes(self.encode(W), W.dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def mlp_loss_gradient(mlp, X, y):
    """Mean log-loss of a fitted ``MLPClassifier`` and its gradient (NumPy).

    The loss is the mean cross-entropy of the network's output (softmax for several
    classes, logistic for two), without scikit-learn's L2 penalty ``alpha``
    (:meth:`skquant._network.MLPNetwork.loss_gradients`).

    Parameters
    ----------
    mlp : MLPClassifier
        A fitted classifier.
    X : array-like of shape (n_samples, n_features)
        Inputs.
    y : array-like of shape (n_samples,)
        Labels.

    Returns
    -------
    loss : float
        The mean log-loss.
    grads : list of ndarray
        Gradients with respect to ``coefs_`` then ``intercepts_`` (same order and
        shapes as ``mlp.coefs_ + mlp.intercepts_``).
    """
    from ._network import MLPNetwork

    network = MLPNetwork(mlp)
    loss, grads = network.loss_gradients(network.check_targets(X, y))
    return loss, list(grads.values())


class AdaptiveQuantizationResult:
    """What the iterative adaptive-precision drivers return.

    Attributes
    ----------
    model : object
        A copy of the network with its parameters quantized.
    history : list of dict
        One entry per accepted iteration (the first is the float network):
        ``loss``, ``accuracy`` (when evaluation data was given), ``payload_bits``,
        ``map_bits_fixed``, ``map_bits_entropy``, ``total_bits`` (payload + fixed
        map + 8 bits per tensor exponent), ``bits_per_param``,
        ``predicted_increase`` and ``measured_increase`` of the step.
    bits : list of ndarray
        Stored bits of every parameter (0 = pruned), tensor by tensor.
    n_params : int
        Number of parameters.
    stop_reason : str
        Why the loop stopped.
    """

    def __init__(self, model, history, bits, n_params, stop_reason):
        self.model = model
        self.history = history
        self.bits = bits
        self.n_params = n_params
        self.stop_reason = stop_reason

    def plot_history(self, ax=None):
        """Loss and total bits per parameter against the iteration.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw the loss; the bits go on a twin axis.

        Returns
        -------
        ax : matplotlib Axes
            The loss axes.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        it = range(len(self.history))
        ax.plot(it, [h["loss"] for h in self.history], "o-", color="C0")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss", color="C0")
        ax2 = ax.twinx()
        ax2.plot(it, [h["bits_per_param"] for h in self.history], "s--", color="C1")
        ax2.set_ylabel("bits per parameter (payload + map)", color="C1")
        return ax

    def __repr__(self):
        last = self.history[-1]
        return (
            f"AdaptiveQuantizationResult(iterations={len(self.history) - 1}, "
            f"loss={last['loss']:.4g}, bits_per_param={last['bits_per_param']:.3f}, "
            f"stop_reason={self.stop_reason!r})"
        )


def _check_positive(value, name):
    """A positive finite number, or a ValueError naming ``name``."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"{name} must be a positive finite number, got {name}={value!r} instead."
        )
    return float(value)


def _check_loop_params(trust_region, max_iter, max_bits):
    _check_positive(trust_region, "trust_region")
    for name, value, low in (("max_iter", max_iter, 1), ("max_bits", max_bits, 1)):
        if not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(
                f"{name} must be an int >= {low}, got {name}={value!r} instead."
            )


def _check_bound(loss_bound, relative, loss0):
    loss_bound = _check_positive(loss_bound, "loss_bound")
    return loss0 * (1.0 + loss_bound) if relative else loss_bound


def adaptive_precision_loop(
    params,
    loss_and_grad,
    set_params,
    *,
    loss_bound,
    relative=True,
    trust_region=0.05,
    max_iter=10,
    max_bits=24,
    evaluate=None,
    verbose=False,
    n_jobs=None,
):
    """The iterative method of Khoram & Li, framework-free.

    Alternates: loss and gradient at the current parameters; margins from the
    remaining budget ``l_bar - L_k`` (one water level for all parameters); fixed-point
    quantization; loss check. A step whose measured loss exceeds the bound is
    retried with half the budget (up to 4 times). Stops when the total size stops
    shrinking, the bound binds, or after ``max_iter`` steps.

    Parameters
    ----------
    params : list of ndarray
        The float parameters.
    loss_and_grad : callable
        ``loss_and_grad(params) -> (loss, grads)`` for a list of parameters.
    set_params : callable
        ``set_params(params) -> model``: a model holding these parameters.
    loss_bound : float
        ``l_bar`` as a fraction above the float loss (``relative=True``:
        ``l_bar = L_0 (1 + loss_bound)``) or as an absolute loss.
    relative : bool, default=True
        How to read ``loss_bound``.
    trust_region : float, default=0.05
        Largest margin, as a fraction of each tensor's power-of-two range.
    max_iter : int, default=10
        Largest number of steps.
    max_bits : int, default=24
        Largest number of fractional bits.
    evaluate : callable, default=None
        ``evaluate(model) -> accuracy``, recorded in the history.
    verbose : bool, default=False
        Progress bar with the loss and the size.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    result : AdaptiveQuantizationResult
        The quantized model, the history and the per-parameter bits.
    """
    from ._progress import progress

    _check_loop_params(trust_region, max_iter, max_bits)
    params = [np.asarray(p, dtype=np.float64).copy() for p in params]
    n_params = sum(p.size for p in params)
    loss, grads = loss_and_grad(params)
    l_bar = _check_bound(loss_bound, relative, loss)
    if l_bar <= loss:
        raise ValueError(
            f"loss_bound gives l_bar={l_bar:.6g}, not above the current loss "
            f"{loss:.6g}: there is no budget to spend. Pass a larger loss_bound."
        )
    float_bits = 32 * n_params
    history = [
        {
            "loss": loss,
            "payload_bits": float_bits,
            "map_bits_fixed": 0,
            "map_bits_entropy": 0,
            "total_bits": float_bits,
            "bits_per_param": 32.0,
            "predicted_increase": 0.0,
            "measured_increase": 0.0,
        }
    ]
    if evaluate is not None:
        history[0]["accuracy"] = evaluate(set_params(params))
    best, best_bits, stop = None, None, f"max_iter={max_iter} reached"
    bar = progress(range(max_iter), desc="adaptive precision", enabled=verbose)
    for _ in bar:
        budget = l_bar - loss
        if budget <= 0:
            stop = "loss bound binds"
            break
        for _retry in range(5):
            res = allocate_precision(
                params, grads, budget, trust_region, max_bits=max_bits, n_jobs=n_jobs
            )
            new_loss, new_grads = loss_and_grad(res["quantized"])
            if new_loss <= l_bar:
                break
            budget /= 2
        else:
            stop = "no step kept the loss under the bound"
            break
        all_bits = np.concatenate([b.ravel() for b in res["bits"]])
        payload = int(all_bits.sum(dtype=np.int64))
        maps = precision_map_bits(all_bits)
        total = payload + maps["fixed"] + 8 * len(params)
        entry = {
            "loss": new_loss,
            "payload_bits": payload,
            "map_bits_fixed": maps["fixed"],
            "map_bits_entropy": maps["entropy"],
            "total_bits": total,
            "bits_per_param": total / n_params,
            "predicted_increase": res["predicted_increase"],
            "measured_increase": new_loss - loss,
        }
        if total >= history[-1]["total_bits"] and best is not None:
            stop = "size stopped shrinking"
            break
        model = set_params(res["quantized"])
        if evaluate is not None:
            entry["accuracy"] = evaluate(model)
        history.append(entry)
        bar.set_postfix(f"loss {new_loss:.4g} bits/param {total / n_params:.2f}")
        params, loss, grads = res["quantized"], new_loss, new_grads
        best, best_bits = model, res["bits"]
    if best is None:
        best, best_bits = (
            set_params(params),
            [np.full(p.shape, 32, np.int8) for p in params],
        )
    return AdaptiveQuantizationResult(best, history, best_bits, n_params, stop)


def adaptive_quantize_mlp(
    mlp,
    X,
    y,
    *,
    loss_bound=0.1,
    relative=True,
    trust_region=0.05,
    max_iter=10,
    max_bits=24,
    X_eval=None,
    y_eval=None,
    verbose=False,
    n_jobs=None,
):
    """Khoram & Li's iterative adaptive precision on a fitted ``MLPClassifier``.

    Every parameter (weights and biases) gets its own fixed-point precision; the loss
    (mean log-loss on ``X, y``, gradient in NumPy by :func:`mlp_loss_gradient`) stays
    within the bound.

    Parameters
    ----------
    mlp : MLPClassifier
        A fitted classifier (left unchanged).
    X : array-like of shape (n_samples, n_features)
        Data for the loss and its gradient.
    y : array-like of shape (n_samples,)
        Labels.
    loss_bound : float, default=0.1
        Allowed loss, relative to the float loss (``relative=True``: 10% above) or
        absolute.
    relative : bool, default=True
        How to read ``loss_bound``.
    trust_region : float, default=0.05
        Largest margin, as a fraction of each tensor's power-of-two range.
    max_iter : int, default=10
        Largest number of steps.
    max_bits : int, default=24
        Largest number of fractional bits.
    X_eval, y_eval : array-like, default=None
        Data whose accuracy the history records.
    verbose : bool, default=False
        Progress bar.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    result : AdaptiveQuantizationResult
        ``result.model`` is the quantized copy of ``mlp``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neural_network import MLPClassifier
    >>> from skquant import adaptive_quantize_mlp
    >>> X, y = load_digits(return_X_y=True)
    >>> X = X / 16
    >>> mlp = MLPClassifier((32,), max_iter=300, random_state=0).fit(X, y)
    >>> res = adaptive_quantize_mlp(mlp, X, y, loss_bound=0.5)
    >>> res.history[-1]["bits_per_param"] < 16, res.model.score(X, y) > 0.95
    (True, True)
    """
    from ._network import MLPNetwork

    network = MLPNetwork(mlp)
    data = network.check_targets(X, y)
    evaluate = None
    if X_eval is not None:

        def evaluate(model):
            return float(model.score(X_eval, y_eval))

    return adaptive_quantize_network(
        network,
        data,
        loss_bound=loss_bound,
        relative=relative,
        trust_region=trust_region,
        max_iter=max_iter,
        max_bits=max_bits,
        evaluate=evaluate,
        verbose=verbose,
        n_jobs=n_jobs,
    )


def adaptive_quantize_network(network, data, **options):
    """The adaptive-precision loop over any :class:`~skquant._network.Network`.

    Every parameter of the network gets its own precision (the one driver behind
    :func:`adaptive_quantize_mlp` and ``skquant.torch.adaptive_quantize_model``).

    Parameters
    ----------
    network : Network
        The float network (left unchanged).
    data : object
        Data for the loss, in the adapter's format.
    **options : dict
        Passed to :func:`adaptive_precision_loop` (``loss_bound``, ...).

    Returns
    -------
    result : AdaptiveQuantizationResult
        ``result.model`` is the quantized copy of ``network.model``.
    """
    start = network.parameters()
    names = list(start)

    def loss_and_grad(params):
        loss, grads = network.loss_gradients(data, dict(zip(names, params)))
        return loss, [np.asarray(grads[n], dtype=np.float64) for n in names]

    def set_params(params):
        return network.with_parameters(dict(zip(names, params))).model

    return adaptive_precision_loop(
        [start[n] for n in names], loss_and_grad, set_params, **options
    )
