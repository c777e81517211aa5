"""ONNX export: file bytes against the counted size, accuracy and latency in ONNX
Runtime against skquant's own runtime and the float ONNX model.

For each network (``lenet5``, ``cnn``, ``vgg8`` as in ``_models.py``, and the
4096-4096-4096-1000 ``mlp`` of ``bench_runtime.py``) and each variant, the model is
quantized, exported with ``skquant.torch.export_onnx`` and run in ONNX Runtime
(default graph optimisations, 2 threads): test accuracy against skquant's, file
bytes against the counted size (codes at the ONNX type's width, scales, biases), and
latency at batch 1 and 256 (medians of interleaved rounds) against skquant's runtime
and the float model exported by ``torch.onnx.export``.

Variants on the trained networks: GPFQ and GPTQ weights at 8, 4, 3, 2 bits and
ternary, weight-only; GPFQ W4 with the Linear layers as MatMulNBits (float or
integer products, ``nbits`` / ``nbits-int8``); W8A8 and W4A8 with static 8-bit
grids on 1024 training images, W8A7 with 7-bit ones, W8 with dynamic 8-bit inputs.
On the MLP (random weights): round-to-nearest weights with the same activation
variants and MatMulNBits.

Run (needs ``pip install -e .[onnx]`` and the data of ``get_data.sh``):
    .venv/bin/python benchmarks/bench_onnx.py --nets lenet5 cnn vgg8
    .venv/bin/python benchmarks/bench_onnx.py --nets mlp
From the stored rows (``--json``), running nothing, ``--rst`` prints the tables
with each file's deviation from torch in the check (``max rel dev``).
"""

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_runtime import latencies, load_net, print_rst_table  # noqa: E402

