"""``quantize_model`` of a network whose ``forward`` is not a sequence: the walk
on ``torch.fx``'s graph against a pass stopped at each layer.

The quantized copy of such a network used to run from its input to each layer in
turn (a pass stopped there: about half a pass per layer); traced by
``torch.fx``, it is carried from layer to layer instead, each operation run once.
This times ``quantize_model(model, GreedyPathQuantizer(n_bits=4), X)`` both ways
in one run (the stopped passes by making the trace fail), medians of
``--rounds`` interleaved rounds after an untimed one, and checks that the codes
are the same. Network: the ResNet-style network of ``_models.py`` (a stem and
three stages of two residual blocks, 13 weight layers; random weights) on
``--n-samples`` Fashion-MNIST images (seeded noise without the data).

Run:
    .venv/bin/python benchmarks/bench_graph_walk.py --rounds 3
"""

import argparse
import statistics
import time
import warnings

import torch
from _models import ResNetStyle

from skquant import GreedyPathQuantizer
from skquant.datasets import mnist_available
from skquant.torch import _graph, quantize_model


def _images(n):
    if mnist_available("fashion-mnist"):
        from _models import mnist_tensors

        return mnist_tensors("fashion-mnist", image=True)[2][:n]
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-samples", type=int, default=1024)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = ResNetStyle().eval()
    X = _images(args.n_samples)
    trace = _graph.trace
    times = {"graph": [], "stopped": []}
    models = {}
    for r in range(args.rounds + 1):
        for how in times:
            _graph.trace = trace if how == "graph" else (lambda block, sample: None)
            try:
                start = time.perf_counter()
                models[how] = quantize_model(model, GreedyPathQuantizer(n_bits=4), X)
                if r:
                    times[how].append(time.perf_counter() - start)
            finally:
                _graph.trace = trace
    a, b = (statistics.median(times[h]) for h in ("graph", "stopped"))
    same = _graph.same(models["graph"].state_dict(), models["stopped"].state_dict())
    print(
        f"{len(X)} images: graph walk {a:.2f} s, stopped passes {b:.2f} s, "
        f"ratio {a / b:.2f}; codes {'the same' if same else 'DIFFERENT'}"
    )


if __name__ == "__main__":
    main()
