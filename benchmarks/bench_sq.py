"""Smart Quantization against float, all-binary and all-ternary training, same budget.

For each network and seed, trains from scratch with the same optimiser (Adam,
cosine learning-rate decay), batches and number of epochs:

* ``float``: plain training (:func:`skquant.torch.train_baseline`);
* ``binary``: BinaryConnect-style, per-layer scale ``mean|w|``, straight-through;
* ``ternary``: TWN-style, per-layer TWN level, straight-through;
* ``sq g=...``: :func:`skquant.torch.train_sq` at each ``--gammas`` value
  (``--epochs`` with the penalty, then ``--finetune`` straight-through epochs);
* ``sq ternary-end`` / ``sq binary-end``: the ablations, ``beta`` frozen next to
  ``pi/4`` (every layer ternary) or next to ``pi/2`` (every layer binary).

Prints test accuracy, fraction of binary layers, bits per weight (codes + one
float32 scale per layer) and the weight size of the quantized layers, mean and
standard deviation over the seeds; writes the raw results to ``--json`` and the
plots (gamma trade-off, beta trajectories) to ``--plots``.

Run: ``python benchmarks/bench_sq.py`` (MNIST and Fashion-MNIST files: ``bash
benchmarks/get_data.sh``). ``--nets lenet5 --seeds 0`` for one quick run.
"""

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from _models import accuracy, fashion_cnn, lenet5, mlp, mnist_tensors

from skquant.datasets import mnist_available
from skquant.torch import train_baseline, train_sq

NETS = {
    # name: (constructor, dataset, images, epochs with the penalty, fine-tune epochs)
    "lenet5": (lenet5, "mnist", True, 8, 2),
    "mlp": (mlp, "mnist", False, 8, 2),
    "cnn": (fashion_cnn, "fashion-mnist", True, 4, 1),
}
LABELS = {"lenet5": "MNIST LeNet-5", "mlp": "MNIST MLP", "cnn": "Fashion-MNIST CNN"}


def settings(gammas, ablations):
    out = [("float", {}), ("binary", {}), ("ternary", {})]
    out += [(f"sq g={g:g}", {"gamma": g}) for g in gammas]
    if ablations:
        out += [
            ("sq ternary-end", {"gamma": 0.0, "beta": math.pi / 4 + 0.01}),
            ("sq binary-end", {"gamma": 0.0, "beta": math.pi / 2 - 0.01}),
        ]
    return out


def run_one(net, label, opts, seed, args, data):
    make, _, _, epochs, finetune = NETS[net]
    if args.epochs:
        epochs, finetune = args.epochs, args.finetune
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    model = make()
    start = time.perf_counter()
    common = dict(
        lr=args.lr,
        lr_schedule="cosine",
        batch_size=args.batch,
        random_state=seed,
        verbose=False,
    )
    if label in ("float", "binary", "ternary"):
        res = train_baseline(
            model, (Xtr, ytr), alphabet=label, epochs=epochs + finetune, **common
        )
    else:
        frozen = "beta" in opts
        res = train_sq(
            model,
            (Xtr, ytr),
            gamma=opts["gamma"],
            lam=args.lam,
            epochs=epochs,
            finetune_epochs=finetune,
            beta_init=opts.get("beta", 3 * math.pi / 8),
            freeze_beta=frozen,
            **common,
        )
    seconds = time.perf_counter() - start
    row = {
        "net": net,
        "setting": label,
        "seed": seed,
        "accuracy": accuracy(res.model, Xte, yte),
        "binary_fraction": res.binary_fraction,
        "bits_per_weight": res.bits_per_weight,
        "size_bytes": res.size_bits / 8,
        "alphabets": res.alphabets,
        "seconds": seconds,
    }
    if res.regularizer is not None:
        row["beta_history"] = [h["beta"] for h in res.history if h["phase"] == "train"]
        row["zero_fraction"] = res.history[-1]["zero_fraction"]
    return row


def summarise(rows, net, label):
    sel = [r for r in rows if r["net"] == net and r["setting"] == label]
    if not sel:
        return {"n": 0}

    def ms(key, scale=1.0):
        vals = [scale * r[key] for r in sel]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return statistics.mean(vals), sd

    return {
        "accuracy": ms("accuracy", 100),
        "binary_fraction": ms("binary_fraction"),
        "bits_per_weight": ms("bits_per_weight"),
        "size_kb": ms("size_bytes", 1e-3),
        "n": len(sel),
    }


def _alphabets(rows, net, label):
    """The alphabets of each seed, as b/t strings (one when all seeds agree)."""
    seen = [
        "/".join(a[0] for a in r["alphabets"].values())
        for r in sorted(rows, key=lambda r: r["seed"])
        if r["net"] == net and r["setting"] == label
    ]
    return seen[0] if len(set(seen)) == 1 else ", ".join(seen)


