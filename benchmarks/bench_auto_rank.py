"""How far ``NullSpaceQuantizer(rank="auto")`` must climb its ladder of rank caps.

Quantizes LeNet-5, the MNIST MLP, the Fashion-MNIST CNN and VGG-8 (``_models.py``)
with ``NullSpaceQuantizer(n_bits=b)`` at 4, 3 and 2 bits on 256 and 1024 training
images (seed 0), with the whole ladder evaluated on every neuron
(``AUTO_PATIENCE`` beyond its length), and records each layer's held-out error at
every cap, per neuron. It then replays the
climb from the smallest cap with patience 1 and 2: how many layers pick the cap the
whole ladder picks, how much more held-out error the others have, and the walks'
cost (``n_in * k**2 * n_out`` per cap tried) against the whole ladder's.

Run (one thread, about 10 minutes; needs the data of ``get_data.sh``):
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/bench_auto_rank.py \\
        --json benchmarks/results/bench_auto_rank.json
    # the replay only, from the stored ladders:
    .venv/bin/python benchmarks/bench_auto_rank.py \\
        --json benchmarks/results/bench_auto_rank.json --replay
    # and caps limited to a multiple of GPFQ's arithmetic (--budget):
    .venv/bin/python benchmarks/bench_auto_rank.py \\
        --json benchmarks/results/bench_auto_rank.json --replay --budget 1 2 4 16
    # and the ladder fitted on at most 8, 16, 32, 64 neurons (--neurons):
    .venv/bin/python benchmarks/bench_auto_rank.py \\
        --json benchmarks/results/bench_auto_rank.json --replay --neurons 8 16 32 64
    # and every cap's held-out error over the best's, on the 3136-input layers:
    .venv/bin/python benchmarks/bench_auto_rank.py \\
        --json benchmarks/results/bench_auto_rank.json --replay --scores 3136

With ``--budget B``, the replay only tries caps whose walk costs at most ``B``
times GPFQ's kernel on the layer, in a cost model of time: the walk's counted
flops (about ``5 n_in k^2`` per neuron, ``bench_nullspace_speed.py --flops``) at
0.4 of a GEMM's rate, against GPFQ's ``min(4 m n_in n_out, 2 (m + n_out) n_in^2)``
at a GEMM's rate (``m``: the layer's calibration rows, 4096 sampled patches for a
convolution); the smallest cap is always tried.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _models import accuracy, trained

from skquant import NullSpaceQuantizer
from skquant._quantizers import _nullspace
from skquant.torch import quantize_model

NETS = {
    "lenet5": "mnist",
    "mlp": "mnist",
    "cnn": "fashion-mnist",
    "vgg8": "fashion-mnist",
}

#: convolutions at the front of each network (their layers see 4096 patches)
N_CONV = {"lenet5": 2, "mlp": 0, "cnn": 2, "vgg8": 6}


def ladders(nets):
    """Whole-model fits with the whole ladder on every neuron; each layer's
    held-out errors per cap and neuron, and its neurons' held-out output norms."""
    found = []
    ladder_errors = _nullspace.NullSpaceQuantizer._ladder_errors

    def logged(self, W, Xq, Xf, neurons=None, **kw):
        errors, top = ladder_errors(self, W, Xq, Xf, np.arange(W.shape[1]), **kw)
        if errors is not None:
            held = np.zeros(Xq.shape[0], dtype=bool)
            held[4::5] = True
            norms = np.linalg.norm(Xf[held] @ W.astype(np.float64), axis=0)
            found.append(
                {
                    "shape": list(W.shape),
                    "top": top,
                    "norms": [float(f"{v:.6g}") for v in norms],
                    "errors": {
                        k: [float(f"{v:.6g}") for v in e] for k, e in errors.items()
                    },
                    "scores": {k: float(np.linalg.norm(e)) for k, e in errors.items()},
                }
            )
        return errors, top

    _nullspace.NullSpaceQuantizer._ladder_errors = logged
    _nullspace.AUTO_PATIENCE = 10**6
    rows = []
    for net in nets:
        model, (Xtr, _, Xte, yte) = trained(net, NETS[net], verbose=False)
        for bits in (4, 3, 2):
            for calib in (256, 1024):
                g = torch.Generator().manual_seed(0)
                X = Xtr[torch.randperm(len(Xtr), generator=g)[:calib]]
                found.clear()
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    q = quantize_model(
                        model, NullSpaceQuantizer(n_bits=bits), X, random_state=0
                    )
                rows.append(
                    {
                        "net": net,
                        "bits": bits,
                        "calib": calib,
                        "seconds": time.perf_counter() - start,
                        "accuracy": accuracy(q, Xte, yte),
                        "layers": list(found),
                    }
                )
                print(
                    f"{net:<7}{bits} bits {calib:>5} images: "
                    f"{100 * rows[-1]['accuracy']:.2f}%",
                    flush=True,
                )
    return rows


