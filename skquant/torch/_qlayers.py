"""Quantized Linear/Conv layers that hold their codes and compute from them.

A quantized layer keeps no float copy of its weight. What it holds, and how its
forward computes, is its *runtime*, chosen per layer:

``"packed"``
    codes of at most 4 bits, bit-packed (1, 2 or 4 bits each); products are
    computed from the packed codes (:class:`~skquant._tensor._runtime.RuntimeWeights`:
    a fused unpack-and-dot kernel for small batches, tiles dequantized into a 4 MiB
    buffer and BLAS for large ones).
``"int8"``
    codes of any grid of at most 8 bits, one byte each. Weight-only, the products
    are computed as for ``"packed"``; with quantized activations they are torch's
    integer kernels (``int8 x int8 -> int32``, then rescaled): a convolution's on
    oneDNN's int8 convolution, or GEMMs over its patches (:mod:`._int8`).
``"float"``
    the codes as an integer tensor on the layer's device, dequantized in every
    forward (any device, any float dtype, every layer).

``"auto"`` (the default) takes ``"packed"`` for codes of at most 4 bits, ``"int8"``
otherwise (the integer kernels for quantized activations, but for convolutions of
small groups on GEMMs over their patches, where one prepacked object a group costs
more than it saves), and ``"float"`` where the integer kernels cannot run (another
device, bfloat16 or float16, codes wider than 8 bits); a layer that falls back to
``"float"`` says so once (:class:`RuntimeFallbackWarning`).

Inputs that need gradients run the kernels too, and get the gradient of the
simulated path (``_fake.KernelGrad``, recomputed in backward); the result is the
same function. A bias that needs gradients gets them through the kernels too
(added to their output as ``bias - bias.detach()``, a zero).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._tensor._runtime import RuntimeWeights, runtime_bits
from ._fake import (
    KernelGrad,
    _is_compiling,
    functorch_wrapped,
    outside_functorch,
    straight_through,
)
from ._graph import fx_call, global_hooks
from ._int8 import (
    SIMULATED,
    Int8Weights,
    chained_codes,
    chains,
    dynamic_reduce_range,
    engine_reason,
    fake_dynamic,
    grid_values,
    int8_gemm_reason,
    int8_weights,
    kernel_bounds,
    largest_code,
    saturates_here,
)
from ._layout import conv_args, conv_kwargs
from ._qstate import StoredForm
from ._rows import kernel_padding, output_sizes
from ._runtimes import (  # noqa: F401 (_ANNOUNCED: the tests clear it)
    _ANNOUNCED,
    RuntimeFallbackWarning,
    announce,
    check_runtime,
)
from ._state import take_hooks

__all__ = [
    "QuantConv1d",
    "QuantConv2d",
    "QuantLinear",
    "QuantMixin",
    "RuntimeFallbackWarning",
    "quantized_module",
]


#: the activation modes a quantized layer can run
ACTIVATION_MODES = (None, "dynamic", "static")

#: torch.compiler's flag where this torch has it (from 2.6; none exports so before)
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def _torch_gemm(a, b):
    """``a @ b`` of two arrays by torch's CPU matmul (the one ``F.linear`` uses)."""
    return torch.from_numpy(a).matmul(torch.from_numpy(b)).numpy()


