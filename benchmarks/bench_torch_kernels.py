"""The layer kernels in torch (``device=``) against the NumPy/numba kernels.

For each layer shape, fits ``UniformQuantizer``, ``GPTQQuantizer`` and
``GreedyPathQuantizer`` at 4 bits with ``device=None`` (numba and NumPy's BLAS)
and with ``device=DEVICE`` (torch operations there), on the same random
correlated data; prints the median seconds of ``--repeats`` fits, their ratio and
the share of codes that agree. On a machine with a GPU, ``--device cuda`` gives
the GPU's figures (the docs record them when one was available). With
``--profile`` it then prints a profile (cProfile, by own time) of one more fit
of GPTQ and of GPFQ on the last shape, after the timed ones: where a fit's time
goes around the kernel.

Run (CPU torch, 2 threads, a few minutes):
    PYTHONPATH=. .venv/bin/python benchmarks/bench_torch_kernels.py --device cpu
"""

import argparse
import statistics
import time

import numpy as np

from skquant import GPTQQuantizer, GreedyPathQuantizer, UniformQuantizer

SHAPES = [(4096, 1024, 1024), (1024, 2048, 2048)]  # (m, n_in, n_out)


def data(m, n, n_out, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n)) @ (
        np.eye(n) + rng.standard_normal((n, n)) / np.sqrt(n)
    )
    return X, (rng.standard_normal((n, n_out)) / np.sqrt(n)).astype(np.float32)


def timed(fit, repeats):
    times, est = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        est = fit()
        times.append(time.perf_counter() - start)
    return statistics.median(times), est


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shapes", nargs="+", type=int, help="m n_in n_out triples")
    p.add_argument("--profile", action="store_true", help="see the docstring")
    args = p.parse_args()
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(args.shapes[i : i + 3]) for i in range(0, len(args.shapes), 3)]
    print(
        f"{'layer':<22}{'quantizer':<22}{'numba s':>9}{'torch s':>9}"
        f"{'ratio':>7}{'same codes':>12}"
    )
    for m, n, n_out in shapes:
        X, W = data(m, n, n_out)
        for cls in (UniformQuantizer, GPTQQuantizer, GreedyPathQuantizer):
            kw = {} if cls is UniformQuantizer else {"activations": X}

            def fit(device, cls=cls, kw=kw):
                est = cls(n_bits=4, device=device).fit(W, **kw)
                return est, est.encode(W)

            t_ref, (_, ref) = timed(lambda: fit(None), args.repeats)
            t_dev, (_, got) = timed(lambda: fit(args.device), args.repeats)
            print(
                f"{f'{m}x{n}x{n_out}':<22}{cls.__name__:<22}{t_ref:>9.3f}"
                f"{t_dev:>9.3f}{t_dev / t_ref:>7.2f}{(got == ref).mean():>12.5f}",
                flush=True,
            )
    if args.profile:
        profile(X, W, args.device)


def profile(X, W, device):
    """One warm fit of GPTQ and of GPFQ on ``device`` under cProfile."""
    import cProfile
    import pstats

    import torch

    for cls in (GPTQQuantizer, GreedyPathQuantizer):
        prof = cProfile.Profile()
        prof.enable()
        cls(n_bits=4, device=device).fit(W, activations=X)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        prof.disable()
        print(f"\n{cls.__name__} on {device}, {X.shape[0]}x{W.shape[0]}x{W.shape[1]}:")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