def climb(scores, patience, allowed=None):
    """The caps tried and the cap chosen when climbing with ``patience`` (over the
    caps ``allowed`` accepts, the smallest always)."""
    tried, worse = {}, 0
    caps = sorted(scores)
    for k in caps[:1] + [k for k in caps[1:] if allowed is None or allowed(k)]:
        worse = worse + 1 if tried and scores[k] >= min(tried.values()) else 0
        tried[k] = scores[k]
        if worse >= patience:
            break
    return min(tried, key=lambda k: (tried[k], -k)), tried


def replay(rows):
    for patience in (1, 2):
        same = total = 0
        cost = cost_all = 0.0
        others = []
        for r in rows:
            for layer in r["layers"]:
                scores = {int(k): v for k, v in layer["scores"].items()}
                if not scores:
                    continue
                n, n_out = layer["shape"]
                full = min(scores, key=lambda k: (scores[k], -k))
                got, tried = climb(scores, patience)
                total += 1
                same += got == full
                cost += sum(n * k * k * n_out for k in tried)
                cost_all += sum(n * k * k * n_out for k in scores)
                if got != full:
                    more = scores[got] / scores[full] - 1
                    others.append(
                        f"{r['net']} {r['bits']} bits {r['calib']} images, layer "
                        f"{n}x{n_out}: cap {got} for {full}, +{100 * more:.1f}% "
                        "held-out error"
                    )
        print(
            f"patience {patience}: {same} of {total} layers pick the whole ladder's "
            f"cap; walk cost {cost / cost_all:.2f} of the whole ladder's"
        )
        for line in others:
            print(f"    {line}")


def print_worst(worst, limit):
    """The ``limit`` layers whose cap lost the most held-out error; ``worst``
    holds ``(fraction lost, row, shape, cap got, cap of the whole ladder)``."""
    for more, r, shape, got, full in sorted(worst, key=lambda w: -w[0])[:limit]:
        print(
            f"    {r['net']} {r['bits']} bits {r['calib']} images, layer "
            f"{shape[0]}x{shape[1]}: cap {got} for {full}, "
            f"+{100 * more:.1f}% held-out error"
        )


def replay_neurons(rows, counts):
    """The ladder on at most ``count`` neurons (``ladder_neurons``), patience 2:
    the cap chosen against the whole ladder's on all neurons, and the modelled
    walks (ladder + the final fit at the chosen cap) against the climb's on all
    neurons (today's ``AUTO_NEURONS`` beyond every layer's width)."""
    for count in counts:
        same = total = 0
        cost = cost_all = 0.0
        worst = []
        for r in rows:
            for layer in r["layers"]:
                if "errors" not in layer:
                    raise SystemExit("--neurons needs a --json written by this version")
                n, n_out = layer["shape"]
                errors = {int(k): np.asarray(e) for k, e in layer["errors"].items()}
                full = {k: float(np.linalg.norm(e)) for k, e in errors.items()}
                pick = _nullspace.ladder_neurons(np.asarray(layer["norms"]), count)
                sampled = {k: float(np.linalg.norm(e[pick])) for k, e in errors.items()}
                best = min(full, key=lambda k: (full[k], -k))
                got, tried = climb(sampled, 2)
                _, tried_all = climb(full, 2)
                total += 1
                same += got == best
                cost += sum(n * k * k * pick.size for k in tried) + n * got**2 * n_out
                cost_all += sum(n * k * k * n_out for k in tried_all)
                cost_all += n * best**2 * n_out
                if got != best:
                    worst.append((full[got] / full[best] - 1, r, (n, n_out), got, best))
        print(
            f"ladder on {count} neurons: {same} of {total} layers pick the whole "
            f"ladder's cap; walks {cost / cost_all:.2f} of the ladder on all "
            "neurons; most held-out error lost:"
        )
        print_worst(worst, 5)


