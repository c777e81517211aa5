"""Quantized models at run time: bytes held, peak memory of a forward, latency,
accuracy, against the float model and torch's own int8 dynamic quantization.

Networks: ``mlp`` (a 4096-4096-4096-1000 MLP, 33.8M random weights, inputs
N(0, 1)), and the trained networks of the benchmarks (``lenet5`` on MNIST, ``cnn``
and ``vgg8`` on Fashion-MNIST; see ``_models.py``; they need the data of
``get_data.sh``). Variants:

* ``float``: the float32 model;
* ``torch dyn int8``: ``torch.ao.quantization.quantize_dynamic`` (Linear layers,
  int8 weights per tensor, dynamic int8 activations: fbgemm/x86);
* ``torch int8``: torch's own static quantization
  (``torch.ao.quantization.quantize_fx``, the default qconfig of the machine's
  engine: int8 weights per channel, static uint8 activations calibrated on the
  same 1024 inputs (256 in the memory child, which loads it from its file),
  convolutions and Linear layers
  kept quantized between layers, fused with their ReLU);
* ``torchao dyn int8``: torchao's ``Int8DynamicActivationInt8WeightConfig`` (eager;
  only where torchao is installed: ``pip install -e .[peers]``);
* ``W8 dynA8``: skquant, 8-bit weights (per channel), ``activations="dynamic"``;
* ``W8A8``: 8-bit weights, static 8-bit activations (an
  :class:`~skquant.ActivationQuantizer` calibrated on 1024 inputs);
* ``W4``: 4-bit weights, weight-only, ``runtime="packed"`` (the default);
* ``W4A8``: the same 4-bit weights with static 8-bit activations;
* ``W2``: 2-bit (ternary grid) weights, packed.

On the MLP the weights are rounded (``UniformQuantizer``, no data); on the trained
networks they are GPFQ's (``GreedyPathQuantizer``, 1024 training images).

Measured, all in one run:

* ``held``: bytes the process holds for the model: the resident-set growth from
  loading it (in a child process: skquant's models ``load_into`` a fresh float
  model from their file, as deployed; torch's are built from a fresh float model;
  the float weights freed, glibc's mmap threshold fixed so that freed blocks go
  back), and ``counted``: the layers' stored sizes (codes and scales) plus the
  float parameters left;
* ``peak fwd``: the resident-set peak above ``held`` during one forward at batch
  256 (``/proc/self/clear_refs``);
* latency at batch 1 and 256: medians over interleaved rounds (every variant once
  per round, in the parent process);
* test accuracy (trained networks).

Run:
    .venv/bin/python benchmarks/bench_runtime.py --nets mlp
    .venv/bin/python benchmarks/bench_runtime.py --nets lenet5 cnn vgg8
"""

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from skquant import (  # noqa: E402
    ActivationQuantizer,
    GreedyPathQuantizer,
    UniformQuantizer,
)
from skquant.torch import quantize_model  # noqa: E402
from skquant.torch._qlayers import QuantMixin  # noqa: E402

VARIANTS = [
    "float",
    "torch dyn int8",
    "torch int8",
    "torchao dyn int8",
    "W8 dynA8",
    "W8A8",
    "W4",
    "W4A8",
    "W2",
]


def torchao_available():
    try:
        import torchao  # noqa: F401
    except Exception:
        return False
    return True


def big_mlp():
    torch.manual_seed(0)
    sizes = (4096, 4096, 4096, 1000)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def load_net(net):
    """(float model, calibration inputs (1024), test inputs, test labels)."""
    if net == "mlp":
        g = torch.Generator().manual_seed(1)
        return big_mlp(), torch.randn(1024, 4096, generator=g), None, None
    from _models import trained

    dataset = "mnist" if net == "lenet5" else "fashion-mnist"
    model, (Xtr, _, Xte, yte) = trained(net, dataset, verbose=False)
    g = torch.Generator().manual_seed(0)
    calib = Xtr[torch.randperm(len(Xtr), generator=g)[:1024]]
    return model.eval(), calib, Xte, yte


def weights(net, bits):
    if net == "mlp":
        return UniformQuantizer(n_bits=bits)
    return GreedyPathQuantizer(n_bits=bits)


#: the variants that are not skquant's
TORCH_VARIANTS = ("torch dyn int8", "torch int8", "torchao dyn int8")


