"""Peak resident memory that quantize_model, save_model and load_into add, per phase
(and the same for per-parameter precision and for the data-driven fits on tall data).

The model is ``Sequential(Linear(n, n), ReLU, Linear(n, 10))`` in float32 (``n = 8192``:
256 MiB of weights), quantized by ``UniformQuantizer(n_bits=4)`` (no calibration
data), written with ``save_model`` and read back with ``load_into`` into a fresh float
model. Each phase's figure is the growth of the process's peak resident set during
it: the peak is reset (``/proc/self/clear_refs``) just before the phase and read
from ``VmHWM`` after it. What a phase must hold: ``quantize_model`` the quantized
copy (codes, 4 bits a weight) next to the float model; ``save_model`` the file's
bytes; ``load_into`` the file's bytes and the codes.

Each checkout runs in a child process of its own, one thread; ``--base DIR`` runs a
checkout of an earlier commit in the same way, after this one, and prints the
ratios (``git worktree add /tmp/base <commit>``)::

    .venv/bin/python benchmarks/bench_memory.py --base /tmp/base

``--case adaptive`` measures ``AdaptivePrecisionQuantizer(budget=0.01)`` on an
``n x n`` float32 weight matrix and gradient (``--n 4096``: 16.8 million weights)
in the same way: ``fit``, ``compress``, ``transform``, ``skquant.save`` and
``skquant.load``::

    .venv/bin/python benchmarks/bench_memory.py --case adaptive --n 4096 \
        --base /tmp/base

``--case tall`` fits the data-driven quantizers at 4 bits on one layer of 1,000
inputs and ``n`` float32 calibration rows (``--n 100000``: 381 MiB; rows of 64
random factors plus noise): ``GreedyPathQuantizer`` and ``NullSpaceQuantizer``
(default and ``variant="path"``) with 64 outputs (GPFQ's per-neuron path),
``GPTQQuantizer`` with 1,024::

    .venv/bin/python benchmarks/bench_memory.py --case tall --n 100000 --base /tmp/base
"""

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time

MiB = 2**20
PHASES = {
    "torch-io": ("quantize_model", "save_model", "load_into"),
    "adaptive": ("fit", "compress", "transform", "save", "load"),
    "tall": ("gpfq", "gptq", "nullspace", "nullspace-path"),
}


def _status():
    with open("/proc/self/status") as f:
        d = {
            line.split(":")[0]: int(line.split()[1]) * 1024
            for line in f
            if line.startswith(("VmRSS", "VmHWM"))
        }
    return d["VmRSS"], d["VmHWM"]


