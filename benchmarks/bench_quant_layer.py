"""Forward time of a quantized layer: cached dequantized weight vs dequantize per call.

``QuantLinear``/``QuantConv2d`` store packed codes and scales; ``forward`` needs float
weights. This compares, on CPU, a forward with the weight dequantized once and cached
(a non-persistent buffer, skquant's choice) against dequantizing the int8 codes in
every forward (``codes * scale``), for a batch of 1 and of 256. Medians of
``--repeats`` timings.

Run: .venv/bin/python benchmarks/bench_quant_layer.py [--repeats 200] [--threads 2]
"""

import argparse
import time

import torch
from torch import nn


def median_ms(fn, repeats):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1e3 * times[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [
        ("Linear 784x512", nn.Linear(784, 512), lambda b: torch.randn(b, 784)),
        (
            "Conv2d 64->128 3x3, 14x14",
            nn.Conv2d(64, 128, 3, padding=1),
            lambda b: torch.randn(b, 64, 14, 14),
        ),
    ]
    print(f"{'layer':<28}{'batch':>6}{'cached ms':>11}{'per-call ms':>13}{'ratio':>8}")
    for name, layer, make in cases:
        w = layer.weight.detach()
        scale = w.abs().amax(dim=tuple(range(1, w.dim()))) / 7
        shape = (-1,) + (1,) * (w.dim() - 1)
        codes = torch.round(w / scale.view(shape)).to(torch.int8)
        cached = codes.float() * scale.view(shape)
        conv = isinstance(layer, nn.Conv2d)

        def run(x, weight):
            if conv:
                return nn.functional.conv2d(x, weight, layer.bias, padding=1)
            return nn.functional.linear(x, weight, layer.bias)

        for batch in (1, 256):
            x = make(batch)
            with torch.no_grad():
                a = median_ms(lambda: run(x, cached), args.repeats)
                b = median_ms(
                    lambda: run(x, codes.float() * scale.view(shape)), args.repeats
                )
            print(f"{name:<28}{batch:>6}{a:>11.3f}{b:>13.3f}{b / a:>8.2f}")


if __name__ == "__main__":
    main()
