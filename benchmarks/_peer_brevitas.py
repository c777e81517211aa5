"""Benchmark-only adapter to Brevitas' GPTQ and GPFQ (weight-only, per channel).

Brevitas (AMD/Xilinx, ``pip install brevitas==0.13.4``) is never a dependency of
skquant: this module is imported by benchmarks only, and :func:`available` says
whether it can be used. Nothing here modifies the float model it is given.

What :func:`brevitas_quantize` does, in Brevitas API terms
---------------------------------------------------------

1. Deep-copies the float model (``eval()`` mode, so BatchNorm uses its running
   statistics) and replaces every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` by
   ``brevitas.nn.QuantLinear`` / ``QuantConv1d`` / ``QuantConv2d`` with the same
   hyper-parameters and a copy of the float weight and bias, built with
   ``weight_quant=Q``, ``input_quant=None``, ``output_quant=None``,
   ``bias_quant=None``, ``return_quant_tensor=False``: weights only are quantized,
   activations and biases stay float. ReLU, MaxPool2d, Flatten, BatchNorm2d, ...
   are left as they are (BatchNorm is not folded).
2. The weight quantizer ``Q`` is
   ``brevitas.quant.scaled_int.Int8WeightPerChannelFloat.let(...)`` with
   ``bit_width=n_bits``, ``narrow_range=True``, ``signed=True`` (zero point 0:
   ``ZeroZeroPoint``), ``scaling_per_output_type=ScalingPerOutputType.CHANNEL``,
   ``scaling_stats_op=StatsOp.MAX`` (``AbsMax`` over each output channel),
   ``restrict_scaling_type=RestrictValueType.FP`` (float scale),
   ``float_to_int_impl_type=FloatToIntImplType.ROUND`` (round half to even) and,
   by default (``scaling="fixed"``),
   ``scaling_impl_type=ScalingImplType.PARAMETER_FROM_STATS``. Brevitas' scale is
   ``absmax / (2**(b-1) - 1)`` (``IntScaling``, narrow range), and the dequantized
   weight is ``clamp(round(w / scale), -(2**(b-1)-1), 2**(b-1)-1) * scale``: for
   2 bits ``{-1, 0, 1} * scale``. With ``PARAMETER_FROM_STATS`` the scale is
   computed once, from the float weights (we force that initialisation before any
   GPTQ/GPFQ update and check it), then held fixed: the grid is exactly skquant's,
   ``step = max|w_float channel| / (2**(b-1) - 1)``.
   ``scaling="runtime"`` keeps Brevitas' default ``ScalingImplType.STATS``
   instead: the absmax is re-derived from the *current* weight tensor at every
   call, i.e. while GPTQ/GPFQ modify the weights, and the final weights are
   re-quantized with the scale of the final (error-compensated) float weights, so
   the grid then differs from the float-derived one (see ``on_grid(...,
   reference="q")``).
3. Runs, under ``torch.no_grad()``, either
   ``brevitas.graph.gptq.gptq_mode(qmodel, act_order=act_order,
   use_quant_activations=False, create_weight_orig=True, num_blocks=100,
   return_forward_output=False, device=..., dtype=torch.float32)`` or
   ``brevitas.graph.gpfq.gpfq_mode(qmodel, act_order=act_order,
   use_quant_activations=False, create_weight_orig=True,
   return_forward_output=False, device=..., dtype=torch.float32)`` (default
   ``algorithm_impl=GPFQ``) as a context manager, and inside it, for
   ``ctx.num_layers`` rounds: one forward of ``ctx.model`` on every calibration
   batch, then ``ctx.update()``. Each round quantizes the next layer (sequential,
   layer by layer); the forward stops at that layer (``StopFwdException``).
   ``act_order=False`` by default (natural column order, the textbook order).
4. Reads the final dequantized weights ``layer.quant_weight().value`` and the
   scales ``layer.quant_weight().scale`` and writes them into a deep copy of the
   float model (plain ``nn.Conv2d`` / ``nn.Linear``, float biases unchanged); the
   scales are kept as ``model_q.brevitas_scales`` (name -> per-channel tensor).

How Brevitas' GPTQ and GPFQ use the calibration data (read from the 0.13.4 source)
--------------------------------------------------------------------------------

* GPTQ (``brevitas.graph.gptq.GPTQ``): Hessian ``H = 2/n * sum X X^T`` of the
  layer's inputs *in the partially quantized network* (earlier layers already
  quantized; activations float), dead inputs (``H_ii = 0``) get weight 0, damping
  ``0.01 * mean(diag H)`` (``percdamp``, not exposed by ``update()``), Cholesky of
  ``H^-1``, column-by-column quantization with error feedback in lazy blocks of
  ``ceil(columns / num_blocks)`` columns (exact, only faster). The quantizer is
  called on the updated float weights at each column.
* GPFQ (``brevitas.graph.gpfq.GPFQ``): for every batch it does two forwards,
  first with weight quantization on (inputs ``X_hat`` of the quantized network),
  then with all quantization off, in which case Brevitas uses the stored
  ``weight_orig`` buffers, i.e. the float network (inputs ``X``). It accumulates
  ``H = X_hat X_hat^T`` and ``G = X_hat X^T`` and, for column ``t``, quantizes
  ``(G_tt w_t + sum_{s<t} G_ts w_s - sum_{s<t} H_ts q_s) / H_tt``. That is the
  textbook greedy path following of Lybrand & Saab / Zhang, Zhou & Saab,
  ``q_t = Q(<X_hat_t, u_{t-1} + w_t X_t> / ||X_hat_t||^2)`` with
  ``u_t = u_{t-1} + w_t X_t - q_t X_hat_t``, written with covariance matrices
  (no ``u`` kept), mismatched float/quantized inputs, one pass over the columns,
  no damping. Dead inputs (``H_tt = 0``) get weight 0.

Run ``python benchmarks/_peer_brevitas.py`` for a small self-test.
"""

