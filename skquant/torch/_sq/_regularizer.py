"""The Smart Quantization penalty: wells around each layer's alphabet, a switch each."""

import math
import numbers

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..._common._checks import check_positive
from ..._kernels import _sq as _sq_kernels
from ..._kernels._threads import numba_threads
from ..._quantizers._uniform import TernaryQuantizer, level_quantizer
from ..._tensor._alphabets import BINARY, TERNARY
from ._alphabet import as_alphabet, project_onto
from ._checks import covered_layers

BETA_LOW, BETA_HIGH = math.pi / 4, math.pi / 2


def _fusable(w):
    return w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64)


def _power(x, p):
    """``x ** p`` of ``x >= 0`` with the gradient 0 where ``x`` is 0, as the
    fused kernel's (autograd's is ``inf * 0``, NaN, for ``p < 1``)."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)) ** p, 0.0)


class _FusedWells(torch.autograd.Function):
    """``scale * sum_w min(|(|w| - a)|^p, t |w|^p)`` and its gradients in one
    compiled pass (first derivatives only). ``scale`` (a float) is folded into
    the kernel's gradient so that the backward pass is no extra pass over ``w``."""

    @staticmethod
    def forward(ctx, w, a, t, p, scale):
        flat = w.detach().reshape(-1).contiguous().numpy()
        # on torch's thread count (numba's pool, started unguarded, set torch's
        # to its own: a caller's torch.set_num_threads(1) became 2)
        with numba_threads(torch.get_num_threads()):
            total, grad, d_a, d_t = _sq_kernels.wells_sum(
                flat, float(a), float(t), p, scale
            )
        ctx.save_for_backward(
            torch.from_numpy(grad).view(w.shape),
            torch.tensor(d_a, dtype=a.dtype),
            torch.tensor(d_t, dtype=t.dtype),
        )
        return torch.tensor(total, dtype=w.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        grad_w, d_a, d_t = ctx.saved_tensors
        if float(g) != 1.0:
            grad_w = g * grad_w
        return grad_w, g * d_a, g * d_t, None, None


class SQRegularizer(nn.Module):
    """The Smart Quantization penalty over a model's weight layers.

    Holds, per weight layer, a trainable scale ``a > 0`` (``a = exp(log_a)``) and a
    trainable switch ``beta = pi/4 + (pi/4) sigmoid(theta)`` in ``[pi/4, pi/2)``
    (kept inside by the reparametrisation; at most the largest number of its
    dtype below ``pi/2``, which float32 rounded up past it, where ``tan``
    changes sign: a penalty of -1.6e8). Calling it returns

    ``R = lambda / n_layers * sum_layers sum_w r(w) + gamma * sum_layers |cot beta|``

    with ``r(w) = min(|(|w| - a)|^p, tan(beta) |w|^p)``. The zero well covers
    ``|w| < a / (1 + tan(beta)^(1/p))``.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` weights are
        regularised (the regulariser holds references, not copies).
    layers : sequence of str, default=None
        The layers covered (``model.named_modules()`` names); ``None``: all.
    skip : sequence of str or module classes, default=()
        Modules left out, with their children (as in ``quantize_model``).
    p : float, default=2
        The power of the wells.
    gamma : float, default=0.0
        Weight of ``|cot beta|`` (pushes layers toward binary: memory).
    lam : float, default=1.0
        ``lambda``, the strength of the wells (the trainer anneals it).
    beta_init : float, default=3*pi/8
        Initial switch of every layer, in ``(pi/4, pi/2)``.

    Attributes
    ----------
    layer_names : list of str
        The regularised layers.
    log_a : torch.nn.Parameter of shape (n_layers,)
        Log-scales, initialised from a fitted per-tensor
        :class:`~skquant.TernaryQuantizer`'s scale of each layer.
    theta : torch.nn.Parameter of shape (n_layers,)
        The switch's free parameter.

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import SQRegularizer
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(),
    ...                           torch.nn.Linear(4, 2))
    >>> reg = SQRegularizer(net, gamma=1e-3)
    >>> reg.layer_names
    ['0', '2']
    >>> penalty = reg()
    >>> penalty.backward()            # reaches the weights, a and beta
    >>> net[0].weight.grad is not None and reg.theta.grad is not None
    True
    """

    def __init__(
        self,
        model,
        *,
        layers=None,
        skip=(),
        p=2.0,
        gamma=0.0,
        lam=1.0,
        beta_init=3 * math.pi / 8,
    ):
        super().__init__()
        network, names = covered_layers(model, layers, skip)
        self.p = check_positive(p, "p")
        self.gamma = check_positive(gamma, "gamma", zero=True)
        self.lam = check_positive(lam, "lam", zero=True)
        if not (
            isinstance(beta_init, numbers.Real) and BETA_LOW < beta_init < BETA_HIGH
        ):
            raise ValueError(
                f"beta_init must be in (pi/4, pi/2), got beta_init={beta_init!r}."
            )
        self.layer_names = names
        # references to the model's modules, not submodules of the regulariser (its
        # parameters are a and theta only)
        object.__setattr__(self, "_layers", [network.module(n) for n in names])
        scales = []
        for n in names:
            W = network.weight(n)
            q = TernaryQuantizer(granularity="per_tensor").fit(W)
            scales.append(max(float(np.ravel(q.scale_)[0]), 1e-8))
        dtype = next(iter(self._layers)).weight.dtype
        device = next(iter(self._layers)).weight.device
        self.log_a = nn.Parameter(
            torch.tensor(np.log(scales), dtype=dtype, device=device)
        )
        s = (beta_init - BETA_LOW) / (BETA_HIGH - BETA_LOW)
        self.theta = nn.Parameter(
            torch.full((len(names),), math.log(s / (1 - s)), dtype=dtype, device=device)
        )

    # ----------------------------------------------------------- quantities
    def beta(self):
        """The switches, in ``[pi/4, pi/2)``."""
        beta = BETA_LOW + (BETA_HIGH - BETA_LOW) * torch.sigmoid(self.theta)
        top = torch.tensor(BETA_HIGH, dtype=beta.dtype, device=beta.device)
        if top >= BETA_HIGH:  # (rounded up: the number below it)
            top = torch.nextafter(top, torch.zeros_like(top))
        return torch.minimum(beta, top)

    def scale(self):
        """The scales ``a > 0``."""
        return torch.exp(self.log_a)

    def wells(self, w, a, beta):
        """``r(w) = min(|(|w| - a)|^p, tan(beta) |w|^p)``, elementwise."""
        aw = w.abs()
        if self.p == 2.0:
            outer, inner = (aw - a) ** 2, torch.tan(beta) * aw**2
        else:
            outer = _power((aw - a).abs(), self.p)
            inner = torch.tan(beta) * _power(aw, self.p)
        return torch.minimum(outer, inner)

    def layer_penalties(self):
        """``sum_w r(w)`` per layer (a tensor of shape ``(n_layers,)``).

        On the CPU each layer's sum and its gradients come from one compiled pass
        over the weights (:mod:`skquant._kernels._sq`); elsewhere from
        :meth:`wells` through autograd. Both give the same values and gradients.
        """
        return self._penalties(1.0)

    def _penalties(self, scale):
        a, beta = self.scale(), self.beta()
        t = torch.tan(beta)
        return torch.stack(
            [
                _FusedWells.apply(m.weight, a[i], t[i], self.p, scale)
                if _fusable(m.weight)
                else scale * self.wells(m.weight, a[i], beta[i]).sum()
                for i, m in enumerate(self._layers)
            ]
        )

    def forward(self):
        """The penalty ``R`` (a scalar tensor)."""
        beta = self.beta()
        wells = self._penalties(self.lam / len(self._layers)).sum()
        return wells + self.gamma * (1.0 / torch.tan(beta)).abs().sum()

    def zero_well(self):
        """Half-width of each layer's zero well, ``a / (1 + tan(beta)^(1/p))``."""
        with torch.no_grad():
            return self.scale() / (1 + torch.tan(self.beta()) ** (1 / self.p))

    def zero_fraction(self):
        """Fraction of each layer's weights inside its zero well."""
        edge = self.zero_well()
        with torch.no_grad():
            return [
                float((m.weight.abs() < edge[i]).float().mean())
                for i, m in enumerate(self._layers)
            ]

    def alphabets(self, threshold=3 * math.pi / 8):
        """``"binary"`` for layers with ``beta >= threshold``, else ``"ternary"``."""
        return {n: a.kind for n, a in self._alphabets(threshold).items()}

    def _alphabets(self, threshold):
        """:data:`BINARY` or :data:`TERNARY` by layer, as :meth:`alphabets` says."""
        threshold = check_positive(threshold, "threshold", zero=True)  # (NaN: ternary)
        beta = self.beta().detach().cpu().numpy()
        return {
            n: BINARY if b >= threshold else TERNARY
            for n, b in zip(self.layer_names, beta)
        }

    def quantizers(self, threshold=3 * math.pi / 8):
        """Per-layer quantizers projecting onto ``{-a, a}`` or ``{-a, 0, a}``.

        Parameters
        ----------
        threshold : float, default=3*pi/8
            Layers with ``beta >= threshold`` are binary.

        Returns
        -------
        quantizers : dict of {str: estimator}
            The mapping for :func:`skquant.torch.quantize_model`: a
            :class:`~skquant.BinaryQuantizer` or :class:`~skquant.TernaryQuantizer`
            with the layer's trained scale ``a`` (one per tensor); ternary rounds
            to the nearest of the three values (zero for ``|w| < a/2``).
        """
        a = self.scale().detach().cpu().numpy()
        out = {}
        for (name, alphabet), scale in zip(self._alphabets(threshold).items(), a):
            cls = level_quantizer(alphabet)
            out[name] = cls(granularity="per_tensor", scale=float(scale))
        return out

    def project(self, w, i, alphabet):
        """Layer ``i``'s weights on its alphabet (for the straight-through pass).

        ``alphabet`` is ``"binary"`` or ``"ternary"``, or its
        :class:`~skquant._tensor._alphabets.Alphabet`.
        """
        return project_onto(w, self.scale()[i].detach(), as_alphabet(alphabet))
