"""Cheaper variants of the null-space default, layer by layer, on held-out rows.

Beside GPFQ, the default and the default without its walk budget
(``walk_budget=None``, the default before it):
``NullSpaceQuantizer(variant="path")`` (with
``rank="auto"`` and at the fixed caps of ``--path-caps``), and a negative result
kept so that it is not tried again blind: can a walk at a small rank cap,
followed by greedy path following over *every* coordinate (GPFQ started from the
walked point ``z`` with the residual ``Xf w - Xq z``; ``Hybrid`` below, at the
caps of ``--caps``), reach the held-out error of the default's cap, at about
GPFQ's cost? Each weight layer of a network is captured as the default sees it in
:func:`skquant.torch.quantize_model` (``--calib`` training images, 1024 unless
told, seed 0; conv patches sampled to 4096 rows), every fifth row is held out,
and each method is fitted on the other rows; printed: the held-out relative output error
``||Xf_h W - Xq_h Q|| / ||Xf_h W||`` and the fit's seconds (with the cap and
whether the walk was guided), per layer, and the layer's guide share
(``guide_share_of`` of ``bench_nullspace_default.py``, on the fitting rows).

Run (one thread; about 2 minutes for the CNN at 2 bits):
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/bench_nullspace_variants.py --net cnn --bits 2
    # the default, GPFQ and the path variant only:
    ... bench_nullspace_variants.py --net cnn --bits 2 --caps
"""

import argparse
import time
import warnings

import numpy as np
import torch
from _models import trained
from bench_nullspace_default import guide_share_of

import skquant
from skquant import GreedyPathQuantizer, NullSpaceQuantizer
from skquant._quantizers._gpfq import greedy_path_gram
from skquant._quantizers._gram import gram, triangle_product
from skquant.torch import quantize_model


class Hybrid(NullSpaceQuantizer):
    """The walk at the rank cap, then GPFQ over every coordinate from its vertex."""

    def _codes(self, W, Xq, Xf, pre, Z=None):
        step = np.broadcast_to(self.scale_.astype(np.float64), (W.shape[1],))
        Z = self._preprocess(W, Xq, Xf, pre)
        A = Xq.T @ pre.XfW - triangle_product(Xq, Xq, Z, "strict_upper")
        return greedy_path_gram(A, gram(Xq), Z, self.alphabet_record_, step), Z


def capture(net, bits, calib=1024):
    """``(W, Xq, Xf)`` of every weight layer, as the default is fitted on them."""
    dataset = "mnist" if net in ("lenet5", "mlp") else "fashion-mnist"
    model, (Xtr, _, _, _) = trained(net, dataset, verbose=False)
    g = torch.Generator().manual_seed(0)
    X = Xtr[torch.randperm(len(Xtr), generator=g)[:calib]]
    found = []

    class Capture(NullSpaceQuantizer):
        def _fit_quantize(self, W, activations, target_activations):
            Xf = activations if target_activations is None else target_activations
            found.append((np.array(W), np.array(activations), np.array(Xf)))
            return super()._fit_quantize(W, activations, target_activations)

    quantize_model(model, Capture(n_bits=bits), X, random_state=0)
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--net", default="cnn", choices=["lenet5", "mlp", "cnn", "vgg8"])
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--caps", nargs="*", type=int, default=[16, 32, 64, 128])
    p.add_argument("--path-caps", nargs="*", type=int, default=[10])
    p.add_argument("--calib", type=int, default=1024, help="calibration images")
    args = p.parse_args()
    skquant.set_config(progress=False)
    warnings.simplefilter("ignore")
    methods = {
        "gpfq": lambda: GreedyPathQuantizer(n_bits=args.bits),
        "default": lambda: NullSpaceQuantizer(n_bits=args.bits),
        "no-budget": lambda: NullSpaceQuantizer(n_bits=args.bits, walk_budget=None),
        "path": lambda: NullSpaceQuantizer(n_bits=args.bits, variant="path"),
        **{
            f"path-{k}": (
                lambda k: (
                    lambda: NullSpaceQuantizer(n_bits=args.bits, variant="path", rank=k)
                )
            )(k)
            for k in args.path_caps
        },
        **{
            f"hybrid-{k}": (lambda k: lambda: Hybrid(n_bits=args.bits, rank=k))(k)
            for k in args.caps
        },
    }
    for W, Xq, Xf in capture(args.net, args.bits, args.calib):
        if W.shape[0] < 20:
            continue
        held = np.zeros(Xq.shape[0], dtype=bool)
        held[4::5] = True
        ref = Xf[held] @ W.astype(np.float64)
        cells = []
        for name, make in methods.items():
            start = time.perf_counter()
            q = make().fit(W, activations=Xq[~held], target_activations=Xf[~held])
            seconds = time.perf_counter() - start
            Q = q.transform(W).astype(np.float64)
            err = np.linalg.norm(ref - Xq[held] @ Q) / np.linalg.norm(ref)
            cap = f", k {q.rank_}" if hasattr(q, "rank_") else ""
            if getattr(q, "guided_", False):
                cap += ", guided"
            cells.append(f"{name} {err:.4f} ({seconds:.2f} s{cap})")
        share = guide_share_of(Xq[~held])  # (the rows the methods fit on)
        print(
            f"{args.net} {args.bits} bits, layer {W.shape[0]}x{W.shape[1]}, "
            f"{Xq.shape[0]} rows, guide share {share:.2f}: " + " | ".join(cells),
            flush=True,
        )


if __name__ == "__main__":
    main()
