"""Real MNIST and Fashion-MNIST: Khoram & Li's adaptive precision against uniform MSQ.

For the torch LeNet-5 and 784-500-300-10 MLP trained on MNIST and the same MLP trained
on Fashion-MNIST (trained once by ``benchmarks/_models.py`` with its ``"cosine"``
recipe, cached under ~/skquant_data/models, fixed seed), runs
``skquant.torch.adaptive_quantize_model`` with the loss and its gradient on 10 000
training images, for several relative loss bounds and trust regions, and prints for
each run: the float and quantized test errors, the stored size (the bytes of the
payload, the coded precision map and one 16-bit exponent per tensor, as
``result.save`` writes them), the payload alone, the map alone, the compression
ratios against float32 (``32 * n_params / bits``), the iterations and the stop
reason. Beside each run: the smallest uniform bit-width ``b`` (per-channel max-abs
``UniformQuantizer`` through ``skquant.torch.quantize_model``, biases kept in
float32) whose test accuracy is at least the adaptive model's, with its size.

On LeNet-5 it also prints the linearised loss increase predicted against the one
measured over budgets (one step each), a histogram of per-parameter bits per tensor,
and the time of one iteration split into the gradient (``loss_gradients``, torch)
and the allocation (``allocate_precision``, numba).

Run (about 10 minutes on 2 cores; more the first time, when it trains the models)::

    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python -u benchmarks/bench_adaptive_mnist.py

Fetch MNIST and Fashion-MNIST first with: bash benchmarks/get_data.sh
"""

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _models import accuracy, trained  # noqa: E402

from skquant import UniformQuantizer  # noqa: E402
from skquant._precision._allocate import allocate_precision
from skquant.datasets import mnist_available  # noqa: E402
from skquant.torch import (  # noqa: E402
    QuantConv2d,
    QuantLinear,
    adaptive_quantize_model,
    loss_gradients,
    quantize_model,
)

STOP = {
    "size stopped shrinking": "size",
    "loss bound binds": "bound",
    "no step kept the loss under the bound": "no step",
}


def calibration(Xtr, ytr, n, seed=0):
    idx = np.sort(np.random.default_rng(seed).choice(len(Xtr), n, replace=False))
    idx = torch.from_numpy(idx)
    return Xtr[idx], ytr[idx]


def msq_sweep(model, Xcal, Xte, yte, bits):
    """Test accuracy and size (codes + scales + float32 biases) of b-bit MSQ."""
    out = {}
    for b in bits:
        q = quantize_model(model, UniformQuantizer(n_bits=b), Xcal[:256])
        size = 0
        for mod in q.modules():
            if isinstance(mod, QuantLinear | QuantConv2d):
                size += mod.size_bits
                if mod.bias is not None:
                    size += 32 * mod.bias.numel()
        out[b] = (accuracy(q, Xte, yte), size)
    return out


