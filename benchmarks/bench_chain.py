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

``--bits 8``: W8A8 instead (8-bit weights, GPFQ; ``UniformQuantizer`` for the
MLP and ResNet-18), and beside it the same model on the simulated path (a copy
made as on a CPU whose int8 kernels saturate 8-bit pair sums: what W8A8 ran on
before ``exact_pair_sums``), with the predictions the kernels change against it.
``--nets resnet18``: torchvision's ResNet-18 (random weights, BatchNorms folded;
64 random 3x224x224 calibration images, 32 test images: batch 1 and 32, no
accuracy; in each residual block ``conv1`` chains to ``conv2``, read on the
block's ``torch.fx`` graph, and the residual sums stay float).

Run (the data: ``bash benchmarks/get_data.sh``)::

    .venv/bin/python benchmarks/bench_chain.py --rounds 15 \\
        --json benchmarks/results/bench_chain.json
    .venv/bin/python benchmarks/bench_chain.py --bits 8 --rounds 15 \\
        --nets mlp lenet5 cnn vgg8 resnet18 --json benchmarks/results/bench_w8a8.json
    .venv/bin/python benchmarks/bench_chain.py --bits 8 --rounds 15 \\
        --nets resnet18 --json benchmarks/results/bench_w8a8_resnet18.json
"""

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_runtime import (  # noqa: E402
    accuracy,
    latencies,
    load_net,
    torch_int8,
    weights,
)

from skquant import ActivationQuantizer, UniformQuantizer  # noqa: E402
from skquant.torch import _int8, chain_int8, quantize_model  # noqa: E402


@torch.no_grad()
def predictions(model, X, batch=1000):
    return torch.cat(
        [model(X[i : i + batch]).argmax(1) for i in range(0, len(X), batch)]
    )


def resnet18():
    """(ResNet-18 with random weights, 64 calibration images, 32 test images,
    no labels)."""
    from bench_network_memory import _import_resnet18

    torch.manual_seed(0)
    model = _import_resnet18()[0](weights=None).eval()
    g = torch.Generator().manual_seed(1)
    X = torch.rand(96, 3, 224, 224, generator=g)
    return model, X[:64], X[64:], None


def run(net, rounds, bits=4):
    model, calib, Xte, yte = resnet18() if net == "resnet18" else load_net(net)
    if Xte is None:  # (the MLP: its calibration inputs, no labels)
        Xte = calib
    w = UniformQuantizer(n_bits=bits) if net == "resnet18" else weights(net, bits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(
            model,
            w,
            calib,
            activations=ActivationQuantizer(n_bits=8),
            fold_batchnorm=True,
        )
    name = f"W{bits}A8"
    chained = copy.deepcopy(q)
    links = chain_int8(chained)
    models = {
        "float": model,
        "torch int8": torch_int8(model, calib),
        name: q,
        f"{name} chained": chained,
    }
    if bits == 8:  # a copy where the kernels' pair sums saturate: simulated
        with mock.patch.object(_int8, "exact_pair_sums", lambda: False):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                models[f"{name} simulated"] = copy.deepcopy(q)
    big = Xte[:256]
    t1, tb = latencies(models, Xte[:1], big, rounds)
    acc = {k: None if yte is None else accuracy(m, Xte, yte) for k, m in models.items()}
    preds = {k: predictions(models[k], Xte) for k in models if k.startswith(name)}
    changed = {k: int((p != preds[name]).sum()) for k, p in preds.items() if k != name}
    return {
        "net": net,
        "bits": bits,
        "links": links,
        "int8_layers": sum(getattr(m, "_int8", None) is not None for m in q.modules()),
        "batch": len(big),
        "batch1_ms": {k: 1e3 * v for k, v in t1.items()},
        f"batch{len(big)}_ms": {k: 1e3 * v for k, v in tb.items()},
        "accuracy": acc,
        "predictions_changed": changed,
        "n_test": len(Xte),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=["mlp", "lenet5", "cnn", "vgg8"])
    p.add_argument("--bits", type=int, default=4, choices=(4, 8))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    print(f"this CPU's int8 kernels sum 8-bit pairs exactly: {_int8.exact_pair_sums()}")
    results = []
    name = f"W{args.bits}A8"
    for net in args.nets:
        r = run(net, args.rounds, args.bits)
        results.append(r)
        print(f"\n{net}: {r['int8_layers']} layers on int8 kernels, "
              f"{len(r['links'])} links {r['links']}")  # fmt: skip
        big = f"batch{r['batch']}_ms"
        size = f"batch {r['batch']} ms"
        head = f"{'batch 1 ms':>10s} {size:>12s} {'accuracy':>9s}"
        print(f"  {'variant':16s} {head}")
        for k in r["batch1_ms"]:
            a = r["accuracy"][k]
            print(
                f"  {k:16s} {r['batch1_ms'][k]:10.3f} {r[big][k]:12.2f}"
                + ("" if a is None else f" {100 * a:8.2f}%")
            )
        for b in ("batch1_ms", big):
            t, c = r[b], r[b][name + " chained"]
            line = (
                f"  {b[:-3]}: chained / unchained {c / t[name]:.2f}x,"
                f" chained / torch int8 {c / t['torch int8']:.2f}x,"
                f" unchained / torch int8 {t[name] / t['torch int8']:.2f}x"
            )
            if name + " simulated" in t:
                sim = t[name + " simulated"]
                line += f", unchained / simulated {t[name] / sim:.2f}x"
            print(line)
        for k, n in r["predictions_changed"].items():
            print(f"  predictions {k} changes against {name}: {n} of {r['n_test']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