def _phase(fn):
    """``(result, seconds, peak growth in bytes)`` of ``fn()``."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM back to VmRSS
        f.write("5")
    base, _ = _status()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, _status()[1] - base


def child_adaptive(n):
    import numpy as np

    import skquant
    from skquant import AdaptivePrecisionQuantizer

    rng = np.random.default_rng(0)
    W = (rng.standard_normal((n, n), dtype=np.float32) * 0.05).astype(np.float32)
    G = (rng.standard_normal((n, n), dtype=np.float32) * 1e-3).astype(np.float32)
    small = AdaptivePrecisionQuantizer(budget=1e-2)  # kernels compiled first
    skquant.load(
        _save(
            skquant.save,
            small.fit(W[:64, :64], gradient=G[:64, :64]).compress(W[:64, :64]),
        )
    )
    q, *fig = _phase(lambda: AdaptivePrecisionQuantizer(budget=1e-2).fit(W, gradient=G))
    rows = [("fit", *fig)]
    qt, *fig = _phase(lambda: q.compress(W))
    rows.append(("compress", *fig))
    _, *fig = _phase(lambda: q.transform(W))
    rows.append(("transform", *fig))
    path = os.path.join(tempfile.mkdtemp(), "w.skq")
    _, *fig = _phase(lambda: skquant.save(qt, path))
    rows.append(("save", *fig))
    _, *fig = _phase(lambda: skquant.load(path))
    rows.append(("load", *fig))
    return rows, path


def child_tall(n):
    import warnings

    import numpy as np

    from skquant import GPTQQuantizer, GreedyPathQuantizer, NullSpaceQuantizer

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    n_in, factors = 1000, 64
    X = np.empty((n, n_in), dtype=np.float32)
    F = rng.standard_normal((factors, n_in), dtype=np.float32)
    for a in range(0, n, 8192):
        b = min(n, a + 8192)
        X[a:b] = rng.standard_normal((b - a, factors), dtype=np.float32) @ F
        X[a:b] += 0.3 * rng.standard_normal((b - a, n_in), dtype=np.float32)
    W = rng.standard_normal((n_in, 1024), dtype=np.float32) / np.sqrt(n_in)
    fits = {
        "gpfq": (GreedyPathQuantizer, {}, 64),
        "gptq": (GPTQQuantizer, {}, 1024),
        "nullspace": (NullSpaceQuantizer, {}, 64),
        "nullspace-path": (NullSpaceQuantizer, {"variant": "path"}, 64),
    }
    rows = []
    for name, (cls, kw, n_out) in fits.items():
        cls(n_bits=4, **kw).fit(W[:200, :2], activations=X[:500, :200])  # compiled
        _, *fig = _phase(lambda: cls(n_bits=4, **kw).fit(W[:, :n_out], activations=X))
        rows.append((name, *fig))
    return rows, None


def child(case, n):
    make = {"torch-io": child_torch_io, "adaptive": child_adaptive, "tall": child_tall}
    rows, path = make[case](n)
    size = 0 if path is None else os.path.getsize(path)
    for name, seconds, grew in rows:
        print(f"ROW {name} {seconds:.3f} {grew} {size}", flush=True)


def child_torch_io(n):
    import warnings

    import torch

    from skquant import UniformQuantizer
    from skquant.torch import load_into, quantize_model, save_model

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(n, n), torch.nn.ReLU(), torch.nn.Linear(n, 10)
        ).eval()

    small = torch.nn.Sequential(torch.nn.Linear(8, 8))  # kernels compiled first
    load_into(small, _save(save_model, quantize_model(small, UniformQuantizer(4))))
    model = make()
    q, *fig = _phase(lambda: quantize_model(model, UniformQuantizer(n_bits=4)))
    rows = [("quantize_model", *fig)]
    path = os.path.join(tempfile.mkdtemp(), "m.skq")
    _, *fig = _phase(lambda: save_model(q, path))
    rows.append(("save_model", *fig))
    fresh = make()
    _, *fig = _phase(lambda: load_into(fresh, path))
    rows.append(("load_into", *fig))
    return rows, path


def _save(save_model, q):
    path = os.path.join(tempfile.mkdtemp(), "w.skq")
    save_model(q, path)
    return path


def run(tree, case, n):
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--case", case, "--n", str(n), "--child"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        if line.startswith("ROW "):
            _, name, seconds, grew, size = line.split()
            rows[name] = (float(seconds), int(grew), int(size))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(PHASES), default="torch-io")
    parser.add_argument(
        "--n", type=int, default=None, help="8192 (torch-io), 4096 (adaptive), 100000"
    )
    parser.add_argument("--base", help="a checkout of an earlier commit")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n or {"torch-io": 8192, "adaptive": 4096, "tall": 100000}[args.case]
    if args.child:
        child(args.case, n)
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    now = run(here, args.case, n)
    base = run(args.base, args.case, n) if args.base else None
    size = next(iter(now.values()))[2]
    if args.case == "tall":
        print(f"data {n}x1000 float32 ({n * 1000 * 4 / MiB:.0f} MiB), 4 bits")
    else:
        what = "Linear" if args.case == "torch-io" else "AdaptivePrecisionQuantizer on"
        bits = "4 bits" if args.case == "torch-io" else "budget 0.01"
        print(
            f"{what} {n}x{n} float32 ({n * n * 4 / MiB:.0f} MiB), {bits}; file "
            f"{size / MiB:.1f} MiB"
        )
    head = f"{'phase':<16}{'peak +MiB':>10}{'s':>8}"
    if base:
        head += f"{'base +MiB':>11}{'base s':>8}{'ratio':>7}"
    print(head)
    for name in PHASES[args.case]:
        s, grew, _ = now[name]
        line = f"{name:<16}{grew / MiB:>10.0f}{s:>8.2f}"
        if base:
            bs, bgrew, _ = base[name]
            ratio = f"{grew / bgrew:.2f}" if bgrew > 0 else "-"  # (0 of 0: no ratio)
            line += f"{bgrew / MiB:>11.0f}{bs:>8.2f}{ratio:>7}"
        print(line)


if __name__ == "__main__":
    main()