def torch_int8(model, calib):
    """torch's own static int8 quantization of ``model`` (FX graph mode),
    calibrated on ``calib``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = get_default_qconfig_mapping(torch.backends.quantized.engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(
            copy.deepcopy(model), mapping, example_inputs=(calib[:1],)
        )
        with torch.no_grad():
            for chunk in calib.split(256):
                prepared(chunk)
        return convert_fx(prepared)


def build(net, variant, model, calib):
    """The variant of ``model`` (a new module; ``model`` is left as it was)."""
    if variant == "float":
        return model
    if variant == "torch dyn int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
            )
    if variant == "torch int8":
        return torch_int8(model, calib)
    if variant == "torchao dyn int8":
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            quantize_,
        )

        m = copy.deepcopy(model)
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        return m
    bits = {"W8 dynA8": 8, "W8A8": 8, "W4": 4, "W4A8": 4, "W2": 2}[variant]
    acts = {"W8 dynA8": "dynamic", "W8A8": ActivationQuantizer(n_bits=8)}.get(variant)
    if variant == "W4A8":
        acts = ActivationQuantizer(n_bits=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(model, weights(net, bits), calib, activations=acts)


def counted_bytes(m):
    """Stored sizes of the quantized layers plus every float tensor left."""
    total = 0
    for mod in m.modules():
        if isinstance(mod, QuantMixin):
            total += mod.size_bits // 8
            if mod.bias is not None:
                total += mod.bias.numel() * mod.bias.element_size()
        else:
            for t in list(mod._parameters.values()) + list(mod._buffers.values()):
                if t is not None:
                    total += t.numel() * t.element_size()
    return total


# -- child: memory of one variant -----------------------------------------------


def _status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def fresh(net, state):
    """A new float model of ``net`` (the MLP is seeded; others take ``state``)."""
    if net == "mlp":
        return big_mlp()
    import _models

    make = {"lenet5": _models.lenet5, "cnn": _models.fashion_cnn, "vgg8": _models.vgg8}
    model = make[net]()
    model.load_state_dict(state)
    return model.eval()


def child(net, variant, path):
    """Print the bytes held by ``variant`` and the peak of one forward (JSON).

    skquant's variants are loaded from their file (``load_into`` a fresh float
    model, as a deployed model is); torch's static int8 model is built and
    calibrated here (on 256 inputs), traced and saved (TorchScript, torch's
    way to deploy it) and loaded back; torch's dynamic ones are built from a
    fresh float model.
    """
    from skquant.torch import load_into

    torch.set_num_threads(2)
    model, calib, _, _ = load_net(net)
    state = None if net == "mlp" else copy.deepcopy(model.state_dict())
    x256 = calib[:256].clone()
    # warm-up: kernels compiled, torch's quantized engine loaded, on a tiny net
    tiny = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        for v in VARIANTS:
            if v == "torchao dyn int8" and not torchao_available():
                continue
            t = build("mlp", v, tiny, torch.randn(64, 64))
            t(torch.randn(1, 64))
            t(torch.randn(256, 64))
    if path:  # a first load warms every code path of loading and running
        with torch.no_grad():
            load_into(fresh(net, state), path)(x256[:2])
    saved = None
    if variant == "torch int8":  # built and calibrated here, then loaded whole
        # from its file as deployed (the calibration's leftovers not counted)
        saved = Path(tempfile.mkdtemp()) / "torch_int8.pt"
        for _ in range(2):  # (the first load warms its code paths)
            built = build(net, variant, fresh(net, state), x256)
            with torch.no_grad():
                torch.jit.save(torch.jit.trace(built, x256[:2]), saved)
            del built
            torch.jit.load(saved)(x256[:2])
    del model, tiny, t, calib
    gc.collect()
    rss0 = _status("VmRSS")
    model = fresh(net, state)
    if path:
        m = load_into(model, path)
    elif saved is not None:
        m = torch.jit.load(saved)
    else:
        m = build(net, variant, model, None)
    del model
    gc.collect()
    held = _status("VmRSS") - rss0
    Path("/proc/self/clear_refs").write_text("5")
    base = _status("VmRSS")
    with torch.no_grad():
        m(x256)
    peak = _status("VmHWM") - base
    print(json.dumps({"held": held, "peak_fwd": peak}))


def memory(net, variant, model):
    """Bytes held and forward peak of ``variant``, measured in a child process."""
    from skquant.torch import save_model

    path = ""
    if isinstance(
        next((m for m in model.modules() if isinstance(m, QuantMixin)), None),
        QuantMixin,
    ):
        path = str(Path(tempfile.mkdtemp()) / f"{net}.skq")
        save_model(model, path)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore")
    out = subprocess.run(
        [sys.executable, __file__, "--child", net, variant, path],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- parent ------------------------------------------------------------------------


@torch.no_grad()
def latencies(models, x1, x256, rounds, inner1=20):
    """Median seconds per call at batch 1 and 256, rounds interleaved."""
    t1 = {k: [] for k in models}
    t256 = {k: [] for k in models}
    for m in models.values():  # warm
        m(x1)
        m(x256)
    for _ in range(rounds):
        for k, m in models.items():
            t = time.perf_counter()
            for _ in range(inner1):
                m(x1)
            t1[k].append((time.perf_counter() - t) / inner1)
            t = time.perf_counter()
            m(x256)
            t256[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in t1.items()}, {
        k: float(np.median(v)) for k, v in t256.items()
    }


@torch.no_grad()
def accuracy(m, X, y, batch=1000):
    correct = 0
    for i in range(0, len(X), batch):
        correct += (m(X[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return correct / len(X)


def run_net(net, rounds):
    torch.set_num_threads(2)
    model, calib, Xte, yte = load_net(net)
    variants = [v for v in VARIANTS if v != "torchao dyn int8" or torchao_available()]
    models = {}
    for v in variants:
        t = time.perf_counter()
        models[v] = build(net, v, model, calib)
        print(f"  built {v} in {time.perf_counter() - t:.1f}s", flush=True)
    x1, x256 = calib[:1].clone(), calib[:256].clone()
    t1, t256 = latencies(models, x1, x256, rounds)
    rows = []
    for v in variants:
        mem = memory(net, v, models[v])
        row = {
            "net": net,
            "variant": v,
            "counted": counted_bytes(models[v]) if v not in TORCH_VARIANTS else None,
            "held": mem["held"],
            "peak_fwd": mem["peak_fwd"],
            "batch1_ms": 1e3 * t1[v],
            "batch256_ms": 1e3 * t256[v],
        }
        if Xte is not None:
            row["accuracy"] = accuracy(models[v], Xte, yte)
        rows.append(row)
        print(fmt(row), flush=True)
    return rows


def fmt(r):
    acc = f"{100 * r['accuracy']:7.2f}%" if "accuracy" in r else f"{'-':>8}"
    counted = f"{r['counted'] / 1e6:9.2f}" if r["counted"] is not None else f"{'-':>9}"
    return (
        f"{r['net']:<7}{r['variant']:<18}{counted}{r['held'] / 1e6:9.2f}"
        f"{r['peak_fwd'] / 1e6:10.2f}{r['batch1_ms']:10.3f}{r['batch256_ms']:10.2f}"
        f"{acc}"
    )


def targets(rows):
    by = {(r["net"], r["variant"]): r for r in rows}
    lines = []

    def check(name, value, limit):
        ok = "MET" if value <= limit else "MISSED"
        lines.append(f"  {name:<58}{value:8.3f}  (target <= {limit})  {ok}")

    if ("mlp", "W8 dynA8") in by:
        a, t = by["mlp", "W8 dynA8"], by["mlp", "torch dyn int8"]
        check(
            "W8 dynA8 / torch dyn int8, batch 256 time",
            a["batch256_ms"] / t["batch256_ms"],
            1.2,
        )
        check(
            "W8 dynA8 / torch dyn int8, batch 1 time",
            a["batch1_ms"] / t["batch1_ms"],
            1.5,
        )
        check("W8 dynA8 / torch dyn int8, bytes held", a["held"] / t["held"], 1.05)
        w, f = by["mlp", "W4"], by["mlp", "float"]
        check(
            "W4 bytes held / (1.1 counted + 64 KiB)",
            w["held"] / (1.1 * w["counted"] + 65536),
            1.0,
        )
        check("W4 / float, batch 1 time", w["batch1_ms"] / f["batch1_ms"], 0.7)
        check("W4 / float, batch 256 time", w["batch256_ms"] / f["batch256_ms"], 1.3)
    for net in ("lenet5", "cnn"):
        if (net, "W4A8") in by:
            drop = 100 * (by[net, "W4"]["accuracy"] - by[net, "W4A8"]["accuracy"])
            check(f"{net}: W4 accuracy - W4A8 accuracy (points)", drop, 0.2)
    return lines


@torch.no_grad()
def check_kernels(nets):
    """The kernels against the dequantized float forward (runtime="float", the
    forward of the float-weight layers before this runtime) on the test set."""
    for net in nets:
        model, calib, Xte, yte = load_net(net)
        X = Xte if Xte is not None else calib
        for bits in (8, 4, 2):
            q = weights(net, bits)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = quantize_model(model, q, calib)
                slow = quantize_model(model, q, calib, runtime="float")
            a = torch.cat([fast(X[i : i + 1000]) for i in range(0, len(X), 1000)])
            b = torch.cat([slow(X[i : i + 1000]) for i in range(0, len(X), 1000)])
            dev = float((a - b).abs().max() / b.abs().max())
            flips = int((a.argmax(1) != b.argmax(1)).sum())
            line = f"{net:<7} W{bits}: max |kernels - float| / max |float| = {dev:.1e}"
            line += f", predictions that differ: {flips} of {len(X)}"
            if yte is not None:
                acc_a = 100 * float((a.argmax(1) == yte).float().mean())
                acc_b = 100 * float((b.argmax(1) == yte).float().mean())
                line += f", accuracy {acc_a:.2f}% / {acc_b:.2f}%"
            print(line, flush=True)


def print_rst_table(title, cols, lines):
    """Print ``title:`` and a reST simple table of ``cols`` over ``lines`` (strings)."""
    widths = [max(len(c), *(len(x[i]) for x in lines)) for i, c in enumerate(cols)]
    rule = "  ".join("=" * w for w in widths)
    print(f"\n{title}:\n\n{rule}")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    print(rule)
    for x in lines:
        print("  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip())
    print(rule)


def print_rst(rows):
    """The rows as a reST table per network (the docs' tables)."""
    for net in dict.fromkeys(r["net"] for r in rows):
        sub = [r for r in rows if r["net"] == net]
        acc = "accuracy" in sub[0]
        cols = [
            "variant",
            "counted MB",
            "held MB",
            "peak fwd MB",
            "batch 1 ms",
            "batch 256 ms",
        ] + (["accuracy"] if acc else [])
        lines = []
        for r in sub:
            cells = [
                r["variant"],
                "-" if r["counted"] is None else f"{r['counted'] / 1e6:.2f}",
                f"{max(r['held'], 0) / 1e6:.2f}",  # (noise below 0 reads as 0)
                f"{r['peak_fwd'] / 1e6:.1f}",
                f"{r['batch1_ms']:.3f}",
                f"{r['batch256_ms']:.1f}",
            ] + ([f"{100 * r['accuracy']:.2f}%"] if acc else [])
            lines.append(cells)
        print_rst_table(net, cols, lines)
    print()
    print("\n".join(targets(rows)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--nets", nargs="+", default=["mlp"], choices=["mlp", "lenet5", "cnn", "vgg8"]
    )
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--check-kernels",
        action="store_true",
        help="only compare the kernels with the float forward on --nets",
    )
    p.add_argument(
        "--rst",
        action="store_true",
        help="print --json's rows as reST tables, run nothing",
    )
    p.add_argument("--child", nargs=3, metavar=("NET", "VARIANT", "PATH"))
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.rst:
        print_rst(json.loads(args.json.read_text()))
        return
    if args.check_kernels:
        check_kernels(args.nets)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, engine "
        f"{torch.backends.quantized.engine}"
    )
    head = (
        f"{'net':<7}{'variant':<18}{'counted':>9}{'held':>9}{'peak fwd':>10}"
        f"{'b1 ms':>10}{'b256 ms':>10}{'acc':>8}"
    )
    print(head + "\n" + " " * 25 + "(MB)     (MB)      (MB)")
    rows = []
    for net in args.nets:
        rows += run_net(net, args.rounds)
    print("\ntargets (ratios of this run):")
    print("\n".join(targets(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
