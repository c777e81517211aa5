"""The null-space default against GPFQ: the issue's four whole-model targets.

``NullSpaceQuantizer()`` (``rank="auto"``) and ``GreedyPathQuantizer`` at 3 and 2
bits (``--bits``):

* on one layer (``--layer``): ``X = Z (I + G / 64)`` with ``Z`` and ``G`` standard
  normal 4096 x 4096 (seed 0, correlated inputs), ``W`` from ``N(0, 1/4096)`` in
  float32. Prints each fit's seconds, the ratio to GPFQ's, the cap chosen, the
  caps the ladder tried, and the seconds the null-space fit spent in LAPACK's SVD
  and tridiagonal reduction (the spectra), in the walk and in the diagnostics
  (from a profile of the fit);
* on whole networks (``--nets``, default LeNet-5, the Fashion CNN and VGG-8 of
  ``_models.py``): :func:`skquant.torch.quantize_model` on 1024 training images
  (seed 0), GPFQ and the default one after the other, ``--repeat`` times after
  one warm-up of each; prints the median seconds, the median of the
  per-round ratios and each quantized network's test accuracy (``--variants
  grid path`` adds ``NullSpaceQuantizer(variant="path")``; ``PROTOTYPES`` of
  ``bench_datadriven_networks.py`` may be named there too).

Without the thread variables below it runs on the BLAS libraries' own threads,
as users do (and the default's walk on as many of numba's: ``n_jobs=None``);
``--blas-threads-everywhere`` then lifts the null-space fits' one-BLAS-thread
rule for small layers (``SMALL_FIT``).

With ``--check-gram N`` it runs nothing of the above: it quantizes each network
with the default twice, once with its spectra from SVDs and once from the Gram
matrix on every layer of at least ``N`` inputs and as many rows (``GRAM_SPECTRUM``
lowered to ``N``), and prints both test accuracies and whether every layer chose
the same cap.

Run (one thread, about 8 minutes; the networks need ``get_data.sh``'s data):
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/bench_nullspace_default.py
"""

import argparse
import cProfile
import pstats
import statistics
import time
import warnings

import numpy as np
import scipy.linalg

import skquant
from skquant import GreedyPathQuantizer, NullSpaceQuantizer
from skquant._kernels import _threads
from skquant._quantizers._nullspace import MIN_AUTO_RANK
from skquant._quantizers._walk import guide_share, halved

#: prototypes of bench_datadriven_networks.py that --variants may also name
PROTOTYPES = ("ns-walk-else-path", "ns-nearest-ladder", "ns-budget-8")


def prototype(name, bits):
    from bench_datadriven_networks import METHODS

    return METHODS[name](bits)


def guide_share_of(X):
    """What ``rank="auto"`` compares with ``GUIDE_SHARE`` on data ``X``: the
    share of the fitting rows' energy outside the ladder's smallest cap that the
    guide's directions hold (every fifth row held out, the ladder halved from
    the fitting rows' numerical rank). On data of at least ``GRAM_SPECTRUM``
    inputs and as many rows the library takes all rows' spectrum instead."""
    held = np.zeros(X.shape[0], dtype=bool)
    held[4::5] = True
    s = scipy.linalg.svdvals(X[~held])
    top = int(np.sum(s > max(X.shape) * np.finfo(np.float64).eps * s[0]))
    return guide_share(s, halved(top, MIN_AUTO_RANK)[-1])


def layer(n=4096, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, n))
    G = rng.standard_normal((n, n))
    X = Z @ (np.eye(n) + G / 64)
    W = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    return X, W


def phases(profile):
    """Seconds of the fit in the spectra (SVDs, the Gram matrix's tridiagonal
    reduction and Lanczos iterations), the walk and the diagnostics."""
    stats = pstats.Stats(profile).stats
    out = {"spectra": 0.0, "walk": 0.0, "diagnostics": 0.0}
    for (path, _, name), (_, _, tottime, cumtime, _) in stats.items():
        if name == "svd" or path.endswith("_spectrum.py"):  # (LAPACK inside)
            out["spectra"] += tottime
        elif name == "eigsh":  # Lanczos iterations
            out["spectra"] += cumtime
        elif name in ("nullspace_walk", "nullspace_walk_parallel"):
            out["walk"] += tottime
        elif name == "_diagnostics":
            out["diagnostics"] += cumtime
    return out


def one_layer(bits_list, n):
    X, W = layer(n)
    share = guide_share_of(X)
    for b in bits_list:
        bits = int(b) if b.isdigit() else b
        start = time.perf_counter()
        GreedyPathQuantizer(n_bits=bits).fit(W, activations=X)
        t_gpfq = time.perf_counter() - start
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        q = NullSpaceQuantizer(n_bits=bits).fit(W, activations=X)
        profile.disable()
        t_ns = time.perf_counter() - start
        ph = phases(profile)
        print(
            f"{n}x{n} layer, {b} bits: GPFQ {t_gpfq:.1f} s, NullSpaceQuantizer() "
            f"{t_ns:.1f} s ({t_ns / t_gpfq:.2f}x GPFQ); cap {q.rank_}, caps tried "
            f"{sorted(q.rank_scores_)}; guided {q.guided_} (guide share "
            f"{share:.2f}); spectra {ph['spectra']:.1f} s, walk "
            f"{ph['walk']:.1f} s, diagnostics {ph['diagnostics']:.1f} s",
            flush=True,
        )