class QuantMixin(StoredForm):
    """What a quantized layer holds: its codes in a runtime form, and scales.

    ``state_dict`` entries (as before this runtime): ``weight_packed`` (the
    bit-packed codes, ``uint8``; per-parameter precision: ``weight_codes`` and
    ``weight_bits``), ``weight_scale``, ``weight_zero_point`` for affine grids, the
    activation scales of a layer with static activations (``input_scale``,
    ``input_zero_point``), and the alphabet as extra state. ``weight`` and
    ``weight_codes`` are computed when read; nothing float is held.
    """

    _runtime_request = "auto"
    _float_tensor = None
    _rt = None
    _int8 = None
    #: where this layer gives its outputs as codes (:class:`~._int8.ChainLink`:
    #: the next layer's grid, as ``quint8`` tensors; :func:`~._chain.chain_int8`)
    _chain = None

    def __setstate__(self, state):  # (packed on a CPU with VNNI, loaded on one
        super().__setstate__(state)  # without: simulated, see exact_pair_sums)
        if self._int8 is not None and saturates_here(self):
            self._hold(self._held_tensor())

    def _attach(self, module, tensor, runtime="auto"):
        """Take ``module``'s bias and ``tensor``'s codes and scales."""
        if module.bias is not None:
            with torch.no_grad():
                self.bias.copy_(module.bias)
            self.bias.requires_grad_(module.bias.requires_grad)  # frozen stays so
        self.train(module.training)
        take_hooks(self, module)  # the caller's hooks run on the quantized layer
        self._runtime_request = check_runtime(runtime)
        self._set_tensor(tensor)
        return self

    # -- what is held ---------------------------------------------------------

    def _set_tensor(self, tensor):
        device = self.bias.device if self.bias is not None else None
        if "weight" in self._parameters:
            w = self._parameters.pop("weight")
            device = w.device
            self._wdtype = w.dtype
        self._device = device if device is not None else getattr(self, "_device", None)
        self._wshape = tuple(self._weight_shape())
        self.register_buffer(
            "weight_scale",
            torch.from_numpy(np.ascontiguousarray(tensor.scale)).to(self._device),
        )
        if tensor.zero_point is not None:
            self.register_buffer(
                "weight_zero_point",
                torch.from_numpy(np.ascontiguousarray(tensor.zero_point)).to(
                    self._device
                ),
            )
        elif "weight_zero_point" in self._buffers:
            del self._buffers["weight_zero_point"]
        self._qmeta = {
            "alphabet": tensor.alphabet,
            "n_bits": int(tensor.n_bits),
            "qmin": int(tensor.qmin),
            "qmax": int(tensor.qmax),
            "codes_dtype": tensor.codes.dtype.str,
            "float_dtype": None
            if tensor.float_dtype is None
            else np.dtype(tensor.float_dtype).str,
        }
        if tensor.precision_bits is not None:
            self._qmeta["group_size"] = tensor.group_size
            self._qmeta["map_coder"] = tensor.map_coder
            self._qmeta["payload_coder"] = tensor.payload_coder
        self.n_bits = tensor.n_bits
        self.alphabet = tensor.alphabet
        self.size_bits = tensor.size_bits
        self._largest_code = largest_code(tensor)
        self._hold(tensor)

    def _hold(self, tensor):
        """Choose the runtime and hold the codes in its form (and nothing else)."""
        self._rt = self._int8 = None
        if "_codes" in self._buffers:
            del self._buffers["_codes"]
        self.runtime, reason = self._choose(tensor)
        if reason:
            announce((type(self), reason), f"{type(self).__name__}: {reason}")
        asked = self._runtime_request
        gemm, why = int8_gemm_reason(self, tensor, asked)
        if why is not None and self.runtime != "float":
            announce((type(self), why), f"{type(self).__name__}: {why}")
        if self.runtime == "packed":
            self._rt = RuntimeWeights(tensor)
        elif self.runtime == "int8" and gemm:
            self._int8 = self._int8_weights(tensor)
        elif self.runtime == "int8":
            self._rt = RuntimeWeights(tensor, bits=8)
        else:
            codes = np.ascontiguousarray(tensor.codes.T)
            self.register_buffer(
                "_codes", torch.from_numpy(codes).to(self._device), persistent=False
            )
            self._float_tensor = tensor if tensor.precision_bits is not None else None
        held = self._rt is not None or self._int8 is not None
        held = held or self._float_tensor is not None
        self._held_scales = self._scale_copies() if held else None

    def _choose(self, tensor):
        """``(runtime, reason for a fallback or None)``."""
        asked = self._runtime_request
        bits = runtime_bits(tensor)
        where = self._device.type if self._device is not None else "cpu"
        dtype = getattr(self, "_wdtype", torch.float32)
        if asked == "float":
            return "float", None
        if asked == "packed" and (bits is None or bits > 4):
            raise ValueError(
                f"runtime='packed' holds codes of at most 4 bits; this layer's "
                f"codes span [{tensor.qmin}, {tensor.qmax}] ({bits or 'over 8'} "
                "bits): use runtime='int8' or 'auto'."
            )
        if bits is None:
            why = (
                f"codes in [{tensor.qmin}, {tensor.qmax}] need more than 8 bits; "
                "the layer dequantizes its codes in every forward (runtime 'float')."
            )
            return "float", why
        if where != "cpu" or dtype not in (torch.float32, torch.float64):
            why = (
                f"no integer kernel for {dtype} on {where}; the layer dequantizes "
                "its codes in every forward (runtime 'float')."
            )
            return "float", why
        if asked == "auto":
            if self._act_mode is not None and int8_gemm_reason(self, tensor, "auto")[0]:
                return "int8", None
            return ("packed" if bits <= 4 else "int8"), None
        return asked, None

    def _bias_or_none(self):
        return None if self.bias is None else self.bias.detach().float().cpu()

    def _bias_linked(self):
        """Whether the int8 GEMM adds the layer's own bias. Its prepacked weights
        read the memory of the bias they were packed with: where ``bias`` is now
        another tensor (a copy, a pickle, ``.double().float()``), they are packed
        again, once. ``False`` for a bias the kernel cannot take (not float32 on
        the CPU, strided, or computed by a parametrization): the simulated path
        adds it."""
        b = self._parameters.get("bias")  # (not ``self.bias``: 10x slower)
        if (None if b is None else b.data_ptr()) == self._int8.bias_ptr:
            return True
        if not self._bias_readable():
            why = (
                "the integer GEMM adds a contiguous float32 CPU bias, not this "
                "one (strided, computed by a parametrization, or of another "
                "dtype)" + SIMULATED
            )
            announce((type(self), why), f"{type(self).__name__}: {why}")
            return False
        self._int8 = self._int8_weights(self._int8.tensor())
        return True

    def _bias_readable(self):
        """Whether the int8 GEMM can add the layer's bias: none, or a contiguous
        float32 CPU one (a parametrized bias, computed each call, would be
        packed again each call; a strided one, copied by the prepack)."""
        b = self._parameters.get("bias")
        if b is None:
            return self.bias is None
        return b.dtype == torch.float32 and b.is_cpu and b.is_contiguous()

    def _int8_weights(self, tensor):
        return int8_weights(tensor, self._bias_or_none(), layer=self)

    @property
    def nbytes_held(self):
        """Bytes this layer holds: codes in their runtime form, scales, bias (the
        int8 GEMM's prepacked objects: an estimate with their padding, see
        :func:`~._int8.prepacked_nbytes`, :func:`~._int8.onednn_nbytes`)."""
        total = sum(b.numel() * b.element_size() for b in self._buffers.values())
        if self.bias is not None:
            total += self.bias.numel() * self.bias.element_size()
        if self._rt is not None:
            total += self._rt.nbytes
        if self._int8 is not None:
            total += self._int8.nbytes
        return int(total)

    # -- views computed on reading --------------------------------------------

    def _codes_rows(self):
        """Integer codes, one row per output, ``(n_out, n_in)`` (NumPy)."""
        return np.ascontiguousarray(self.quantized_tensor().codes.T)

    @property
    def weight_codes(self):
        """The integer codes, shaped like ``weight`` (computed when read)."""
        return torch.from_numpy(self._codes_rows()).reshape(self._wshape)

    @property
    def weight_packed(self):
        """The bit-packed codes as stored in files (computed when read)."""
        qt = self.quantized_tensor()
        return torch.from_numpy(qt.pack())

    @property
    def weight(self):
        """The dequantized weight (computed when read, not held)."""
        if "weight" in self._parameters:  # while nn.Linear.__init__ runs
            return self._parameters["weight"]
        self._sync_scales()  # (a forward syncs once, at its start)
        return self._dequantized(self._wdtype, self._device)

    def __setattr__(self, name, value):
        if name == "weight" and "_wshape" in self.__dict__:  # (built)
            raise TypeError(
                f"{type(self).__name__} holds its weight as codes and scales and "
                "takes no new one (as fuse_conv_bn_eval sets): fuse BatchNorm into "
                "the float model before quantizing (torch.ao.quantization."
                "fuse_modules), or quantize the new float layer."
            )
        super().__setattr__(name, value)

    def _dequantized(self, dtype, device):
        if self._rt is not None:
            W = self._rt.dequantize()
        elif self._int8 is not None:
            with outside_functorch():  # (its prepacked objects read as arrays)
                W = self._int8.tensor().dequantize()
        elif self._float_tensor is not None:
            W = self._float_tensor.dequantize()
        else:
            w = self._dequantize_codes()
            # (no device in a trace where none moves: torch.jit.trace's check
            # found a device constant pooled in another order on a retrace)
            return w.to(dtype) if w.device == device else w.to(device, dtype)
        w = torch.from_numpy(np.ascontiguousarray(W.T)).reshape(self._wshape)
        return w.to(device=device, dtype=dtype)

    # -- activations ----------------------------------------------------------

    _act_mode = None
    _act_meta = None

    def _set_activations(self, mode, meta=None, scale=None, zero_point=None):
        """Quantize this layer's input: ``None``, ``"dynamic"`` or ``"static"``.

        A static grid has ``meta`` (``n_bits``, ``qmin``, ``qmax``, ``per_channel``),
        ``scale`` and ``zero_point`` (one, or one per input channel).
        """
        if mode not in ACTIVATION_MODES:
            raise ValueError(
                f"activations must be None, 'dynamic' or 'static', got {mode!r}."
            )
        for key in ("input_scale", "input_zero_point"):
            self._buffers.pop(key, None)
        self._act_mode = mode
        self._act_meta = None
        if mode == "static":
            self._act_meta = dict(meta)
            for key, value, dtype in (
                ("input_scale", scale, np.float32),
                ("input_zero_point", zero_point, np.int32),
            ):
                value = np.asarray(value, dtype).reshape(-1).copy()
                self.register_buffer(key, torch.as_tensor(value).to(self._device))
        # the runtime depends on the activations: hold the codes again
        self._hold(self.quantized_tensor())

    def extra_repr(self):
        """torch's description, plus the bits, runtime and activation bits (and
        ``simulated``: the quantized input put on its grid in float)."""
        act = self.activation_bits
        tail = "" if act is None else f", activation_bits={act}"
        tail += ", simulated" if act is not None and not self._int8_runs() else ""
        head = f"{super().extra_repr()}, n_bits={self.n_bits}"
        return f"{head}, runtime={self.runtime!r}{tail}"

    @property
    def activation_bits(self):
        """Bits of the quantized input (``None``: float input)."""
        if self._act_mode is None:
            return None
        if self._act_mode == "dynamic":
            return 8
        return self._act_meta["n_bits"]

    def _fake_input(self, x):
        """``x`` on the input grid (the simulated form of the integer kernels),
        its gradient passed straight through inside the grid's range."""
        if self._act_mode == "dynamic":
            return fake_dynamic(x, dynamic_reduce_range(self._largest_code))
        scale = self.input_scale.to(x.dtype)
        zp = self.input_zero_point.to(x.dtype)
        if self._act_meta["per_channel"] and not isinstance(self, nn.Linear):
            shape = (1, -1) + (1,) * (x.dim() - 2)  # one per input channel
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        q = torch.round(x / scale) + zp
        lo, hi = self._act_meta["qmin"], self._act_meta["qmax"]
        y = (torch.clamp(q, lo, hi) - zp) * scale
        return straight_through(x, y, lambda: (q >= lo) & (q <= hi))

    def _input_qparams(self, x):
        """``(scale, zero point)`` of the input grid on the kernel's unsigned 8 bits.

        Static: the layer's grid (a signed one moved up by ``-qmin``). Dynamic: the
        grid :func:`fake_dynamic` puts ``x`` on (one per call).
        """
        if self._act_mode == "static":  # (.item(): 0.1 us, indexing 0.9 us)
            shift = max(-self._act_meta["qmin"], 0)
            b = self._buffers  # (a scale made a parameter is read as one)
            scale, zp = (
                b[k] if k in b else getattr(self, k)
                for k in ("input_scale", "input_zero_point")
            )
            if scale.numel() != 1:  # (per channel: no kernel takes it)
                scale, zp = scale[:1], zp[:1]
            return float(scale.item()), int(zp.item()) + shift
        top = 127 if dynamic_reduce_range(self._largest_code) else 255
        lo, hi = torch.aminmax(x)  # (one pass)
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        scale = (hi - lo) / top
        if scale == 0.0:
            return 1.0, 0
        return scale, int(min(max(round(-lo / scale), 0), top))

    # -- forward --------------------------------------------------------------

    def _wants_grad(self, x):
        """Whether the input needs gradients in this call (the kernels are
        inference kernels: such inputs take the float path, or run the kernels
        inside ``_fake.KernelGrad``)."""
        return x.requires_grad and torch.is_grad_enabled()

    def _grad_kernels(self, x):
        """Whether ``x``, which needs gradients, runs this layer's kernels with
        the simulated path's gradient (``_fake.KernelGrad``): in grad mode the
        output of any trainable layer needs gradients, so without it every
        layer after the first ran simulated (5x the time with quantized
        activations, ``benchmarks/bench_grad_mode.py``). Not under torch.func's
        transforms (their tensors reach no kernel)."""
        kernels = self._int8 is not None or (
            self._rt is not None and isinstance(self, nn.Linear)
        )
        return (
            kernels
            and self._wants_grad(x)
            and x.device.type == "cpu"
            and x.numel() > 0
            and not _is_compiling()
            and not functorch_wrapped(x)
        )

    def _bias_grad(self, y):
        """``y``, a kernel's output (the bias added as a constant), with the
        bias's gradient in the graph when grad mode asks for it: ``bias -
        bias.detach()`` is zero, so the values stay those of the kernel."""
        b = self.bias
        if b is None or not (b.requires_grad and torch.is_grad_enabled()):
            return y
        zero = (b - b.detach()).to(y.dtype)
        if not isinstance(self, nn.Linear):  # channels first
            zero = zero.reshape((-1,) + (1,) * (y.dim() - 2))
        return y + zero

    def _kernel_input(self, x):
        """Whether the kernels take ``x`` (no gradient; a CPU float32/float64
        tensor with storage: not one of torch.func's transforms, nor the bias)."""
        b = self._parameters.get("bias")
        return (
            x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and not self._wants_grad(x)
            and not functorch_wrapped(x)
            and not (b is not None and functorch_wrapped(b))
        )

    def _runs_int8(self, x):
        """Whether ``x`` goes through the integer GEMM (float32 CPU, no gradient,
        the bias linked; an empty batch takes the simulated path)."""
        return (
            self._int8 is not None
            and x.dtype == torch.float32
            and self._kernel_input(x)
            and x.numel() > 0
            and self._engine_ready()
            and self._bias_linked()
        )

    def _int8_runs(self):
        """Whether float32 CPU inputs run the int8 kernels now (nothing changed:
        the checks of :meth:`_engine_ready` and :meth:`_bias_linked`)."""
        if self._int8 is None:
            return False
        gemm = isinstance(self._int8, Int8Weights)
        return not (gemm and engine_reason()) and self._bias_readable()

    def _engine_ready(self):
        """Whether the int8 weights run on torch's quantized engine now: oneDNN's
        convolutions on any; the GEMMs' weights on :data:`~._int8.GEMM_ENGINES`,
        packed again (once) where they were packed under another engine (an
        unpickled model, a switched engine). Under other engines the simulated
        path runs, and says so once."""
        w = self._int8
        if not isinstance(w, Int8Weights):
            return True
        if torch._C._get_qengine() == w.engine_id:  # (an int: the name costs 0.6 us)
            return True
        why = engine_reason()
        if why is not None:
            why += SIMULATED
            announce((type(self), why), f"{type(self).__name__}: {why}")
            return False
        self._int8 = self._int8_weights(w.tensor())
        return True

    def _try_int8(self, x, chain=False):
        """The integer GEMM's output, or ``None`` (the simulated path, see
        :func:`fake_dynamic`) when ``x`` holds NaN or inf that the kernel cannot
        run on (a convolution's dynamic grid) or spreads (a dynamic grid spanning
        one makes every output NaN: its first output tells, with no pass over the
        input). A static grid puts them on the grid as torch's kernels do."""
        try:
            y = self._int8_forward(x, chain)
        except (RuntimeError, ValueError):
            if bool(torch.isfinite(x).all()):
                raise
            return None
        if y is None:
            return None
        spread = self._act_mode == "dynamic" and y.numel()
        if spread and not math.isfinite(float(y[(0,) * y.dim()])):  # (no copy)
            return y if bool(torch.isfinite(x).all()) else None
        return y

    def _chained_input(self, x, keep=False):
        """The codes of ``x`` (``quint8``: a chained layer's outputs) if on this
        layer's grid and its kernel takes them now, else ``None``; ``keep``:
        ``x`` itself where its codes need no clamping."""
        grid = self._input_qparams(x) if chains(self) else None
        return grid and chained_codes(x, *grid, kernel_bounds(self), keep)

    def _chain_out(self):
        """The grid this call gives its outputs on (``None``: float32, as where
        the bias needs gradients or hooks would see the codes)."""
        if self._chain is None or self.training or self._forward_hooks:
            return None
        b = self._parameters.get("bias")
        if b is not None and b.requires_grad and torch.is_grad_enabled():
            return None
        if _is_compiling() or global_hooks() or not chains(self):
            return None
        return self._chain.grid()

    def _check_input(self, x):
        """TypeError for an integer input (weights rounded to ints, NaN grids);
        RuntimeError under ``torch.jit.trace`` or ``torch.export`` but for the
        ``float`` runtime (the kernels run outside torch's ops: a trace would
        hold this input's output as a constant)."""
        if not x.dtype.is_floating_point:
            kind = type(self).__name__
            raise TypeError(f"{kind} takes floating-point inputs, got {x.dtype}.")
        if self.runtime != "float" and (torch.jit.is_tracing() or _is_exporting()):
            raise RuntimeError(
                f"{type(self).__name__} (runtime={self.runtime!r}) cannot be traced "
                "by torch.jit.trace or torch.export: its kernels run outside "
                "torch's operators, so a trace would hold this input's output. "
                "Quantize or load the model with runtime='float' to trace or "
                "export it, or use skquant.torch.export_onnx."
            )

    def _float_weight_for(self, x):
        # (an empty batch takes this path by design: nothing to announce; nor
        # does a float32 CPU input, which comes here for reasons said elsewhere)
        if (
            self.runtime != "float"
            and not self._wants_grad(x)
            and x.numel()
            and (x.dtype != torch.float32 or x.device.type != "cpu")
        ):
            announce(
                ("input", type(self).__name__, str(x.dtype), x.device.type),
                f"{type(self).__name__}: no integer kernel for {x.dtype} inputs on "
                f"{x.device.type}; the layer dequantizes its codes in every forward.",
            )
        return self._dequantized(x.dtype, x.device)


