"""Training overhead of the Smart Quantization penalty per step (target: at most 1.3x).

One training step (forward, loss, backward, Adam step) of MNIST LeNet-5 and the
MNIST MLP on batches of ``--batch`` images, plain against with the penalty of
:class:`skquant.torch.SQRegularizer` added to the loss; both measured in the same
run on the same batches, interleaved, median over ``--steps`` steps after a
warm-up. Prints the medians and their ratio, then the penalty alone (forward and
backward of ``SQRegularizer()`` on the MLP's 545k weights): the compiled one-pass
kernel against the elementwise formula through autograd.

Run: ``python benchmarks/bench_sq_overhead.py`` (MNIST files: ``bash
benchmarks/get_data.sh``; without them, random images of the same shape).
"""

import argparse
import copy
import statistics
import time

import torch
from _models import lenet5, mlp

from skquant.datasets import mnist_available
from skquant.torch import SQRegularizer


def batches(image, n, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    if mnist_available():
        from _models import mnist_tensors

        X, y = mnist_tensors("mnist", image=image)[:2]
    else:
        shape = (1, 28, 28) if image else (784,)
        X, y = torch.rand(6000, *shape, generator=g), torch.randint(0, 10, (6000,))
    idx = torch.randint(0, len(X), (n, batch), generator=g)
    return [(X[i], y[i]) for i in idx]


def step_time(model, reg, opt, loss_fn, xb, yb):
    start = time.perf_counter()
    opt.zero_grad()
    loss = loss_fn(model(xb), yb)
    if reg is not None:
        loss = loss + reg()
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    loss_fn = torch.nn.CrossEntropyLoss()
    print(f"median seconds per training step, batch {args.batch}, {args.steps} steps")
    for name, make, image in (("LeNet-5", lenet5, True), ("MLP", mlp, False)):
        torch.manual_seed(0)
        plain = make()
        sq = copy.deepcopy(plain)
        reg = SQRegularizer(sq, gamma=1e-3, lam=1e-3)
        opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-3)
        opt_sq = torch.optim.Adam(
            list(sq.parameters()) + list(reg.parameters()), lr=1e-3
        )
        data = batches(image, args.steps + 20, args.batch)
        t_plain, t_sq = [], []
        for i, (xb, yb) in enumerate(data):
            a = step_time(plain, None, opt_plain, loss_fn, xb, yb)
            b = step_time(sq, reg, opt_sq, loss_fn, xb, yb)
            if i >= 20:  # warm-up
                t_plain.append(a)
                t_sq.append(b)
        mp, ms = statistics.median(t_plain), statistics.median(t_sq)
        print(
            f"  {name:<8} plain {1e3 * mp:7.2f} ms   with SQ penalty {1e3 * ms:7.2f} ms"
            f"   ratio {ms / mp:.2f}x"
        )
    penalty_alone(args.steps)


def penalty_alone(steps):
    """Forward + backward of the penalty alone on the MLP: kernel vs autograd."""
    torch.manual_seed(0)
    reg = SQRegularizer(mlp(), gamma=1e-3, lam=1e-3)

    def fused():
        reg().backward()

    def autograd():
        a, beta = reg.scale(), reg.beta()
        total = sum(
            reg.wells(m.weight, a[i], beta[i]).sum() for i, m in enumerate(reg._layers)
        )
        total.backward()

    times = {"kernel": [], "autograd": []}
    for i in range(steps + 20):
        for name, fn in (("kernel", fused), ("autograd", autograd)):
            start = time.perf_counter()
            fn()
            if i >= 20:
                times[name].append(time.perf_counter() - start)
    k, a = (statistics.median(times[n]) for n in ("kernel", "autograd"))
    print(
        f"penalty alone, MLP (545k weights): kernel {1e3 * k:.2f} ms, autograd "
        f"formula {1e3 * a:.2f} ms ({a / k:.1f}x)"
    )


if __name__ == "__main__":
    main()