def network_and_images(net):
    """The trained network, 1024 of its training images (seed 0) and its test set."""
    import torch
    from _models import trained

    dataset = "mnist" if net in ("lenet5", "mlp") else "fashion-mnist"
    model, (Xtr, _, Xte, yte) = trained(net, dataset, verbose=False)
    g = torch.Generator().manual_seed(0)
    return model, Xtr[torch.randperm(len(Xtr), generator=g)[:1024]], Xte, yte


def networks(nets, bits_list, repeat, variants=("grid",)):
    from _models import accuracy

    from skquant.torch import quantize_model

    for net in nets:
        model, X, Xte, yte = network_and_images(net)
        for b in bits_list:
            bits = int(b) if b.isdigit() else b
            makers = {"gpfq": lambda bits=bits: GreedyPathQuantizer(n_bits=bits)}
            for v in variants:
                if v in PROTOTYPES:
                    makers[v] = lambda v=v, bits=bits: prototype(v, bits)
                    continue
                makers[v] = lambda v=v, bits=bits: NullSpaceQuantizer(
                    n_bits=bits, variant=v
                )
            runs = {name: [] for name in makers}
            acc = {}
            for i in range(repeat + 1):  # the first round warms up
                for name, make in makers.items():
                    start = time.perf_counter()
                    quantized = quantize_model(model, make(), X, random_state=0)
                    if i:
                        runs[name].append(time.perf_counter() - start)
                    else:
                        acc[name] = 100 * accuracy(quantized, Xte, yte)
            cells = [f"GPFQ {statistics.median(runs['gpfq']):.2f} s"]
            for v in variants:
                ratio = statistics.median(
                    a / g for a, g in zip(runs[v], runs["gpfq"], strict=True)
                )
                label = (
                    v
                    if v in PROTOTYPES
                    else "NullSpaceQuantizer()"
                    if v == "grid"
                    else f"variant={v!r}"
                )
                cells.append(
                    f"{label} {statistics.median(runs[v]):.2f} s ({ratio:.2f}x GPFQ)"
                )
            print(
                f"{net}, {b} bits, 1024 images, median of {repeat}: "
                + ", ".join(cells)
                + "; test accuracy "
                + ", ".join(f"{n} {a:.2f}%" for n, a in acc.items()),
                flush=True,
            )


def check_gram(nets, bits_list, size):
    from _models import accuracy

    from skquant._quantizers import _nullspace
    from skquant.torch import quantize_model

    chosen = []
    fit = NullSpaceQuantizer._fit_quantize

    def logged(self, W, activations, target_activations):
        out = fit(self, W, activations, target_activations)
        chosen.append((W.shape[0], self.rank_))
        return out

    NullSpaceQuantizer._fit_quantize = logged
    for net in nets:
        model, X, Xte, yte = network_and_images(net)
        for b in bits_list:
            bits = int(b) if b.isdigit() else b
            acc, caps = {}, {}
            for name, threshold in (("SVD", 10**9), ("Gram", size)):
                _nullspace.GRAM_SPECTRUM = threshold
                chosen.clear()
                q = quantize_model(model, NullSpaceQuantizer(n_bits=bits), X)
                acc[name], caps[name] = 100 * accuracy(q, Xte, yte), list(chosen)
            print(
                f"{net}, {b} bits: accuracy {acc['SVD']:.2f}% (SVDs), "
                f"{acc['Gram']:.2f}% (Gram matrix on layers of >= {size} inputs); "
                f"caps {'the same' if caps['SVD'] == caps['Gram'] else 'DIFFERENT'}: "
                f"{caps['Gram']}",
                flush=True,
            )
    NullSpaceQuantizer._fit_quantize = fit


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", nargs="+", default=["3", "2"])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--nets", nargs="*", default=["lenet5", "cnn", "vgg8"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-layer", action="store_true", help="skip the 4096 layer")
    p.add_argument("--check-gram", type=int, metavar="N", help="see the docstring")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["grid"],
        choices=["grid", "path", *PROTOTYPES],
        help="the null-space variants timed on the networks (rank 'auto'), or "
        "prototypes of bench_datadriven_networks.py",
    )
    p.add_argument(
        "--blas-threads-everywhere",
        action="store_true",
        help="let small null-space fits use the BLAS libraries' own threads "
        "(SMALL_FIT = 0), as before the one-thread rule",
    )
    args = p.parse_args()
    skquant.set_config(progress=False)
    warnings.simplefilter("ignore")
    if args.blas_threads_everywhere:
        _threads.SMALL_FIT = 0
    if args.check_gram:
        check_gram(args.nets, args.bits, args.check_gram)
        return
    if args.nets:
        networks(args.nets, args.bits, args.repeat, args.variants)
    if not args.no_layer:
        one_layer(args.bits, args.n)


if __name__ == "__main__":
    main()
