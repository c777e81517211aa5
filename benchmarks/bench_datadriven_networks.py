"""Data-driven weight quantization of whole networks: RTN, GPFQ, GPTQ, null-space.

Every conv and linear weight of the network is quantized per output channel
through :func:`skquant.torch.quantize_model` (each layer sees the quantized
prefix's inputs and aims at the float model's), at ``--bits`` (2 bits is the
ternary grid ``{-a, 0, a}`` with the max-abs level), with ``--calib``
calibration images drawn from the training set (one draw per ``--seeds`` seed;
at most 4096 rows per layer, conv patches sampled), and scored on the test set:

* ``rtn``: round to nearest (:class:`~skquant.UniformQuantizer`, no data);
* ``gpfq``: :class:`~skquant.GreedyPathQuantizer`;
* ``gptq``: :class:`~skquant.GPTQQuantizer` (damping 0.01, blocks of 128) with
  ``target="float_output"`` (the least-squares weights that aim at the float
  output);
* ``gptq-w``: the same with ``target="weights"`` (the paper's: ``W`` itself on the
  quantized inputs' Hessian, the default);
* ``ns-none``: :class:`~skquant.NullSpaceQuantizer` with ``rank=None``;
* ``ns-auto``: the same with ``rank="auto"`` and ``walk_budget=None`` (held-out
  rows pick the cap among all the ladder's, the ladder fitted on at most
  ``AUTO_NEURONS`` neurons of each layer; the default before ``walk_budget``);
* ``ns-default``: ``NullSpaceQuantizer()``, the default (``rank="auto"``,
  ``walk_budget=16``: on layers whose top cap's walk is out of budget, the
  guided walk at the caps within it);
* ``ns-auto-all``: ``rank="auto"`` with the ladder fitted on every neuron (the
  default before ``AUTO_NEURONS``);
* ``ns-64``: the same with ``rank=64``;
* ``ns-path``: ``NullSpaceQuantizer(variant="path")`` (``rank="auto"``);
* ``ns-walk-or-path``: per layer the better of the path variant's ladder and the
  walk's, the walk's caps limited by cost (``WalkOrPath`` below, a prototype);
* ``ns-walk-else-path``: the default where its walk is cheap, ``ns-walk-or-path``
  elsewhere (``WalkElsePath`` below, a prototype);
* ``ns-nearest-ladder``: the default with its ladder scored with
  ``rounding="nearest"`` (``NearestLadder``, a prototype);
* ``ns-budget-8``: the default with ``walk_budget=8`` (measured, not taken);
* ``ns-one-se``: the default taking the smallest of the ladder's caps within one
  standard error of the best (``OneStandardError``, a prototype; measured, not
  taken);
* ``brevitas-gptq`` / ``brevitas-gpfq``: the peer library Brevitas 0.13.4 where it
  is installed (``pip install brevitas==0.13.4``, a benchmark extra; see
  ``_peer_brevitas.py``), on the same per-channel narrow max-abs grid, in the same
  run on the same calibration images; its weights are checked to lie on that grid
  (a model off the grid is reported, not compared).

Prints test accuracy (mean and spread over the seeds) and whole-model seconds per
setting (``seconds``: quantization plus one evaluation on the 10 000 test images,
which is what the round-to-nearest column costs; ``quantize_seconds``, in the rows
of later runs: quantization alone); raw rows go to ``--json`` (re-read and
extended on the next run).

Run: ``python benchmarks/bench_datadriven_networks.py`` (needs the MNIST and
Fashion-MNIST files: ``bash benchmarks/get_data.sh``); a subset with ``--nets
lenet5 --bits 3 2 --calib 1024 --seeds 0``. ``--quantize-seconds`` prints the
seconds tables from ``quantize_seconds`` (quantization alone) and each method's
median ratio to ``gpfq``'s in the same run.
"""

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _models import accuracy, trained

from skquant import (
    GPTQQuantizer,
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    UniformQuantizer,
)
from skquant.torch import quantize_model

try:
    import _peer_brevitas as peer
except ImportError:  # pragma: no cover - the adapter ships with the benchmarks
    peer = None


