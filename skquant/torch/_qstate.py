"""A quantized layer's stored form: its :class:`~skquant.QuantizedTensor`, the
file entry of its codes, and its ``state_dict`` (packed codes, scales, the
alphabet and activation mode as extra state), loaded into a layer of any
runtime."""

import dataclasses

import numpy as np
import torch

from .._tensor._alphabets import Alphabet
from .._tensor._bits import pack_codes
from .._tensor._io import _tensor_entry, tensor_from
from .._tensor._qtensor import QuantizedTensor
from ._fake import functorch_wrapped
from ._layout import size_mismatches, to_numpy

__all__ = ["StoredForm"]


class StoredForm:
    """The stored form of :class:`~._qlayers.QuantMixin`'s layers (a base
    class: its methods read the layer's held form, ``_rt``, ``_int8``,
    ``_float_tensor`` or ``_codes``, and give it back through ``_set_tensor``)."""

    def quantized_tensor(self):
        """The layer's :class:`~skquant.QuantizedTensor` (``(n_in, n_out)`` layout).

        Returns
        -------
        qt : QuantizedTensor
            The codes this layer holds, with ``weight_scale``.
        """
        self._sync_scales()
        return self._held_tensor()

    #: copies of ``weight_scale`` and ``weight_zero_point`` (or ``None``) as the
    #: held form took them (``None``: the float runtime, which reads the buffers)
    _held_scales = None

    def _scale_tensors(self):
        """``weight_scale`` and ``weight_zero_point`` (or ``None``): buffers, or
        parameters (a scale being learned)."""
        return tuple(
            self._buffers.get(k, self._parameters.get(k))
            for k in ("weight_scale", "weight_zero_point")
        )

    def _scale_copies(self):
        """Copies of ``weight_scale`` and ``weight_zero_point`` as held now."""
        return tuple(
            None if t is None else t.detach().clone() for t in self._scale_tensors()
        )

    def _sync_scales(self):
        """Hold the codes again with ``weight_scale`` and ``weight_zero_point``
        where their values differ from those the layer took (an edit in place,
        through ``.data`` or NumPy included, another tensor put there): the
        ``packed`` and ``int8`` forms hold their own copies, and ``state_dict``
        and files write the buffers. Every forward calls it: the unchanged case
        is one comparison of the scales, and a copy of the same values holds
        nothing again. A tensor that needs gradients gives its
        values (the kernels give it no gradient: the float runtime does)."""
        held = self._held_scales
        if held is None:
            return
        now = self._scale_tensors()
        for t in now:
            if t is not None and (
                type(t) not in (torch.Tensor, torch.nn.Parameter)  # (fake tensors)
                or t.is_meta
                or functorch_wrapped(t)
            ):
                return  # (no values to hold: a trace's, a transform's)
        if all(_same(t, h) for t, h in zip(now, held)):
            return
        scale, zp = (None if t is None else t.detach() for t in now)
        steps = to_numpy(scale).astype(np.float64).reshape(-1)
        bad = np.flatnonzero(~(np.isfinite(steps) & (steps > 0)))
        if bad.size:  # (the held form is kept: a fixed scale is held next call)
            raise ValueError(
                f"{type(self).__name__}.weight_scale must hold finite steps > 0 for "
                f"its {self.runtime!r} runtime, got {steps[bad[:4]].tolist()} at "
                f"{bad[:4].tolist()}: only runtime='float' reads other values."
            )
        qt = dataclasses.replace(
            self._held_tensor(),
            scale=to_numpy(scale).copy(),
            zero_point=None if zp is None else to_numpy(zp).copy(),
        )
        self._hold(qt)

    def _held_tensor(self):
        """The tensor of the form the layer holds (its scales as taken)."""
        if self._rt is not None:
            return self._rt.tensor()
        if self._int8 is not None:
            return self._int8.tensor()
        if self._float_tensor is not None:
            return self._float_tensor
        return tensor_from(*self.stored_entry(), type(self).__name__)

    def stored_entry(self):
        """``(header entry, arrays)`` of the layer's codes as a file stores them
        (``Writer.entry``), packed once from the form the layer holds."""
        if self._rt is not None:
            return self._rt.entry()
        if self._int8 is not None or self._float_tensor is not None:
            return _tensor_entry(self.quantized_tensor())
        meta = dict(
            self._qmeta, shape=[int(np.prod(self._wshape[1:])), self._wshape[0]]
        )
        meta["zero_point"] = "weight_zero_point" in self._buffers
        record = Alphabet(meta["alphabet"], meta["qmin"], meta["qmax"], meta["n_bits"])
        codes = np.ascontiguousarray(to_numpy(self._codes).T)
        stored, qmin = record.stored(codes)
        arrays = {
            "codes": pack_codes(stored, meta["n_bits"], qmin),
            "scale": to_numpy(self.weight_scale),
        }
        if meta["zero_point"]:
            arrays["zero_point"] = to_numpy(self.weight_zero_point)
        return meta, arrays

    def _dequantize_codes(self):
        """The float runtime's weight: ``(codes - zero_point) * scale`` on its device.

        Computed in the tensor's float dtype, as :meth:`QuantizedTensor.dequantize`.
        """
        name = self._qmeta.get("float_dtype")
        tdtype = (
            self.weight_scale.dtype
            if name is None
            else torch.from_numpy(np.empty(0, np.dtype(name))).dtype
        )
        info = torch.finfo(tdtype)
        level = self.weight_scale.to(tdtype)
        level = torch.where(level >= info.tiny, level, torch.full_like(level, info.eps))
        codes = self._codes.to(tdtype)
        if "weight_zero_point" in self._buffers:
            codes = codes - self.weight_zero_point.to(tdtype).reshape(-1, 1)
        return (codes * level.reshape(-1, 1)).reshape(self._wshape)

    def _apply(self, fn, recurse=True):
        """torch's ``_apply`` (``.half()``, ``.to()``), but the ``packed`` and
        ``int8`` runtimes keep ``weight_scale``, ``weight_zero_point`` and
        ``input_scale`` in their dtype (moved, not cast): their kernels compute
        with the scales as held, and ``state_dict`` must give those back
        (``.half().float()`` moved a static input grid by up to 0.4%). The
        layer's dtype and device follow the cast (``weight`` is read in them),
        and on a cast to float32 or float64 on the CPU the layer chooses its
        runtime again (a float64 model cast to float32 runs the int8 GEMM; a
        weight-only one loaded in float16 and cast back, its kernels)."""
        kept = {}
        if self._rt is not None or self._int8 is not None:
            for key in ("weight_scale", "weight_zero_point", "input_scale"):
                if self._buffers.get(key) is not None:
                    kept[key] = self._buffers[key]
        before = getattr(self, "_wdtype", None)
        out = super()._apply(fn, recurse)
        for key, old in kept.items():
            new = self._buffers.get(key)
            if new is not None and new.dtype != old.dtype:
                self._buffers[key] = old.to(new.device)
        device = getattr(self, "_device", None)
        try:
            probe = fn(torch.empty(0, dtype=before or torch.float32, device=device))
        except Exception:  # (a function for the module's tensors only)
            probe = None
        if probe is not None and before is not None and probe.dtype.is_floating_point:
            self._device = probe.device
            if probe.dtype != before:
                self._wdtype = probe.dtype
                if probe.device.type == "cpu" and probe.dtype in (
                    torch.float32,
                    torch.float64,
                ):
                    self._hold(self.quantized_tensor())
        return out

    # -- state ----------------------------------------------------------------

    _STORED = ("weight_packed", "weight_codes", "weight_bits")
    _SIZED = ("weight_scale", "weight_zero_point", "input_scale", "input_zero_point")

    def get_extra_state(self):
        """The alphabet and the activation mode (plain values: ``weights_only``)."""
        state = dict(self._qmeta)
        state["activations"] = None
        if self._act_mode is not None:
            state["activations"] = dict(self._act_meta or {}, mode=self._act_mode)
        return state

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if torch.onnx.is_in_onnx_export():  # (torch's TorchScript exporter reads
            # every entry as a tensor: the extra state, a dict, stopped it)
            destination.pop(prefix + "_extra_state", None)
        qt = self.quantized_tensor()
        if qt.precision_bits is not None:
            for key, a in (
                ("weight_codes", qt.codes),
                ("weight_bits", qt.precision_bits),
            ):
                rows = np.ascontiguousarray(a.T).reshape(self._wshape)
                destination[prefix + key] = torch.from_numpy(rows)
        else:
            destination[prefix + "weight_packed"] = torch.from_numpy(qt.pack())

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
    ):
        stored = {
            k: state_dict[prefix + k] for k in self._STORED if prefix + k in state_dict
        }
        if stored and (mismatched := size_mismatches(self, state_dict, prefix)):
            errors.extend(mismatched)  # (torch raises them all; nothing changed)
            return
        if stored:
            self._pending = stored
            if "weight" in self._parameters:  # a fresh layer: its float weight goes
                w = self._parameters.pop("weight")
                self._wdtype, self._device = w.dtype, w.device
                self._wshape = tuple(self._weight_shape())
            for key in self._SIZED:
                value = state_dict.get(prefix + key)
                self._buffers.pop(key, None)
                if value is not None:
                    self.register_buffer(
                        key, torch.empty_like(value, device=self._device)
                    )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing, unexpected, errors
        )
        for k in stored:
            if prefix + k in unexpected:
                unexpected.remove(prefix + k)

    def set_extra_state(self, state):
        """Take the alphabet, activation mode and codes of a loaded state."""
        state = dict(state)
        act = state.pop("activations", None)
        self._qmeta = state
        stored = self.__dict__.pop("_pending", {})
        shape = [int(np.prod(self._wshape[1:])), self._wshape[0]]
        scale = to_numpy(self.weight_scale)
        if "weight_bits" in stored:
            rows = [
                to_numpy(stored[k]).reshape(shape[1], -1).T
                for k in ("weight_codes", "weight_bits")
            ]
            qt = QuantizedTensor(
                codes=np.ascontiguousarray(rows[0]),
                scale=scale,
                n_bits=state["n_bits"],
                qmin=state["qmin"],
                qmax=state["qmax"],
                alphabet=state["alphabet"],
                precision_bits=np.ascontiguousarray(rows[1]),
                group_size=state.get("group_size"),
                map_coder=state.get("map_coder", "auto"),
                payload_coder=state.get("payload_coder", "range"),
            )
        else:
            meta = dict(state, shape=shape)
            meta["zero_point"] = "weight_zero_point" in self._buffers
            arrays = {"codes": to_numpy(stored["weight_packed"]), "scale": scale}
            if meta["zero_point"]:
                arrays["zero_point"] = to_numpy(self.weight_zero_point)
            qt = tensor_from(meta, arrays, type(self).__name__)
        if act is None:
            self._act_mode, self._act_meta = None, None
        else:
            act = dict(act)
            self._act_mode = act.pop("mode")
            self._act_meta = act or None
        self._set_tensor(qt)


def _same(t, held):
    """Whether buffer ``t`` holds the values of the copy ``held`` (both ``None``)."""
    if t is None or held is None:
        return t is held
    return (
        t.shape == held.shape
        and t.dtype == held.dtype
        and t.device == held.device
        and torch.equal(t.detach(), held)
    )
