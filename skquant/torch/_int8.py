"""torch's int8 kernels for quantized layers: prepacked weights and input grids.

The CPU's fastest integer product in torch is the quantized linear operator
(fbgemm / x86): ``uint8`` inputs times ``int8`` weights, accumulated in int32,
rescaled to float. Its weights live in a prepacked object; :class:`Int8Weights`
holds them (one per group of a grouped convolution) and gives the
:class:`~skquant.QuantizedTensor` back. The dynamic input grid
(:func:`fake_dynamic`) is the one the operator computes.

Convolutions run on oneDNN's quantized convolution where torch has it
(:class:`Int8Conv`: ``uint8`` inputs, ``int8`` weights, float32 outputs, all
groups in one call), else as GEMMs over their patches (:meth:`Int8Weights.conv`).
"""

import functools
import warnings
import weakref

import numpy as np
import torch
import torch.nn.functional as F

from .._tensor._alphabets import safe_scale
from .._tensor._qtensor import QuantizedTensor
from ._fake import straight_through
from ._rows import kernel_padding
from ._state import hooked

__all__ = [
    "ChainLink",
    "Int8Conv",
    "Int8Weights",
    "chained_codes",
    "chains",
    "kernel_bounds",
    "takes_codes",
    "int8_weights",
    "dynamic_reduce_range",
    "fake_dynamic",
    "grid_codes",
    "grid_values",
    "SIMULATED",
    "int8_gemm_available",
    "exact_pair_sums",
    "saturates_here",
    "int8_gemm_reason",
    "largest_code",
    "prepacked_nbytes",
]


def int8_gemm_available():
    """Whether this torch has the quantized linear operators."""
    return hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(
        torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32"
    )


#: what a fallback's message ends with
SIMULATED = "; its quantized input is simulated (put on its grid in float)."

#: torch's quantized engines (``torch.backends.quantized.engine``) whose
#: prepacked weights the int8 GEMM's operator runs on (fbgemm's); others
#: (``"qnnpack"``, the default of torch's ARM builds, ``"onednn"``) lack it
GEMM_ENGINES = ("x86", "fbgemm")


def engine_reason():
    """Why torch's quantized engine now cannot run the int8 GEMM (``None``: it
    can)."""
    engine = torch.backends.quantized.engine
    if engine in GEMM_ENGINES:
        return None
    return (
        f"torch's quantized engine is {engine!r}: the integer GEMM runs on "
        f"{GEMM_ENGINES[0]!r} or {GEMM_ENGINES[1]!r} "
        "(torch.backends.quantized.engine)"
    )


#: codes a group below which ``runtime="auto"`` runs a grouped convolution
#: weight-only where oneDNN's convolution does not serve it (GEMMs over its
#: patches, one a group): a prepacked object (some 5 kB) then outweighs the
#: group's codes
#: (a depthwise 3x3 group holds 9), where a few wide groups (groups=2 of a
#: 1024-channel conv) ran 20x slower weight-only at batch 1
SMALL_GROUP = 4096