class AllNeuronsLadder(NullSpaceQuantizer):
    """``rank="auto"`` with its ladder fitted on every neuron (the default before
    the ladder took at most ``AUTO_NEURONS`` of them)."""

    def _ladder_errors(self, W, Xq, Xf, neurons=None, **kw):
        return super()._ladder_errors(W, Xq, Xf, np.arange(W.shape[1]), **kw)


def walk_fits(k, m, n, budget):
    """Whether the walk at cap ``k`` costs at most ``budget`` times GPFQ's path
    on a layer of ``n`` inputs and ``m`` rows, in a flop model per neuron
    (``5 k^2 (n - k)`` against ``4 m n``; ``k >= n``: no walk)."""
    return k >= n or 5 * k * k * (n - k) <= budget * 4 * m * n


class _Prototype(NullSpaceQuantizer):
    def _adopt(self, est, W, activations, target_activations):
        """``est`` fitted in this one's place, its fitted attributes taken."""
        out = est._fit_quantize(W, activations, target_activations)
        for key, value in vars(est).items():
            if key not in est.get_params():
                setattr(self, key, value)
        return out


class WalkOrPath(_Prototype):
    """``rank="auto"`` over both variants, per layer: the path variant's ladder,
    and the walk's at the caps whose walk costs at most ``WALK_BUDGET`` times
    GPFQ's path (:func:`walk_fits`; a cap at the rank counted as no walk); the
    variant and cap with the smallest held-out error are fitted. (A prototype:
    each ladder computes its own spectra.)"""

    WALK_BUDGET = 4.0

    def _allow(self, m, n):
        return lambda k, top: k >= top or walk_fits(k, m, n, self.WALK_BUDGET)

    def _fit_quantize(self, W, activations, target_activations):
        W_, Xq, Xf = self._validate_fit(W, activations, target_activations)
        params = {**self.get_params(), "rank": "auto"}
        scores = {}
        for variant in ("path", "grid"):
            est = NullSpaceQuantizer(**{**params, "variant": variant})
            allow = None if variant == "path" else self._allow(*Xq.shape)
            errors, top = est._ladder_errors(W_, Xq, Xf, allow=allow)
            for k, e in (errors or {}).items():
                scores[(variant, None if k >= top else k)] = float(np.linalg.norm(e))
        variant, rank = (
            min(scores, key=lambda c: (scores[c], c[0] != "grid"))
            if scores
            else ("grid", None)
        )
        chosen = NullSpaceQuantizer(**{**params, "variant": variant, "rank": rank})
        out = self._adopt(chosen, W, activations, target_activations)
        self.rank_scores_ = scores
        return out


