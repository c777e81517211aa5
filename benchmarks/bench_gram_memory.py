"""Peak memory and time of the data-driven quantizers on a wide layer, and the
crossover of GPTQ's two forms (Cholesky of ``H`` against the low-rank form).

Part 1 (``--wide``): the network of issue 19,
``Conv(1->16)-ReLU-Conv(16->32)-ReLU-Flatten-Linear(18432->10)`` on 256 random
24x24 images, quantized by ``skquant.torch.quantize_model`` at 4 bits with each
method, each in a fresh child process. The child reports the peak resident set
(``VmHWM``) just before ``quantize_model`` and after it; the difference is set
against one float64 ``n_in x n_in`` matrix (8 * 18432^2 B = 2.72 GB). GPTQ runs
twice: the default (the low-rank form is chosen: 256 rows, 18432 inputs) and with
the Cholesky form forced.

Part 2 (``--crossover``): one layer, GPTQ's Cholesky form against its low-rank
form at several (m, n_in), median of ``--repeat`` fits each, in this process; the
ratio picks ``skquant._quantizers._gptq.LOWRANK_FLOP_RATIO``.

Run (threads as the machine has):
    .venv/bin/python benchmarks/bench_gram_memory.py            # both parts
    .venv/bin/python benchmarks/bench_gram_memory.py --wide
    .venv/bin/python benchmarks/bench_gram_memory.py --crossover
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

N_IN = 18432
METHODS = ["gptq", "gptq-cholesky", "nullspace", "gpfq"]


def _hwm_gb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    raise RuntimeError("no VmHWM")  # pragma: no cover


def child(method):
    import numpy as np
    import torch

    import skquant._quantizers._gptq as gptq
    from skquant import GPTQQuantizer, GreedyPathQuantizer, NullSpaceQuantizer
    from skquant.torch import quantize_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(N_IN, 10),
    )
    x = torch.randn(256, 1, 24, 24)
    if method == "gptq-cholesky":
        gptq._use_lowrank = lambda m, n: False
    quantizer = {
        "gptq": GPTQQuantizer(n_bits=4),
        "gptq-cholesky": GPTQQuantizer(n_bits=4),
        "nullspace": NullSpaceQuantizer(n_bits=4),
        "gpfq": GreedyPathQuantizer(n_bits=4),
    }[method]
    # compile the kernels on a small layer first (not counted)
    rng = np.random.default_rng(0)
    type(quantizer)(**quantizer.get_params()).fit(
        rng.standard_normal((64, 4)), activations=rng.standard_normal((16, 64))
    )
    before = _hwm_gb()
    t0 = time.perf_counter()
    quantize_model(net, quantizer, x)
    seconds = time.perf_counter() - t0
    after = _hwm_gb()
    print(
        json.dumps(
            {
                "method": method,
                "seconds": seconds,
                "hwm_before_gb": before,
                "hwm_after_gb": after,
            }
        )
    )


def wide():
    matrix_gb = 8 * N_IN**2 / 1e9
    print(
        f"Linear({N_IN}->10) after two convs, 256 images, 4 bits; one float64 "
        f"n_in x n_in matrix = {matrix_gb:.2f} GB"
    )
    print(
        f"{'method':<15} {'seconds':>8} {'peak before':>12} {'peak after':>11} "
        f"{'added':>7} {'added / matrix':>15}"
    )
    for method in METHODS:
        out = (
            subprocess.run(
                [sys.executable, __file__, "--child", method],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        r = json.loads(out)
        added = r["hwm_after_gb"] - r["hwm_before_gb"]
        print(
            f"{method:<15} {r['seconds']:8.1f} {r['hwm_before_gb']:10.2f}GB "
            f"{r['hwm_after_gb']:9.2f}GB {added:6.2f}GB {added / matrix_gb:14.2f}x"
        )


def crossover(repeat):
    import numpy as np

    import skquant._quantizers._gptq as gptq
    from skquant import GPTQQuantizer

    rng = np.random.default_rng(0)
    shapes = [
        (256, 784),
        (256, 1600),
        (256, 3136),
        (512, 3136),
        (1024, 3136),
        (256, 4608),
        (512, 8192),
    ]
    GPTQQuantizer(n_bits=4).fit(
        rng.standard_normal((64, 4)), activations=rng.standard_normal((16, 64))
    )
    print(
        f"{'m':>5} {'n_in':>6} {'cholesky s':>11} {'low-rank s':>11} "
        f"{'ratio':>6} {'auto picks':>11}"
    )
    original = gptq._use_lowrank
    for m, n in shapes:
        X = rng.standard_normal((m, n))
        W = rng.standard_normal((n, 64)) / np.sqrt(n)
        times = {}
        for lowrank in (False, True):
            gptq._use_lowrank = lambda m, n, lowrank=lowrank: lowrank
            runs = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                GPTQQuantizer(n_bits=4).fit(W, activations=X)
                runs.append(time.perf_counter() - t0)
            times[lowrank] = statistics.median(runs)
        gptq._use_lowrank = original
        pick = "low-rank" if original(m, n) else "cholesky"
        print(
            f"{m:5d} {n:6d} {times[False]:11.3f} {times[True]:11.3f} "
            f"{times[False] / times[True]:6.2f} {pick:>11}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=METHODS)
    parser.add_argument("--wide", action="store_true")
    parser.add_argument("--crossover", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        child(args.child)
    else:
        both = not (args.wide or args.crossover)
        if args.crossover or both:
            crossover(args.repeat)
        if args.wide or both:
            wide()
