"""Whole-model time of ``skquant.torch.quantize_model`` against its layer kernels.

Builds a 5-layer MNIST CNN (Conv2d 1->32->64->128, 3x3, padding 1, each followed
by ReLU and MaxPool2d(2); Flatten; Linear 1152->256; ReLU; Linear 256->10; about
390k weights, random seeded weights) and 1024 calibration images of shape
1x28x28 (MNIST training images when ``skquant.datasets.mnist_available()``, else
seeded uniform [0, 1] noise). For each quantizer it times, over ``--repeats``
runs, the whole ``quantize_model`` call (wall clock) and the sum of the layer
kernel times (``report.seconds``: each layer's fit + compress), then prints the
medians and their ratio, the "network overhead" (capture of the calibration
inputs, forward passes, model copies).

Quantizers: RTN = ``UniformQuantizer(n_bits=3)`` (no calibration data), GPFQ =
``GreedyPathQuantizer(n_bits=3)``, null-space = ``NullSpaceQuantizer(n_bits=3)``
(default rank) and ``NullSpaceQuantizer(n_bits=3, rank=64)``. Targets: RTN whole
model < 0.5 s; GPFQ whole model <= 1.5x its kernel sum and < 3 s.

Run:
    .venv/bin/python benchmarks/bench_network_speed.py [--repeats 5] [--threads 2]
        [--nullspace-repeats N] [--skip-nullspace-default] [--profile]

``--nullspace-repeats`` (default: 1 when a warm-up run of the default null-space
quantizer took over 60 s, else ``--repeats``) caps the runs of the slow default
null-space case. ``--profile`` also prints the 15 functions with the largest
cumulative time in one GPFQ whole-model run (cProfile).
"""

import argparse
import cProfile
import io
import os
import pstats
import time
import warnings

import numpy as np
import torch
from torch import nn

from skquant import GreedyPathQuantizer, NullSpaceQuantizer, UniformQuantizer
from skquant.datasets import load_mnist, mnist_available
from skquant.torch import quantize_model

SLOW_S = 60.0


def mnist_cnn(seed=0):
    """The 5-layer CNN, random weights drawn with ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1152, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def calibration_images(n=1024, seed=0):
    """``(X, source)``: ``n`` images of shape 1x28x28 and where they come from."""
    if mnist_available():
        X = load_mnist("train", return_X_y=True)[0][:n]
        X = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        return X.reshape(-1, 1, 28, 28), "MNIST training images"
    g = torch.Generator().manual_seed(seed)
    return torch.rand(
        n, 1, 28, 28, generator=g
    ), "random uniform[0,1] images (no MNIST)"


def run_once(model, quantizer, data, max_rows):
    """``(wall seconds, kernel seconds, report)`` of one ``quantize_model`` call."""
    t = time.perf_counter()
    if data is None:
        _, report = quantize_model(model, quantizer, return_report=True)
    else:
        _, report = quantize_model(
            model, quantizer, data, max_rows=max_rows, return_report=True
        )
    return time.perf_counter() - t, report.seconds, report


def measure(model, quantizer, data, max_rows, repeats):
    walls, kernels, report = [], [], None
    for _ in range(repeats):
        wall, kern, report = run_once(model, quantizer, data, max_rows)
        walls.append(wall)
        kernels.append(kern)
    return float(np.median(walls)), float(np.median(kernels)), walls, report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--max-rows", type=int, default=4096)
    p.add_argument("--n-samples", type=int, default=1024)
    p.add_argument(
        "--nullspace-repeats",
        type=int,
        default=None,
        help="runs of the default null-space case (default: 1 if slow, else --repeats)",
    )
    p.add_argument("--skip-nullspace-default", action="store_true")
    p.add_argument("--profile", action="store_true", help="cProfile one GPFQ run")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    model = mnist_cnn()
    model.eval()
    X, source = calibration_images(args.n_samples)
    n_weights = sum(m.weight.numel() for m in model if hasattr(m, "weight"))
    try:
        load = os.getloadavg()
        load = f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:  # pragma: no cover
        load = "load average n/a"
    print(
        f"5-layer MNIST CNN ({n_weights} weights), {X.shape[0]} calibration inputs: "
        f"{source}; max_rows={args.max_rows}; torch threads={torch.get_num_threads()}; "
        f"{os.cpu_count()} CPUs, {load}"
    )

    cases = [
        ("RTN 3-bit", UniformQuantizer(n_bits=3), None),
        ("GPFQ 3-bit", GreedyPathQuantizer(n_bits=3), X),
        ("null-space 3-bit rank=64", NullSpaceQuantizer(n_bits=3, rank=64), X),
    ]
    if not args.skip_nullspace_default:
        cases.append(("null-space 3-bit default", NullSpaceQuantizer(n_bits=3), X))

    # warm-up: numba compilation (and disk-cache loads) outside the timings
    warm = {}
    for label, q, data in cases:
        t = time.perf_counter()
        run_once(model, q, data, args.max_rows)
        warm[label] = time.perf_counter() - t
    print(
        "warm-up (compilation included): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in warm.items())
    )

    results, gpfq_report = {}, None
    for label, q, data in cases:
        repeats = args.repeats
        note = ""
        if label == "null-space 3-bit default":
            if args.nullspace_repeats is not None:
                repeats = args.nullspace_repeats
            elif warm[label] > SLOW_S:
                repeats = 1
                note = f" (warm-up took {warm[label]:.0f} s > {SLOW_S:.0f} s: 1 run)"
        wall, kern, walls, report = measure(model, q, data, args.max_rows, repeats)
        results[label] = (wall, kern, repeats, note, walls)
        if label.startswith("GPFQ"):
            gpfq_report = report

    print(f"\nmedians over --repeats={args.repeats} runs (unless noted)")
    head = (
        f"{'quantizer':<28}{'runs':>5}{'whole s':>10}{'kernels s':>11}"
        f"{'overhead x':>12}  target"
    )
    print(head)
    print("-" * (len(head) + 30))
    for label, (wall, kern, repeats, note, walls) in results.items():
        ratio = wall / kern if kern > 0 else float("inf")
        target = ""
        if label.startswith("RTN"):
            ok = wall < 0.5
            target = f"whole < 0.5 s: {'MET' if ok else 'NOT MET'}"
        elif label.startswith("GPFQ"):
            ok = ratio <= 1.5 and wall < 3.0
            target = (
                f"whole <= 1.5x kernels ({'MET' if ratio <= 1.5 else 'NOT MET'}) and "
                f"< 3 s ({'MET' if wall < 3.0 else 'NOT MET'})"
            )
        print(
            f"{label:<28}{repeats:>5}{wall:>10.3f}{kern:>11.3f}{ratio:>12.2f}  "
            f"{target}{note}"
        )
        print(f"{'':<28}{'':>5}  runs: " + " ".join(f"{w:.3f}" for w in walls))

    print("\nGPFQ 3-bit per-layer report (last run):")
    print(gpfq_report)

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        quantize_model(model, GreedyPathQuantizer(n_bits=3), X, max_rows=args.max_rows)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(15)
        print("\ncProfile of one GPFQ 3-bit whole-model run (top 15, cumulative):")
        print(out.getvalue())


if __name__ == "__main__":
    main()