import copy
import warnings

import torch
from torch import nn

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _import_brevitas():
    # brevitas.graph warns at import when fast_hadamard_transform is missing; it is
    # not used here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fast_hadamard_transform")
        import brevitas.graph.gpfq
        import brevitas.graph.gptq
        import brevitas.nn
        import brevitas.quant.scaled_int  # noqa: F401
    return brevitas


def available():
    """Whether Brevitas (and its GPTQ/GPFQ modules) can be imported."""
    try:
        _import_brevitas()
    except Exception:
        return False
    return True


def _weight_quantizer(n_bits, scaling):
    from brevitas.inject.enum import (
        FloatToIntImplType,
        RestrictValueType,
        ScalingImplType,
        ScalingPerOutputType,
        StatsOp,
    )
    from brevitas.quant.scaled_int import Int8WeightPerChannelFloat

    impl = {
        "fixed": ScalingImplType.PARAMETER_FROM_STATS,
        "runtime": ScalingImplType.STATS,
    }[scaling]
    return Int8WeightPerChannelFloat.let(
        bit_width=int(n_bits),
        narrow_range=True,
        signed=True,
        scaling_per_output_type=ScalingPerOutputType.CHANNEL,
        scaling_stats_op=StatsOp.MAX,
        restrict_scaling_type=RestrictValueType.FP,
        float_to_int_impl_type=FloatToIntImplType.ROUND,
        scaling_impl_type=impl,
    )


def _quant_layer(m, quant):
    import brevitas.nn as qnn

    common = dict(
        bias=m.bias is not None,
        weight_quant=quant,
        bias_quant=None,
        input_quant=None,
        output_quant=None,
        return_quant_tensor=False,
        device=m.weight.device,
        dtype=m.weight.dtype,
    )
    if isinstance(m, nn.Linear):
        q = qnn.QuantLinear(m.in_features, m.out_features, **common)
    else:
        cls = qnn.QuantConv2d if isinstance(m, nn.Conv2d) else qnn.QuantConv1d
        q = cls(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=m.groups,
            padding_mode=m.padding_mode,
            **common,
        )
    with torch.no_grad():
        q.weight.copy_(m.weight)
        if m.bias is not None:
            q.bias.copy_(m.bias)
    # (Re-)initialise a PARAMETER_FROM_STATS scale from the copied float weights.
    for sub in q.weight_quant.modules():
        if hasattr(sub, "init_done"):
            sub.init_done = False
    with torch.no_grad():
        q.quant_weight()
    return q


def _swap_layers(module, quant):
    for name, child in module.named_children():
        if type(child) in _LAYERS:
            setattr(module, name, _quant_layer(child, quant))
        else:
            _swap_layers(child, quant)


def _levels(n_bits):
    return 2 ** (int(n_bits) - 1) - 1


def _channels(w):
    return w.detach().reshape(w.shape[0], -1)


