"""``runtime="auto"`` on grouped convolutions, end to end on a convolutional network.

A MobileNet-style network (random weights, He's initialisation, 3x64x64
inputs): a stem conv, then six
inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project; the last two
with ``groups=2`` 3x3 convs of 256 channels, 147,456 codes a group) and a
classifier, quantized at 4 bits with static 7-bit inputs
(``ActivationQuantizer(n_bits=7)``, 64 calibration images). Printed, for the
float model, ``runtime="auto"`` (where oneDNN's int8 convolution runs, every
layer on the integer kernels; else depthwise layers weight-only, wide groups on
the GEMMs) and ``runtime="int8"`` (every layer on the integer kernels): the layers'
``nbytes_held`` summed, and the median forward time at batch 1 and 32 under
``torch.inference_mode`` (interleaved rounds), with the ratio to the float
model in the same run. Beside them, ``torch int8``: what a torch user would run
instead, torch's own static quantization of the same network
(``torch.ao.quantization.quantize_fx``, the default qconfig of the machine's
engine: 8-bit per-channel weights, 8-bit inputs, calibrated on the same images),
whose size is the bytes of its ``state_dict`` written by ``torch.save`` (torch
holds its weights prepacked, which ``nbytes_held`` does not see). Each model's
relative error against the float model's output on the batch-32 inputs is
printed too (the bit-widths differ: 4/7 against 8/8).

Run:
    .venv/bin/python benchmarks/bench_grouped_auto.py --rounds 15
"""

import argparse
import io
import statistics
import time
import warnings

import torch
from bench_runtime import torch_int8
from torch import nn

from skquant import ActivationQuantizer, UniformQuantizer
from skquant.torch import quantize_model


def block(c_in, c_out, expand=4, groups=None):
    mid = c_in * expand
    return nn.Sequential(
        nn.Conv2d(c_in, mid, 1),
        nn.ReLU(),
        nn.Conv2d(mid, mid, 3, padding=1, groups=groups or mid),
        nn.ReLU(),
        nn.Conv2d(mid, c_out, 1),
        nn.ReLU(),
    )


def network():
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        block(16, 24),
        nn.MaxPool2d(2),
        block(24, 32),
        block(32, 32),
        nn.MaxPool2d(2),
        block(32, 64),
        block(64, 64, groups=2),
        block(64, 64, groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
    for m in net.modules():  # He's initialisation: activations that stay alive
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


def held(model):
    return sum(getattr(m, "nbytes_held", 0) for m in model.modules())


def saved_bytes(model):
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = network()
    calib = torch.randn(64, 3, 64, 64)
    models = {"float": net}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (auto says which layers it simulates)
        for runtime in ("auto", "int8"):
            models[runtime] = quantize_model(
                net,
                UniformQuantizer(n_bits=4),
                calib,
                activations=ActivationQuantizer(n_bits=7),
                runtime=runtime,
            )
        models["torch int8"] = torch_int8(net, calib)  # (bench_runtime's)
    float_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"engine {torch.backends.quantized.engine}"
    )
    x = torch.randn(32, 3, 64, 64)
    with torch.inference_mode():
        ref = net(x)
        for name, model in models.items():
            err = float((model(x) - ref).norm() / ref.norm())
            if name == "float":
                size = f"parameters {float_bytes / 1e6:7.3f} MB"
            elif name == "torch int8":
                size = f"torch.save  {saved_bytes(model) / 1e6:7.3f} MB"
            else:
                size = f"held        {held(model) / 1e6:7.3f} MB"
            print(f"{name:10s} {size}  relative error {err:.4f}")
    for batch in (1, 32):
        x = torch.randn(batch, 3, 64, 64)
        times = {name: [] for name in models}
        with torch.inference_mode():
            for model in models.values():
                model(x)  # warm-up
            for _ in range(args.rounds):
                for name, model in models.items():
                    start = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - start)
        base = statistics.median(times["float"])
        for name, t in times.items():
            med = statistics.median(t)
            print(
                f"batch {batch:3d} {name:10s} {1e3 * med:8.2f} ms  "
                f"({med / base:5.2f}x float)"
            )


if __name__ == "__main__":
    main()
