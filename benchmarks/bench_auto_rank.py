"""How far ``NullSpaceQuantizer(rank="auto")`` must climb its ladder of rank caps.

Quantizes LeNet-5, the MNIST MLP, the Fashion-MNIST CNN and VGG-8 (``_models.py``)
with ``NullSpaceQuantizer(n_bits=b)`` at 4, 3 and 2 bits on 256 and 1024 training
images (seed 0), with the whole ladder evaluated (``AUTO_PATIENCE`` beyond its
length), and records each layer's held-out error at every cap. It then replays the
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
"""

import argparse
import json
import time
import warnings
from pathlib import Path

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


def ladders(nets):
    """Whole-model fits with the whole ladder; each layer's held-out errors."""
    found = []
    held_out_rank = _nullspace.NullSpaceQuantizer._held_out_rank

    def logged(self, W, Xq, Xf):
        best, scores = held_out_rank(self, W, Xq, Xf)
        found.append({"shape": list(W.shape), "scores": scores})
        return best, scores

    _nullspace.NullSpaceQuantizer._held_out_rank = logged
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


def climb(scores, patience):
    """The caps tried and the cap chosen when climbing with ``patience``."""
    tried, worse = {}, 0
    for k in sorted(scores):
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--json", type=Path, default=Path("bench_auto_rank.json"))
    p.add_argument("--replay", action="store_true", help="replay --json, run nothing")
    args = p.parse_args()
    if args.replay:
        rows = json.loads(args.json.read_text())
    else:
        rows = ladders(args.nets)
        args.json.write_text(json.dumps(rows))
    replay(rows)


if __name__ == "__main__":
    main()
