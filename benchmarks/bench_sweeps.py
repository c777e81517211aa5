"""Zhou sensitivity of VGG-8: serial, joblib workers, and a Dask LocalCluster.

``skquant.torch.measure_sensitivity`` of the Fashion-MNIST VGG-8 (``_models.py``) on
2000 test images at bits (2, 3, 4, 5, 6, 8): serial, with ``n_jobs=2`` (joblib's
process workers), and with ``n_jobs=2`` under ``joblib.parallel_config(
backend="dask")`` on a ``distributed.LocalCluster`` of 2 worker processes
(``--workers`` changes both counts; each worker's thread count is the cores
divided among the workers, as joblib gives its own); prints
the medians of ``--rounds`` interleaved rounds (after ``--warmup`` untimed
ones), the ratios to the serial time, and
whether the tables agree, and the CPU seconds each run took in this process
and in its worker processes (medians; ``psutil``, which ``distributed``
brings): workers that run on more threads than their share of the cores spend
more CPU time on the same work. First it times one pass of the network on those
images on one thread and on torch's thread count: what a one-thread worker gives
up against the serial run, whose passes use every thread.

Run (needs the data of ``get_data.sh`` and ``pip install -e .[dask]``):
    .venv/bin/python benchmarks/bench_sweeps.py --rounds 3
"""

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from _models import trained
from joblib import parallel_config

from skquant.torch import measure_sensitivity

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cpu_seconds():
    """User + system CPU seconds of this process ("main") and of each of its
    descendants, by process id."""
    import psutil

    me = psutil.Process()
    out = {"main": sum(me.cpu_times()[:2])}
    for child in me.children(recursive=True):
        try:
            out[child.pid] = sum(child.cpu_times()[:2])
        except psutil.Error:  # gone meanwhile
            pass
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed rounds first (the workers start, import torch and compile "
        "their kernels in them)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes (n_jobs) for joblib and Dask; each gets the "
        "machine's cores divided among them as its thread count, as joblib does",
    )
    args = p.parse_args()
    import os

    import dask
    from distributed import Client, LocalCluster

    workers = args.workers
    share = max(1, len(os.sched_getaffinity(0)) // workers)

    warnings.simplefilter("ignore")
    model, (_, _, Xte, yte) = trained("vgg8", "fashion-mnist", verbose=False)
    X, y = Xte[:2000], yte[:2000]
    # what a worker can gain at best: one pass of the network (a task's work)
    # on one thread against the serial run's two
    from skquant.torch import TorchNetwork

    network = TorchNetwork(model)
    threads = torch.get_num_threads()
    per_pass = {}
    for n_threads in (1, threads):
        torch.set_num_threads(n_threads)
        network.outputs(X)
        per_pass[n_threads] = statistics.median(
            _seconds(lambda: network.outputs(X)) for _ in range(5)
        )
    torch.set_num_threads(threads)
    one, many = per_pass[1], per_pass[threads]
    print(
        f"one pass on {len(X)} images: {one:.3f} s on 1 thread, {many:.3f} s on "
        f"{threads} (x{one / many:.2f})"
    )

    # Dask's nanny starts workers with one BLAS/OpenMP thread; give each the
    # same share of the cores as joblib gives its workers
    dask.config.set(
        {f"distributed.nanny.pre-spawn-environ.{v}": share for v in THREAD_VARS}
    )
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)

    def serial():
        return measure_sensitivity(model, X, y)

    def on_workers():
        return measure_sensitivity(model, X, y, n_jobs=workers)

    def on_dask():
        with parallel_config(backend="dask"):
            return measure_sensitivity(model, X, y, n_jobs=workers)

    runs = {
        "serial": serial,
        f"n_jobs={workers}": on_workers,
        f"dask, {workers} workers": on_dask,
    }
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    tables = {}
    for r in range(args.warmup + args.rounds):
        for name, run in runs.items():
            before = _cpu_seconds()
            start = time.perf_counter()
            tables[name] = run()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
                after = _cpu_seconds()
                cpu[name].append(
                    (
                        after["main"] - before["main"],
                        sum(v - before.get(k, 0.0) for k, v in after.items())
                        - (after["main"] - before["main"]),
                    )
                )
    base = statistics.median(times["serial"])
    for name in runs:
        t = statistics.median(times[name])
        same = np.allclose(tables[name].noise, tables["serial"].noise, rtol=1e-5)
        main_cpu = statistics.median(c[0] for c in cpu[name])
        workers_cpu = statistics.median(c[1] for c in cpu[name])
        print(
            f"{name:<18}{t:8.1f} s  {t / base:5.2f}x serial  "
            f"CPU {main_cpu:5.1f} s here + {workers_cpu:5.1f} s in workers  "
            f"noise table {'the same' if same else 'DIFFERENT'}"
        )
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
