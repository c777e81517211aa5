"""Adaptive precision against uniform MSQ and GPFQ at equal accuracy, sizes from bytes.

For each network (trained by ``benchmarks/_models.py`` with the ``"cosine"``
recipe: :func:`skquant.torch.train_baseline`, 15 epochs, Adam with a cosine
schedule; cached under ~/skquant_data/models), every size is the number of bytes
a file written by :func:`skquant.save` holds after its header (read back and
checked against the model):

* ``msq b``: :class:`~skquant.UniformQuantizer` per output channel at ``b`` =
  2..8 bits (biases kept in float32): packed codes, float32 scales, biases;
* ``msq b + range``: the same codes with the precision map's range coder
  (``skquant._tensor._fixedpoint.encode_symbols``: levels, counts and a range-coded
  stream per tensor) instead of fixed-width packing;
* ``gpfq b`` (and ``+ range``): :class:`~skquant.GreedyPathQuantizer` on 1024
  training images, same storage;
* ``adaptive``: :func:`skquant.torch.adaptive_quantize_model` (every weight and
  bias, loss on ``--n-cal`` training images) at several relative loss bounds,
  per parameter, per output channel and per block of 16 weights (each group the
  smallest margin of its members; ``channelp``/``16p``: one margin per group from
  the budget solved over groups, ``group_margin="pooled"``), with and
  without retraining between steps (``retrain="ste"``: minibatch Adam on the
  fixed-point grids, ``--retrain-steps`` steps of 128 images from the whole
  training set); the file of ``result.save``, and the same tensors' size with
  each map coder (range, fixed, lzma, zlib).

Prints every run, then, per network, the smallest size of each family within 0.1
and within 0.25 point of the float test accuracy (``--tolerances``, in points);
raw rows go to ``--json`` (re-read and extended, so an interrupted run resumes).
From the stored rows, running nothing: ``--rst`` prints the summary as the docs'
reST tables, ``--summary`` as the run prints it (every family, the payload of
every adaptive one included).

Run::

    bash benchmarks/get_data.sh
    PYTHONPATH=. python -u benchmarks/bench_adaptive_storage.py
    # from the stored rows, within 0.15 and 0.2 point:
    python benchmarks/bench_adaptive_storage.py --nets lenet5 --summary \
        --json benchmarks/results/bench_adaptive_storage.json --tolerances 0.15 0.2
"""

import argparse
import dataclasses
import json
import struct
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _models import accuracy, trained  # noqa: E402

import skquant  # noqa: E402
from skquant import GreedyPathQuantizer, UniformQuantizer  # noqa: E402
from skquant._tensor._fixedpoint import (  # noqa: E402
    MAP_CODERS,
    decode_symbols,
    encode_symbols,
)
from skquant.datasets import mnist_available  # noqa: E402
from skquant.torch import (  # noqa: E402
    QuantConv2d,
    QuantLinear,
    adaptive_quantize_model,
    quantize_model,
)

NETS = {
    "lenet5": ("mnist", "lenet5", "MNIST LeNet-5"),
    "mlp": ("mnist", "mlp", "MNIST MLP"),
    "fmlp": ("fashion-mnist", "mlp", "Fashion-MNIST MLP"),
    "fcnn": ("fashion-mnist", "cnn", "Fashion-MNIST CNN"),
}


def data_bytes(path):
    """Bytes of a skquant file after its 8-byte length and JSON header."""
    blob = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return len(blob) - 8 - n


def stored_size(qmodel, folder, tag):
    """Bytes of the quantized layers (fixed-width and range-coded codes), checked."""
    plain, coded = {}, {}
    for name, mod in qmodel.named_modules():
        if not isinstance(mod, QuantLinear | QuantConv2d):
            continue
        qt = mod.quantized_tensor()
        plain[name] = qt
        stored, qmin = qt.alphabet_record.stored(qt.codes)
        symbols = (np.asarray(stored, dtype=np.int64) - qmin).ravel()
        arrays = encode_symbols(symbols.astype(np.uint8), "range")
        back = decode_symbols("range", arrays, symbols.size)
        assert np.array_equal(back, symbols), "range-coded codes do not decode"
        for k, a in arrays.items():
            coded[f"{name}.{k}"] = a
        coded[f"{name}.scale"] = np.asarray(qt.scale, dtype=np.float32)
        if mod.bias is not None:
            bias = mod.bias.detach().numpy().astype(np.float32)
            plain[f"{name}.bias"] = bias
            coded[f"{name}.bias"] = bias
    sizes = []
    for label, obj in (("plain", plain), ("range", coded)):
        path = Path(folder) / f"{tag}-{label}.skq"
        skquant.save(obj, path)
        back = skquant.load(path)
        for name, v in obj.items():
            if isinstance(v, np.ndarray):
                assert np.array_equal(back[name], v)
            else:
                assert np.array_equal(back[name].dequantize(), v.dequantize())
        sizes.append(8 * data_bytes(path))
    return sizes