def brevitas_quantize(
    model, method, n_bits, calib_batches, *, act_order=False, scaling="fixed"
):
    """Quantize ``model``'s conv/linear weights with Brevitas' GPTQ or GPFQ.

    Parameters
    ----------
    model : torch.nn.Module
        Float model (not modified).
    method : {"gptq", "gpfq"}
    n_bits : int
        2, 3 or 4 (any ``>= 2`` works): narrow symmetric per-channel grid.
    calib_batches : iterable of torch.Tensor
        Calibration inputs (iterated several times, so it is materialised).
    act_order : bool
        Brevitas' ``act_order`` (default False: natural column order).
    scaling : {"fixed", "runtime"}
        ``"fixed"``: scale from the float weights, held fixed
        (``PARAMETER_FROM_STATS``, skquant's grid); ``"runtime"``: Brevitas'
        default ``STATS``, re-derived from the current weights at each call.

    Returns
    -------
    torch.nn.Module
        Deep copy of ``model`` whose conv/linear weights are Brevitas' dequantized
        weights, with ``brevitas_scales`` (layer name -> per-channel scale).
    """
    _import_brevitas()
    from brevitas.graph.gpfq import gpfq_mode
    from brevitas.graph.gptq import gptq_mode

    if method not in ("gptq", "gpfq"):
        raise ValueError(f"method must be 'gptq' or 'gpfq', got {method!r}")
    if int(n_bits) < 2:
        raise ValueError("n_bits must be >= 2 (narrow range)")
    weights = [m for m in model.modules() if isinstance(m, _LAYERS)]
    if not weights:
        raise ValueError("model has no Conv1d/Conv2d/Linear layer")
    device = weights[0].weight.device
    batches = [torch.as_tensor(x).to(device) for x in calib_batches]
    if not batches:
        raise ValueError("calib_batches is empty")

    qmodel = copy.deepcopy(model).eval()
    _swap_layers(qmodel, _weight_quantizer(n_bits, scaling))
    qlayers = {
        name: m for name, m in qmodel.named_modules() if hasattr(m, "quant_weight")
    }
    if scaling == "fixed":
        k = _levels(n_bits)
        floats = dict(model.named_modules())
        for name, m in qlayers.items():
            expect = _channels(floats[name].weight).abs().amax(1) / k
            got = m.quant_weight().scale.detach().reshape(-1)
            if not torch.allclose(got, expect.clamp_min(1e-10), rtol=1e-5):
                raise RuntimeError(f"Brevitas scale of {name} is not absmax/{k}")

    kwargs = dict(
        act_order=act_order,
        use_quant_activations=False,
        create_weight_orig=True,
        return_forward_output=False,
        device="cpu" if device.type == "cpu" else "same",
        dtype=torch.float32,
    )
    if method == "gptq":
        ctx = gptq_mode(qmodel, num_blocks=100, **kwargs)
    else:
        ctx = gpfq_mode(qmodel, **kwargs)
    with torch.no_grad(), ctx as algo:
        for _ in range(algo.num_layers):
            for x in batches:
                algo.model(x)
            algo.update()

    out = copy.deepcopy(model)
    targets = dict(out.named_modules())
    scales = {}
    with torch.no_grad():
        for name, m in qlayers.items():
            qw = m.quant_weight()
            targets[name].weight.copy_(qw.value.detach())
            scales[name] = qw.scale.detach().reshape(-1).clone()
    out.brevitas_scales = scales
    return out


def on_grid(model_q, model_float, n_bits, reference="float"):
    """Largest distance of a conv/linear weight of ``model_q`` to its grid, in steps.

    The grid of each output channel is ``{-K..K} * step``, ``K = 2**(b-1) - 1``,
    with ``step`` from ``reference``: ``"float"`` (default, skquant's grid):
    ``max|w_float channel| / K`` from ``model_float``; ``"q"``:
    ``max|w_q channel| / K`` (only meaningful for ``scaling="runtime"``: with a
    fixed scale a channel need not reach the code ``K``); ``"brevitas"``: the scale
    Brevitas used (``model_q.brevitas_scales``). Returns
    ``max |w / step - nearest code|`` over all weights (0.0 if on the grid,
    ``inf`` if a nonzero weight has a zero step).
    """
    k = _levels(n_bits)
    floats = dict(model_float.named_modules()) if model_float is not None else {}
    worst = 0.0
    for name, m in model_q.named_modules():
        if not isinstance(m, _LAYERS):
            continue
        wq = _channels(m.weight).double()
        if reference == "float":
            step = _channels(floats[name].weight).double().abs().amax(1) / k
        elif reference == "q":
            step = wq.abs().amax(1) / k
        elif reference == "brevitas":
            step = model_q.brevitas_scales[name].double()
        else:
            raise ValueError(f"unknown reference {reference!r}")
        step = step.reshape(-1, 1)
        safe = torch.where(step > 0, step, torch.ones_like(step))
        codes = wq / safe
        dist = (codes - codes.round().clamp(-k, k)).abs()
        dist = torch.where(step > 0, dist, torch.where(wq == 0, 0.0, float("inf")))
        worst = max(worst, float(dist.max()))
    return worst


def _selftest():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 10),
    ).eval()
    calib = list(torch.randn(64, 1, 8, 8).split(16))
    test = torch.randn(256, 1, 8, 8)
    with torch.no_grad():
        ref = model(test)
    print(f"brevitas available: {available()}")
    for method in ("gptq", "gpfq"):
        for bits in (2, 3, 4):
            mq = brevitas_quantize(model, method, bits, calib)
            with torch.no_grad():
                out = mq(test)
            err = float((out - ref).norm() / ref.norm())
            dist = on_grid(mq, model, bits)
            print(f"{method} {bits} bits: rel. output error {err:.4f}, grid {dist:.1e}")


if __name__ == "__main__":
    _selftest()
