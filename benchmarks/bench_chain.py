"""Chained int8 layers (``chain_int8``) against the unchained W4A8 model, the
float model and torch's own static int8, on the benchmarks' networks.

For the 4096-4096-4096-1000 MLP of ``bench_runtime.py`` (random weights,
``UniformQuantizer``, inputs N(0, 1)) and for each of LeNet-5 (MNIST), the
Fashion-MNIST CNN and VGG-8 (Fashion-MNIST; the networks and weights of
``bench_runtime.py``, trained and cached by ``benchmarks/_models.py``, GPFQ):
4-bit weights and static 8-bit input grids on the same 1024 training inputs as
``bench_runtime.py``, BatchNorms folded (``fold_batchnorm=True``: VGG-8's sit
between its convolutions and ReLUs, where a chain cannot pass), then a copy
chained by ``skquant.torch.chain_int8``. Prints the links, the median forward
times at batch 1 and 256 under ``torch.no_grad()`` (2 threads, rounds
interleaved), their ratios to the unchained model and to torch's static int8
(``quantize_fx``), the test accuracy of each (the MLP has no labels), and how
many predictions (argmax) the chain changes (the MLP: of its 1024 inputs).

Run (the data: ``bash benchmarks/get_data.sh``)::

    .venv/bin/python benchmarks/bench_chain.py --rounds 15 \\
        --json benchmarks/results/bench_chain.json
"""

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_runtime import (  # noqa: E402
    accuracy,
    latencies,
    load_net,
    torch_int8,
    weights,
)

from skquant import ActivationQuantizer  # noqa: E402
from skquant.torch import chain_int8, quantize_model  # noqa: E402


@torch.no_grad()
def predictions(model, X, batch=1000):
    return torch.cat(
        [model(X[i : i + batch]).argmax(1) for i in range(0, len(X), batch)]
    )


def run(net, rounds):
    model, calib, Xte, yte = load_net(net)
    if Xte is None:  # (the MLP: its calibration inputs, no labels)
        Xte = calib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(
            model,
            weights(net, 4),
            calib,
            activations=ActivationQuantizer(n_bits=8),
            fold_batchnorm=True,
        )
    chained = copy.deepcopy(q)
    links = chain_int8(chained)
    models = {
        "float": model,
        "torch int8": torch_int8(model, calib),
        "W4A8": q,
        "W4A8 chained": chained,
    }
    t1, t256 = latencies(models, Xte[:1], Xte[:256], rounds)
    acc = {k: None if yte is None else accuracy(m, Xte, yte) for k, m in models.items()}
    changed = int((predictions(q, Xte) != predictions(chained, Xte)).sum())
    return {
        "net": net,
        "links": links,
        "batch1_ms": {k: 1e3 * v for k, v in t1.items()},
        "batch256_ms": {k: 1e3 * v for k, v in t256.items()},
        "accuracy": acc,
        "predictions_changed": changed,
        "n_test": len(Xte),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=["mlp", "lenet5", "cnn", "vgg8"])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    results = []
    for net in args.nets:
        r = run(net, args.rounds)
        results.append(r)
        print(f"\n{net}: {len(r['links'])} links {r['links']}")
        head = f"{'batch 1 ms':>10s} {'batch 256 ms':>12s} {'accuracy':>9s}"
        print(f"  {'variant':14s} {head}")
        for k in r["batch1_ms"]:
            a = r["accuracy"][k]
            print(
                f"  {k:14s} {r['batch1_ms'][k]:10.3f} {r['batch256_ms'][k]:12.2f}"
                + ("" if a is None else f" {100 * a:8.2f}%")
            )
        for b in ("batch1_ms", "batch256_ms"):
            t = r[b]
            print(
                f"  {b[:-3]}: chained / unchained {t['W4A8 chained'] / t['W4A8']:.2f}x,"
                f" chained / torch int8 {t['W4A8 chained'] / t['torch int8']:.2f}x,"
                f" unchained / torch int8 {t['W4A8'] / t['torch int8']:.2f}x"
            )
        print(
            f"  predictions the chain changes: {r['predictions_changed']}"
            f" of {r['n_test']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