def run_net(key, args, rows, done, folder):
    dataset, name, label = NETS[key]
    model, (Xtr, ytr, Xte, yte) = trained(name, dataset, recipe="cosine")
    n = sum(p.numel() for p in model.parameters())
    float_acc = accuracy(model, Xte, yte)
    print(
        f"\n== {label}: {n} parameters, float32 {32 * n / 1e3:.1f} kbit, float test "
        f"accuracy {100 * float_acc:.2f}%",
        flush=True,
    )
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(Xtr), generator=g)
    Xcal, ycal = Xtr[idx[: args.n_cal]], ytr[idx[: args.n_cal]]

    def record(row):
        row.update(net=key, float=float_acc, n_params=n)
        rows.append(row)
        args.json.write_text(json.dumps(rows, indent=0))
        print(
            f"  {row['method']:<28} {100 * row['accuracy']:6.2f}%  "
            f"{row['bits'] / 1e3:8.1f} kbit  {32 * n / row['bits']:6.2f}x  "
            f"{row['seconds']:6.1f}s",
            flush=True,
        )

    for b in args.msq_bits:
        for method, make, calib in (
            ("msq", UniformQuantizer, None),
            ("gpfq", GreedyPathQuantizer, Xcal[:1024]),
        ):
            if (key, f"{method} {b}") in done:
                continue
            t = time.perf_counter()
            q = quantize_model(model, make(n_bits=b), calib)
            dt = time.perf_counter() - t
            acc = accuracy(q, Xte, yte)
            plain, coded = stored_size(q, folder, f"{key}-{method}{b}")
            for suffix, bits in (("", plain), (" + range", coded)):
                record(
                    {
                        "method": f"{method} {b}{suffix}",
                        "family": method + suffix.replace(" + ", "+"),
                        "accuracy": acc,
                        "bits": bits,
                        "seconds": dt,
                    }
                )
    loss_fn = torch.nn.CrossEntropyLoss()
    for retrain in args.retrain:
        for group in args.groups:
            pooled = group.endswith("p")  # one margin per group, pooled budget
            gs = None if group == "param" else group.rstrip("p")
            gs = int(gs) if gs not in (None, "channel") else gs
            for bound in args.bounds:
                method = f"adaptive {group} {retrain} {bound:g}"
                if (key, method) in done:
                    continue
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    res = adaptive_quantize_model(
                        model,
                        loss_fn,
                        (Xcal, ycal),
                        loss_bound=bound,
                        trust_region=args.trust,
                        max_iter=args.max_iter,
                        group_size=gs,
                        group_margin="pooled" if pooled else "smallest",
                        retrain=None if retrain == "none" else retrain,
                        retrain_steps=args.retrain_steps,
                        retrain_batch_size=128,
                        retrain_data=(Xtr, ytr),
                        random_state=0,
                        batch_size=1000,
                    )
                dt = time.perf_counter() - t
                path = Path(folder) / f"{key}-adaptive.skq"
                if res.tensors is None:
                    continue
                res.save(path)
                bits = 8 * data_bytes(path)
                assert bits == res.history[-1]["total_bits"]
                back = skquant.load(path)
                params = dict(res.model.named_parameters())
                for k in res.names:
                    p = params[k].detach().numpy().astype(np.float64)
                    view = np.moveaxis(p, 0, -1).reshape(-1, p.shape[0])
                    assert np.array_equal(back[k].dequantize(), view), k
                coders = {}
                for coder in MAP_CODERS[1:]:  # the same tensors, each map coder
                    coders[coder] = sum(
                        dataclasses.replace(t, map_coder=coder).size_bits
                        for t in res.tensors
                    )
                record(
                    {
                        "method": method,
                        "coders": coders,
                        "family": f"adaptive {group}"
                        + ("" if retrain == "none" else " +retrain"),
                        "accuracy": accuracy(res.model, Xte, yte),
                        "bits": bits,
                        "payload_bits": res.history[-1]["payload_bits"],
                        "map_bits": res.history[-1]["map_bits"],
                        "iterations": len(res.history) - 1,
                        "seconds": dt,
                    }
                )


FAMILY_ORDER = [
    "msq",
    "msq+range",
    "gpfq",
    "gpfq+range",
    "adaptive param",
    "adaptive param +retrain",
    "adaptive channel",
    "adaptive channel +retrain",
    "adaptive 16",
    "adaptive 16 +retrain",
    "adaptive channelp",
    "adaptive channelp +retrain",
    "adaptive 16p",
    "adaptive 16p +retrain",
    "adaptive param (payload)",
    "adaptive param +retrain (payload)",
]


TOLERANCES = (0.001, 0.0025)  # within 0.1 and 0.25 point of float (the default)


def _by_net(rows, key):
    """The rows of one network, with the payload alone (a part of each adaptive
    file) as a family of its own; ``(rows, float accuracy, n_params)``."""
    sel = [r for r in rows if r["net"] == key]
    if not sel:
        return [], None, None
    sel += [
        dict(r, family=r["family"] + " (payload)", bits=r["payload_bits"])
        for r in sel
        if "payload_bits" in r
    ]
    return sel, sel[0]["float"], sel[0]["n_params"]


