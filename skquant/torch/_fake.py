"""Fake quantization in torch: the same math as skquant's numba kernels, with autograd.

``fake_quantize_ste`` computes ``(clip(round(x * inv_step) + zp, qmin, qmax) - zp) *
step`` on ordinary float tensors (torch's own quantized dtypes are deprecated);
``torch.round`` rounds half to even like ``np.rint``, and with every buffer cast to
``x.dtype`` the result equals the numba ``transform`` bit for bit. The gradient is the
clipped straight-through estimator: 1 where the value is inside the grid, 0 outside.

The quantized layers' autograd pieces live here too: ``straight_through`` (an input
grid's gradient) and ``KernelGrad`` (a layer's kernels forward, its simulated
path's gradient backward).
"""

import contextlib
import copy
import math
import weakref

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._common._checks import check_int
from .._tensor._alphabets import safe_scale

#: torch.compiler's flag where this torch has it (from 2.3; none compiles so before)
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _check_steps(step, name):
    """ValueError unless every entry of the tensor ``step`` is finite and > 0."""
    ok = torch.isfinite(step) & (step > 0)
    if not bool(torch.all(ok)):
        bad = step.detach()[~ok].flatten()[0].item()
        raise ValueError(
            f"{name} must hold finite steps > 0, got a step of {bad!r} in {name}."
        )


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, inv_step, step, zero_point, qmin, qmax):
        q = torch.round(x * inv_step) + zero_point
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return (torch.clamp(q, qmin, qmax) - zero_point) * step

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None, None


def straight_through(x, y, inside=None):
    """``y`` (``x`` put on a grid, values for values) with the clipped
    straight-through gradient: that of ``x`` where ``inside()`` (a mask: the
    code fell in the grid's range; ``None``: every finite value), 0 elsewhere.
    Only where ``x`` needs gradients (else ``y`` itself, no mask computed), and
    not under ``torch.jit.trace`` (its check retraces without gradients: the
    graphs would differ); NaN and inf entries must be outside."""
    if not (x.requires_grad and torch.is_grad_enabled()) or torch.jit.is_tracing():
        return y
    mask = torch.isfinite(x) if inside is None else inside()
    return y.detach() + torch.where(mask, x - x.detach(), x.new_zeros(()))


#: torch.func's test of its transforms' tensors, and its context that stops
#: them wrapping new tensors (``None`` where this torch lacks them)
_WRAPPED = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
_UNWRAPPED = getattr(torch._C, "_DisableFuncTorch", None)


def functorch_wrapped(x):
    """Whether ``x`` is a tensor of torch.func's transforms (``grad``, ``vmap``)."""
    return _WRAPPED is not None and _WRAPPED(x)


def outside_functorch():
    """A context where torch.func's transforms do not wrap new tensors (a
    quantized layer's int8 weights are read out of torch's prepacked objects
    as arrays)."""
    return _UNWRAPPED() if _UNWRAPPED is not None else contextlib.nullcontext()


