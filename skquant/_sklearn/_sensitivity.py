"""measure_sensitivity: the per-layer sensitivity of a fitted scikit-learn MLP."""

import numpy as np
from scipy.sparse import issparse

from .._network._dense import MLPNetwork, check_mlp
from .._network._sensitivity import (
    HESSIAN_SAMPLES,
    labels_1d,
    sensitivity,
    subsample,
)
from ._mlp import unwrap_mlp

__all__ = ["measure_sensitivity"]


def measure_sensitivity(
    estimator,
    X,
    y=None,
    *,
    quantizer=None,
    bits=(2, 3, 4, 5, 6, 8),
    tolerance=0.005,
    threshold="margin",
    additivity=True,
    hessian=False,
    n_probes=16,
    max_samples=2000,
    random_state=0,
    verbose=False,
    n_jobs=None,
):
    """Per-layer sensitivity of a fitted scikit-learn MLP (Zhou et al.).

    Every layer is quantized alone at every choice of ``bits`` and the noise power
    on the logits is measured on ``X``; Zhou's law ``p exp(-alpha b)`` is fitted per
    layer, the tolerated noise ``t`` is measured, and the additivity of the noise
    checked. The result feeds :class:`~skquant.LayerBitAllocator` and
    :func:`~skquant.allocate_bits`.

    The network runs from the measured layer on: the float layers before it run
    once per layer, and each choice (and each noise level of the empirical
    threshold) runs the layer and those after it.

    Parameters
    ----------
    estimator : MLPClassifier or MLPRegressor
        A fitted network (or one wrapped in ``FrozenEstimator``). For a
        regressor the output is the measured ``Z`` and no accuracy or ``t`` is
        measured.
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Data to measure on (held out from training ideally). Sparse X has its
        ``max_samples`` rows drawn first, then made dense.
    y : array-like of shape (n_samples,), default=None
        Labels (a column vector is raveled, with a ``DataConversionWarning``, as
        scikit-learn does): accuracy is measured on them (and they are needed by
        ``hessian=True``); without them, accuracy is the agreement with the
        float model's decisions.
    quantizer : estimator, default=None
        A skquant weight quantizer with ``n_bits`` (cloned per layer and choice);
        ``None`` means :class:`~skquant.UniformQuantizer` per channel. Data-driven
        quantizers (:class:`~skquant.GreedyPathQuantizer`,
        :class:`~skquant.NullSpaceQuantizer`) are fitted on the layer's float
        inputs.
    bits : sequence, default=(2, 3, 4, 5, 6, 8)
        The choices: bit-widths and the alphabets ``"binary"`` and
        ``"ternary"``.
    tolerance : float, default=0.005
        The accuracy drop that defines the tolerated noise ``t`` (0.005: half a
        point).
    threshold : {"margin", "empirical", "both"} or None, default="margin"
        How ``t`` is measured: from the logit margins (no extra pass), by
        injecting noise into each layer's weights (about 12 passes per layer),
        both, or not at all.
    additivity : bool, default=True
        Also measure all layers quantized together (at each choice, and at three
        random mixtures) against the sum of the single-layer noises.
    hessian : bool, default=False
        Also estimate each layer's Hessian trace (Hutchinson, ``n_probes``
        probes on the first 512 samples of the subset; needs ``y``) for the HAWQ
        criterion.
    n_probes : int, default=16
        Hutchinson probes.
    max_samples : int or None, default=2000
        Largest number of rows of ``X`` measured on (a random subset).
    random_state : int, default=0
        Seed of the subset, the noise and the probes.
    verbose : bool, default=False
        Progress bar over the layers.
    n_jobs : int, default=None
        Parallel workers (joblib) for the choices of each layer, which are
        independent fits and passes (a layer's choices go out as one task, or
        as a few where there are more workers than about half the layers; each
        task runs the layers before it once): ``None`` takes the ``n_jobs`` of
        a ``joblib.parallel_config`` in force (scikit-learn's meaning), else
        runs them in this process; ``-1`` uses every core. The workers follow
        joblib's backend, so under ``joblib.parallel_config(backend="dask")``
        they run on a Dask cluster.
        The results are the serial run's (to floating-point summation order,
        which a worker's thread count can change). Workers pay off where each has
        cores of its own: on one machine whose cores every pass already uses
        (BLAS's and torch's threads), they can be slower than the serial run.

    Returns
    -------
    result : SensitivityResult
        Tables by layer and choice; ``print(result)`` shows them, ``result.plot()``
        draws noise against bits.

    See Also
    --------
    skquant.torch.measure_sensitivity : The same for torch models.
    LayerBitAllocator : Measures and allocates bit-widths in one estimator.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neural_network import MLPClassifier
    >>> from skquant import measure_sensitivity
    >>> X, y = load_digits(return_X_y=True)
    >>> mlp = MLPClassifier((32,), max_iter=400, random_state=0).fit(X[:1000] / 16,
    ...                                                             y[:1000])
    >>> res = measure_sensitivity(mlp, X[1000:] / 16, y[1000:], bits=(2, 4, 6, 8))
    >>> res.noise.shape
    (2, 4)
    >>> bool(all(-2.0 < s < -1.0 for s in res.slope))  # about -ln 4 per bit
    True
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.neural_network import MLPClassifier

    mlp = check_mlp(
        unwrap_mlp(estimator), fitted=True, torch_twin="measure_sensitivity"
    )
    try:
        network = MLPNetwork(mlp)
    except NotFittedError as exc:
        raise NotFittedError(
            f"estimator must be a fitted network, got an unfitted {type(mlp).__name__} "
            "(sklearn.base.clone unfits MLPs: wrap a fitted one in "
            "sklearn.frozen.FrozenEstimator to keep it through clone and grid search)."
        ) from exc
    classifier = isinstance(mlp, MLPClassifier)
    binarizer = getattr(mlp, "_label_binarizer", None)
    if classifier and getattr(binarizer, "y_type_", None) == "multilabel-indicator":
        raise ValueError(
            f"estimator is a multilabel classifier ({mlp.n_outputs_} labels per "
            "sample), which the sensitivity does not support: it measures the "
            "margin between the classes of one label per sample."
        )
    sparse = issparse(X)  # (the MLP takes SciPy sparse X: its rows drawn first,
    # then made dense, the rows the dense X gives)
    X = X.tocsr() if sparse else network._check_X(X)
    y = None if y is None else np.asarray(y)
    if classifier and y is not None:
        y = labels_1d(y)
    Xs, ys = subsample(X, y, max_samples, random_state)
    if sparse:
        Xs = network._check_X(Xs.toarray())
    labels = None
    if classifier and ys is not None:
        Xs, ys = network.check_targets(Xs, ys)
        labels = np.searchsorted(mlp.classes_, ys)
    if hessian and (ys is None or not classifier):
        raise ValueError(
            "hessian=True needs a classifier and its labels y (the loss is the "
            "log-loss)."
        )
    return sensitivity(
        network,
        Xs,
        labels,
        quantizer=quantizer,
        bits=bits,
        classifier=classifier,
        tolerance=tolerance,
        threshold=threshold,
        additivity=additivity,
        hessian=hessian,
        hessian_data=(
            Xs[:HESSIAN_SAMPLES],
            None if ys is None else ys[:HESSIAN_SAMPLES],
        ),
        n_probes=n_probes,
        max_rows=None,
        random_state=random_state,
        verbose=verbose,
        n_jobs=n_jobs,
    )