def walk_cost(n, k, n_out):
    """Modelled time of the walks at cap ``k`` (GEMM-flop units)."""
    return 5 * n * k * k * n_out / 0.4


def gpfq_cost(m, n, n_out):
    """Modelled time of GPFQ's kernel (GEMM-flop units)."""
    return min(4 * m * n * n_out, 2 * (m + n_out) * n * n)


def replay_budget(rows, budgets):
    """Caps limited to ``budget`` times GPFQ's modelled time, patience 2."""
    for budget in budgets:
        same = total = 0
        cost = cost_gpfq = 0.0
        worst = []
        for r in rows:
            for i, layer in enumerate(r["layers"]):
                scores = {int(k): v for k, v in layer["scores"].items()}
                if not scores:
                    continue
                n, n_out = layer["shape"]
                m = 4096 if i < N_CONV[r["net"]] else r["calib"]
                g = gpfq_cost(m, n, n_out)
                full = min(scores, key=lambda k: (scores[k], -k))
                got, tried = climb(
                    scores,
                    2,
                    lambda k, n=n, n_out=n_out, g=g: (
                        walk_cost(n, k, n_out) <= budget * g
                    ),
                )
                total += 1
                same += got == full
                # the ladder's walks, then the final fit at the chosen cap
                cost += sum(walk_cost(n, k, n_out) for k in tried)
                cost += walk_cost(n, got, n_out)
                cost_gpfq += g
                if got != full:
                    worst.append(
                        (scores[got] / scores[full] - 1, r, (n, n_out), got, full)
                    )
        print(
            f"budget {budget:g}: {same} of {total} layers pick the whole ladder's "
            f"cap; modelled time {cost / cost_gpfq:.1f}x GPFQ's; most held-out "
            "error lost:"
        )
        print_worst(worst, 4)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--json", type=Path, default=Path("bench_auto_rank.json"))
    p.add_argument("--replay", action="store_true", help="replay --json, run nothing")
    p.add_argument(
        "--budget",
        nargs="+",
        type=float,
        default=[],
        help="also replay with caps limited to these multiples of GPFQ's time",
    )
    p.add_argument(
        "--neurons",
        nargs="+",
        type=int,
        default=[],
        help="also replay the ladder fitted on at most this many neurons",
    )
    p.add_argument(
        "--scores",
        metavar="N_IN",
        type=int,
        help="also print, for the layers with N_IN inputs, each cap's held-out "
        "error relative to the best cap's",
    )
    args = p.parse_args()
    if args.replay:
        rows = json.loads(args.json.read_text())
    else:
        rows = ladders(args.nets)
        args.json.write_text(json.dumps(rows))
    replay(rows)
    replay_budget(rows, args.budget)
    replay_neurons(rows, args.neurons)
    if args.scores:
        print_scores(rows, args.scores)


def print_scores(rows, n_in):
    """Each cap's held-out error over the best cap's, layers of ``n_in`` inputs."""
    for row in rows:
        for layer in row["layers"]:
            if layer["shape"][0] != n_in:
                continue
            scores = {int(k): v for k, v in layer["scores"].items()}
            best = min(scores.values())
            cells = "  ".join(f"{k}: {v / best:.3f}" for k, v in sorted(scores.items()))
            print(
                f"{row['net']} {row['bits']} bits {row['calib']} images, layer "
                f"{layer['shape'][0]}x{layer['shape'][1]}: {cells}"
            )


if __name__ == "__main__":
    main()