class KernelGrad(torch.autograd.Function):
    """A quantized layer's kernels forward, and backward the gradient of its
    simulated path (the input grid's straight-through one, the dequantized
    weights'), recomputed from the input when asked for, with the layer's
    buffers of the forward (codes, scales, input grid: ``functional_call``'s
    among them); differentiable again under ``create_graph``. The bias's
    gradient is the caller's (its ``_bias_grad``): the bias does not enter the
    input's gradient, so it may change in between (an optimizer step)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = weakref.ref(layer)  # (no cycle through a hook's outputs)
        ctx.buffers = dict(layer._buffers)
        ctx.versions = {k: t._version for k, t in ctx.buffers.items() if t is not None}
        ctx.save_for_backward(x)
        with torch.no_grad():
            y = layer._run(x.detach())
        return y.detach()  # (not a view of the kernel's output: in-place ops
        # after the layer, ReLU(inplace=True), refused a view)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        layer = ctx.layer()
        if layer is None:
            raise RuntimeError(
                "the quantized layer this output came from was deleted before the "
                "backward, which recomputes its gradient from the layer: keep the "
                "model alive until then."
            )
        for key, t in ctx.buffers.items():
            if t is not None and t._version != ctx.versions[key]:
                raise RuntimeError(
                    f"{type(layer).__name__}.{key}, needed for the gradient, was "
                    "modified in place between the forward and the backward."
                )
        if any(layer._buffers.get(k) is not v for k, v in ctx.buffers.items()):
            # (a forward under functional_call: the recompute runs on a shallow
            # copy holding its tensors; the layer itself is never changed)
            layer = copy.copy(layer)
            layer._buffers = dict(ctx.buffers)
        higher = torch.is_grad_enabled()  # (create_graph: x's graph kept)
        with torch.enable_grad():
            xd = x if higher else x.detach().requires_grad_()
            y = layer._run(xd)
        (gx,) = torch.autograd.grad(y, xd, grad, create_graph=higher)
        return gx, None


def fake_quantize_ste(x, step, qmin, qmax, zero_point=None):
    """Fake-quantize ``x`` on the grid ``step * [qmin, qmax]`` with a clipped STE.

    Parameters
    ----------
    x : torch.Tensor
        Values; the last dimension indexes channels when ``step`` is a vector.
    step : torch.Tensor or float
        Grid step, finite and ``> 0`` (checked for a step on the CPU; on a GPU the
        check would synchronise the device in every training step), broadcast
        against ``x``.
    qmin, qmax : float
        Code range, ``qmin <= qmax``.
    zero_point : torch.Tensor, default=None
        Zero point in code units (``None``: 0).

    Returns
    -------
    y : torch.Tensor
        The dequantized values; its gradient is 1 inside the grid, 0 outside.

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import fake_quantize_ste
    >>> x = torch.tensor([0.4, 1.5, 2.5, 9.0], requires_grad=True)
    >>> y = fake_quantize_ste(x, torch.tensor(1.0), -7, 7)
    >>> y
    tensor([0., 2., 2., 7.], grad_fn=<_RoundSTEBackward>)
    >>> y.sum().backward()
    >>> x.grad
    tensor([1., 1., 1., 0.])
    """
    if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
        # (an integer x took the step in its own dtype: 0.5 became 0)
        raise TypeError(
            "x must be a floating-point torch.Tensor, got "
            f"{getattr(x, 'dtype', type(x).__name__)} instead."
        )
    if not (math.isfinite(float(qmin)) and math.isfinite(float(qmax))) or float(
        qmin
    ) > float(qmax):
        raise ValueError(
            "qmin and qmax must be finite with qmin <= qmax, got "
            f"qmin={qmin!r} and qmax={qmax!r} instead."
        )
    if not isinstance(step, torch.Tensor):  # a number: in x's dtype, not float32
        step = torch.as_tensor(step, dtype=x.dtype)
    # checked where it costs no device synchronisation (every training step
    # calls this) and nothing traces the call (torch.export, torch.compile);
    # FakeQuantize checks its scales once, on any device
    if (
        step.device.type == "cpu"
        and type(step) in (torch.Tensor, nn.Parameter)
        and not _is_compiling()
        and not torch.jit.is_tracing()
    ):
        _check_steps(step, "step")
    step = step.to(x.device, x.dtype)
    inv = (torch.ones((), dtype=x.dtype, device=x.device) / step).to(x.dtype)
    zp = (
        torch.zeros((), dtype=x.dtype, device=x.device)
        if zero_point is None
        else torch.as_tensor(zero_point, dtype=x.dtype, device=x.device)
    )
    return _RoundSTE.apply(x, inv, step, zp, float(qmin), float(qmax))


class FakeQuantize(nn.Module):
    """Apply a fitted skquant quantizer's grid in torch, per output channel.

    Built with :meth:`from_estimator` from a fitted :class:`~skquant.UniformQuantizer`,
    :class:`~skquant.TernaryQuantizer` or :class:`~skquant.ActivationQuantizer`: it
    reads ``scale_``, ``qmin_``, ``qmax_`` (and ``zero_point_``) into buffers, which
    follow ``.to(device)`` and ``state_dict()``. On a 2-D input of the layout the
    estimator was fitted on (channels last), ``forward`` equals the estimator's
    ``transform`` bit for bit.

    Parameters
    ----------
    scale : torch.Tensor of shape (n_channels,) or (1,)
        Grid steps.
    qmin, qmax : int
        Code range.
    zero_point : torch.Tensor, default=None
        Zero points (affine grids).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skquant import UniformQuantizer
    >>> from skquant.torch import FakeQuantize
    >>> W = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    >>> est = UniformQuantizer(n_bits=4).fit(W)
    >>> fq = FakeQuantize.from_estimator(est)
    >>> bool(np.array_equal(fq(torch.from_numpy(W)).numpy(), est.transform(W)))
    True
    """

    def __init__(self, scale, qmin, qmax, zero_point=None):
        super().__init__()
        scale = torch.as_tensor(scale)
        _check_steps(scale, "scale")
        # (qmin=-7.5 was made -7 in silence)
        if check_int(qmin, "qmin", low=None) > check_int(qmax, "qmax", low=None):
            raise ValueError(
                f"qmin must be <= qmax, got qmin={qmin!r} and qmax={qmax!r} instead."
            )
        self.register_buffer("scale", scale)
        zp = (
            torch.zeros_like(self.scale)
            if zero_point is None
            else torch.as_tensor(zero_point)
        )
        if not bool(torch.all(torch.isfinite(zp))):
            raise ValueError(f"zero_point must be finite, got {zp!r:.80} instead.")
        self.register_buffer("zero_point", zp)
        self.qmin = int(qmin)
        self.qmax = int(qmax)

    @classmethod
    def from_estimator(cls, est):
        """Build from a fitted skquant quantizer with a uniform (or affine) grid.

        Parameters
        ----------
        est : UniformQuantizer, TernaryQuantizer or ActivationQuantizer
            Fitted quantizer.

        Returns
        -------
        module : FakeQuantize
            The module.
        """
        check_is_fitted(est)
        grid = ("scale_", "qmin_", "qmax_")
        if not all(hasattr(est, a) for a in grid) or np.ndim(est.scale_) == 0:
            raise TypeError(
                "est must be a fitted quantizer with a uniform grid per channel "
                "(UniformQuantizer, TernaryQuantizer, ActivationQuantizer), got "
                f"{type(est).__name__} instead."
            )
        alphabet = getattr(est, "alphabet_record_", None)
        if alphabet is not None and alphabet.is_binary:
            raise ValueError(
                "FakeQuantize supports grids (uniform, ternary, affine); got a "
                "BinaryQuantizer instead."
            )
        scale = safe_scale(est.scale_, est.scale_.dtype)
        zp = getattr(est, "zero_point_", None)
        return cls(
            torch.from_numpy(scale.copy()),
            est.qmin_,
            est.qmax_,
            None if zp is None else torch.from_numpy(zp.astype(scale.dtype)),
        )

    def forward(self, x):
        """Fake-quantize ``x`` (channels in the last dimension)."""
        return fake_quantize_ste(x, self.scale, self.qmin, self.qmax, self.zero_point)
