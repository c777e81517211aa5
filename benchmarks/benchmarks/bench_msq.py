r"""asv benchmarks of skquant's quantizers: fit, transform, peak memory and SQNR.

How to run (asv 0.6, from the ``benchmarks/`` folder, against the current
environment; nothing is built or installed: when skquant is not importable there the
module falls back to this checkout, and ``ASV_PYTHONPATH=/abs/path/to/repo`` is the
asv way to point at another one; asv drops a plain ``PYTHONPATH``)::

    cd benchmarks
    # once per machine, before the first run (writes ~/.asv-machine.json)
    ../.venv/bin/asv machine --yes
    # check that the suite imports and every benchmark is well formed
    ../.venv/bin/asv check --python=same
    # one quick pass (one sample per benchmark) over one class, nothing saved
    ../.venv/bin/asv run --python=same --quick --show-stderr --bench UniformQuantizer
    # the same, results saved under benchmarks/.asv/results for `asv publish`
    # (html under benchmarks/.asv/html); --set-commit-hash records HEAD
    ../.venv/bin/asv run --environment existing:$(pwd)/../.venv/bin/python \
        --set-commit-hash $(git rev-parse HEAD) --quick --bench UniformQuantizer

(``asv dev`` is ``asv run --python=same --quick --show-stderr --dry-run``.)

Every class is parametrised over shape x dtype x n_jobs (8 combinations). ``setup``
builds a seeded ``(n_in, n_out)`` matrix whose columns have different scales, then
fits and transforms a small slice of it with the same estimator, so that numba's JIT
compilation (or the loading of its on-disk cache) happens outside the timed region.
"""

import sys
from pathlib import Path

import numpy as np

try:
    import skquant  # noqa: F401
except ImportError:  # "existing" environment without skquant installed: this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from skquant import (
    ActivationQuantizer,
    BinaryQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant.metrics import sqnr

SHAPES = ((1024, 1024), (4096, 4096))
DTYPES = ("float32", "float64")
N_JOBS = (1, 2)


def make_weights(shape, dtype, seed=0):
    """Seeded C-ordered ``(n_in, n_out)`` matrix, Gaussian with per-column scales."""
    rng = np.random.default_rng(seed)
    n_in, n_out = shape
    col_scale = rng.lognormal(mean=-3.0, sigma=0.5, size=n_out)
    W = rng.standard_normal((n_in, n_out)) * col_scale
    return np.ascontiguousarray(W, dtype=dtype)


class _QuantizerBench:
    """Shared body; subclasses set ``make_estimator``. Skipped by asv (leading _)."""

    params = (SHAPES, DTYPES, N_JOBS)
    param_names = ("shape", "dtype", "n_jobs")
    # One call per sample; the 4096 x 4096 calls take milliseconds to seconds.
    number = 1
    repeat = (1, 10, 10.0)
    warmup_time = 0.0
    timeout = 300

    def make_estimator(self, n_jobs):  # pragma: no cover - overridden
        raise NotImplementedError

    def setup(self, shape, dtype, n_jobs):
        self.W = make_weights(shape, dtype)
        # JIT warm-up on a slice with the same dtype, layout and thread count.
        small = np.ascontiguousarray(self.W[:16, :32])
        self.make_estimator(n_jobs).fit(small).transform(small)
        self.est = self.make_estimator(n_jobs).fit(self.W)

    def time_fit(self, shape, dtype, n_jobs):
        self.make_estimator(n_jobs).fit(self.W)

    def time_transform(self, shape, dtype, n_jobs):
        self.est.transform(self.W)

    def peakmem_transform(self, shape, dtype, n_jobs):
        self.est.transform(self.W)

    def track_sqnr_db(self, shape, dtype, n_jobs):
        return float(sqnr(self.W, self.est.transform(self.W)))

    track_sqnr_db.unit = "dB"


class UniformQuantizerSuite(_QuantizerBench):
    """4-bit per-channel uniform grid, max-abs scale."""

    def make_estimator(self, n_jobs):
        return UniformQuantizer(n_bits=4, granularity="per_channel", n_jobs=n_jobs)


class TernaryQuantizerSuite(_QuantizerBench):
    """Per-channel ternary alphabet with the L2-optimal level (sorts every column)."""

    def make_estimator(self, n_jobs):
        return TernaryQuantizer(granularity="per_channel", n_jobs=n_jobs)


class BinaryQuantizerSuite(_QuantizerBench):
    """Per-channel binary alphabet, mean-|w| level."""

    def make_estimator(self, n_jobs):
        return BinaryQuantizer(granularity="per_channel", n_jobs=n_jobs)


class ActivationQuantizerSuite(_QuantizerBench):
    """8-bit affine per-feature grid calibrated by min/max (columns are features)."""

    def make_estimator(self, n_jobs):
        return ActivationQuantizer(n_bits=8, granularity="per_feature", n_jobs=n_jobs)
