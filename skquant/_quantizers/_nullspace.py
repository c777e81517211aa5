"""Data-driven pre-processing + MSQ (Maly & Saab)."""

import numbers

import numpy as np
from scipy import sparse
from sklearn.utils._param_validation import RealNotInt, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._common._checks import Interval
from .._common._progress import run_in_batches
from .._common._warn import warn
from .._kernels import _rounding
from .._kernels._threads import (
    blas_n_jobs,
    blas_threads_for,
    numba_threads,
    one_blas_thread,
)
from .._tensor._alphabets import kernel_for, round_on_grid
from ._datadriven import BaseDataQuantizer
from ._gpfq import greedy_path_gram, use_gram
from ._gram import gram, triangle_product
from ._lp import basic_solutions
from ._products import _LazyValues, _Products
from ._spectrum import (
    GramSpectrum,
    LeadingSpectrum,
    RowSpectrum,
    _Factors,
)
from ._walk import (
    GUIDE_SHARE,
    basis_and_rest,
    guide_share,
    halved,
    outside_data,
    walk_cost,
    walk_to_vertices,
)

__all__ = ["NoFreedomWarning", "NullSpaceQuantizer"]


class NoFreedomWarning(UserWarning):
    """The calibration data leaves a layer no freedom (``rank >= n_in``).

    The null-space method then rounds every coordinate (greedy path following,
    or MSQ with ``rounding="nearest"``). Raised for a rank given (``None`` or a
    number, and the LP variant's ``"auto"``); where ``rank="auto"``'s held-out
    ladder chose to keep every direction (``rank_`` says so), none is raised. The
    network drivers gather these into one warning per model, naming the layers.
    """


#: the smallest rank cap ``rank="auto"`` tries
MIN_AUTO_RANK = 8

#: ``rank="auto"`` stops climbing its ladder of caps after this many caps in a row
#: that do no better than the best one so far. Measured on the 120 layer fits of
#: LeNet-5, the MNIST MLP, the Fashion CNN and VGG-8 at 4/3/2 bits with 256 and 1024
#: calibration images (``benchmarks/bench_auto_rank.py``): with 2, every layer picks
#: the cap the whole ladder picks; with 1, three pick another (0.1%, 2.4% and 2.9%
#: more held-out error); the walks cost 0.95 (0.74 with 1) of the whole ladder's
AUTO_PATIENCE = 2

#: ``rank="auto"`` fits its ladder on at most this many neurons of a layer
#: (:func:`ladder_neurons`), then the chosen cap on all of them. Replayed on the
#: 120 layer fits above with every neuron's held-out errors
#: (``bench_auto_rank.py --replay --neurons 8 16 32 64``): with 32, 102 layers
#: pick the cap of the ladder on all neurons and the others lose at most 2.6%
#: held-out error (16: up to 15.8%; 64: 109 layers, up to 1.6%), for 0.31 of the
#: modelled walks (ladder and final fit; 0.47 with 64)
AUTO_NEURONS = 32

#: ``rank="auto"`` on calibration data with at least this many inputs, and at
#: least as many rows as inputs (so that the n_in x n_in Gram matrix is no larger
#: than the data), takes its spectra from the Gram matrix (:class:`GramSpectrum`:
#: one tridiagonal reduction, then only the leading singular vectors the caps
#: use) in place of full SVDs, which on a 4096 x 4096 layer took 42 of the fit's
#: 67 s (``benchmarks/bench_nullspace_default.py``); a cap at the numerical rank
#: still takes the SVD
GRAM_SPECTRUM = 2048


def ladder_neurons(norms, count):
    """Indices of at most ``count`` neurons spread evenly over the order of their
    held-out output norms ``norms`` (all of them when there are not more)."""
    n_out = norms.size
    if n_out <= count:
        return np.arange(n_out)
    order = np.argsort(norms, kind="stable")
    picks = np.unique(np.rint(np.linspace(0, n_out - 1, count)).astype(np.int64))
    return np.sort(order[picks])


def _padded_rows(mask):
    """Row indices of the True entries of each column of ``mask``, ``-1`` padded."""
    counts = mask.sum(axis=0)
    idx = np.full((max(int(counts.max(initial=0)), 1), mask.shape[1]), -1, np.int64)
    cols, rows = np.nonzero(mask.T)  # by column, rows increasing
    first = np.cumsum(counts) - counts  # each column's first entry among them
    idx[np.arange(rows.size) - first[cols], cols] = rows
    return idx