class WalkElsePath(WalkOrPath):
    """The default (the walk's ladder) on every layer whose walk at the top cap
    fits ``WALK_BUDGET`` (:func:`walk_fits`); elsewhere ``WalkOrPath``'s
    choice, with the walk's caps limited by that model alone. (A prototype.)"""

    def _allow(self, m, n):
        return lambda k, top: walk_fits(k, m, n, self.WALK_BUDGET)

    def _fit_quantize(self, W, activations, target_activations):
        _, Xq, _ = self._validate_fit(W, activations, target_activations)
        m, n = Xq.shape
        top = min(m - (m + 1) // 5, n)  # the fitting rows bound the top cap
        if walk_fits(top, m, n, self.WALK_BUDGET):
            est = NullSpaceQuantizer(**{**self.get_params(), "rank": "auto"})
            return self._adopt(est, W, activations, target_activations)
        return self._elsewhere(W, activations, target_activations)

    def _elsewhere(self, W, activations, target_activations):
        return super()._fit_quantize(W, activations, target_activations)


class NearestLadder(NullSpaceQuantizer):
    """The default with its ladder's caps scored with ``rounding="nearest"``
    (the final fit rounds as ``rounding`` says). (A prototype.)"""

    def _ladder_errors(self, W, Xq, Xf, *args, **kwargs):
        est = NullSpaceQuantizer(**{**self.get_params(), "rounding": "nearest"})
        out = est._ladder_errors(W, Xq, Xf, *args, **kwargs)
        self.guided_ = est.guided_
        return out


class OneStandardError(NullSpaceQuantizer):
    """The default taking, among the ladder's caps, the smallest whose summed
    squared held-out error exceeds the best cap's by at most one standard error
    of that excess (over the ladder's neurons, paired). (A prototype: measured,
    not taken.)"""

    def _held_out_rank(self, W, Xq, Xf, G=None, spectrum=None, factors=None):
        errors, top = self._ladder_errors(
            W, Xq, Xf, G=G, spectrum=spectrum, factors=factors
        )
        if errors is None:
            return None, {}
        squares = {k: np.square(e, dtype=np.float64) for k, e in errors.items()}
        best = min(squares, key=lambda k: (squares[k].sum(), -k))
        for k in sorted(squares):
            if k >= best:
                break
            excess = squares[k] - squares[best]
            spread = np.sqrt(excess.size) * excess.std(ddof=1) if excess.size > 1 else 0
            if excess.sum() <= spread:
                best = k
                break
        scores = {k: float(np.linalg.norm(e)) for k, e in errors.items()}
        return (None if best >= top else best), scores


NETS = {
    "lenet5": ("MNIST LeNet-5", "mnist"),
    "mlp": ("MNIST MLP", "mnist"),
    "cnn": ("Fashion-MNIST CNN", "fashion-mnist"),
    "vgg8": ("Fashion-MNIST VGG-8", "fashion-mnist"),
}
METHODS = {
    "rtn": lambda b: UniformQuantizer(n_bits=b),
    "gpfq": lambda b: GreedyPathQuantizer(n_bits=b),
    "gptq": lambda b: GPTQQuantizer(n_bits=b, target="float_output"),
    "gptq-w": lambda b: GPTQQuantizer(n_bits=b),
    "ns-none": lambda b: NullSpaceQuantizer(n_bits=b, rank=None),
    "ns-auto": lambda b: NullSpaceQuantizer(n_bits=b, rank="auto", walk_budget=None),
    "ns-default": lambda b: NullSpaceQuantizer(n_bits=b),
    "ns-auto-all": lambda b: AllNeuronsLadder(n_bits=b, rank="auto", walk_budget=None),
    "ns-64": lambda b: NullSpaceQuantizer(n_bits=b, rank=64),
    "ns-path": lambda b: NullSpaceQuantizer(n_bits=b, variant="path"),
    "ns-walk-or-path": lambda b: WalkOrPath(n_bits=b, walk_budget=None),
    "ns-walk-else-path": lambda b: WalkElsePath(n_bits=b, walk_budget=None),
    "ns-nearest-ladder": lambda b: NearestLadder(n_bits=b),
    "ns-budget-8": lambda b: NullSpaceQuantizer(n_bits=b, walk_budget=8.0),
    "ns-one-se": lambda b: OneStandardError(n_bits=b),
}
PEER = ("brevitas-gptq", "brevitas-gpfq")


def peer_model(model, method, bits, X, batch=256):
    """Brevitas' GPTQ or GPFQ on the same grid, checked to lie on it."""
    q = peer.brevitas_quantize(
        model,
        method.split("-")[1],
        bits,
        [X[i : i + batch] for i in range(0, len(X), batch)],
    )
    off = peer.on_grid(q, model, bits)
    if off > 1e-3:
        raise RuntimeError(f"{method}: weights {off:.3g} steps off the grid")
    return q


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--bits", nargs="+", type=int, default=[4, 3, 2])
    p.add_argument("--calib", nargs="+", type=int, default=[256, 1024])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS) + list(PEER),
        choices=list(METHODS) + list(PEER),
    )
    p.add_argument("--json", type=Path, default=Path("bench_datadriven.json"))
    p.add_argument(
        "--quantize-seconds",
        action="store_true",
        help="print quantization seconds and ratios to gpfq from --json, run nothing",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("NEW", "OLD"),
        help="compare two methods' accuracies setting by setting, run nothing",
    )
    p.add_argument(
        "--rst",
        action="store_true",
        help="print the tables of the rows in --json as reST and run nothing",
    )
    args = p.parse_args()
    rows = json.loads(args.json.read_text()) if args.json.exists() else []
    if args.compare:
        print_compare(rows, args, *args.compare)
        return
    if args.quantize_seconds:
        print_quantize_seconds(rows, args)
        return
    if args.rst:
        print_rst(rows, args)
        return
    done = {(r["net"], r["method"], r["bits"], r["calib"], r["seed"]) for r in rows}
    for net in args.nets:
        label, dataset = NETS[net]
        model, (Xtr, _, Xte, yte) = trained(net, dataset, verbose=False)
        float_acc = accuracy(model, Xte, yte)
        print(f"{label}: float test accuracy {100 * float_acc:.2f}%", flush=True)
        for bits in args.bits:
            for calib in args.calib:
                for seed in args.seeds:
                    g = torch.Generator().manual_seed(seed)
                    X = Xtr[torch.randperm(len(Xtr), generator=g)[:calib]]
                    for method in args.methods:
                        key = (net, method, bits, calib, seed)
                        if key in done or (method == "rtn" and calib != args.calib[0]):
                            continue
                        if method in PEER and not (peer and peer.available()):
                            continue
                        start = time.perf_counter()
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            if method in PEER:
                                q = peer_model(model, method, bits, X)
                            else:
                                q = quantize_model(
                                    model,
                                    METHODS[method](bits),
                                    None if method == "rtn" else X,
                                    random_state=seed,
                                )
                        row = {
                            "net": net,
                            "method": method,
                            "bits": bits,
                            "calib": calib,
                            "seed": seed,
                            "float": float_acc,
                            "quantize_seconds": time.perf_counter() - start,
                            # (evaluated first: the column kept from the first
                            # runs includes one test-set evaluation)
                            "accuracy": accuracy(q, Xte, yte),
                            "seconds": time.perf_counter() - start,
                            "warnings": len(caught),
                        }
                        rows.append(row)
                        args.json.write_text(json.dumps(rows))
                        print(
                            f"  {bits} bits, {calib:>4} images, seed {seed}: "
                            f"{method:<8} {100 * row['accuracy']:6.2f}%  "
                            f"{row['seconds']:6.1f}s",
                            flush=True,
                        )
    print_table(rows, args)