def print_table(rows, nets, labels, rst=False):
    for net in nets:
        n_seeds = len({r["seed"] for r in rows if r["net"] == net})
        cells = []
        for label in labels:
            s = summarise(rows, net, label)
            if not s["n"]:
                continue
            accs = [
                100 * r["accuracy"]
                for r in rows
                if r["net"] == net and r["setting"] == label
            ]
            a, b, w, k = (
                s[key]
                for key in ("accuracy", "binary_fraction", "bits_per_weight", "size_kb")
            )
            cells.append(
                (
                    label,
                    f"{a[0]:.2f} +- {a[1]:.2f}",
                    f"{min(accs):.2f}",
                    f"{b[0]:.2f}",
                    f"{w[0]:.3f}",
                    f"{k[0]:.1f}",
                    _alphabets(rows, net, label) if label != "float" else "float",
                )
            )
        head = ("setting", "accuracy %", "min %", "binary", "bits/w", "kB", "layers")
        widths = [max(len(str(c[i])) for c in cells + [head]) for i in range(7)]
        line = "  ".join("=" * w for w in widths)
        print(
            f"\n{LABELS[net]} ({n_seeds} seeds; accuracy mean +- sd, the lowest; "
            "binary: fraction of binary layers; kB: stored weights)"
        )
        if rst:
            print(line)
        print("  ".join(f"{h:<{w}}" for h, w in zip(head, widths)))
        print(line if rst else "-" * len(line))
        for c in cells:
            print("  ".join(f"{v:<{w}}" for v, w in zip(c, widths)))
        if rst:
            print(line)


def net_gammas(rows, net):
    return sorted(
        {
            float(r["setting"][5:])
            for r in rows
            if r["net"] == net and r["setting"].startswith("sq g=")
        }
    )


def plot(rows, nets, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, len(nets), figsize=(4 * len(nets), 6), squeeze=False)
    for j, net in enumerate(nets):
        gammas = net_gammas(rows, net)
        acc = [summarise(rows, net, f"sq g={g:g}")["accuracy"] for g in gammas]
        bpw = [summarise(rows, net, f"sq g={g:g}")["bits_per_weight"] for g in gammas]
        x = [max(g, min(gg for gg in gammas if gg > 0) / 10) for g in gammas]
        ax = axes[0, j]
        ax.errorbar(x, [a[0] for a in acc], yerr=[a[1] for a in acc], marker="o")
        for label, style in (("ternary", "--"), ("binary", ":"), ("float", "-")):
            s = summarise(rows, net, label)
            if s["n"]:
                ax.axhline(s["accuracy"][0], ls=style, color="gray", lw=0.8)
                ax.text(x[0], s["accuracy"][0], label, fontsize=7, va="bottom")
        ax.set_xscale("log")
        ax.set_title(LABELS[net], fontsize=9)
        ax.set_ylabel("test accuracy %")
        ax = axes[1, j]
        ax.errorbar(
            x, [b[0] for b in bpw], yerr=[b[1] for b in bpw], marker="s", color="C1"
        )
        ax.set_xscale("log")
        ax.set_xlabel("gamma (first point: gamma = 0)")
        ax.set_ylabel("bits per weight")
    fig.tight_layout()
    fig.savefig(out_dir / "sq_gamma.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(nets), figsize=(4 * len(nets), 3.2), squeeze=False)
    for j, net in enumerate(nets):
        gammas = net_gammas(rows, net)
        mid = gammas[len(gammas) // 2]
        sel = [
            r
            for r in rows
            if r["net"] == net
            and r["setting"] == f"sq g={mid:g}"
            and r["seed"] == min(r2["seed"] for r2 in rows)
        ]
        ax = axes[0, j]
        if sel:
            hist = sel[0]["beta_history"]
            for name in hist[0]:
                ax.plot(range(1, len(hist) + 1), [h[name] for h in hist], label=name)
        ax.axhline(3 * math.pi / 8, color="gray", ls="--", lw=0.8)
        ax.set_title(f"{LABELS[net]}, gamma={mid:g}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("beta (pi/4 ternary .. pi/2 binary)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "sq_beta.png", dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--gammas", nargs="+", type=float, default=[0.0, 1e-4, 1e-3, 1e-2])
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--only", nargs="+", default=None, help="settings to run")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs")
    p.add_argument("--finetune", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lam", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--json", type=Path, default=Path("bench_sq.json"))
    p.add_argument("--plots", type=Path, default=None)
    p.add_argument("--replot", action="store_true", help="plot --json, run nothing")
    p.add_argument("--rst", action="store_true", help="tables as reStructuredText")
    args = p.parse_args()
    if args.replot:
        rows = json.loads(args.json.read_text())
    else:
        if not mnist_available():
            raise SystemExit("needs MNIST: run bash benchmarks/get_data.sh")
        torch.set_num_threads(torch.get_num_threads())
        rows = json.loads(args.json.read_text()) if args.json.exists() else []
        done = {(r["net"], r["setting"], r["seed"]) for r in rows}
        for net in args.nets:
            _, dataset, image, _, _ = NETS[net]
            data = mnist_tensors(dataset, image=image)
            for seed in args.seeds:
                for label, opts in settings(args.gammas, not args.no_ablations):
                    if args.only and label not in args.only:
                        continue
                    if (net, label, seed) in done:
                        continue
                    row = run_one(net, label, opts, seed, args, data)
                    rows.append(row)
                    args.json.write_text(json.dumps(rows))
                    print(
                        f"{net:<7} seed {seed} {label:<15} "
                        f"acc {100 * row['accuracy']:.2f}"
                        f"  binary {row['binary_fraction']:.2f}  "
                        f"bits/w {row['bits_per_weight']:.3f}  {row['seconds']:.0f}s  "
                        f"{row['alphabets'] if 'sq' in label else ''}",
                        flush=True,
                    )
    nets = [n for n in args.nets if any(r["net"] == n for r in rows)]
    seen = list(dict.fromkeys(r["setting"] for r in rows))
    order = ["float", "binary", "ternary"]
    order += sorted(
        (s for s in seen if s.startswith("sq g=")), key=lambda s: float(s[5:])
    )
    order += [s for s in seen if s not in order]
    print_table(rows, nets, order, rst=args.rst)
    if args.plots:
        plot(rows, nets, args.plots)


if __name__ == "__main__":
    main()