class QuantLinear(QuantMixin, nn.Linear):
    """``nn.Linear`` that holds its weight as codes and computes from them.

    Built by :func:`~skquant.torch.quantize_model`; weight-only it computes the
    function of an ``nn.Linear`` with the dequantized weights (to float32
    rounding); see :mod:`skquant.torch._qlayers` for the runtimes.
    """

    def _weight_shape(self):
        return (self.out_features, self.in_features)

    @classmethod
    def from_float(cls, module, tensor, runtime="auto"):
        """Copy ``module`` with the weights of ``tensor`` (a QuantizedTensor)."""
        new = nn.utils.skip_init(  # no float weight made, only to be dropped
            cls,
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        return new._attach(module, tensor, runtime)

    def forward(self, input):
        x = input  # torch's layers name it so: ``layer(input=x)`` works
        if isinstance(x, torch.fx.Proxy):
            return fx_call(self, x)
        self._sync_scales()  # (weight_scale edited or swapped: held again)
        if x.is_quantized:  # a chained layer's outputs
            codes = self._chained_input(x, keep=True)
            if codes is not None and (y := self._int8_forward(codes, True)) is not None:
                return self._bias_grad(y)
            x = x.dequantize()  # (on another grid or kernel: its values)
        self._check_input(x)
        if self._grad_kernels(x):
            return self._bias_grad(KernelGrad.apply(x, self))
        return self._run(x, chain=True)  # (KernelGrad's run gives floats)

    def _run(self, x, chain=False):
        """The output on the kernels (``x`` without gradients; ``chain``: codes
        where chained) or simulated."""
        if self._runs_int8(x) and (y := self._try_int8(x, chain)) is not None:
            return self._bias_grad(y)
        if self._act_mode is not None:
            x = self._fake_input(x)
        if self._rt is not None and self._kernel_input(x):
            flat = x.detach().reshape(-1, self.in_features)
            y = torch.from_numpy(self._rt.matmul(flat.numpy(), gemm=_torch_gemm))
            if self.bias is not None:
                y += self.bias.detach().to(y.dtype)
            return self._bias_grad(y.reshape(*x.shape[:-1], self.out_features))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self._float_weight_for(x), bias)

    def _int8_forward(self, x, chain=False):
        """The product on torch's int8 GEMM, or ``None`` for an input it cannot
        take (the simulated path then says why); ``x``: float32, or ``uint8``
        codes on the input grid (a chain's); with ``chain``, on the next
        layer's codes where chained (fbgemm's ``quint8`` GEMM rounds them)."""
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            return None
        flat = x.detach().reshape(-1, self.in_features).contiguous()
        params, op = self._int8.params[0], torch.ops.quantized
        if self._act_mode == "dynamic":
            return op.linear_dynamic(
                flat, params, dynamic_reduce_range(self._largest_code)
            ).reshape(*x.shape[:-1], self.out_features)
        scale, zp = self._input_qparams(flat)
        # (fbgemm's quint8 GEMM resizes its output: not under torch's
        # deterministic algorithms)
        out = self._chain_out() if chain else None
        if out is not None and torch.are_deterministic_algorithms_enabled():
            out = None
        if flat.dtype in (torch.uint8, torch.quint8):  # (codes on the grid)
            if not flat.is_quantized:
                flat = torch._make_per_tensor_quantized_tensor(flat, scale, zp)
            flat = flat if out is not None else flat.dequantize()
        else:  # (the simulated path's values: NaN and inf take its codes)
            flat = grid_values(flat, scale, zp, kernel_bounds(self))
            if out is not None:
                flat = torch.quantize_per_tensor(flat, scale, zp, torch.quint8)
        if out is not None:  # (the chain's grid: its ReLU runs on the codes)
            y = op.linear(flat, params, *out)
        else:
            y = op.linear_with_input_q_dq_qweight_dq_output_fp32(
                flat, scale, zp, params
            )
        return y.reshape(*x.shape[:-1], self.out_features)


