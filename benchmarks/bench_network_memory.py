"""Peak resident memory and time of ``skquant.torch.quantize_model`` (GPFQ, 4 bits).

Each case runs in a fresh child process (``python bench_network_memory.py --child
CASE``), so peaks never leak from one case to the next. The child reports, from
``/proc/self/status`` (VmRSS, VmHWM) and ``getrusage(RUSAGE_SELF).ru_maxrss``:

* ``peak after build``: the process's peak once torch and skquant are imported,
  numba's kernels are compiled (a tiny warm-up fit) and the model and
  calibration data are built, just before ``quantize_model``;
* ``peak total``: the absolute peak of the child after ``quantize_model``
  (nothing subtracted); the difference is what ``quantize_model`` added;
* the wall time of ``quantize_model`` and the sum of the layer-kernel times
  (``report.seconds``).

A sampling thread reads VmRSS every ``--interval`` seconds during the call;
forward pre-hooks registered on the float model's modules (they observe only;
``quantize_model``'s deep copies carry them) tell which module last ran, so the
child prints a timeline of where the resident set grows (``--trace``).

Cases: ``three-conv`` = Sequential(Conv2d(3,64,3,p=1), ReLU, Conv2d(64,128,3,p=1),
ReLU, Conv2d(128,128,3,p=1)) on 128 random 3x64x64 images, max_rows=2048
(target: peak < 2.5 GB); ``resnet18`` = torchvision.models.resnet18(weights=None)
on 128 random 3x224x224 images, max_rows=4096, batch_size=32 (target: < 4 GB).

ResNet-18 needs torchvision's Python code. PyPI's torchvision wheel is built
against a CUDA torch and its C++ ops do not load beside a CPU-only torch
(``import torchvision`` then fails with 'operator torchvision::nms does not
exist'); in that case the child imports ``torchvision.models`` without running
``torchvision/__init__.py`` (the C++ ops are not needed to build a ResNet) and
says so. Install it beside torch 2.13 without replacing torch (0.28.0 is the release
that pins torch 2.13.0; it is a benchmark-only requirement, never a dependency):

    .venv/bin/python -m pip install --no-deps torchvision==0.28.0

Run:
    .venv/bin/python benchmarks/bench_network_memory.py                # both cases
    .venv/bin/python benchmarks/bench_network_memory.py --cases three-conv
    .venv/bin/python benchmarks/bench_network_memory.py --cases resnet18 --trace
    .venv/bin/python benchmarks/bench_network_memory.py --cases resnet18 \\
        --held-rows-bytes all   # one float pass holding every layer's inputs
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

CASES = {
    "three-conv": {"target_gb": 2.5},
    "resnet18": {"target_gb": 4.0},
}


# ---------------------------------------------------------------- child side
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _maxrss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


class RSSSampler(threading.Thread):
    """Reads VmRSS every ``interval`` s; keeps the peak and its growth points."""

    def __init__(self, interval, where):
        super().__init__(daemon=True)
        self.interval = interval
        self.where = where  # a dict holding the module that ran last
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self.peak = 0
        self.timeline = []  # (t, rss kB, where) each time the peak grows 64 MB

    def run(self):
        last = 0
        while not self.stop.is_set():
            rss = _status_kb("VmRSS")
            if rss > self.peak:
                self.peak = rss
                if rss - last > 64 * 1024:
                    self.timeline.append(
                        (
                            time.perf_counter() - self.t0,
                            rss,
                            self.where.get("name", "-"),
                        )
                    )
                    last = rss
            self.stop.wait(self.interval)


def _import_resnet18():
    """``(resnet18, note)`` from torchvision, bypassing its C++ ops if they fail."""
    try:
        import torchvision  # noqa: F401
        from torchvision.models import resnet18

        return resnet18, "torchvision imported normally"
    except Exception as exc:  # CUDA wheel beside a CPU torch: RuntimeError
        for mod in [
            m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")
        ]:
            del sys.modules[mod]
        import importlib.util
        import types

        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            raise ImportError("torchvision is not installed") from exc
        pkg = types.ModuleType("torchvision")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["torchvision"] = pkg
        from torchvision.models import resnet18

        note = (
            f"`import torchvision` failed ({type(exc).__name__}: {str(exc)[:80]}); "
            "torchvision.models imported without the package's C++ ops"
        )
        return resnet18, note


def _build(case):
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if case == "three-conv":
        model = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 128, 3, padding=1),
        )
        X = torch.rand(128, 3, 64, 64, generator=g)
        return model, X, {"max_rows": 2048}, "-"
    if case == "resnet18":
        resnet18, note = _import_resnet18()
        model = resnet18(weights=None)
        X = torch.rand(128, 3, 224, 224, generator=g)
        return model, X, {"max_rows": 4096, "batch_size": 32}, note
    raise ValueError(f"unknown case {case!r}")


def child(case, threads, interval, trace_tm, held="default"):
    import numpy as np
    import torch

    from skquant import GreedyPathQuantizer
    from skquant.torch import _capture, quantize_model

    if held != "default":  # the bound on the sampled inputs a walk holds
        _capture.HELD_ROWS_BYTES = float("inf") if held == "all" else int(held)

    torch.set_num_threads(threads)
    out = {"case": case, "threads": threads, "load": os.getloadavg(), "held": held}
    out["rss_after_import_kb"] = _status_kb("VmRSS")
    # compile numba's kernels outside the measurement
    rng = np.random.default_rng(0)
    GreedyPathQuantizer(n_bits=4).fit(
        rng.standard_normal((8, 4)), activations=rng.random((16, 8))
    )
    model, X, kwargs, note = _build(case)
    model.eval()
    out["note"] = note
    out["n_weights"] = int(sum(p.numel() for p in model.parameters()))
    out["data_mb"] = X.numel() * X.element_size() / 2**20
    out["rss_after_build_kb"] = _status_kb("VmRSS")
    out["hwm_after_build_kb"] = _status_kb("VmHWM")
    out["maxrss_after_build_kb"] = _maxrss_kb()

    where = {}
    hooks = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):

            def pre(m, args, name=name):
                where["name"] = name

            hooks.append(mod.register_forward_pre_hook(pre))
    sampler = RSSSampler(interval, where)
    if trace_tm:
        import tracemalloc

        tracemalloc.start(5)
    sampler.start()
    t = time.perf_counter()
    err = None
    try:
        _, report = quantize_model(
            model, GreedyPathQuantizer(n_bits=4), X, return_report=True, **kwargs
        )
    except BaseException:  # report, then re-raise in the parent's view
        import traceback

        err = traceback.format_exc()
        report = None
    out["seconds"] = time.perf_counter() - t
    sampler.stop.set()
    sampler.join()
    for h in hooks:
        h.remove()
    if trace_tm:
        import tracemalloc

        snap = tracemalloc.take_snapshot()
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        out["tracemalloc_top"] = [str(s) for s in snap.statistics("lineno")[:8]]
        tracemalloc.stop()
    out["error"] = err
    out["kernel_seconds"] = None if report is None else report.seconds
    out["report"] = None if report is None else str(report)
    out["hwm_total_kb"] = _status_kb("VmHWM")
    out["maxrss_total_kb"] = _maxrss_kb()
    out["sampled_peak_kb"] = sampler.peak
    out["timeline"] = sampler.timeline
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------- parent side
def _gb(kb):
    return kb / 2**20


def run_case(case, args):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        case,
        "--threads",
        str(args.threads),
        "--interval",
        str(args.interval),
        "--held-rows-bytes",
        args.held_rows_bytes,
    ]
    if args.tracemalloc:
        cmd.append("--tracemalloc")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    res = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT ") :])
    print(
        f"\n=== {case}, rows held {args.held_rows_bytes} (child wall {wall:.1f} s, "
        f"exit {proc.returncode}) ==="
    )
    if res is None:
        print("child gave no result; its stderr:")
        print(proc.stderr[-6000:])
        if proc.returncode < 0 or proc.returncode == 137:
            print("(killed by a signal: out of memory?)")
        return None
    target = CASES[case]["target_gb"]
    peak = _gb(max(res["hwm_total_kb"], res["maxrss_total_kb"]))
    build = _gb(res["hwm_after_build_kb"])
    print(
        f"{res['n_weights']} weights, data {res['data_mb']:.0f} MB, "
        f"{res['threads']} torch threads, load at start {res['load'][0]:.2f}; "
        f"{res['note']}"
    )
    print(f"RSS after imports           {_gb(res['rss_after_import_kb']):7.3f} GB")
    print(
        f"peak after build (VmHWM)    {build:7.3f} GB   (ru_maxrss "
        f"{_gb(res['maxrss_after_build_kb']):.3f} GB)"
    )
    print(
        f"peak total (VmHWM)          {_gb(res['hwm_total_kb']):7.3f} GB   (ru_maxrss "
        f"{_gb(res['maxrss_total_kb']):.3f} GB, sampled "
        f"{_gb(res['sampled_peak_kb']):.3f} GB)"
    )
    print(f"increase by quantize_model  {peak - build:7.3f} GB")
    if res["kernel_seconds"] is not None:
        print(
            f"quantize_model {res['seconds']:.1f} s, layer kernels "
            f"{res['kernel_seconds']:.1f} s "
            f"(overhead x{res['seconds'] / max(res['kernel_seconds'], 1e-9):.2f})"
        )
    else:
        print(f"quantize_model failed after {res['seconds']:.1f} s")
    print(
        f"target peak < {target} GB: {'MET' if peak < target else 'NOT MET'} "
        f"({peak:.3f} GB)"
    )
    if res["error"]:
        print("traceback:\n" + res["error"])
    if args.trace and res["timeline"]:
        print("RSS growth (t s, RSS GB, module that last ran):")
        for tt, rss, name in res["timeline"]:
            print(f"  {tt:8.1f} {_gb(rss):7.3f}  {name}")
    if res.get("tracemalloc_top"):
        print(
            "tracemalloc peak (Python/NumPy allocations) "
            f"{res['tracemalloc_peak_mb']:.0f} MB; top:"
        )
        for s in res["tracemalloc_top"]:
            print("  " + s)
    if args.report and res["report"]:
        print(res["report"])
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--interval", type=float, default=0.05, help="RSS sampling period (s)"
    )
    p.add_argument("--trace", action="store_true", help="print the RSS growth timeline")
    p.add_argument("--report", action="store_true", help="print the per-layer report")
    p.add_argument(
        "--tracemalloc", action="store_true", help="also trace Python allocations"
    )
    p.add_argument(
        "--held-rows-bytes",
        default="default",
        help="bound on the sampled inputs a walk holds (skquant.torch._capture."
        "HELD_ROWS_BYTES): bytes, 'all' (one float pass) or 'default'",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(
            args.child, args.threads, args.interval, args.tracemalloc,
            args.held_rows_bytes,
        )  # fmt: skip
        return
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    for case in args.cases:
        run_case(case, args)


if __name__ == "__main__":
    main()