def _cells(sel, method, bits, calib):
    acc = [
        100 * r["accuracy"]
        for r in sel
        if r["method"] == method and r["bits"] == bits and r["calib"] == calib
    ]
    sec = [
        r["seconds"]
        for r in sel
        if r["method"] == method and r["bits"] == bits and r["calib"] == calib
    ]
    return acc, sec


def _rst_table(rows):
    """A reST simple table of rows of strings (the first row the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = " ".join("=" * w for w in widths)
    lines = [rule]
    for i, r in enumerate(rows):
        lines.append(" ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append(rule)
    lines.append(rule)
    return "\n".join(lines)


def print_rst(rows, args):
    """Per network: mean accuracy +- sd per method and setting, then seconds."""
    methods = [m for m in args.methods if any(r["method"] == m for r in rows)]
    for net in args.nets:
        sel = [r for r in rows if r["net"] == net]
        if not sel:
            continue
        seeds = sorted({r["seed"] for r in sel})
        print(
            f"\n**{NETS[net][0]}** (float {100 * sel[0]['float']:.2f}%): test "
            f"accuracy %, mean ± sd over {len(seeds)} calibration seeds; the best "
            "mean of each row in bold.\n"
        )
        table = [["bits", "images"] + methods]
        for bits in args.bits:
            for calib in args.calib:
                cells = []
                for m in methods:
                    acc, _ = _cells(
                        sel, m, bits, args.calib[0] if m == "rtn" else calib
                    )
                    cells.append(acc)
                if not any(cells):
                    continue
                best = max(statistics.mean(a) for a in cells if a)
                row = [str(bits), str(calib)]
                for a in cells:
                    if not a:
                        row.append("-")
                        continue
                    sd = statistics.stdev(a) if len(a) > 1 else 0.0
                    txt = f"{statistics.mean(a):.2f} ± {sd:.2f}"
                    row.append(
                        f"**{txt}**" if statistics.mean(a) >= best - 1e-9 else txt
                    )
                table.append(row)
        print(_rst_table(table))
        print("\nSeconds per model, median over seeds and bit-widths:\n")
        table = [["images"] + methods]
        for calib in args.calib:
            row = [str(calib)]
            for m in methods:
                sec = [
                    r["seconds"]
                    for r in sel
                    if r["method"] == m
                    and r["calib"] == (args.calib[0] if m == "rtn" else calib)
                ]
                row.append(f"{statistics.median(sec):.1f}" if sec else "-")
            table.append(row)
        print(_rst_table(table))


def print_quantize_seconds(rows, args):
    """Per network, bit-width and calibration size: each method's median
    quantization seconds over the seeds and its median ratio to ``gpfq``'s (the
    rows of one seed and setting come from the same process, one after another)."""
    methods = [m for m in args.methods if any(r["method"] == m for r in rows)]
    methods = [m for m in methods if m != "rtn"]
    for net in args.nets:
        sel = [r for r in rows if r["net"] == net and "quantize_seconds" in r]
        if not sel:
            continue
        print(
            f"\n**{NETS[net][0]}**: quantization seconds (median over seeds) and "
            "ratio to ``gpfq`` (median of the per-seed ratios)\n"
        )
        table = [["bits", "images"] + methods]
        for bits in args.bits:
            for calib in args.calib:
                row = [str(bits), str(calib)]
                base = {
                    r["seed"]: r["quantize_seconds"]
                    for r in sel
                    if r["method"] == "gpfq"
                    and (r["bits"], r["calib"]) == (bits, calib)
                }
                for m in methods:
                    got = {
                        r["seed"]: r["quantize_seconds"]
                        for r in sel
                        if r["method"] == m and (r["bits"], r["calib"]) == (bits, calib)
                    }
                    if not got:
                        row.append("-")
                        continue
                    ratios = [got[k] / base[k] for k in got if k in base]
                    txt = f"{statistics.median(got.values()):.1f}"
                    if ratios and m != "gpfq":
                        txt += f" ({statistics.median(ratios):.1f}x)"
                    row.append(txt)
                if len(row) > 2:
                    table.append(row)
        print(_rst_table(table))


def print_compare(rows, args, new, old):
    """Setting by setting: ``new`` against ``old`` (mean and seed-to-seed sd of
    ``old``) and against round to nearest."""
    table = [["net", "bits", "images", new, old, "difference", "within sd", ">= rtn"]]
    short = sum_within = sum_rtn = 0
    for net in args.nets:
        sel = [r for r in rows if r["net"] == net]
        for bits in args.bits:
            for calib in args.calib:
                a, _ = _cells(sel, new, bits, calib)
                b, _ = _cells(sel, old, bits, calib)
                rtn, _ = _cells(sel, "rtn", bits, args.calib[0])
                if not (a and b and rtn):
                    continue
                sd = statistics.stdev(b) if len(b) > 1 else 0.0
                diff = statistics.mean(a) - statistics.mean(b)
                within = diff >= -sd - 1e-9
                above = statistics.mean(a) >= statistics.mean(rtn) - 1e-9
                short += 1
                sum_within += within
                sum_rtn += above
                table.append(
                    [
                        net,
                        str(bits),
                        str(calib),
                        f"{statistics.mean(a):.2f}",
                        f"{statistics.mean(b):.2f} ± {sd:.2f}",
                        f"{diff:+.2f}",
                        "yes" if within else "**no**",
                        "yes" if above else "**no**",
                    ]
                )
    print(_rst_table(table))
    print(
        f"\n{new}: within one sd of {old} (or above) in {sum_within} of {short} "
        f"settings; at or above round to nearest in {sum_rtn} of {short}"
    )


def print_table(rows, args):
    for net in args.nets:
        sel = [r for r in rows if r["net"] == net]
        if not sel:
            continue
        print(
            f"\n{NETS[net][0]} (float {100 * sel[0]['float']:.2f}%): test accuracy "
            "%, mean (min-max) over seeds; seconds per model"
        )
        for bits in args.bits:
            for calib in args.calib:
                cells = []
                for method in args.methods:
                    c = calib if method != "rtn" else args.calib[0]
                    acc = [
                        100 * r["accuracy"]
                        for r in sel
                        if r["method"] == method
                        and r["bits"] == bits
                        and r["calib"] == c
                    ]
                    sec = [
                        r["seconds"]
                        for r in sel
                        if r["method"] == method
                        and r["bits"] == bits
                        and r["calib"] == c
                    ]
                    if acc:
                        cells.append(
                            f"{method} {statistics.mean(acc):.2f} "
                            f"({min(acc):.2f}-{max(acc):.2f}) "
                            f"{statistics.median(sec):.1f}s"
                        )
                print(f"  {bits} bits, {calib} images: " + " | ".join(cells))


if __name__ == "__main__":
    main()