def int8_gemm_reason(layer, tensor, runtime):
    """``(whether this layer runs torch's int8 GEMM, why not)``.

    The GEMM runs quantized activations of Linear layers and convolutions (a
    grouped one of small groups on GEMMs over its patches where
    ``runtime="int8"`` asks for it, not ``"auto"``): a
    per-tensor input grid of at most 8 bits, a fixed-width weight grid, float32.
    Otherwise the input is put on its grid (simulated) before a weight-only
    product, and the reason is given (``None`` when activations are float).
    """
    if layer._act_mode is None:
        return False, None
    if runtime == "packed":
        return False, "runtime='packed' runs weight-only kernels" + SIMULATED
    groups = getattr(layer, "groups", 1)
    small = groups > 1 and tensor.codes.size < SMALL_GROUP * groups
    if runtime == "auto" and small and not onednn_takes(tensor):
        return False, (
            f"runtime='auto' runs grouped convolutions of under {SMALL_GROUP} codes "
            "a group on weight-only kernels: the integer GEMM takes one prepacked "
            "object per group (some 5 kB each, however few its codes); "
            "runtime='int8' runs it" + SIMULATED
        )
    meta = layer._act_meta or {}
    if meta.get("n_bits", 8) > 8:
        return False, (
            f"the integer GEMM takes inputs of at most 8 bits, not "
            f"{meta['n_bits']}-bit ones" + SIMULATED
        )
    if saturates_here(layer):
        return False, (
            "8-bit inputs with weight codes above 64 in magnitude could saturate "
            "this CPU's integer kernels (without VNNI they sum pairs of uint8 x "
            "int8 products in int16); inputs of at most 7 bits, or "
            "activations='dynamic' (7-bit for such weights), run on them" + SIMULATED
        )
    if meta.get("per_channel"):
        return (
            False,
            "the integer GEMM takes one input scale, not per-feature ones" + SIMULATED,
        )
    if tensor.precision_bits is not None:
        return False, "per-parameter precision has no integer GEMM" + SIMULATED
    if getattr(layer, "_wdtype", torch.float32) != torch.float32:
        return (
            False,
            f"the integer GEMM runs float32, not {layer._wdtype}" + SIMULATED,
        )
    if not int8_gemm_available():
        return False, "this torch has no quantized int8 linear operator" + SIMULATED
    engine = engine_reason()
    if engine and not (hasattr(layer, "kernel_size") and onednn_takes(tensor)):
        return False, engine + SIMULATED  # (oneDNN's convolution runs on any)
    return True, None


def saturates_here(layer):
    """Whether ``layer``'s static 8-bit inputs times its weight codes (some
    beyond +-64) could leave int16 in a pair of products on this CPU's int8
    kernels (:func:`exact_pair_sums`)."""
    meta = layer._act_meta or {}
    wide = meta.get("n_bits", 7) == 8 and layer._largest_code > 64
    return wide and not exact_pair_sums()