def run_model(name, dataset, args, loss_fn):
    model, (Xtr, ytr, Xte, yte) = trained(name, dataset, recipe="cosine")
    n = sum(p.numel() for p in model.parameters())
    float_acc = accuracy(model, Xte, yte)
    Xcal, ycal = calibration(Xtr, ytr, args.n_cal)
    print(
        f"\n== {dataset} {name}: {n} parameters, float32 {32 * n} bits; float test "
        f"error {100 * (1 - float_acc):.2f}%; loss on {args.n_cal} training images",
        flush=True,
    )
    t = time.perf_counter()
    msq = msq_sweep(model, Xcal, Xte, yte, range(2, 9))
    print(f"uniform MSQ, per channel, max-abs ({time.perf_counter() - t:.1f} s):")
    print(f"{'b':>3} {'test err %':>10} {'kbit':>9} {'x32':>7}")
    for b, (acc, size) in msq.items():
        err = 100 * (1 - acc)
        print(f"{b:>3} {err:>10.2f} {size / 1e3:>9.1f} {32 * n / size:>7.2f}")

    def evaluate(m):
        return accuracy(m, Xte, yte)

    print(
        "adaptive precision (bound: relative; delta: trust region; err: test error %;"
        " kbit: stored = payload + coded map + exponents; x32: 32 n / bits; "
        "map: the coded map alone, kbit; MSQ: smallest b with test "
        "accuracy >= the adaptive model's):"
    )
    head = (
        f"{'bound':>6} {'delta':>5} {'it':>3} {'stop':>8} {'err':>5} "
        f"{'kbit':>7} {'x32':>6} {'payload':>7} {'x32':>6} {'map':>7} "
        f"{'pruned':>6} {'MSQ b':>5} {'kbit':>7} {'x32':>6} {'s':>5}"
    )
    print(head)
    results = {}
    for delta in args.trust:
        for bound in args.bounds:
            t = time.perf_counter()
            res = adaptive_quantize_model(
                model,
                loss_fn,
                (Xcal, ycal),
                loss_bound=bound,
                trust_region=delta,
                max_iter=args.max_iter,
                batch_size=args.batch_size,
                evaluate=evaluate,
            )
            dt = time.perf_counter() - t
            h = res.history[-1]
            acc = h["accuracy"]
            pruned = np.mean(np.concatenate([b.ravel() for b in res.bits]) == 0)
            ok = [b for b, (a, _) in msq.items() if a >= acc]
            msq_txt = (
                f"{ok[0]:>5} {msq[ok[0]][1] / 1e3:>7.1f} {32 * n / msq[ok[0]][1]:>6.2f}"
                if ok
                else f"{'>8':>5} {'-':>7} {'-':>6}"
            )
            print(
                f"{bound:>6g} {delta:>5g} {len(res.history) - 1:>3} "
                f"{STOP.get(res.stop_reason, 'max_iter'):>8} {100 * (1 - acc):>5.2f} "
                f"{h['total_bits'] / 1e3:>7.1f} {32 * n / h['total_bits']:>6.2f} "
                f"{h['payload_bits'] / 1e3:>7.1f} {32 * n / h['payload_bits']:>6.2f} "
                f"{h['map_bits'] / 1e3:>7.1f} {100 * pruned:>5.1f}% "
                f"{msq_txt} {dt:>5.1f}",
                flush=True,
            )
            results[bound, delta] = res
    return model, (Xcal, ycal), results


def linearisation(model, data, loss_fn, args):
    """One step per budget: predicted (bound and signed) against measured increase."""
    names = [k for k, _ in model.named_parameters()]
    params = [p.detach().numpy().astype(np.float64) for p in model.parameters()]
    loss0, g = loss_gradients(model, loss_fn, data, batch_size=args.batch_size)
    grads = [g[k].astype(np.float64) for k in names]
    qmodel = copy.deepcopy(model)
    print(
        "\nLeNet-5, linearised loss increase, one step from the float network "
        f"(float loss {loss0:.5f}; bound = sum |g||w - q|, signed = g . (q - w)):"
    )
    print(
        f"{'delta':>5} {'budget':>9} {'bound':>9} {'signed':>10} {'measured':>9} "
        f"{'bound/meas':>10} {'payload/p':>10}"
    )
    for delta in args.trust:
        for rel in (0.01, 0.1, 1.0, 10.0, 30.0):
            budget = rel * loss0
            r = allocate_precision(params, grads, budget, delta)
            signed = sum(
                float(np.sum(gi * (q - w)))
                for gi, q, w in zip(grads, r["quantized"], params)
            )
            with torch.no_grad():
                for p, v in zip(qmodel.parameters(), r["quantized"]):
                    p.copy_(torch.from_numpy(v).to(p.dtype))
            loss1, _ = loss_gradients(qmodel, loss_fn, data, batch_size=args.batch_size)
            meas = loss1 - loss0
            ratio = f"{r['predicted_increase'] / meas:.1f}" if meas > 0 else "-"
            payload = sum(t.encoded()[0]["payload_bits"] for t in r["tensors"])
            print(
                f"{delta:>5g} {budget:>9.2e} {r['predicted_increase']:>9.2e} "
                f"{signed:>10.2e} {meas:>9.2e} "
                f"{ratio:>10} "
                f"{payload / sum(w.size for w in params):>10.2f}",
                flush=True,
            )


