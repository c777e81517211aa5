"""Per-layer bit-widths (Zhou et al.) against the allocators users pick today.

On four networks (MNIST MLP and LeNet-5, a Fashion-MNIST CNN and an 8-layer
VGG-style CNN), one per-channel uniform quantizer (MSQ) and one size accounting
(codes + scales, as stored), compares the allocations:

* ``equal``: the same choice for every layer (binary, ternary, 2, 3, 4, 5, 6 or 8
  bits; ternary is :class:`TernaryQuantizer`'s optimal scale, 2 bits the max-abs
  grid, both stored in 2-bit codes);
* ``zhou-margin`` / ``zhou-empirical``: Zhou's normalised noise ``p_i(b) / t_i``
  with ``t`` from the logit margins or from the noise-injection search, exact
  allocation (:func:`skquant.allocate_bits`);
* ``sqnr``: Lin et al.'s inverse SQNR per layer, exact allocation;
* ``hessian``: HAWQ's Hutchinson trace times the weight error, exact allocation;
* ``accuracy-greedy``: the per-layer accuracy drop, greedy downgrades under an
  accuracy target (automatic mixed precision).

Protocol: the MNIST/Fashion-MNIST test set is split in two; bit-widths are chosen
on a random sample of ``--samples`` rows of the first half (the validation half,
one sample per seed) and accuracy is reported on the second half (test). For each
allocator the targets are swept (``--points`` per allocator; each exact solve is a
point of that allocator's Pareto front); "size at equal accuracy" is the smallest
allocation of the front whose accuracy on the whole validation half is within 0.1
point of the 8-bit equal allocation's (found by bisection along the front, sorted
by size), against the smallest equal bit-width that is. The plot shows test
accuracy for about a dozen points of each front (seed 0).

Prints the oracles of Zhou et al.'s method (slopes, additivity, ``t`` margin vs
empirical), timings, the size table, and writes the Pareto plot (test accuracy
against bits per weight) with ``--plot``.

Run: ``python benchmarks/bench_layer_bits.py --plot docs/images/layer_bits_pareto.png``
(needs the MNIST and Fashion-MNIST files: ``bash benchmarks/get_data.sh``).
"""

import argparse
import json
import time

import numpy as np
import torch
from _models import trained

from skquant import UniformQuantizer
from skquant._layerbits._allocation import (
    allocate_bits,
    closed_form_bits,
    pareto_choices,
)
from skquant._layerbits._choices import choice_quantizer
from skquant._layerbits._law import decisions
from skquant.torch import TorchNetwork, measure_sensitivity

NETWORKS = [
    ("MNIST MLP", "mlp", "mnist"),
    ("MNIST LeNet-5", "lenet5", "mnist"),
    ("Fashion CNN", "cnn", "fashion-mnist"),
    ("Fashion VGG-8", "vgg8", "fashion-mnist"),
]
BITS = ("binary", "ternary", 2, 3, 4, 5, 6, 8)
ALLOCATORS = ("zhou-margin", "zhou-empirical", "sqnr", "hessian", "accuracy-greedy")


def sweep(res, name, n_points):
    """Allocations (choice index per layer) of one allocator over its sweep.

    The exact allocators minimise the size under cost targets spaced
    geometrically from the lowest possible total cost to that of the smallest
    choices (each point is on the allocator's Pareto front); the greedy one takes
    accuracy-drop targets from the lowest possible total to 30 points above it.
    """
    if name == "accuracy-greedy":
        cost = res.cost("accuracy")
        low = cost.min(axis=1).sum()  # what the most accurate choices cost
        targets = low + np.concatenate([[0.0], np.geomspace(1e-4, 0.3, n_points)])
        return pareto_choices(cost, res.size, targets=targets, solver="greedy")
    cost = {
        "zhou-margin": lambda: res.cost("noise", "margin"),
        "zhou-empirical": lambda: res.cost("noise", "empirical"),
        "sqnr": lambda: res.cost("sqnr"),
        "hessian": lambda: res.cost("hessian"),
    }[name]()
    return pareto_choices(
        np.nan_to_num(cost, posinf=1e300), res.size, n_points=n_points
    )


