"""Per-layer bit-widths as an estimator: measure the sensitivity, allocate exactly."""

import inspect
import numbers
from collections.abc import Mapping

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._common._checks import Interval
from .._common._jobs import N_JOBS
from .._common._plot import axes
from .._layerbits._allocation import allocate_bits, greedy_bits, pareto_choices
from .._layerbits._choices import (
    CRITERIA,
    as_choice,
    check_quantizer,
    choice_quantizer,
)
from .._network._adapters import adapter_for
from ._sensitivity import measure_sensitivity

__all__ = ["LayerBitAllocator"]


class LayerBitAllocator(BaseEstimator):
    """One bit-width per layer from a measured sensitivity, exactly allocated.

    :meth:`fit` measures how each layer's quantization reaches the network's
    outputs (:func:`~skquant.measure_sensitivity`, or
    :func:`skquant.torch.measure_sensitivity` for a torch model), then picks one
    choice of ``bits`` per layer: the smallest total size whose cost is at most
    ``max_cost``, or the lowest cost within ``budget`` bits. The choice is an
    integer program solved exactly (:func:`~skquant.allocate_bits`; a table it
    cannot prove optimal within its ``time_limit`` of 10 s gives the best answer
    found, with a ``ConvergenceWarning``), or greedily (``solver="greedy"``) for
    comparison. :meth:`quantizers` turns the table into
    the per-layer quantizer mapping that :class:`~skquant.QuantizedMLP` and
    :func:`skquant.torch.quantize_model` take.

    Parameters
    ----------
    estimator : MLPClassifier, MLPRegressor, FrozenEstimator or torch.nn.Module
        The fitted float network (not modified).
    quantizer : estimator, default=None
        The quantizer every layer will use, with an ``n_bits`` parameter
        (``None``: per-channel :class:`~skquant.UniformQuantizer`).
    bits : sequence, default=(2, 3, 4, 5, 6, 8)
        The choices per layer: bit-widths and the alphabets ``"binary"`` and
        ``"ternary"``.
    criterion : {"noise", "sqnr", "hessian", "accuracy"}, default="noise"
        The cost (see :meth:`SensitivityResult.cost`): Zhou et al.'s normalised
        output noise ``noise / t``; Lin et al.'s inverse SQNR; HAWQ's Hessian
        trace times the weight error (for a torch model by autograd, also on a
        frozen one; not inside ``torch.inference_mode()``); the measured
        accuracy drop per layer.
    budget : float, default=None
        Largest total size in bits (codes + scales) of the quantized layers.
    max_cost : float, default=None
        Largest total cost. When neither is given: 1.0 for ``"noise"`` (Zhou's
        condition ``sum_i p_i(b_i) / t_i <= 1``: an expected drop of about
        ``tolerance``) and ``tolerance`` for ``"accuracy"``; ``"sqnr"``,
        ``"hessian"`` and regression models need one of them.
    threshold : {"margin", "empirical"}, default="margin"
        How the tolerated noise ``t`` of the ``"noise"`` criterion is measured.
    tolerance : float, default=0.005
        The accuracy drop that defines ``t``.
    solver : {"exact", "greedy"}, default="exact"
        The integer program, or the greedy marginal allocation.
    time_limit : float or None, default=10.0
        Seconds each exact allocation may take (:func:`~skquant.allocate_bits`:
        the best answer found by then, with a ``ConvergenceWarning``); ``None``:
        no limit.
    max_samples : int or None, default=2000
        Rows of ``X`` measured on.
    skip : sequence of str or module classes, default=()
        Torch modules left float, by name or by class (a scikit-learn MLP has
        no such modules: it refuses a ``skip``).
    classifier : bool, default=None
        Whether a torch model's outputs are a classifier's logits (see
        :func:`skquant.torch.measure_sensitivity`; ``None``: guessed from
        their shape and ``y``); a scikit-learn MLP's kind is its own.
    batch_size : int, default=256
        Torch batch size.
    random_state : int, default=0
        Seed of the measurement.
    verbose : bool, default=False
        Progress bar.
    n_jobs : int, default=None
        Parallel workers (joblib) for the sensitivity sweep (see
        :func:`~skquant.measure_sensitivity`) and the solves of
        :meth:`pareto_front`; ``None`` takes the ``n_jobs`` of a
        ``joblib.parallel_config`` in force, else runs them in this process.

    Attributes
    ----------
    sensitivity_ : SensitivityResult
        The measurement.
    cost_ : ndarray of shape (n_layers, n_choices)
        The cost table allocated on.
    layer_names_ : list of str
        The layers.
    choice_index_ : ndarray of int of shape (n_layers,)
        The chosen column per layer.
    bits_ : dict of {str: int or str}
        The chosen bit-width (or alphabet) by layer name.
    predicted_cost_ : float
        The total cost of the choice.
    size_bits_ : float
        Total size in bits of the quantized layers (codes + scales).
    float_size_bits_ : int
        Their size as float32.

    See Also
    --------
    allocate_bits : The exact allocation on given tables.
    measure_sensitivity : The measurement alone.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neural_network import MLPClassifier
    >>> from skquant import LayerBitAllocator, QuantizedMLP
    >>> X, y = load_digits(return_X_y=True)
    >>> X = X / 16
    >>> mlp = MLPClassifier((64, 32), max_iter=400, random_state=0).fit(X[:1200],
    ...                                                                 y[:1200])
    >>> alloc = LayerBitAllocator(mlp).fit(X[1200:], y[1200:])
    >>> sorted(alloc.bits_)
    ['layer_0', 'layer_1', 'layer_2']
    >>> qmlp = QuantizedMLP(mlp, alloc.quantizers()).fit(X[:1200])
    >>> bool(qmlp.size_bits_ < 0.2 * 32 * sum(w.size for w in mlp.coefs_))
    True
    """

    _parameter_constraints: dict = {
        "estimator": "no_validation",
        "quantizer": [None, HasMethods(["fit", "transform"])],
        "bits": ["array-like"],
        "criterion": [StrOptions(set(CRITERIA))],
        "budget": [None, Interval(numbers.Real, 0, None, closed="left")],
        "max_cost": [None, Interval(numbers.Real, 0, None, closed="left")],
        "threshold": [StrOptions({"margin", "empirical"})],
        "tolerance": [Interval(numbers.Real, 0, 1, closed="neither")],
        "solver": [StrOptions({"exact", "greedy"})],
        "time_limit": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "max_samples": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "skip": ["array-like", str, type],
        "classifier": [None, "boolean"],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["boolean"],
        "n_jobs": N_JOBS,
    }

    def __init__(
        self,
        estimator=None,
        quantizer=None,
        *,
        bits=(2, 3, 4, 5, 6, 8),
        criterion="noise",
        budget=None,
        max_cost=None,
        threshold="margin",
        tolerance=0.005,
        solver="exact",
        time_limit=10.0,
        max_samples=2000,
        skip=(),
        classifier=None,
        batch_size=256,
        random_state=0,
        verbose=False,
        n_jobs=None,
    ):
        self.estimator = estimator
        self.quantizer = quantizer
        self.bits = bits
        self.criterion = criterion
        self.budget = budget
        self.max_cost = max_cost
        self.threshold = threshold
        self.tolerance = tolerance
        self.solver = solver
        self.time_limit = time_limit
        self.max_samples = max_samples
        self.skip = skip
        self.classifier = classifier
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self.n_jobs = n_jobs

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Measure every layer's sensitivity on ``X`` and allocate the bit-widths.

        Parameters
        ----------
        X : array-like or torch.Tensor
            Data to measure on (held-out data: the choice is made on it).
        y : array-like, default=None
            Labels (class indices for torch models); needed by
            ``criterion="hessian"``. Without them, accuracy is the agreement with
            the float model's decisions.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        if self.estimator is None:
            raise ValueError(
                "estimator must be a fitted MLPClassifier/MLPRegressor or a torch "
                "model, got estimator=None instead."
            )
        if self.budget is not None and self.max_cost is not None:
            raise ValueError(
                "give at most one of budget and max_cost, got "
                f"budget={self.budget!r}, max_cost={self.max_cost!r} instead."
            )
        kwargs = dict(
            quantizer=self.quantizer,
            bits=self.bits,
            tolerance=self.tolerance,
            threshold=self.threshold if self.criterion == "noise" else None,
            additivity=False,
            hessian=self.criterion == "hessian",
            max_samples=self.max_samples,
            random_state=self.random_state,
            verbose=self.verbose,
            n_jobs=self.n_jobs,
        )
        adapter = adapter_for(self.estimator)
        if adapter is not None:
            if self.criterion == "hessian":  # the error names this entry point
                adapter["check_autograd"](
                    self.estimator, "LayerBitAllocator(criterion='hessian')"
                )
            self.sensitivity_ = adapter["measure_sensitivity"](
                self.estimator,
                X,
                y,
                skip=self.skip,
                batch_size=self.batch_size,
                classifier=self.classifier,
                **kwargs,
            )
        else:
            if isinstance(self.skip, type) or len(self.skip):
                raise ValueError(
                    "skip names torch modules left float; a scikit-learn MLP has "
                    "none (every layer gets bits), got "
                    f"skip={self.skip!r} instead."
                )
            if self.classifier is not None:
                raise ValueError(
                    "classifier is for torch models; a scikit-learn MLP is a "
                    f"classifier or a regressor, got classifier={self.classifier!r}."
                )
            self.sensitivity_ = measure_sensitivity(self.estimator, X, y, **kwargs)
        res = self.sensitivity_
        self.layer_names_ = list(res.layer_names)
        self.cost_ = res.cost(self.criterion, self.threshold)
        self.float_size_bits_ = int(32 * res.n_params.sum())
        max_cost = self._default_max_cost()
        try:
            self._set_choice(self._choose(self.budget, max_cost))
        except ValueError as exc:
            if self.budget is not None or self.max_cost is not None:
                raise
            raise ValueError(  # (the user set neither: say where the limit came from)
                f"{exc} max_cost was not given: its default for "
                f"criterion={self.criterion!r} is {max_cost!r}. Give budget (total "
                "bits) or a larger max_cost, or offer more bits (larger ones "
                "cost less)."
            ) from exc
        return self

    def _default_max_cost(self):
        if self.budget is not None or self.max_cost is not None:
            return self.max_cost
        res = self.sensitivity_
        measured_t = res.t_margin is not None or res.t_empirical is not None
        if self.criterion == "noise" and measured_t:
            return 1.0
        if self.criterion == "accuracy":
            return self.tolerance
        raise ValueError(
            f"criterion={self.criterion!r} has no natural cost scale"
            f"{' for a regression model' if res.accuracy is None else ''}: give "
            "budget (total bits) or max_cost."
        )

    def __setstate__(self, state):  # (pickled before some parameters were
        # ones: their defaults)
        for name, p in inspect.signature(type(self).__init__).parameters.items():
            if p.default is not inspect.Parameter.empty:
                state.setdefault(name, p.default)
        super().__setstate__(state)

    def _finite_cost(self):
        """``cost_`` with infinite costs (a layer tolerating no noise) made huge."""
        return np.nan_to_num(self.cost_, posinf=np.finfo(np.float64).max / 1e6)

    def _choose(self, budget, max_cost):
        if self.solver not in ("exact", "greedy"):  # (set after fit)
            raise ValueError(
                "solver must be 'exact' or 'greedy', got "
                f"solver={self.solver!r} instead."
            )
        if self.solver == "greedy":
            return greedy_bits(
                self._finite_cost(),
                self.sensitivity_.size,
                budget=budget,
                max_cost=max_cost,
            )
        return allocate_bits(
            self._finite_cost(),
            self.sensitivity_.size,
            budget=budget,
            max_cost=max_cost,
            time_limit=self.time_limit,
        )

    def _set_choice(self, choice):
        res = self.sensitivity_
        rows = np.arange(len(choice))
        self.choice_index_ = np.asarray(choice)
        self.bits_ = {
            name: res.choices[j] for name, j in zip(self.layer_names_, choice)
        }
        self.predicted_cost_ = float(self.cost_[rows, choice].sum())
        self.size_bits_ = float(res.size[rows, choice].sum())

    def allocate(self, *, budget=None, max_cost=None):
        """Re-allocate on the measured tables (no new measurement).

        Parameters
        ----------
        budget : float, default=None
            Largest total size in bits. Give exactly one of the two.
        max_cost : float, default=None
            Largest total cost.

        Returns
        -------
        bits : dict of {str: int or str}
            The chosen bit-width (or alphabet) by layer name; the fitted
            attributes are updated to it.
        """
        check_is_fitted(self, "sensitivity_")
        self._set_choice(self._choose(budget, max_cost))
        return dict(self.bits_)

    def quantizers(self, bits=None):
        """The per-layer quantizer mapping of an allocation.

        Parameters
        ----------
        bits : dict of {str: int or str}, default=None
            An allocation by layer name; ``None`` takes ``bits_``.

        Returns
        -------
        quantizers : dict of {str: estimator}
            An unfitted quantizer per layer at its choice (``"binary"`` and
            ``"ternary"`` of a memoryless quantizer are :class:`BinaryQuantizer`
            and :class:`TernaryQuantizer`), for ``QuantizedMLP(quantizer=...)``
            and ``skquant.torch.quantize_model``.
        """
        check_is_fitted(self, "sensitivity_")
        bits = self.bits_ if bits is None else bits
        if not isinstance(bits, Mapping):
            raise TypeError(
                "bits must be a dict of {layer name: choice}, got "
                f"bits={bits!r:.80} instead."
            )
        unknown = [name for name in bits if name not in self.layer_names_]
        if unknown:
            raise ValueError(
                f"bits names layers {unknown} that the network does not have; its "
                f"layers are {self.layer_names_}."
            )
        for name, b in bits.items():
            if as_choice(b) is None:
                raise ValueError(
                    "bits must give each layer a bit-width from 2 to 16 or the "
                    f"alphabet 'binary' or 'ternary', got {b!r} for layer {name!r} "
                    "instead."
                )
        base = check_quantizer(self.quantizer)
        return {name: choice_quantizer(base, b) for name, b in bits.items()}

    def pareto_front(self, n_points=30):
        """Size against predicted cost over a sweep of cost targets.

        The targets' allocations are solved on ``n_jobs`` joblib workers (as the
        sensitivity sweep), with the same result.

        Parameters
        ----------
        n_points : int, default=30
            Cost targets, spaced geometrically (see
            :func:`skquant._layerbits._allocation.pareto_choices`); of allocations of
            equal size, and of those no cheaper than a smaller one, none is kept.

        Returns
        -------
        front : dict
            ``size`` (bits), ``cost`` (predicted) and ``bits`` (one allocation by
            layer name per point), by increasing size and decreasing cost.
        """
        check_is_fitted(self, "sensitivity_")
        res = self.sensitivity_
        rows = np.arange(len(self.layer_names_))
        points = []
        for choice in pareto_choices(
            self._finite_cost(),
            res.size,
            n_points=n_points,
            solver=self.solver,
            n_jobs=self.n_jobs,
            time_limit=self.time_limit,
        ):
            size = float(res.size[rows, choice].sum())
            cost = float(self.cost_[rows, choice].sum())
            if points and (size <= points[-1][0] or cost >= points[-1][1]):
                continue  # dominated by the previous point
            names = zip(self.layer_names_, choice)
            points.append((size, cost, {n: res.choices[j] for n, j in names}))
        return {
            "size": np.array([p[0] for p in points]),
            "cost": np.array([p[1] for p in points]),
            "bits": [p[2] for p in points],
        }

    def plot_pareto(self, ax=None, n_points=30):
        """Plot the predicted cost against the size (in bits per weight).

        Parameters
        ----------
        ax : matplotlib.axes.Axes, default=None
            Where to draw; a new figure when ``None``.
        n_points : int, default=30
            Budgets of the front (see :meth:`pareto_front`).

        Returns
        -------
        ax : matplotlib.axes.Axes
            The axes drawn on; the fitted allocation is marked.
        """
        ax = axes(ax, (5, 3.5))
        front = self.pareto_front(n_points)
        n = self.sensitivity_.n_params.sum()
        ax.semilogy(front["size"] / n, front["cost"], "o-", ms=3, label="front")
        ax.semilogy(
            [self.size_bits_ / n], [self.predicted_cost_], "r*", ms=10, label="fitted"
        )
        ax.set_xlabel("bits per weight (codes + scales)")
        ax.set_ylabel(f"predicted cost ({self.criterion})")
        ax.legend()
        return ax
