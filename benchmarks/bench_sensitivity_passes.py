"""Zhou sensitivity with each layer run from the layer on, against whole passes.

``skquant.torch.measure_sensitivity`` (MSQ at bits 2, 3, 4, 5, 6, 8; margin
threshold; no additivity check, whose passes change every layer) on 2000 test
images, timed in one run two ways: as skquant runs it (each layer's choices from
the layer on: ``TorchNetwork.layer_outputs`` keeps what does not depend on the
layer), and with every choice a whole pass of the network (the protocol's
default ``layer_outputs``, what the previous release did). Networks: the trained
MNIST LeNet-5 and Fashion-MNIST VGG-8 of ``_models.py`` (``nn.Sequential``), and
a ResNet-style network whose ``forward`` is not a sequence (``torch.fx`` traces
it; random weights, timing only): a 16-channel stem and three stages of two
residual blocks (16, 32, 64 channels, stride 2 between stages) on the
Fashion-MNIST images. Prints medians of ``--rounds`` interleaved rounds (after
one untimed round), the ratio, and whether the tables are the same bit for bit.

Run (needs the data of ``get_data.sh``):
    .venv/bin/python benchmarks/bench_sensitivity_passes.py --rounds 3
"""

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from _models import ResNetStyle, mnist_tensors, trained

from skquant._network._protocol import Network
from skquant.torch import TorchNetwork, measure_sensitivity


def _networks(names):
    for name in names:
        if name == "resnet":
            torch.manual_seed(0)
            _, _, Xte, yte = mnist_tensors("fashion-mnist", image=True)
            yield (
                "ResNet-style (random weights)",
                ResNetStyle().eval(),
                Xte[:2000],
                yte[:2000],
            )
        else:
            dataset = "mnist" if name == "lenet5" else "fashion-mnist"
            model, (_, _, Xte, yte) = trained(name, dataset, verbose=False)
            yield name, model, Xte[:2000], yte[:2000]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--nets", nargs="+", default=["lenet5", "vgg8", "resnet"])
    args = p.parse_args()
    warnings.simplefilter("ignore")
    own = TorchNetwork.layer_outputs

    def measure(model, X, y, whole):
        TorchNetwork.layer_outputs = Network.layer_outputs if whole else own
        try:
            start = time.perf_counter()
            res = measure_sensitivity(model, X, y, additivity=False)
            return time.perf_counter() - start, res
        finally:
            TorchNetwork.layer_outputs = own

    print(
        f"{'network':<32}{'from the layer':>15}{'whole passes':>14}{'ratio':>7}  tables"
    )
    for title, model, X, y in _networks(args.nets):
        times = {False: [], True: []}
        tables = {}
        for r in range(args.rounds + 1):
            for whole in (False, True):
                t, tables[whole] = measure(model, X, y, whole)
                if r:
                    times[whole].append(t)
        a, b = (statistics.median(times[w]) for w in (False, True))
        same = all(
            np.array_equal(getattr(tables[False], f), getattr(tables[True], f))
            for f in ("noise", "size", "weight_error", "accuracy", "t_margin")
        )
        print(
            f"{title:<32}{a:>13.2f} s{b:>12.2f} s{a / b:>7.2f}  "
            f"{'the same' if same else 'DIFFERENT'}"
        )


if __name__ == "__main__":
    main()
