"""QuantizedMLP: scikit-learn's MLPClassifier / MLPRegressor with quantized weights."""

import copy
import numbers

import numpy as np
from sklearn.base import BaseEstimator, _fit_context, clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.neural_network import MLPClassifier
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from ._network import MLPNetwork, _check_mlp, quantize_layers
from ._uniform import UniformQuantizer
from .metrics import compression_ratio, model_size_bits

__all__ = ["QuantizedMLP"]


def _unwrap(estimator):
    """The MLP inside ``estimator`` (``None``, a FrozenEstimator or the MLP)."""
    if estimator is None:
        return MLPClassifier()
    inner = getattr(estimator, "estimator", None)
    if type(estimator).__name__ == "FrozenEstimator" and inner is not None:
        return inner
    return estimator


def _estimator_has(attr):
    def check(self):
        return hasattr(_unwrap(self.estimator), attr)

    return check


class QuantizedMLP(BaseEstimator):
    """A scikit-learn MLP whose weight matrices are quantized layer by layer.

    Wraps an :class:`~sklearn.neural_network.MLPClassifier` or
    :class:`~sklearn.neural_network.MLPRegressor`, fitted or not: :meth:`fit` trains
    it if needed, then quantizes every weight matrix with a clone of ``quantizer``,
    each layer on calibration inputs passed through the already quantized layers
    (data-driven quantizers get them as ``activations``). Biases stay float32. The
    result predicts, scores, pickles, and grid-searches over the quantizer's
    parameters (``quantizer__n_bits``).

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    estimator : MLPClassifier, MLPRegressor or FrozenEstimator, default=None
        The network. If fitted, :meth:`fit` quantizes it as it is; otherwise a
        clone is trained on ``(X, y)`` first. A ``FrozenEstimator`` around a fitted
        MLP stays fitted through ``clone``. ``None`` means
        ``MLPClassifier(random_state=random_state)``.
    quantizer : estimator or dict, default=None
        An unfitted weight quantizer (e.g. :class:`UniformQuantizer`,
        :class:`GreedyPathQuantizer`, :class:`NullSpaceQuantizer`,
        :class:`AdaptivePrecisionQuantizer`), cloned per layer, or a dict from
        layer name (``"layer_0"``, ``"layer_1"``, ...) to quantizer: layers not
        named stay float unless the key ``"*"`` gives a default. ``None`` means
        ``UniformQuantizer(n_bits=8)``.
    n_calibration : int, default=1024
        Rows of ``X`` (drawn without replacement) used as calibration data.
    random_state : int, RandomState instance or None, default=None
        Draws the calibration rows.

    Attributes
    ----------
    estimator_ : MLPClassifier or MLPRegressor
        A fitted copy of the network whose ``coefs_`` hold the quantized weights.
    float_estimator_ : MLPClassifier or MLPRegressor
        The float network that was quantized.
    quantizers_ : list of estimators
        The fitted quantizer of every quantized layer.
    tensors_ : list of QuantizedTensor
        Codes and scales of every quantized layer.
    layer_errors_ : list of float
        Relative output error of every layer on the calibration data.
    report_ : QuantizationReport
        Per-layer rows (name, shape, method, bits, size, calibration error,
        seconds); ``print(report_)`` shows a table.
    size_bits_ : int
        Bits to store the model: packed codes, scales, float32 biases.
    compression_ratio_ : float
        ``32 * n_params / size_bits_``.
    classes_ : ndarray of shape (n_classes,)
        Class labels (classifiers only).
    n_features_in_ : int
        Number of input features.

    See Also
    --------
    UniformQuantizer : A memoryless weight quantizer to plug in.
    NullSpaceQuantizer : A data-driven one.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neural_network import MLPClassifier
    >>> from skquant import GreedyPathQuantizer, QuantizedMLP
    >>> X, y = load_digits(return_X_y=True)
    >>> X = X / 16
    >>> mlp = MLPClassifier((32,), max_iter=300, random_state=0).fit(X, y)
    >>> qmlp = QuantizedMLP(mlp, GreedyPathQuantizer(n_bits=4), random_state=0)
    >>> qmlp = qmlp.fit(X, y)
    >>> bool(qmlp.score(X, y) > 0.95)
    True
    >>> [t.n_bits for t in qmlp.tensors_]
    [4, 4]
    """

    _parameter_constraints: dict = {
        "estimator": [None, HasMethods(["fit", "predict"])],
        "quantizer": [None, HasMethods(["fit", "transform"]), dict],
        "n_calibration": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self, estimator=None, quantizer=None, *, n_calibration=1024, random_state=None
    ):
        self.estimator = estimator
        self.quantizer = quantizer
        self.n_calibration = n_calibration
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Train the network if needed, then quantize it on calibration rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training (and calibration) inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets, used only when the network has to be trained.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        estimator = _check_mlp(_unwrap(self.estimator))
        if self.estimator is None:
            estimator = MLPClassifier(random_state=self.random_state)
        quantizer = (
            UniformQuantizer(n_bits=8) if self.quantizer is None else self.quantizer
        )
        try:
            check_is_fitted(estimator, "coefs_")
            base = copy.deepcopy(estimator)
        except NotFittedError:
            if y is None:
                raise ValueError(
                    "QuantizedMLP.fit needs y to train the unfitted estimator; got "
                    "y=None instead."
                ) from None
            base = clone(estimator).fit(X, y)
        X = validate_data(self, X, dtype=np.float64, reset=True)
        if X.shape[1] != base.coefs_[0].shape[0]:
            raise ValueError(
                f"X must have {base.coefs_[0].shape[0]} features (the network's "
                f"inputs), got X.shape={X.shape} instead."
            )
        rng = check_random_state(self.random_state)
        idx = np.sort(
            rng.choice(X.shape[0], min(self.n_calibration, X.shape[0]), replace=False)
        )
        network = MLPNetwork(base)

        def gradients():
            if y is None:
                raise ValueError(
                    "AdaptivePrecisionQuantizer needs the loss gradient: pass y to "
                    "QuantizedMLP.fit; got y=None instead."
                )
            data = network.check_targets(X, y)
            _, grads = network.loss_gradients(data)
            return {n: grads[f"{n}.weight"] for n in network.layer_names}

        res = quantize_layers(
            network, quantizer, X[idx], gradients=gradients, calibrate=True
        )
        self.float_estimator_ = base
        self.estimator_ = network.with_weights(res.weights).model
        self.quantizers_ = list(res.quantizers.values())
        self.tensors_ = list(res.tensors.values())
        self.report_ = res.report
        self.layer_errors_ = [r["calibration_error"] for r in res.report.rows]
        floats = [
            W.astype(np.float32)
            for n, W in zip(network.layer_names, base.coefs_)
            if n not in res.tensors
        ]
        sizes = (
            self.tensors_ + floats + [b.astype(np.float32) for b in base.intercepts_]
        )
        self.size_bits_ = model_size_bits(sizes)
        self.compression_ratio_ = compression_ratio(sizes)
        if is_classifier(base):
            self.classes_ = base.classes_
        return self

    def _check_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, dtype=np.float64, reset=False)

    def predict(self, X):
        """Predict with the quantized network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predictions.
        """
        X = self._check_X(X)
        return self.estimator_.predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        """Class probabilities of the quantized network (classifiers).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities.
        """
        X = self._check_X(X)
        return self.estimator_.predict_proba(X)

    def score(self, X, y, sample_weight=None):
        """Accuracy (classifiers) or R^2 (regressors) of the quantized network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            True targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights.

        Returns
        -------
        score : float
            The score.
        """
        X = self._check_X(X)
        return self.estimator_.score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        est = _unwrap(self.estimator)
        inner = est.__sklearn_tags__()
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        tags.target_tags.required = False
        return tags