@functools.cache
def exact_pair_sums():
    """Whether this CPU's int8 kernels (fbgemm's GEMM, oneDNN's convolution)
    sum 8-bit inputs times 8-bit weight codes exactly.

    x86 CPUs without VNNI sum pairs of ``uint8 x int8`` products in int16,
    which inputs of 255 times codes beyond +-64 saturate; VNNI's instruction
    sums them in int32. Run once a process: the kernels multiply the largest
    products (255 times 127 and -128, in pairs and alternating) and random
    codes, in the shapes the layers give them (a row and many; a 3x3, 1x1,
    depthwise and strided 7x7 convolution), and must give the integer sums.
    """
    gen = torch.Generator().manual_seed(0)

    def codes(*shape):
        w = torch.randint(-128, 128, shape, generator=gen, dtype=torch.int64)
        w[0], w[1] = 127, -128  # (every pair at its largest sum)
        w[2, ::2], w[2, 1::2] = 127, -128
        return w

    def qt(w):  # (n_out, n_in) codes as the layers hold them
        return QuantizedTensor(
            codes=w.T.numpy().astype(np.int8), scale=np.ones(1, np.float32),
            n_bits=8, qmin=-128, qmax=127,
        )  # fmt: skip

    def inputs(*shape):
        x = torch.randint(0, 256, shape, generator=gen).float()
        x[: max(1, len(x) // 2)] = 255.0
        return x

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gemm = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
            for n_in in (2, 64, 257):
                w = codes(16, n_in)
                params = Int8Weights(qt(w), None).params[0]
                for m in (1, 33):
                    x = inputs(m, n_in)
                    y = gemm(x, 1.0, 0, params)
                    if not torch.equal(y.double(), x.double() @ w.T.double()):
                        return False
            if not onednn_conv_available():
                return True
            for c_in, kernel, stride, groups in (
                (8, 3, 1, 1), (64, 1, 1, 1), (16, 3, 1, 16), (3, 7, 2, 1)
            ):  # fmt: skip
                w = codes(16, c_in // groups * kernel * kernel)
                geometry = ((kernel,) * 2, (stride,) * 2, (0, 0), (1, 1))
                conv = Int8Conv(qt(w), None, groups, geometry)
                x = inputs(2, c_in, 9, 9)
                y = conv.conv(x.to(torch.uint8), 1.0, 0, (0, 255))
                ref = F.conv2d(
                    x.double(), w.double().reshape(16, -1, kernel, kernel),
                    stride=stride, groups=groups,
                )  # fmt: skip
                if not torch.equal(y.double(), ref):
                    return False
    except RuntimeError:  # (a kernel this torch or CPU lacks: no claim)
        return False
    return True


class _Prepacked:
    """What the prepacked forms share: the bias they were packed with, and what
    rebuilds the :class:`QuantizedTensor` beside its codes."""

    def _keep(self, qt, bias):
        # the kernel reads this bias's memory (no copy; a strided bias is copied:
        # -1, never the layer's): the layer checks that its own bias is still
        # that memory (see ``QuantMixin._bias_linked``)
        self.bias_ptr = (
            None if bias is None else bias.data_ptr() if bias.is_contiguous() else -1
        )
        self._meta = {
            "alphabet": qt.alphabet,
            "n_bits": int(qt.n_bits),
            "qmin": int(qt.qmin),
            "qmax": int(qt.qmax),
            "scale": np.array(qt.scale, copy=True),
            "zero_point": None if qt.zero_point is None else np.array(qt.zero_point),
            "float_dtype": qt.float_dtype,
            "codes_dtype": qt.codes.dtype,
        }

    def _rebuilt(self, codes):
        """The :class:`QuantizedTensor` of ``codes`` (``(n_out, n_in)``)."""
        m = self._meta
        return QuantizedTensor(
            codes=np.ascontiguousarray(codes.T).astype(m["codes_dtype"]),
            scale=m["scale"],
            n_bits=m["n_bits"],
            qmin=m["qmin"],
            qmax=m["qmax"],
            alphabet=m["alphabet"],
            zero_point=m["zero_point"],
            float_dtype=m["float_dtype"],
        )


class Int8Weights(_Prepacked):
    """Weights in torch's prepacked int8 form, for ``int8 x int8`` products.

    Holds the prepacked weights (one byte per weight, inside torch), one block of
    output columns per group (a grouped convolution), and what rebuilds the
    :class:`QuantizedTensor`; pickles as that tensor.
    """

    def __init__(self, qt, bias, groups=1, geometry=None):
        self.geometry = geometry
        self._set(qt, bias, groups)

    def _set(self, qt, bias, groups):
        codes = np.ascontiguousarray(qt.codes.T).astype(np.int64)
        n_out = codes.shape[0]
        zp = np.zeros(n_out)
        if qt.zero_point is not None:
            zp[:] = np.broadcast_to(np.asarray(qt.zero_point, np.float64), zp.shape)
        shift = 0
        if codes.size and (codes.max() > 127 or codes.min() < -128):
            shift = 128  # an unsigned 8-bit grid: codes and zero points move down
        scale = np.broadcast_to(safe_scale(qt.scale, np.float64), (n_out,)).copy()
        per = n_out // groups
        self.params = []
        with warnings.catch_warnings():
            # quantized tensors are the only door to torch's int8 GEMM on CPU
            warnings.simplefilter("ignore")
            for g in range(groups):
                rows = slice(g * per, (g + 1) * per)
                q = torch._make_per_channel_quantized_tensor(
                    torch.from_numpy((codes[rows] - shift).astype(np.int8)),
                    torch.from_numpy(scale[rows].copy()),
                    torch.from_numpy((zp[rows] - shift).astype(np.int64)),
                    0,
                )
                b = None if bias is None else bias[rows].contiguous()
                self.params.append(torch.ops.quantized.linear_prepack(q, b))
        # the engine it was packed under where the GEMM runs on it (an int:
        # compared in every forward), else None
        self.engine_id = None if engine_reason() else torch._C._get_qengine()
        self._keep(qt, bias)
        self._meta["shift"] = shift
        self.nbytes = prepacked_nbytes(per, codes.shape[1], groups)

    def _unpacked(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = [torch.ops.quantized.linear_unpack(p) for p in self.params]
        codes = np.concatenate([q.int_repr().numpy() for q, _ in parts])
        biases = [b for _, b in parts]
        bias = None if biases[0] is None else torch.cat(biases)
        return codes.astype(np.int64) + self._meta["shift"], bias

    def tensor(self):
        return self._rebuilt(self._unpacked()[0])

    def conv(self, x, scale, zp, bounds, out=None):
        """A convolution's output (``geometry``: see :func:`int8_weights`) as
        int8 GEMMs over its patches (``unfold``), one per group, on the input
        grid ``(scale, zp)`` of codes in ``bounds`` (``x``: a Conv2d's input).
        float32 outputs only (``out``: ``None``, as :meth:`Int8Conv.conv` takes
        it)."""
        if out is not None:
            raise ValueError(f"the GEMMs give float32 outputs only, got out={out!r}")
        x = grid_codes(x, scale, zp, bounds).sub_(zp).mul_(scale)
        kernel, stride, padding, dilation = self.geometry
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
        n, _, n_pos = cols.shape
        per = cols.shape[1] // len(self.params)
        outs = []
        for g, params in enumerate(self.params):
            a = cols[:, g * per : (g + 1) * per, :].transpose(1, 2).reshape(-1, per)
            y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                a.contiguous(), scale, zp, params
            )
            outs.append(y.reshape(n, n_pos, -1))
        y = torch.cat(outs, dim=2).transpose(1, 2)
        size = [
            (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1)
            // stride[i]
            + 1
            for i in range(2)
        ]
        return y.reshape(n, y.shape[1], *size)

    def __getstate__(self):
        return {
            "tensor": self.tensor(),
            "bias": self._unpacked()[1],
            "groups": len(self.params),
            "geometry": self.geometry,
        }

    def __setstate__(self, state):
        self.geometry = state.get("geometry")
        self._set(state["tensor"], state["bias"], state.get("groups", 1))


def grid_codes(x, scale, zp, bounds):
    """``x``'s codes on the grid ``(scale, zp)`` of codes in ``bounds`` (a new
    float tensor; a NaN takes the lowest code): ``round(x / scale) + zp``
    clamped, in place after the division (not a fresh tensor a step, each an
    allocation of the activation's size)."""
    q = x / scale
    return q.round_().add_(zp).clamp_(*bounds).nan_to_num_(nan=float(bounds[0]))


def grid_values(x, scale, zp, bounds):
    """``x`` put on the grid ``(scale, zp)`` of codes in ``bounds`` (a new
    tensor): the values ``(code - zp) * scale`` that the simulated path gives
    (``QuantMixin._fake_input``: NaN stays NaN, a zero's sign may differ), in
    four passes (nine there), for a GEMM that reads the codes back from them."""
    lo, hi = bounds
    return (x / scale).round_().clamp_(lo - zp, hi - zp).mul_(scale)


class ChainLink:
    """Where a chained layer's outputs go (:func:`~._chain.chain_int8`): the
    modules between and the next quantized layer, read at each call.

    It holds them weakly and is not copied: a layer pickled, copied or saved,
    alone or in its model, comes unchained (a copy of one layer carried a
    hidden copy of its whole model, and gave codes wherever it was put);
    ``chain_int8`` chains a copy again."""

    def __init__(self, between, consumer, parent, keys):
        # the container and the names the chain's modules were found under: a
        # module put in their place later breaks the chain
        self._refs = tuple(weakref.ref(m) for m in (*between, consumer, parent))
        self.keys = tuple(keys)

    def __reduce__(self):
        return _unchained, ()

    def grid(self):
        """The next layer's input grid ``(scale, zero point)`` on the kernel's
        unsigned 8 bits, as it is now (a ``load_state_dict`` may have changed
        it), or ``None`` where the chain does not run now: hooks on a module
        between or on the next layer (they would see codes), a dropout in train
        mode (Monte-Carlo dropout), a grid not static per tensor of at most 8
        bits, a module of the chain gone or another in its place, the module
        that holds them in train mode (its forward may take another path)."""
        *modules, parent = (r() for r in self._refs)
        if (
            parent is None
            or parent.training
            or any(
                m is None or parent._modules.get(k) is not m
                for k, m in zip(self.keys, modules)
            )
        ):
            return None  # (a module swapped in since chain_int8: floats)
        for m in modules:
            if hooked(m) or (isinstance(m, torch.nn.Dropout) and m.training):
                return None
        return takes_codes(modules[-1])


def _unchained():
    return None


def kernel_bounds(layer):
    """The input codes' range of quantized ``layer`` on the kernel's unsigned 8
    bits."""
    if layer._act_mode == "static":  # the grid's codes, moved to unsigned
        shift = max(-layer._act_meta["qmin"], 0)
        return (layer._act_meta["qmin"] + shift, layer._act_meta["qmax"] + shift)
    return (0, 127 if dynamic_reduce_range(layer._largest_code) else 255)


def chains(layer):
    """Whether quantized ``layer``'s int8 kernel runs on static input codes
    now (the ends of a chain): oneDNN's 2-D convolution, or torch's GEMM in
    one group (a Linear)."""
    w = layer._int8
    if layer._act_mode != "static" or w is None:
        return False
    if isinstance(layer, torch.nn.Linear):
        ok = type(w) is Int8Weights and len(w.params) == 1 and layer._engine_ready()
    else:
        ok = isinstance(w, Int8Conv) and len(layer.kernel_size) == 2
        alike = layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
        ok = ok and (alike or kernel_padding(layer)[1] is None)  # (the same pads)
    return ok and layer._bias_linked()


def takes_codes(layer):
    """The input grid ``(scale, zero point)`` on the kernel's unsigned 8 bits
    that quantized ``layer`` takes codes on (``None``: it takes none)."""
    meta = layer._act_meta
    if layer._act_mode != "static" or meta["per_channel"] or meta["n_bits"] > 8:
        return None
    return layer._input_qparams(None)


def chained_codes(x, scale, zp, bounds, keep=False):
    """The ``uint8`` codes of ``x``, a ``quint8`` tensor a chained layer gave
    (:func:`~._chain.chain_int8`), where its grid is ``(scale, zp)``, clamped to
    ``bounds`` (a narrower grid than the kernel's 0..255); ``None`` where it is
    on another grid. ``keep``: ``x`` itself where the bounds are 0..255."""
    if (
        x.dtype != torch.quint8
        or x.qscheme() != torch.per_tensor_affine
        or x.q_scale() != scale
        or x.q_zero_point() != zp
    ):
        return None
    if keep and tuple(bounds) == (0, 255):
        return x
    q = x.int_repr()  # (a copy: a uint8 view of a quint8 tensor keeps the
    # quantized dispatch, and the kernel crashed on one not dense channels last)
    return q if tuple(bounds) == (0, 255) else q.clamp_(*bounds)


def onednn_conv_available():
    """Whether this torch has oneDNN's quantized convolution operators."""
    ops = torch.ops.onednn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "qconv_prepack")
        and hasattr(ops, "qconv2d_pointwise")
    )


def int8_weights(qt, bias, layer):
    """The integer kernels' form of ``qt`` (and ``bias``) for ``layer``: for a
    convolution (its geometry ``(kernel, stride, padding, dilation)`` in pairs,
    a Conv1d's as a Conv2d's of height 1), :class:`Int8Conv` where oneDNN's
    convolution runs (signed 8-bit codes without zero points), else
    :class:`Int8Weights`."""
    groups, geometry = getattr(layer, "groups", 1), None
    if hasattr(layer, "kernel_size"):  # (other padding: see kernel_padding)
        one_d = len(layer.kernel_size) == 1
        padding = kernel_padding(layer)[0]
        geometry = tuple(
            (unit, v[0]) if one_d else tuple(v)
            for v, unit in zip(
                (layer.kernel_size, layer.stride, padding, layer.dilation),
                (1, 1, 0, 1),
            )
        )
    if geometry is not None:
        return _int8_conv(qt, bias, groups, geometry)
    return Int8Weights(qt, bias, groups, geometry)


def onednn_takes(qt):
    """Whether oneDNN's convolution takes ``qt``'s codes: signed 8-bit ones
    without zero points, where torch has it."""
    zp = qt.zero_point
    signed = qt.qmin >= -128 and qt.qmax <= 127
    return (
        signed
        and (zp is None or not np.any(np.asarray(zp)))
        and onednn_conv_available()
    )


class Int8Conv(_Prepacked):
    """A convolution's weights in oneDNN's prepacked int8 form (all groups in one
    object, about a byte a code): ``uint8`` inputs on a per-tensor grid, float32
    outputs, the bias added by the kernel. Same interface as
    :class:`Int8Weights`."""

    def __init__(self, qt, bias, groups, geometry):
        self.geometry, self.groups, self.bias = geometry, groups, bias
        self._keep(qt, bias)
        if bias is not None and not bias.is_contiguous():
            self.bias = bias.contiguous()
        kernel = geometry[0]
        codes = np.ascontiguousarray(qt.codes.T).astype(np.int8)
        n_out = codes.shape[0]
        self.scale = torch.from_numpy(
            np.broadcast_to(safe_scale(qt.scale, np.float64), (n_out,)).copy()
        )
        self.zero_points = torch.zeros(n_out, dtype=torch.int64)
        weight = torch.from_numpy(codes).reshape(n_out, -1, *kernel)
        _, stride, padding, dilation = (list(v) for v in geometry)
        self.weight = torch.ops.onednn.qconv_prepack(
            weight, self.scale, 1.0, 0, stride, padding, dilation, groups, None
        )
        self.nbytes = onednn_nbytes(n_out, codes.shape[1])

    def conv(self, x, scale, zp, bounds, out=None):
        """The convolution of ``x`` (a Conv2d's input, float32, or its ``uint8``
        codes) on the input grid ``(scale, zp)`` of codes in ``bounds``
        (:func:`grid_codes`): float32 outputs, or with ``out`` (a grid ``(scale,
        zero point)``) a ``quint8`` tensor of the outputs on it, rounded and
        clamped to 0..255 by the kernel (:func:`~._chain.chain_int8`)."""
        q = x if x.dtype == torch.uint8 else grid_codes(x, scale, zp, bounds)
        _, stride, padding, dilation = (list(v) for v in self.geometry)
        o_scale, o_zp, o_dtype = (
            (1.0, 0, torch.float32) if out is None else (*out, None)
        )
        y = torch.ops.onednn.qconv2d_pointwise(
            q.to(torch.uint8), scale, zp, self.weight, self.scale, self.zero_points,
            self.bias, stride, padding, dilation, self.groups, o_scale, o_zp, o_dtype,
            "none", [], "",
        )  # fmt: skip
        if out is None:
            return y
        return torch._make_per_tensor_quantized_tensor(y, o_scale, o_zp)

    def tensor(self):
        return self._rebuilt(
            self.weight.to_dense().reshape(self.weight.shape[0], -1).numpy()
        )

    def __reduce__(self):  # rebuilt where oneDNN runs, else as GEMMs
        args = (self.tensor(), self.bias, self.groups, self.geometry)
        return _int8_conv, args


def _int8_conv(qt, bias, groups, geometry):
    """:class:`Int8Conv` where this torch and CPU run it, else :class:`Int8Weights`
    (an unpickled or copied layer on another machine)."""
    if onednn_takes(qt):
        try:
            return Int8Conv(qt, bias, groups, geometry)
        except RuntimeError:
            pass
    return Int8Weights(qt, bias, groups, geometry)


#: bytes of one prepacked object beside its packed codes (torch's and fbgemm's
#: objects, the tensors they are made of, column offsets), measured as resident
#: memory on x86: 8192 groups of a 3x3 depthwise W4A7 convolution held 5.75 kB
#: each (this estimate: 5.7 kB); single objects, 4.2 to 4.6 kB
PREPACKED_OBJECT_BYTES = 5120


def prepacked_nbytes(n_out, n_in, groups=1):
    """Estimated bytes held by ``groups`` prepacked ``(n_out, n_in)`` weights.

    fbgemm packs the inputs in runs of 4 and the outputs in blocks of 48 columns
    on AVX-512 (8 on AVX2), a code a byte, padding both; each object costs
    :data:`PREPACKED_OBJECT_BYTES` more, and 12 bytes an output (scale, zero
    point, column offset). A one-output group of 9 codes (a 3x3 depthwise
    channel) holds some 5.7 kB.
    """
    block = 8 if torch.backends.cpu.get_cpu_capability() == "AVX2" else 48
    padded = -(-n_in // 4) * 4 * (-(-n_out // block) * block)
    return int(groups * (padded + 12 * n_out + PREPACKED_OBJECT_BYTES))


def onednn_nbytes(n_out, n_in):
    """Estimated bytes held by oneDNN's prepacked ``(n_out, n_in)`` int8 weights:
    the codes (inputs padded to runs of 4), 32 bytes an output (scales,
    compensation) and 2 kB an object: 1.00 to 1.02 times the bytes malloc gave
    them for 512 x 4608, 64 x 576 and 256 x 64 codes, 1.17 for a 1024-channel
    3x3 depthwise convolution, and 0.55 to 0.92 for narrow ones (a grouped 32 ->
    64, a 7x7 or 3x3 stem of 3 channels, 1x1 16 -> 24: oneDNN pads the channels
    at each kernel offset; ``benchmarks/bench_int8_conv_bytes.py``)."""
    return int(n_out * (-(-n_in // 4) * 4) + 32 * n_out + 2048)


def largest_code(qt):
    """Largest ``|code - zero_point|`` of ``qt`` (what the integer products see)."""
    codes = np.asarray(qt.codes)
    if codes.size == 0:
        return 0
    # per column, in the codes' own dtype: no copy of them
    hi, lo = codes.max(axis=0).astype(np.int64), codes.min(axis=0).astype(np.int64)
    if qt.zero_point is not None:
        zp = np.broadcast_to(np.asarray(qt.zero_point, np.int64), hi.shape)
        hi, lo = hi - zp, lo - zp
    return int(max(np.abs(hi).max(), np.abs(lo).max()))


def dynamic_reduce_range(largest_code):
    """Whether dynamic int8 activations use 7 bits (codes above 64 in magnitude).

    x86's ``uint8 x int8`` pair products are summed in int16: with 8-bit inputs
    and weights above 64 in magnitude the sums could saturate, so the inputs then
    take 7 bits, as torch's own dynamic quantization does.
    """
    return largest_code > 64


def fake_dynamic(x, reduce_range):
    """``x`` on the per-call (per-tensor) 8-bit grid of the dynamic int8 kernel.

    The grid spans the finite values; NaN and inf entries stay as they are, so
    they reach the outputs they reach in the float model and no other (one NaN
    made every sample of the batch NaN). Gradients pass straight through.
    """
    top = 127 if reduce_range else 255
    if x.numel() == 0:  # no value, no grid
        return x
    lo, hi = x.min().detach(), x.max().detach()
    finite = None
    if not bool(torch.isfinite(lo + hi)):  # (a NaN or inf in x)
        finite = torch.isfinite(x)
        values = x.detach()[finite]
        if values.numel() == 0:
            return x
        lo, hi = values.min(), values.max()
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo) / top
    if float(scale) == 0.0:
        return x
    zp = torch.clamp(torch.round(-lo / scale), 0, top)
    y = (torch.clamp(torch.round(x / scale) + zp, 0, top) - zp) * scale
    if finite is not None:
        y = torch.where(finite, y, x)
    # (the grid spans every finite value: their gradients pass straight through)
    return straight_through(x, y)