class NullSpaceQuantizer(BaseDataQuantizer):
    """Data-driven pre-processing + memoryless scalar quantization (Maly & Saab).

    Moves every neuron ``w`` (a column of ``W``) inside the affine space
    ``{z : X z = X w}``, which leaves the layer's output on the calibration data
    ``X`` unchanged, to a point where all but at most ``k = rank(X)`` coordinates
    already lie on the alphabet; only those ``<= k`` are then rounded. For a single
    layer the relative error on the data decays with ``n_in`` when the data is well
    behaved (Gaussian data: like ``sqrt(m / n_in)`` at fixed bits for the grid
    variant, like ``1 / n_in`` up to a log for the scale-free ternary variant).

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    n_bits : int or {"ternary", "binary"}, default=4
        The alphabet: a symmetric ``n_bits``-bit grid (2 to 16) as
        :class:`UniformQuantizer`'s, ``{-a, 0, a}`` or ``{-a, a}``.
    variant : {"grid", "lp", "path"}, default="grid"
        ``"grid"``: the step is the max-abs one and each coordinate is boxed in its
        grid cell; a numba null-space walk finds a vertex of
        ``{z : X z = X w, lo <= z <= hi}``, where every coordinate but ``<= k`` sits
        on a cell bound. ``"lp"``: the scale-free variant; the linear program
        ``min ||z||_inf s.t. X z = X w`` (scipy's HiGHS) gives a vertex ``z*`` and
        ``c = ||z*||_inf``, the scale of ``c {-1, 0, 1}`` (``n_bits="ternary"``),
        ``c {-1, 1}`` or the grid of step ``c / K``. ``"path"``: the grid's
        step, and no walk: ``k`` well-conditioned coordinates (a basis, shared
        by the neurons) absorb the change of the others in the kept directions
        exactly, and the others are rounded by greedy path following (GPFQ's
        rule) on the data's part outside the kept directions; the basis is
        then rounded as ``rounding`` says. The same constraint, at most ``k``
        coordinates off the alphabet and the same ``bound_``, for a small
        multiple of GPFQ's work per cap where the walk's grows like ``k^2``, but
        the basis may leave its grid cells (no vertex).
    rank : "auto", int, float in (0, 1) or None, default="auto"
        The complexity parameter: how many singular directions of ``X`` the
        constraint keeps. ``None`` keeps the numerical rank (the method as
        analysed); an int caps it; a float keeps the fewest directions holding
        that fraction of the energy ``||X||_F^2``; ``"auto"`` (the default) picks
        the cap from the data: every fifth calibration row is held out, a
        quantizer is fitted on the others at the caps of a ladder (their
        numerical rank, halved down to 8, less the caps out of
        ``walk_budget``), climbed from the smallest cap until
        two caps in a row do no better than the best so far, and the cap whose
        output on the held-out rows is closest to the float output is used for
        the fit on all rows (``rank_scores_`` holds the errors of the caps tried).
        The ladder is fitted on at most 32 neurons, spread over the range of
        their held-out output norms: on a wide layer it costs a fraction of the
        final walk. On data of at least 2048 inputs and as many rows the
        spectra come from the Gram matrix ``X^T X`` (one tridiagonal reduction
        and Lanczos iterations in place of two SVDs; the numerical rank is
        then the one the Gram matrix resolves, see the User Guide), and on
        data of at least 2048 inputs and fewer rows from ``X X^T``. With
        ``variant="lp"``, ``"auto"`` keeps the numerical rank; with
        ``variant="path"`` the ladder also tries the cap at ``n_in`` whatever
        the climb, when the fitting rows' rank reaches it (no freedom: GPFQ
        from the start points, one GPFQ's cost), as the path's error is not
        monotone in the cap. The default was
        ``None`` until whole-network measurements (docs, "Data-driven methods on
        real networks") showed it losing to round to nearest on LeNet-5 at 3
        bits.
        Dropping directions buys freedom (``n_in - k`` dimensions)
        at the price of a term ``sigma_{k+1} ||w - z||`` in the error.
    rounding : {"greedy", "nearest"}, default="greedy"
        How the ``<= k`` coordinates left off the alphabet are rounded:
        ``"nearest"`` is plain MSQ; ``"greedy"`` rounds them one by one feeding the
        error forward (greedy path following restricted to them), which never
        changes the guarantee (the a-posteriori bound holds for any rounding).
    walk_budget : float > 0 or None, default=16.0
        With ``rank="auto"`` and the grid variant: the most arithmetic a cap's
        walk may cost, in multiples of GPFQ's on the layer (per neuron, ``5 k^2
        (n_in - k)`` flops for the walk at cap ``k``, ``2 r k (n_in - k)`` more
        when guided, against ``4 m n_in`` for GPFQ on ``m`` rows). The ladder
        tries only the caps within it (at least its smallest). On a layer whose
        largest cap (the fitting rows' count or ``n_in``) is out of budget, the
        walk is *guided*: each coordinate heads for the cell bound that GPFQ's
        rule picks on the data's response to its move (``X_j - X_B y`` with the
        current basis ``B``, outside the kept directions; the error fed
        forward) instead of the nearer bound. The responses are taken in the
        data's ``r = min(m, 256)`` leading directions after the ``k`` kept ones
        (exact on data of lower rank), and only where those hold at least half
        of its energy outside the smallest cap (on a flat spectrum the walk
        stays unguided). The point is a vertex of the same polytope, with the
        same ``bound_``; at small caps it reproduces held-out outputs better
        than the unguided walk at the largest ones (see the User Guide). Where
        every cap is in budget the fit is the whole ladder's. ``None``: every
        cap, never guided (the default before ``walk_budget``). Explicit ranks
        are not limited.
    n_jobs : int, default=None
        Number of numba threads for the walk and the rounding (over neurons);
        ``-1`` means all. ``None``: the walk (the fit's main work, as BLAS
        products are GPFQ's and GPTQ's) on as many threads as the BLAS
        libraries run on when the fit begins (one under ``OMP_NUM_THREADS=1``
        or ``threadpoolctl.threadpool_limits(1)``, and one off the main
        thread), the rounding on one. The codes do not depend on the thread
        count. The LP variant solves its programs one after another. On a
        layer with ``m * n_in * n_out`` below ``2**31`` the fit runs its BLAS
        calls on one thread (its many small products ran slower on more:
        :ref:`performance`).

    Attributes
    ----------
    scale_ : ndarray of shape (n_out,)
        Step (or level ``a``) of each neuron's alphabet.
    qmin_, qmax_ : int
        Smallest and largest code.
    n_bits_ : int
        Bits stored per weight.
    components_ : ndarray of shape (n_in, k)
        Orthonormal basis of the kept row space of the calibration activations
        (``k`` is ``rank_``, at most the number of calibration rows: with this
        basis, and until :attr:`bound_` is first read the Gram block of the
        coordinates left off the alphabet, a fitted null-space quantizer grows
        with the calibration rows, up to ``min(m, n_in)`` columns).
    singular_values_ : ndarray of shape (min(m, n_in),)
        Singular values of the calibration activations (when ``rank="auto"``
        took them from a Gram matrix, on data of at least 2048 inputs, those
        below about ``sqrt(max(m, n_in) * eps)`` times the largest are
        round-off).
    rank_ : int
        Number of kept directions ``k``.
    guided_ : bool
        Whether the walk was guided (``rank="auto"`` on a layer whose largest
        cap is out of ``walk_budget``, where the guide's directions hold at
        least half of the data's energy outside the smallest cap, and at a cap
        below the numerical rank).
    rank_scores_ : dict of {int: float}
        With ``rank="auto"``: the held-out output error ``||Xf_h W - Xq_h Q||_F``
        of each cap tried, smallest first, over the ladder's neurons (all of them
        up to 32; empty otherwise).
    n_in_ : int
        Number of inputs of the layer (rows of ``W``).
    codes_ : ndarray of int of shape (n_in, n_out)
        Codes of the fitted weights (:meth:`transform` of them reuses these; the
        calibration activations are not kept).
    n_off_grid_ : ndarray of shape (n_out,)
        Coordinates of each neuron left off the alphabet by the pre-processing.
    preprocessing_residual_ : float
        Largest relative violation ``||X z - X w|| / ||X w||`` of the equality
        after the pre-processing (round-off without a rank cap; more on data with
        nearly duplicate columns, whose bases can be nearly singular: the walk then
        keeps every coordinate in its cell rather than restore the equality).
    calibration_error_ : ndarray of shape (n_out,)
        Relative error ``||X w - X q|| / ||X w||`` of each neuron on the data
        (absolute, ``||X q||``, where ``X w = 0``).
    bound_ : ndarray of shape (n_out,)
        A-posteriori bound on ``calibration_error_`` (see Notes); computed on first
        access (one eigenvalue problem per neuron, with a progress bar when it
        is projected to take more than about two seconds; silenced by
        ``skquant.set_config(progress=False)``), then kept.
    n_features_in_ : int
        Number of output channels (columns of ``W``).
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        The channels' names: ``W``'s string column names in :meth:`fit`.

    See Also
    --------
    GreedyPathQuantizer : Greedy path following (GPFQ), the same authors' method.
    UniformQuantizer : Memoryless scalar quantization without data.

    Notes
    -----
    With ``S`` the coordinates left off the alphabet (``|S| <= k``), ``z`` the
    pre-processed neuron and ``q`` the quantized one,
    ``||X w - X q|| <= ||X w - X z|| + ||X_S||_2 ||z_S - q_S||_2``; the first term
    is round-off without a rank cap and at most ``sigma_{k+1} ||w - z||`` with one.
    ``bound_`` is this bound divided by ``||X w||``, with ``||X_S||_2`` computed
    exactly (from the Gram matrix). When ``k >= n_in`` there is no freedom: a
    warning is issued and every coordinate is rounded (plain MSQ with
    ``rounding="nearest"``, greedy path following with ``"greedy"``).

    References
    ----------
    J. Maly and R. Saab, "A simple approach for quantizing neural networks",
    arXiv:2209.03487 (2022).

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import NullSpaceQuantizer, UniformQuantizer
    >>> from skquant.metrics import relative_error
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((16, 512))
    >>> W = rng.standard_normal((512, 4)) / np.sqrt(512)
    >>> q = NullSpaceQuantizer(n_bits=3).fit(W, activations=X)
    >>> int(q.n_off_grid_.max()) <= 16
    True
    >>> msq = UniformQuantizer(n_bits=3).fit(W).transform(W)
    >>> relative_error(W, q.transform(W), X) < relative_error(W, msq, X) / 3
    True
    """

    _parameter_constraints: dict = {
        **BaseDataQuantizer._parameter_constraints,
        "variant": [StrOptions({"grid", "lp", "path"})],
        "rank": [
            None,
            StrOptions({"auto"}),
            Interval(numbers.Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="neither"),
        ],
        "rounding": [StrOptions({"greedy", "nearest"})],
        "walk_budget": [None, Interval(numbers.Real, 0, None, closed="neither")],
    }
    _parameter_constraints.pop("granularity")
    #: a prototype for benchmarks: the walk guided (``walk_to_vertices(X=...)``)
    #: on every layer and at every rank
    _guided = False

    def _network_error(self):
        if self.variant != "lp":
            return None
        return (
            "NullSpaceQuantizer(variant='lp') is for single layers, not networks: "
            "its vertex keeps the calibration output but moves the weights in the "
            "calibration data's null space, which other inputs do not share, "
            "unbounded by any grid cell (the weights grow far past the float ones), "
            "and a layer with as many calibration rows as inputs leaves it no "
            "freedom. Use variant='grid' (the weights stay in their grid cells) or "
            "GreedyPathQuantizer."
        )

    def __init__(
        self,
        n_bits=4,
        *,
        variant="grid",
        rank="auto",
        rounding="greedy",
        walk_budget=16.0,
        n_jobs=None,
    ):
        self.n_bits = n_bits
        self.variant = variant
        self.rank = rank
        self.rounding = rounding
        self.walk_budget = walk_budget
        self.n_jobs = n_jobs

    def _fit_quantize(self, W, activations, target_activations):
        W, Xq, Xf = self._validate_fit(W, activations, target_activations)
        # n_jobs=None: the walk on the BLAS libraries' threads, read before the
        # small fits' one-thread rule below (_walk_jobs)
        self._n_jobs = blas_n_jobs()
        # the ladder makes many small products, alternating numpy's and scipy's
        # BLAS: on one thread below SMALL_FIT (GPFQ gains from the threads)
        with blas_threads_for(Xq.shape[0] * W.size):
            return self._fit_validated(W, Xq, Xf)

    def _fit_validated(self, W, Xq, Xf):
        rank, self.rank_scores_ = self.rank, {}
        if rank == "auto" and self.variant == "lp":
            rank = None  # the LP variant keeps the numerical rank (one LP a neuron)
        self.guided_ = self._guided  # (rank="auto": the ladder decides)
        G = spectrum = None
        if rank == "auto" and GRAM_SPECTRUM <= Xq.shape[1] <= Xq.shape[0]:
            G = gram(Xq)
            spectrum = GramSpectrum(G, Xq.shape[0])
        elif rank == "auto" and GRAM_SPECTRUM <= Xq.shape[1]:  # fewer rows
            spectrum = RowSpectrum(gram(Xq.T), Xq)
        factors, pre_factor = _Factors(Xq), None
        if rank == "auto":
            rank, self.rank_scores_ = self._held_out_rank(
                W, Xq, Xf, G, spectrum, factors
            )
        if rank is None:  # the numerical rank: no direction is left to guide by
            self.guided_ = False
        lead = None  # the guide's source of further directions
        if spectrum is not None and rank is not None:  # a cap: its leading vectors
            k = min(rank, spectrum.rank)
            V, s = spectrum.vectors(k), spectrum.singular_values
            lead = spectrum.vectors
        else:  # (from the fitting rows' Gram matrix or factor, after a ladder)
            lead, s, k = factors.all(rank, every=self.guided_)
            V = np.ascontiguousarray(lead[:, :k])
            lead = lead if self.guided_ else None
            G = G if G is not None else factors.G
            pre_factor = factors.factor
        self.components_, self.singular_values_, self.rank_ = V, s, k
        laddered = self.rank == "auto" and self.variant != "lp"
        if k >= W.shape[0] and not laddered:  # (a ladder chose it on held-out rows)
            warn(
                f"NullSpaceQuantizer: the calibration data leaves no freedom "
                f"(rank {k} >= n_in={W.shape[0]}); every coordinate is rounded "
                f"({'greedy path following' if self.rounding == 'greedy' else 'MSQ'})."
                " Pass rank < n_in to keep only the main directions of the data.",
                NoFreedomWarning,
            )
        W64 = W.astype(np.float64)
        pre = _Products(W64, Xq, Xf, V if lead is None else lead, G, s, pre_factor)
        if self.variant != "lp":
            self._fit_alphabet(W)
            Z = None
        else:
            self._fit_alphabet(W)
            Z = self._lp_points(W64, Xq, Xf, pre)  # (and the scales)
        codes, Z = self._codes(W64, Xq, Xf, Z=Z, pre=pre)
        self._diagnostics(W64, Z, codes, Xq, pre)
        return codes, W.dtype

    def _held_out_rank(self, W, Xq, Xf, G=None, spectrum=None, factors=None):
        """The rank cap with the smallest output error on held-out calibration
        rows: every fifth row is held out, the rest fit a quantizer at the caps of
        a ladder (the numerical rank of the fitting rows, halved down to
        :data:`MIN_AUTO_RANK`), and the cap whose quantized layer reproduces the
        held-out rows' float output best is returned (ties: the larger cap).

        The ladder is fitted on at most :data:`AUTO_NEURONS` neurons
        (:func:`ladder_neurons`) and climbed from its smallest cap, left after
        :data:`AUTO_PATIENCE` caps in a row that do no better than the best so far
        (the walk's cost grows like the cap squared: the large caps are the
        expensive ones). The fitting rows' singular vectors are computed once;
        each cap walks with its leading columns. With fewer than 10 rows nothing
        is held out: the numerical rank. ``G`` and ``spectrum``: the Gram matrix
        of ``Xq`` and its :class:`GramSpectrum`, when the spectra come from it
        (:data:`GRAM_SPECTRUM`); ``factors``: the data's :class:`_Factors`."""
        errors, top = self._ladder_errors(
            W, Xq, Xf, G=G, spectrum=spectrum, factors=factors
        )
        if errors is None:
            return None, {}
        scores = {k: float(np.linalg.norm(e)) for k, e in errors.items()}
        best = min(scores, key=lambda k: (scores[k], -k))
        return (None if best >= top else best), scores

    def _ladder_errors(
        self, W, Xq, Xf, neurons=None, G=None, spectrum=None, allow=None, factors=None
    ):
        """Held-out output errors of the climbed ladder, per neuron.

        Returns ``({cap: errors of the ladder's neurons}, top)`` (``top``: the
        fitting rows' numerical rank), or ``(None, None)`` with fewer than 10
        rows. ``neurons`` (indices) overrides :func:`ladder_neurons`; with ``G``
        (the Gram matrix of ``Xq``) and ``spectrum`` (its :class:`GramSpectrum`)
        the fitting rows' leading vectors come from ``G`` less the held-out
        rows' Gram matrix (:class:`LeadingSpectrum`) and their numerical rank is
        taken as the smaller of their count and the rank of all rows; with a
        :class:`RowSpectrum` (wide data) they come from its block of the
        fitting rows, and from their own :class:`RowSpectrum` where only the
        fitting rows are wide (fewer than ``n``: a tridiagonal reduction of
        their ``m_fit x m_fit`` Gram matrix in place of Lanczos iterations on
        the ``n x n`` one; on the 4096 x 4096 layer of
        ``bench_nullspace_default.py``, 3277 fitting rows, the fit's spectra
        took 4.8 s in place of 7.4 s on two threads).
        ``allow(k, top)``, when given, says which caps are tried (a caller
        choosing between variants skips the walks it finds too costly);
        ``factors`` (:class:`_Factors` of ``Xq``), when given, keeps
        the fitting rows' triangular factor for the final fit."""
        m = Xq.shape[0]
        if m < 10:
            return None, None
        held = np.zeros(m, dtype=bool)
        held[4::5] = True
        Xq_fit = Xq[~held]
        Xf_fit = Xq_fit if Xf is Xq else Xf[~held]
        G_fit, fit_factor = None, None
        if isinstance(spectrum, RowSpectrum) or (
            G is not None and Xq_fit.shape[0] < Xq.shape[1]
        ):  # wide fitting rows: from their m_fit x m_fit Gram matrix, as all
            # rows' spectrum is taken when they are wide
            lead = (
                spectrum.rows(~held)
                if G is None
                else RowSpectrum(gram(Xq_fit.T), Xq_fit)
            )
            V_all, probe_s, top = lead.vectors, lead.singular_values, lead.rank
        elif G is None:
            factors = _Factors(Xq) if factors is None else factors
            V_all, probe_s, top = factors.fitting(held, Xq_fit)
            G_fit, fit_factor = factors.fitting_products()
        else:
            G_fit = G - gram(Xq[held])
            top = min(Xq_fit.shape[0], spectrum.rank)
            lead = LeadingSpectrum(G_fit, Xq_fit.shape[0], rank=top)
            V_all, probe_s = lead.vectors, _LazyValues(lead)
        n = W.shape[0]
        guided = self._guided_walk(Xq_fit.shape[0], m, n)
        if guided and not self._guided:
            # only where the guide's directions hold most of the response (on
            # the Gram path, all rows' spectrum: only the fitting rows' leading
            # part is computed)
            s_all = spectrum.singular_values if G is not None else probe_s
            k0 = halved(top, MIN_AUTO_RANK)[-1]  # the smallest cap
            guided = guide_share(s_all, k0) >= GUIDE_SHARE
        ladder = self._ladder_caps(top, m, n, guided)
        self.guided_ = guided
        ref = Xf[held] @ W  # (float64: the activations are)
        if neurons is None:
            neurons = ladder_neurons(np.linalg.norm(ref, axis=0), AUTO_NEURONS)
        W_s, ref = W[:, neurons], ref[:, neurons]
        W64 = W_s.astype(np.float64)
        probe = type(self)(**{**self.get_params(), "rank": None})
        probe._n_jobs = self._walk_jobs()
        probe._fit_alphabet(W_s)
        probe.guided_ = guided
        probe.singular_values_ = probe_s
        pre = _Products(W64, Xq_fit, Xf_fit, V_all, G_fit, probe_s, fit_factor)

        Xq_held = Xq[held]

        def held_out(k):
            probe.components_ = pre.V(k)
            codes, _ = probe._codes(W64, Xq_fit, Xf_fit, pre=pre)
            Q = probe._tensor(codes, W.dtype).dequantize().astype(np.float64)
            errors[k] = np.linalg.norm(ref - Xq_held @ Q, axis=0)
            return float(np.linalg.norm(errors[k]))

        errors, best, worse = {}, np.inf, 0
        for k in reversed(ladder):
            if allow is not None and not allow(k, top):
                continue
            score = held_out(k)
            worse = worse + 1 if score >= best else 0
            best = min(best, score)
            if worse >= AUTO_PATIENCE:
                break
        if self.variant == "path" and top >= W.shape[0] and top not in errors:
            # no freedom: GPFQ from the start points (see ``rank`` in the docs)
            held_out(top)
        return errors, top

    def _ladder_caps(self, top, m, n, guided=False):
        """The caps tried, largest first: ``top`` halved down to
        :data:`MIN_AUTO_RANK`, less those whose walk exceeds ``walk_budget``
        (:func:`walk_cost`; the smallest is kept if none fits). ``m``, ``n``:
        the layer's calibration rows and inputs."""
        ladder = halved(top, MIN_AUTO_RANK)
        if self.walk_budget is None or self.variant != "grid":
            return ladder
        fits = [k for k in ladder if walk_cost(k, m, n, guided) <= self.walk_budget]
        return fits or ladder[-1:]

    def _guided_walk(self, m_fit, m, n):
        """Whether ``rank="auto"`` guides the walk: when ``walk_budget`` leaves
        out the largest cap the ``m_fit`` fitting rows allow."""
        if self._guided:
            return True
        if self.walk_budget is None or self.variant != "grid":
            return False
        return walk_cost(min(m_fit, n), m, n) > self.walk_budget

    def _walk_jobs(self):
        """``n_jobs`` of the walk and ``bound_``: as given, or with ``None`` the
        BLAS libraries' thread count when the last fit began (one before)."""
        if self.n_jobs is not None:
            return self.n_jobs
        return getattr(self, "_n_jobs", 1)

    def _start_points(self, W, Xq, Xf, pre):
        """Closest points to ``W`` (columns) with ``V^T Xq``-consistent outputs
        (``pre``: the layer's :class:`_Products`, ``V`` its leading columns)."""
        if Xf is Xq:
            return W  # (the callers do not write to it)
        # least-squares correction in the kept directions: Xq z = Xf w. V holds
        # right singular vectors of Xq, so Xq V = U_k S_k has orthogonal columns
        # of norms s_k and the least-squares coefficients are (Xq V)^T R / s_k^2,
        # that is V^T (Xq^T R) / s_k^2 (R = (Xf - Xq) W: n_in x n_out products
        # per cap, not the m x n_in x k of Xq V)
        V = self.components_
        s = self.singular_values_[: V.shape[1]]
        coef = (V.T @ pre.XqTR) / (s * s)[:, None]
        return W + V @ coef

    def _lp_points(self, W, Xq, Xf, pre):
        """Basic solutions of ``min ||z||_inf s.t. V^T z = V^T z0`` per column
        over the inputs some calibration row sees, and ``scale_`` from their
        ``c = ||z||_inf``. An input that is zero on every row is free in the
        program (a vertex would put it at ``+-c``): it takes the alphabet's point
        nearest its start point, as GPFQ rounds such an input."""
        seen = np.any(Xq, axis=0)
        Z = basic_solutions(self.components_, self._start_points(W, Xq, Xf, pre), seen)
        c = np.abs(Z[seen]).max(axis=0, initial=0.0)
        K = self.alphabet_record_.largest_code
        # float64 whatever W's dtype: the entries at +-c lie on the grid only
        # with the exact c / K (not with a float32 step, rounded either way)
        self.scale_ = np.where(c > 0, c / K, self.scale_).astype(np.float64)
        if not seen.all():
            step = np.broadcast_to(self.scale_, (Z.shape[1],))
            grid = self.alphabet_record_.code_grid(step)
            Z[~seen] = round_on_grid(Z[~seen], grid)[1]
        return Z

    def _preprocess(self, W, Xq, Xf, pre, flops=None):
        """The pre-processed points: for the grid variant each column of ``W``
        walked to a vertex of its polytope (coordinates in order of decreasing
        energy; ``flops`` as :func:`walk_to_vertices`'s), for the path variant
        :meth:`_path_points`."""
        if self.variant == "path":
            return self._path_points(W, Xq, Xf, pre)
        n, n_out = W.shape
        step = np.broadcast_to(self.scale_.astype(np.float64), (n_out,))
        # neurons contiguous (F order): the cells' kernel and the walk read
        # them so, with no copies of these n x n_out arrays
        Z0 = np.array(self._start_points(W, Xq, Xf, pre), order="F")  # (a copy)
        V = self.components_
        if V.shape[1] >= n:
            return self.alphabet_record_.boxes(Z0, step, out=Z0)[2]

        def cells(a, b):  # the boxes of a batch of neurons, as it is walked
            box = self.alphabet_record_.boxes(Z0[:, a:b], step[a:b], out=Z0[:, a:b])
            return box[:2]

        X = pre.guide(V.shape[1]) if getattr(self, "guided_", self._guided) else None
        return walk_to_vertices(
            V,
            Z0,
            None,
            None,
            pre.order,
            self._walk_jobs(),
            flops=flops,
            X=X,
            cells=cells,
        )[0]

    def _path_points(self, W, Xq, Xf, pre):
        """The path variant's pre-processed points.

        With ``B`` the coordinates of :func:`first_basis` and ``N`` the others (in
        the walk's order), ``T = V_B^{-T} V_N^T`` carries a change ``d`` of ``z_N``
        into the change ``-T d`` of ``z_B`` that keeps ``V^T z`` fixed, and the
        data's response to that pair is ``M d`` with ``M = Xq_N - Xq_B T`` (the
        data outside the kept directions). ``z_N`` is rounded by greedy path
        following on ``M`` (GPFQ's rule: its output error outside the kept
        directions, fed forward), and ``z_B`` absorbs the rest exactly."""
        n, n_out = W.shape
        step = np.broadcast_to(self.scale_.astype(np.float64), (n_out,))
        Z0 = self._start_points(W, Xq, Xf, pre)
        V = self.components_
        if V.shape[1] >= n:
            return Z0
        basis, N = basis_and_rest(V, pre.order)
        gram_form = use_gram(Xq.shape[0], N.size, n_out)
        # the per-neuron path reads M by column: made in that order
        T, M = outside_data(Xq, V, basis, N, "C" if gram_form else "F")
        WN = np.ascontiguousarray(Z0[N])
        alphabet = self.alphabet_record_
        if gram_form:  # GPFQ's two forms, as it picks
            A = triangle_product(M, M, WN, "lower")
            codes = greedy_path_gram(A, gram(M), WN, alphabet, step)
        else:
            codes = np.empty_like(WN)
            idx = np.tile(np.arange(N.size, dtype=np.int64), (n_out, 1)).T.copy()
            U = np.zeros((n_out, M.shape[0]))
            self._greedy_path(M, M, WN, idx, U, step, codes)
            codes = alphabet.final_codes(codes)
        values = codes * step
        Z = Z0.copy()
        Z[N] = values
        Z[basis] += T @ (WN - values)
        return Z

    def _codes(self, W, Xq, Xf, pre, Z=None):
        """Integer codes of ``W`` (float64 columns) and the pre-processed points
        (``pre``: the layer's :class:`_Products`; its residuals are set)."""
        n_out = W.shape[1]
        step = np.broadcast_to(self.scale_.astype(np.float64), (n_out,))
        alphabet = self.alphabet_record_
        if Z is None and self.variant == "lp":
            Z = self._lp_points(W, Xq, Xf, pre)
        if Z is None:
            Z = self._preprocess(W, Xq, Xf, pre)
        else:
            top = float(alphabet.largest_code) * step
            Z = np.clip(Z, -top, top)
        on = pre.on = alphabet.on_alphabet(Z, step)
        zp, inv, cmin, cmax = alphabet.code_grid(step)
        codes = Z * inv  # clip(rint(Z inv + zp)), in one array
        codes += zp
        np.rint(codes, out=codes)
        np.clip(codes, cmin, cmax, out=codes)
        if self.rounding == "greedy":
            no_freedom = self.components_.shape[1] >= W.shape[0]
            if not (no_freedom and use_gram(*Xq.shape, n_out)):
                idx = pre.off_rows = _padded_rows(~on)
                # residual of the pre-processed points (neurons as rows);
                # rounding the off-grid entries one by one then follows it
                # (greedy path following restricted to them), leaving in it the
                # residual of the codes, Xf w - Xq q
                rows = pre.rounding_rows()
                if rows is None:
                    U = Z.T @ pre.XqT
                    np.subtract(pre.XfW.T, U, out=U)
                    pre.drift_norms = np.sqrt(np.einsum("ij,ij->i", U, U))
                    self._greedy_path(Xq, Xq, Z, idx, U, step, codes, pre.XqT)
                    pre.residual = U.T
                else:  # the same steps on n rows: the residual's part in range
                    Ur, outside = pre.in_range(Z, rows)

                    def norms():  # ||Xf w - Xq z|| per neuron, from Ur as it is
                        return np.sqrt(np.einsum("ij,ij->i", Ur, Ur) + outside)

                    pre.drift_norms = norms()
                    self._greedy_path(rows, rows, Z, idx, Ur, step, codes, rows)
                    pre.residual_norms = norms()  # (Ur now the codes')
            else:  # every coordinate off the grid (no freedom): GPFQ's Gram form
                # followed part: Xq^T u0 + tril(G) z with u0 = Xf w - Xq z, i.e.
                # Xq^T Xf w - triu(G, 1) z (from the data: G is the one n x n)
                A = Xq.T @ pre.XfW - triangle_product(Xq, Xq, Z, "strict_upper")
                G = pre.gram()
                codes = greedy_path_gram(A, G, Z, alphabet, step, keep=on)
                return codes, Z
        return alphabet.final_codes(codes), Z

    def _diagnostics(self, W, Z, codes, Xq, pre):
        step = np.ascontiguousarray(
            np.broadcast_to(self.scale_.astype(np.float64), (W.shape[1],))
        )
        off = ~pre.on
        ref = pre.XfW
        norm = np.sqrt(np.einsum("ij,ij->j", ref, ref))  # (no n x n_out temporary)
        safe = np.where(norm > 0, norm, 1.0)
        if pre.drift_norms is None:
            R = ref - Xq @ Z
            drift = np.linalg.norm(R, axis=0) / safe
        else:
            drift = pre.drift_norms / safe
        self.preprocessing_residual_ = float(np.max(drift))
        # Xf w - Xq q = R - Xq (q - z): q - z is zero but for the <= k coordinates
        # rounded off the grid (and round-off of the others, below 1e-12 of a
        # step, left out), a sparse product on a wide layer; the greedy
        # rounding's residual is that already
        indptr, rows, moves, dist2 = _rounding.rounding_moves(
            Z, codes, step, off, 1e-12
        )
        if pre.residual_norms is not None:
            R = None
        elif pre.residual is not None:
            R = pre.residual
        elif 8 * moves.size < Z.size:
            D = sparse.csc_matrix((moves, rows, indptr), shape=Z.shape)
            R = R - (D.T @ Xq.T).T
        else:
            R = ref - Xq @ (codes.astype(np.float64) * step)
        self.calibration_error_ = (
            pre.residual_norms if R is None else np.sqrt(np.einsum("ij,ij->j", R, R))
        ) / safe
        self.n_off_grid_ = off.sum(axis=0)
        # the bound's terms but ||X_S||_2 (one eigenvalue problem per neuron, solved
        # when bound_ is first read); it needs X only through the Gram matrix of
        # the coordinates off the grid in some neuron (at most n_out * rank_ of
        # them), indexed by their position in that union
        dist = np.sqrt(dist2) / safe
        union = np.flatnonzero(off.any(axis=1))
        position = np.full(off.shape[0], -1, dtype=np.int64)
        position[union] = np.arange(union.size)
        idx = pre.off_rows if pre.off_rows is not None else _padded_rows(off)
        idx = np.where(idx >= 0, position[idx], -1)
        G = pre.gram(union)
        self._bound_terms = (drift, dist, idx, G)
        self._bound = None

    @property
    def bound_(self):
        """A-posteriori bound on ``calibration_error_``, per neuron.

        ``(||X w - X z|| + ||X_S||_2 ||z_S - q_S||_2) / ||X w||`` with ``||X_S||_2``
        exact (the largest eigenvalue of the Gram block of ``S``, one per neuron,
        computed on first access with ``n_jobs`` threads, then kept).

        Returns
        -------
        bound : ndarray of shape (n_out,)
            The bound of each neuron.
        """
        check_is_fitted(self)
        if self._bound is None:
            drift, dist, idx, G = self._bound_terms
            counts = self.n_off_grid_.astype(np.int64)
            # neurons with the same set S share its norm (without freedom, every
            # neuron's S is every input: one eigenvalue problem, not n_out); keyed
            # by Python bytes (NumPy's drop trailing NULs: S = {0} was S = {})
            groups = {}
            keys = [np.sort(idx[:c, j]).tobytes() for j, c in enumerate(counts)]
            which = np.array([groups.setdefault(k, len(groups)) for k in keys])
            first = np.unique(which, return_index=True)[1]
            idx, counts = np.ascontiguousarray(idx[:, first]), counts[first]
            norms = np.empty(counts.size)
            kernel = kernel_for(_rounding, "subset_norms", self._walk_jobs())
            with (
                numba_threads(self._walk_jobs()) as n_threads,
                one_blas_thread(),
            ):
                run_in_batches(
                    lambda a, b: kernel(
                        G, np.ascontiguousarray(idx[:, a:b]), counts[a:b], norms[a:b]
                    ),
                    counts.size,
                    "null-space bound_ (neurons)",
                    first=n_threads,
                )
            self._bound = drift + norms[which] * dist
            self._bound_terms = None  # the Gram block is not needed again
        return self._bound