from skquant import (  # noqa: E402
    ActivationQuantizer,
    GPTQQuantizer,
    GreedyPathQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant.torch import export_onnx, quantize_model  # noqa: E402
from skquant.torch._qlayers import QuantMixin  # noqa: E402

TYPE_BITS = {"int2": 2, "int4": 4, "int8": 8, "int16": 16}


def variants(net):
    """name -> (weights, activations, form); ``None``: float.

    ``form``: ``None`` (the default export) or ``"float"`` / ``"int8"``
    (``matmul_nbits``).
    """
    out = {"float": None}
    if net == "mlp":  # random weights: round to nearest, as bench_runtime.py
        out["W8A8"] = (UniformQuantizer(n_bits=8), ActivationQuantizer(n_bits=8), None)
        out["W8A7"] = (UniformQuantizer(n_bits=8), ActivationQuantizer(n_bits=7), None)
        out["W8 dynA8"] = (UniformQuantizer(n_bits=8), "dynamic", None)
        out["W4A8"] = (UniformQuantizer(n_bits=4), ActivationQuantizer(n_bits=8), None)
        out["W4"] = (UniformQuantizer(n_bits=4), None, None)
        out["W4 nbits"] = (UniformQuantizer(n_bits=4), None, "float")
        out["W4 nbits-int8"] = (UniformQuantizer(n_bits=4), None, "int8")
        return out
    for name, cls in (("GPFQ", GreedyPathQuantizer), ("GPTQ", GPTQQuantizer)):
        for bits in (8, 4, 3, 2):
            out[f"{name} W{bits}"] = (cls(n_bits=bits), None, None)
        out[f"{name} ternary"] = (TernaryQuantizer(), None, None)
    out["GPFQ W4 nbits"] = (GreedyPathQuantizer(n_bits=4), None, "float")
    out["GPFQ W4 nbits-int8"] = (GreedyPathQuantizer(n_bits=4), None, "int8")
    out["W8A8"] = (GreedyPathQuantizer(n_bits=8), ActivationQuantizer(n_bits=8), None)
    out["W8A7"] = (GreedyPathQuantizer(n_bits=8), ActivationQuantizer(n_bits=7), None)
    out["W8 dynA8"] = (GreedyPathQuantizer(n_bits=8), "dynamic", None)
    out["W4A8"] = (GreedyPathQuantizer(n_bits=4), ActivationQuantizer(n_bits=8), None)
    return out


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_run(s, x):
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def accuracy(f, X, y, batch=1000):
    correct = 0
    for i in range(0, len(X), batch):
        out = f(X[i : i + batch])
        correct += int((np.asarray(out).argmax(1) == y[i : i + batch].numpy()).sum())
    return correct / len(X)


def counted_bytes(qnet, report):
    """Codes at the ONNX type's width, scales, biases and float layers' weights."""
    total = 0
    for name, m in qnet.named_modules():
        if isinstance(m, QuantMixin):
            n = int(np.prod(m._wshape))
            total += n * TYPE_BITS[report["layers"][name].lstrip("u")] // 8
            total += m.weight_scale.numel() * 4
            total += 0 if m.bias is None else m.bias.numel() * 4
        elif not list(m.children()):
            total += sum(p.numel() * 4 for p in m.parameters())
    return total


def run_net(net, names, tmp):
    torch.set_num_threads(2)
    model, calib, Xte, yte = load_net(net)
    x1, x256 = calib[:1].clone(), calib[:256].clone()
    rows = []
    for name, spec in variants(net).items():
        if names and name not in names:
            continue
        path = Path(tmp) / f"{net}-{name.replace(' ', '_')}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if spec is None:
                torch.onnx.export(
                    model,
                    (calib[:2],),
                    str(path),
                    dynamo=True,
                    external_data=False,
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                )
                qnet, report = model, {"layers": {}}
            else:
                q, acts, form = spec
                qnet = quantize_model(model, q, calib, activations=acts)
                report = export_onnx(qnet, calib[:256], path, matmul_nbits=form)
        s = session(path)
        fns = {"onnx": lambda x, s=s: ort_run(s, x)}
        if spec is not None:

            def own(x, qnet=qnet):
                with torch.no_grad():
                    return qnet(x).numpy()

            fns["skquant"] = own
        t1, t256 = (
            {k: 1e3 * v for k, v in t.items()}
            for t in latencies(fns, x1, x256, rounds=7)
        )
        row = {
            "net": net,
            "variant": name,
            "types": sorted(set(report["layers"].values())),
            "nodes": sorted(set(report.get("nodes", {}).values())),
            "file_bytes": path.stat().st_size,
            # MatMulNBits repeats each scale per block of 128: not the counted form
            "counted_bytes": None
            if spec is None or spec[2] is not None
            else counted_bytes(qnet, report),
            "max_rel_deviation": report.get("max_rel_deviation"),
            "optimized_max_rel_deviation": report.get("optimized_max_rel_deviation"),
            "onnx_b1_ms": t1["onnx"],
            "onnx_b256_ms": t256["onnx"],
            "skquant_b1_ms": t1.get("skquant"),
            "skquant_b256_ms": t256.get("skquant"),
        }
        if Xte is not None:
            row["onnx_acc"] = accuracy(fns["onnx"], Xte, yte)
            if spec is not None:
                row["skquant_acc"] = accuracy(fns["skquant"], Xte, yte)
        rows.append(row)
        print(fmt(row), flush=True)
    return rows


def fmt(r):
    acc = ""
    if "onnx_acc" in r:
        acc = f"{100 * r['onnx_acc']:8.2f}%"
        acc += f"{100 * r['skquant_acc']:8.2f}%" if "skquant_acc" in r else f"{'-':>9}"
    counted = "-" if r["counted_bytes"] is None else f"{r['counted_bytes']:,}"
    own1 = "-" if r["skquant_b1_ms"] is None else f"{r['skquant_b1_ms']:.3f}"
    own256 = "-" if r["skquant_b256_ms"] is None else f"{r['skquant_b256_ms']:.1f}"
    return (
        f"{r['net']:<7}{r['variant']:<15}{','.join(r['types']):<11}"
        f"{r['file_bytes']:>12,}{counted:>12}{r['onnx_b1_ms']:>9.3f}{own1:>9}"
        f"{r['onnx_b256_ms']:>9.1f}{own256:>9}{acc}"
    )


def targets(rows):
    lines = []
    by = {(r["net"], r["variant"]): r for r in rows}
    for r in rows:
        if "skquant_acc" in r:
            gap = 100 * abs(r["onnx_acc"] - r["skquant_acc"])
            limit = 0.1 if "A" in r["variant"] else 0.05
            ok = "MET" if gap <= limit else "MISSED"
            lines.append(
                f"  {r['net']} {r['variant']}: |ONNX - skquant| accuracy "
                f"{gap:.2f} point (target <= {limit})  {ok}"
            )
        if r["counted_bytes"] is not None:
            extra = r["file_bytes"] - r["counted_bytes"]
            ok = "MET" if extra <= 32 * 1024 else "MISSED"
            lines.append(
                f"  {r['net']} {r['variant']}: file - counted = {extra:,} B "
                f"(target <= 32,768)  {ok}"
            )
    if ("mlp", "W8A8") in by and ("mlp", "float") in by:
        ratio = by["mlp", "W8A8"]["onnx_b256_ms"] / by["mlp", "float"]["onnx_b256_ms"]
        ok = "MET" if ratio <= 1 else "MISSED"
        lines.append(
            f"  mlp W8A8 / float ONNX, batch 256 time: {ratio:.3f} (target <= 1)  {ok}"
        )
    for r in rows:
        f = by.get((r["net"], "float"))
        if f is not None and r is not f:
            lines.append(
                f"  {r['net']} {r['variant']} / float ONNX time: batch 1 "
                f"{r['onnx_b1_ms'] / f['onnx_b1_ms']:.2f}, batch 256 "
                f"{r['onnx_b256_ms'] / f['onnx_b256_ms']:.2f}"
            )
    return lines


def print_rst(rows):
    """File sizes, accuracies, latencies and the check's deviation (ONNX Runtime
    against torch, largest ``|ORT - torch|`` over the largest output, graph
    optimisations off: ``report["max_rel_deviation"]``) as a reST table per
    network."""

    def ms(v, digits):
        return "-" if v is None else f"{v:.{digits}f}"

    def dev(v):  # 1.0e-02 -> 1.0e-2
        return (
            "-" if v is None else f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e+")
        )

    for net in dict.fromkeys(r["net"] for r in rows):
        cols = ["variant", "type", "file B", "counted B", "ORT acc", "skquant acc"]
        cols += ["ORT b1 ms", "skquant b1", "ORT b256 ms", "skquant b256"]
        cols += ["max rel dev"]
        lines = []
        for r in rows:
            if r["net"] != net:
                continue
            lines.append(
                [
                    r["variant"],
                    ",".join(r["types"]) or "float",
                    f"{r['file_bytes']:,}",
                    "-" if r["counted_bytes"] is None else f"{r['counted_bytes']:,}",
                    f"{100 * r['onnx_acc']:.2f}%" if "onnx_acc" in r else "-",
                    f"{100 * r['skquant_acc']:.2f}%" if "skquant_acc" in r else "-",
                    ms(r["onnx_b1_ms"], 3),
                    ms(r["skquant_b1_ms"], 3),
                    ms(r["onnx_b256_ms"], 1),
                    ms(r["skquant_b256_ms"], 1),
                    dev(r.get("max_rel_deviation")),
                ]
            )
        print_rst_table(net, cols, lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--nets",
        nargs="+",
        default=["lenet5"],
        choices=["mlp", "lenet5", "cnn", "vgg8"],
    )
    p.add_argument("--variants", nargs="+", default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--rst", action="store_true", help="print --json's rows as reST, run nothing"
    )
    args = p.parse_args()
    if args.rst:
        print_rst(json.loads(args.json.read_text()))
        return
    print(
        f"{'net':<7}{'variant':<15}{'types':<11}{'file B':>12}{'counted B':>12}"
        f"{'ort b1':>9}{'own b1':>9}{'ort b256':>9}{'own b256':>9}"
        f"{'ort acc':>9}{'own acc':>9}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in args.nets:
            rows += run_net(net, args.variants, tmp)
    print("\ntargets:")
    print("\n".join(targets(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