def bits_histogram(model, res, label):
    names = [k for k, _ in model.named_parameters()]
    top = 10
    print(
        f"\nLeNet-5, per-parameter stored bits ({label}), % of each tensor "
        f"(0 = pruned; {top}+ = {top} or more):"
    )
    cols = list(range(top)) + [f"{top}+"]
    print(f"{'tensor':<12} {'n':>6}" + "".join(f"{c!s:>6}" for c in cols) + "  mean")
    for k, b in zip(names, res.bits):
        b = b.ravel().astype(int)
        counts = [np.mean(b == c) for c in range(top)] + [np.mean(b >= top)]
        print(
            f"{k:<12} {b.size:>6}"
            + "".join(f"{100 * c:>6.1f}" for c in counts)
            + f"  {b.mean():.2f}"
        )


def timing(model, data, loss_fn, args):
    names = [k for k, _ in model.named_parameters()]
    params = [p.detach().numpy().astype(np.float64) for p in model.parameters()]
    loss0, g = loss_gradients(model, loss_fn, data, batch_size=args.batch_size)
    grads = [g[k].astype(np.float64) for k in names]
    budget = 10 * loss0
    allocate_precision(params, grads, budget, 0.05)  # compile / warm-up
    allocate_precision(params, grads, budget, 0.05, n_jobs=2)
    t_grad, t_alloc, t_alloc2 = [], [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        loss_gradients(model, loss_fn, data, batch_size=args.batch_size)
        t_grad.append(time.perf_counter() - t)
        t = time.perf_counter()
        allocate_precision(params, grads, budget, 0.05)
        t_alloc.append(time.perf_counter() - t)
        t = time.perf_counter()
        allocate_precision(params, grads, budget, 0.05, n_jobs=2)
        t_alloc2.append(time.perf_counter() - t)
    n = sum(p.size for p in params)
    g_, a_, a2 = map(statistics.median, (t_grad, t_alloc, t_alloc2))
    print(
        f"\nLeNet-5, one iteration ({n} parameters, loss and gradient on "
        f"{len(data[0])} images, batch {args.batch_size}, torch "
        f"{torch.get_num_threads()} threads), median of {args.repeat}:"
    )
    print(f"{'part':<44} {'ms':>9} {'share':>6}")
    for label, v in (
        ("gradient: skquant.torch.loss_gradients", g_),
        ("allocation: allocate_precision (numba, 1 th.)", a_),
        ("allocation: allocate_precision (numba, 2 th.)", a2),
    ):
        print(f"{label:<44} {1e3 * v:>9.2f} {100 * v / (g_ + a_):>5.1f}%")
    print(
        "(a step of adaptive_quantize_model also evaluates the loss and gradient at "
        "the quantized point: about one more gradient per iteration)"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=["mnist:lenet5", "mnist:mlp", "fashion-mnist:mlp"],
        help="dataset:model pairs",
    )
    p.add_argument(
        "--bounds", nargs="+", type=float, default=[0.1, 0.5, 2.0, 10.0, 30.0]
    )
    p.add_argument("--trust", nargs="+", type=float, default=[0.05, 0.25, 1.0])
    p.add_argument("--n-cal", type=int, default=10000)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument(
        "--hist",
        nargs=2,
        type=float,
        default=[10.0, 1.0],
        metavar=("BOUND", "DELTA"),
        help="LeNet-5 run whose bits histogram is printed",
    )
    args = p.parse_args(argv)
    if not mnist_available():
        print("MNIST not found: run `bash benchmarks/get_data.sh` first.")
        return 2
    # loss_gradients converts a tensor that requires grad to a float (torch warns).
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(2)
    loss_fn = torch.nn.CrossEntropyLoss()
    tic = time.perf_counter()
    lenet = None
    for spec in args.models:
        dataset, name = spec.split(":")
        model, data, results = run_model(name, dataset, args, loss_fn)
        if name == "lenet5" and dataset == "mnist":
            lenet = (model, data, results)
    if lenet is not None:
        model, data, results = lenet
        linearisation(model, data, loss_fn, args)
        key = tuple(args.hist)
        if key in results:
            label = f"relative bound {key[0]:g}, trust region {key[1]:g}"
            bits_histogram(model, results[key], label)
        timing(model, data, loss_fn, args)
    print(f"\ntotal time {time.perf_counter() - tic:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