def smallest_reaching(front, accuracy, target):
    """The smallest allocation of a front (sorted by size) whose validation
    accuracy reaches ``target``, by bisection (accuracy grows along a front)."""
    if not front or accuracy(front[-1]) < target:
        return None
    lo, hi = 0, len(front) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if accuracy(front[mid]) >= target:
            hi = mid
        else:
            lo = mid + 1
    return front[lo]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--points", type=int, default=60)
    p.add_argument("--networks", default="mlp,lenet5,cnn,vgg8")
    p.add_argument("--plot", default=None)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--timing",
        action="store_true",
        help="only time the measurement (one seed) and the allocation per network",
    )
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    wanted = args.networks.split(",")
    summary = {}
    fig_data = {}
    for title, key, dataset in NETWORKS:
        if key not in wanted:
            continue
        model, (_, _, Xte, yte) = trained(key, dataset, verbose=False)
        half = len(Xte) // 2
        Xval, yval, Xtest, ytest = Xte[:half], yte[:half], Xte[half:], yte[half:]
        net = TorchNetwork(model)
        names = net.layer_names
        n_params = np.array([net.n_params(n) for n in names])
        weights = {}
        for name in names:
            W = net.weight(name)
            for b in BITS:
                q = choice_quantizer(UniformQuantizer(), b).fit(W)
                weights[name, b] = q.transform(W)
        test_cache, val_cache = {}, {}

        def val_accuracy(choice):
            key_ = tuple(int(c) for c in choice)
            if key_ not in val_cache:
                w = {n: weights[n, BITS[j]] for n, j in zip(names, key_)}
                Z = net.outputs(Xval, w)
                val_cache[key_] = float(np.mean(decisions(Z) == yval.numpy()))
            return val_cache[key_]

        def test_accuracy(choice):
            key_ = tuple(int(c) for c in choice)
            if key_ not in test_cache:
                w = {n: weights[n, BITS[j]] for n, j in zip(names, key_)}
                Z = net.outputs(Xtest, w)
                test_cache[key_] = float(np.mean(decisions(Z) == ytest.numpy()))
            return test_cache[key_]

        float_test = float(np.mean(decisions(net.outputs(Xtest)) == ytest.numpy()))
        print(
            f"\n=== {title}: {n_params.sum()} weights in {len(names)} layers, "
            f"float test accuracy {100 * float_test:.2f}%"
        )
        rows = {a: [] for a in ("equal", *ALLOCATORS)}
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            res = measure_sensitivity(
                model,
                Xval,
                yval,
                bits=BITS,
                threshold="both",
                hessian=True,
                max_samples=args.samples,
                random_state=seed,
            )
            t_measure = time.perf_counter() - t0
            if args.timing:
                t1 = time.perf_counter()
                default = allocate_bits(
                    res.cost("noise", "margin"), res.size, max_cost=1.0
                )
                t_solve = time.perf_counter() - t1
                bpw = res.size[np.arange(len(names)), default].sum() / n_params.sum()
                print(
                    "LayerBitAllocator's default (max_cost=1, margin t, tolerance "
                    f"0.5 point): bits {[BITS[j] for j in default]}, "
                    f"{bpw:.2f} bits/weight, test accuracy "
                    f"{100 * test_accuracy(default):.2f}% "
                    f"(float {100 * float_test:.2f}%)"
                )
                print(
                    f"measurement: {res.forward_passes} forward passes on "
                    f"{args.samples} samples, {t_measure:.1f} s (threshold both, "
                    f"Hessian, additivity; {n_params.sum()} weights, "
                    f"{len(names)} layers x {len(BITS)} choices); exact allocation "
                    f"{1e3 * t_solve:.1f} ms"
                )
                break
            size = res.size
            rows_i = np.arange(len(names))
            if seed == 0:
                print(res)
                print(
                    f"measurement: {res.forward_passes} forward passes on "
                    f"{args.samples} samples, {t_measure:.1f} s (threshold both, "
                    "Hessian, additivity)"
                )
            equal = [np.full(len(names), j) for j in range(len(BITS))]
            target = val_accuracy(equal[-1]) - 0.001
            sweeps = {"equal": equal}
            t_alloc = {}
            for a in ALLOCATORS:
                t1 = time.perf_counter()
                sweeps[a] = sweep(res, a, args.points)
                t_alloc[a] = (time.perf_counter() - t1) / len(sweeps[a])
            for a, allocs in sweeps.items():
                front = sorted(
                    {tuple(int(x) for x in c) for c in allocs},
                    key=lambda c: size[rows_i, list(c)].sum(),
                )
                best = smallest_reaching(front, val_accuracy, target)
                if best is None:  # no point of the sweep reaches the target
                    rows[a].append(None)
                else:
                    rows[a].append(
                        {
                            "size": float(size[rows_i, list(best)].sum()),
                            "test": test_accuracy(best),
                            "val": val_accuracy(best),
                            "bits": [BITS[j] for j in best],
                        }
                    )
                if seed == 0:
                    step = max(1, len(front) // 12)
                    pick = set(front[::step]) | ({best} if best else set())
                    pts = sorted(
                        (size[rows_i, list(c)].sum() / n_params.sum(), test_accuracy(c))
                        for c in pick
                    )
                    fig_data.setdefault(title, {})[a] = pts
            if seed == 0:
                t = res.threshold("margin")
                real = closed_form_bits(
                    res.p, t, res.n_params, 1.0, alpha=float(-np.mean(res.slope))
                )
                exact = allocate_bits(res.cost("noise", "margin"), size, max_cost=1.0)
                print(
                    "Zhou's condition sum p_i(b_i)/t_i <= 1 (margin t): closed "
                    f"form {np.round(real, 2).tolist()}, exact "
                    f"{[BITS[j] for j in exact]}"
                )
                print(
                    "allocation time per solve (ms): "
                    + ", ".join(f"{a} {1e3 * t:.1f}" for a, t in t_alloc.items())
                )
        if args.timing:
            continue
        print(
            f"\nsize at equal accuracy (validation within 0.1 point of 8 bits "
            f"everywhere), {args.seeds} seeds:"
        )
        print(
            f"{'allocator':<17}{'KiB':>9}{'bits/w':>8}{'vs equal':>10}"
            f"{'test acc %':>12}  bits per layer (seed 0)"
        )
        base = np.array([r["size"] for r in rows["equal"]])
        summary[title] = {}
        for a, rs in rows.items():
            if any(r is None for r in rs):
                missed = sum(r is None for r in rs)
                print(
                    f"{a:<17}  no point of the sweep within 0.1 point on "
                    f"validation ({missed} of {len(rs)} seeds)"
                )
                summary[title][a] = None
                continue
            s = np.array([r["size"] for r in rs])
            acc = np.array([r["test"] for r in rs])
            saving = 1 - s / base
            summary[title][a] = {
                "kib": float(np.mean(s) / 8192),
                "saving_mean": float(saving.mean()),
                "saving_std": float(saving.std()),
                "test_mean": float(acc.mean()),
                "bits_seed0": rs[0]["bits"],
            }
            print(
                f"{a:<17}{np.mean(s) / 8192:>9.1f}"
                f"{np.mean(s) / n_params.sum():>8.2f}"
                f"{100 * saving.mean():>+8.1f}% "
                f"{100 * acc.mean():>9.2f}±{100 * acc.std():.2f}  {rs[0]['bits']}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(fig_data), figsize=(4.2 * len(fig_data), 3.6))
        axes = np.atleast_1d(axes)
        for ax, (title, curves) in zip(axes, fig_data.items()):
            for a, pts in curves.items():
                x, y = zip(*pts)
                style = "ks-" if a == "equal" else "o-"
                ax.plot(x, 100 * np.array(y), style, ms=3, lw=1, label=a)
            top = max(max(y for _, y in pts) for pts in curves.values())
            ax.set_ylim(100 * top - 3, 100 * top + 0.3)
            ax.set_xlim(1.8, 6.5)
            ax.set_title(title)
            ax.set_xlabel("bits per weight (codes + scales)")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