def _smallest(sel, family, float_acc, tol):
    """The smallest run of ``family`` within ``tol`` of the float accuracy."""
    ok = [
        r
        for r in sel
        if r["family"] == family and r["accuracy"] >= float_acc - tol - 1e-12
    ]
    return min(ok, key=lambda r: r["bits"]) if ok else None


def _points(tol):
    """A tolerance (a fraction of accuracy) in points: 0.001 -> "0.1"."""
    return f"{100 * tol:g}"


def summary_rst(rows, nets, tolerances=TOLERANCES):
    """The summary as reST tables: one per network, a row per family."""
    for key in nets:
        sel, f, n = _by_net(rows, key)
        if not sel:
            continue
        table = [["family"]]
        for tol in tolerances:
            table[0] += [f"within {_points(tol)}: x32", "run"]
        for fam in FAMILY_ORDER:
            row = [fam.replace("+range", " + range")]
            for tol in tolerances:
                r = _smallest(sel, fam, f, tol)
                row += (
                    [
                        f"{32 * n / r['bits']:.2f}",
                        f"{r['method']}: {100 * r['accuracy']:.2f}%, "
                        f"{r['bits'] / 1e3:.1f} kbit",
                    ]
                    if r
                    else ["-", "-"]
                )
            table.append(row)
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        rule = " ".join("=" * w for w in widths)
        print(f"\n**{NETS[key][2]}** ({n} parameters, float {100 * f:.2f}%)\n\n{rule}")
        for i, r in enumerate(table):
            print(" ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if i == 0:
                print(rule)
        print(rule)


def summary(rows, nets, tolerances=TOLERANCES):
    for key in nets:
        sel, f, n = _by_net(rows, key)
        if not sel:
            continue
        within = " / ".join(_points(tol) for tol in tolerances)
        print(
            f"\n{NETS[key][2]} (float {100 * f:.2f}%): smallest stored size within "
            f"{within} point of float (kbit, x32, accuracy %, run)"
        )
        for fam in sorted({r["family"] for r in sel}):
            cells = []
            for tol in tolerances:
                r = _smallest(sel, fam, f, tol)
                cells.append(
                    f"{r['bits'] / 1e3:7.1f} {32 * n / r['bits']:6.2f}x "
                    f"{100 * r['accuracy']:.2f} ({r['method']})"
                    if r
                    else f"{'-':>7} {'-':>7}"
                )
            print(f"  {fam:<28} " + " | ".join(cells))
        coded = [r for r in sel if "coders" in r and r["family"] == "adaptive param"]
        if coded:
            print("  the per-parameter runs' stored size by map coder (kbit):")
            for r in coded:
                print(
                    f"    {r['method']:<28} "
                    + "  ".join(f"{c} {v / 1e3:.1f}" for c, v in r["coders"].items())
                )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--msq-bits", nargs="+", type=int, default=list(range(2, 9)))
    p.add_argument("--bounds", nargs="+", type=float, default=[0.5, 2.0, 5.0, 10.0])
    p.add_argument(
        "--groups",
        nargs="+",
        default=["param", "channel", "16", "channelp", "16p"],
        help="param, channel or a block size; a trailing p pools the budget",
    )
    p.add_argument("--retrain", nargs="+", default=["none", "ste"])
    p.add_argument("--trust", type=float, default=0.25)
    p.add_argument("--n-cal", type=int, default=5000)
    p.add_argument("--max-iter", type=int, default=8)
    p.add_argument("--retrain-steps", type=int, default=100)
    p.add_argument("--json", type=Path, default=Path("bench_adaptive_storage.json"))
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--tolerances",
        nargs="+",
        type=float,
        default=[float(_points(t)) for t in TOLERANCES],
        metavar="POINTS",
        help="the summaries' distances to the float accuracy, in points",
    )
    p.add_argument(
        "--rst", action="store_true", help="print the stored rows as reST, run nothing"
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="print the stored rows' summary as a run ends, run nothing",
    )
    args = p.parse_args(argv)
    tolerances = [t / 100 for t in args.tolerances]
    if args.rst or args.summary:
        rows = json.loads(args.json.read_text())
        if args.rst:
            summary_rst(rows, args.nets, tolerances)
        else:
            summary(rows, args.nets, tolerances)
        return 0
    torch.set_num_threads(args.threads)
    if not mnist_available():
        print("MNIST not found: run `bash benchmarks/get_data.sh` first.")
        return 2
    rows = json.loads(args.json.read_text()) if args.json.exists() else []
    done = {(r["net"], r["method"]) for r in rows}
    with tempfile.TemporaryDirectory() as folder:
        for key in args.nets:
            run_net(key, args, rows, done, folder)
    summary(rows, args.nets, tolerances)
    return 0


if __name__ == "__main__":
    sys.exit(main())
