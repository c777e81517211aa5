"""What a whole-network quantization returns: the per-layer report and the result
record.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LayerQuantization", "QuantizationReport"]


@dataclass
class QuantizationReport:
    """Per-layer rows of a whole-network quantization; prints as a table.

    Attributes
    ----------
    rows : list of dict
        One per layer: ``name``, ``shape``, ``method``, ``bits`` (stored bits per
        weight, scales included), ``size_bits``, ``calibration_error`` (relative
        error of the layer's output on the calibration data, its input from the
        quantized prefix; ``nan`` when no calibration pass was needed) and
        ``seconds``; for the models that run from codes also ``activation_bits``
        (bits of the layer's quantized input, ``None`` for float inputs) and
        ``bytes_held`` (what the layer holds in memory while it runs).
    """

    rows: list = field(default_factory=list)

    @property
    def size_bits(self):
        """Bits of every layer's weights (float layers at 32 bits per weight)."""
        return int(sum(r["size_bits"] for r in self.rows))

    @property
    def seconds(self):
        """Time spent in the quantizers, summed over the layers."""
        return float(sum(r["seconds"] for r in self.rows))

    def __str__(self):
        held = any("bytes_held" in r for r in self.rows)
        head = f"{'layer':<24}{'shape':>14}  {'method':<14}{'bits':>7}{'size (B)':>12}"
        head += f"{'calib err':>11}{'s':>8}"
        if held:
            head += f"{'act bits':>9}{'held (B)':>12}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(str(s) for s in r["shape"])
            err = r["calibration_error"]
            line = (
                f"{r['name']:<24.24}{shape:>14}  {r['method']:<14.14}"
                f"{r['bits']:>7.3f}{r['size_bits'] / 8:>12.0f}"
                + (f"{err:>11.4f}" if np.isfinite(err) else f"{'-':>11}")
                + f"{r['seconds']:>8.3f}"
            )
            if held:
                act = r.get("activation_bits")
                line += f"{'-' if act is None else act:>9}"
                line += f"{r.get('bytes_held', 0):>12.0f}"
            lines.append(line)
        total = (
            f"{'total':<24}{'':>14}  {'':<14}{'':>7}{self.size_bits / 8:>12.0f}"
            f"{'':>11}{self.seconds:>8.3f}"
        )
        if held:
            total += f"{'':>9}{sum(r.get('bytes_held', 0) for r in self.rows):>12.0f}"
        lines.append(total)
        return "\n".join(lines)

    def __repr__(self):
        return f"QuantizationReport({len(self.rows)} layers)\n{self}"


class DequantizedWeights(Mapping):
    """The quantized layers' float weights ``(n_in, n_out)`` by name, dequantized
    from their tensors when read: not held beside the codes (a whole model's
    worth of floats)."""

    def __init__(self, tensors):
        self._tensors = tensors

    def __getitem__(self, name):
        return self._tensors[name].dequantize()

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self):
        return len(self._tensors)


@dataclass
class LayerQuantization:
    """What :func:`quantize_layers` returns (by layer name, forward order):
    the fitted ``quantizers``, the quantized ``tensors``, their dequantized
    ``weights`` (computed when read) and the ``report``."""

    quantizers: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    report: QuantizationReport = field(default_factory=QuantizationReport)

    @property
    def weights(self):
        return DequantizedWeights(self.tensors)
