"""VGG-8's int8 forward with its BatchNorms folded (``fold_batchnorm=True``).

VGG-8 of ``benchmarks/_models.py`` (six Conv-BN-ReLU blocks; random weights and
BatchNorm statistics: the speed does not depend on them), 256 images of 1x28x28,
4-bit weights (``UniformQuantizer``) and static 8-bit input grids calibrated on 64
of them. Times, in turn, ``--rounds`` forwards under ``torch.no_grad()`` of: the
float model, W4A8, W4A8 with the BatchNorms folded, and torch's own static int8
(``quantize_fx``, which folds them too); prints medians, their ratios to torch's,
and each quantized model's relative output error against the float model.

Run: ``PYTHONPATH=. python benchmarks/bench_fold_bn.py``.
"""

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402
from bench_grad_mode import median_ms  # noqa: E402
from bench_runtime import torch_int8  # noqa: E402

from skquant import ActivationQuantizer, UniformQuantizer  # noqa: E402
from skquant.torch import quantize_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=21)
    args = p.parse_args()
    torch.manual_seed(0)  # (the weights' and the statistics' draws)
    model = _models.vgg8().eval()
    torch.set_num_threads(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    x = torch.randn(256, 1, 28, 28)
    acts = ActivationQuantizer(n_bits=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {
            "float": model,
            "W4A8": quantize_model(
                model, UniformQuantizer(4), x[:64], activations=acts
            ),
            "W4A8 folded": quantize_model(
                model, UniformQuantizer(4), x[:64], activations=acts,
                fold_batchnorm=True,
            ),
            "torch int8": torch_int8(model, x[:64]),
        }  # fmt: skip
    with torch.no_grad():
        want = model(x)
        errors = {
            k: float((m(x) - want).norm() / want.norm()) for k, m in models.items()
        }

    def forward(m):
        with torch.no_grad():
            m(x)

    calls = [lambda m=m: forward(m) for m in models.values()]
    medians = dict(zip(models, median_ms(calls, args.rounds)))
    ref = medians["torch int8"]
    print(f"{'variant':<14}{'batch 256 ms':>13}{'/ torch int8':>14}{'rel. error':>12}")
    for name, t in medians.items():
        print(f"{name:<14}{t:>13.2f}{t / ref:>13.2f}x{errors[name]:>12.4f}")


if __name__ == "__main__":
    main()