class QuantConvMixin(QuantMixin):
    #: whether an int8 run gives its output in torch's layout for a contiguous
    #: input (set where the model's forward calls ``.view`` on it)
    _contiguous_out = False

    def _weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @classmethod
    def from_float(cls, module, tensor, runtime="auto"):
        """Copy ``module`` with the weights of ``tensor`` (a QuantizedTensor)."""
        new = nn.utils.skip_init(  # no float weight made, only to be dropped
            cls,
            *conv_args(module),
            device=module.weight.device,
            dtype=module.weight.dtype,
            **conv_kwargs(module),
        )
        return new._attach(module, tensor, runtime)

    def forward(self, input):  # torch's layers name it so: ``layer(input=x)``
        return self._forward(input, chain=True)

    def _forward(self, x, chain):
        if isinstance(x, torch.fx.Proxy):
            return fx_call(self, x)
        self._sync_scales()  # (weight_scale edited or swapped: held again)
        if x.is_quantized:  # a chained layer's outputs
            codes = self._chained_input(x)
            if codes is not None and (y := self._int8_forward(codes, True)) is not None:
                y = self._bias_grad(y)  # (codes only where no gradient is needed)
                return y.contiguous() if self._contiguous_out else y
            x = x.dequantize()  # (on another grid or kernel: its values)
        self._check_input(x)
        if x.dim() == len(self.kernel_size) + 1:  # unbatched, as torch's take it
            # (floats: qnnpack's quantized pooling refuses one image's codes)
            return self._forward(x.unsqueeze(0), False).squeeze(0)
        if self._grad_kernels(x):
            y = self._bias_grad(KernelGrad.apply(x, self))
        else:
            y = self._run(x, chain=chain)  # (KernelGrad's run gives floats)
        # (int8 outputs are laid out as the kernel gives them, channels last,
        # and so is what a layer computes from them, unless .view reads it:
        # torch's layout for a contiguous input everywhere cost 2x to 3x the
        # forward's time on the benchmarks); a hook, which may .view it, gets
        # torch's layout
        hooked = self._forward_hooks or global_hooks()
        return y.contiguous() if self._contiguous_out or hooked else y

    def _run(self, x, chain=False):
        """The output on the int8 kernels (``x`` without gradients; ``chain``:
        codes where chained) or simulated."""
        if self._runs_int8(x) and (y := self._try_int8(x, chain)) is not None:
            return self._bias_grad(y)
        if self._act_mode is not None:
            x = self._fake_input(x)
        if self._kernel_input(x) and self.runtime != "float" and self._int8 is None:
            w = self._dequantized(x.dtype, x.device)
        else:  # (a float64 input of int8 kernels: said, as by a Linear)
            w = self._float_weight_for(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, w, bias)  # (laid out as x is)

    def _int8_forward(self, x, chain=False):
        """The convolution on the integer kernels (:mod:`._int8`), or ``None``
        for an input it cannot take (torch's own layer then says why); with
        ``chain``, on the next layer's codes where chained."""
        if x.dim() != len(self.kernel_size) + 2 or x.shape[1] != self.in_channels:
            return None
        if min(output_sizes(self, x)) < 1:
            return None  # (an input smaller than the kernel)
        x = x.detach()
        scale, zp = self._input_qparams(x)  # (padding adds no value outside x's)
        pads = kernel_padding(self)[1]
        if pads is not None:  # padded as torch's layer pads, the kernel not
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, pads, mode=mode)
        bounds = kernel_bounds(self)
        if len(self.kernel_size) == 1:  # a Conv1d is a Conv2d of height 1
            return self._int8.conv(x.unsqueeze(2), scale, zp, bounds).squeeze(2)
        out = self._chain_out() if chain else None
        return self._int8.conv(x, scale, zp, bounds, out)


class QuantConv1d(QuantConvMixin, nn.Conv1d):
    """``nn.Conv1d`` that holds its weight as codes.

    Built by :func:`~skquant.torch.quantize_model`.
    """


class QuantConv2d(QuantConvMixin, nn.Conv2d):
    """``nn.Conv2d`` that holds its weight as codes.

    Built by :func:`~skquant.torch.quantize_model`.
    """


_QUANT_CLASSES = (
    (nn.Linear, QuantLinear),
    (nn.Conv1d, QuantConv1d),
    (nn.Conv2d, QuantConv2d),
)


def quantized_module(module, tensor, runtime="auto", name=None):
    """The quantized twin of a Linear/Conv1d/Conv2d layer holding ``tensor``.

    ``runtime`` is one of :data:`~._runtimes.RUNTIMES` (a dict is resolved by
    the caller); an error names the layer ``name``.
    """
    for float_cls, quant_cls in _QUANT_CLASSES:
        if isinstance(module, float_cls):
            try:
                return quant_cls.from_float(module, tensor, runtime)
            except ValueError as exc:
                if name is None:
                    raise
                raise ValueError(f"layer {name!r}: {exc}") from exc
    raise TypeError(f"no quantized layer for {type(module).__name__}.")
