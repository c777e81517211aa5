"""QuantizedMLP: scikit-learn's MLPClassifier / MLPRegressor with quantized weights."""

import copy
import numbers

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, _fit_context, clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.neural_network._base import ACTIVATIONS
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from .._common._checks import Interval
from .._common._warn import warn
from .._network._dense import MLPNetwork, check_feature_names, check_mlp
from .._network._layers import quantize_layers
from .._network._report import QuantizationReport
from .._precision._estimator import AdaptivePrecisionQuantizer
from .._quantizers._activation import ActivationQuantizer
from .._quantizers._gpfq import GreedyPathQuantizer
from .._quantizers._gptq import GPTQQuantizer
from .._quantizers._nullspace import NullSpaceQuantizer
from .._quantizers._uniform import BinaryQuantizer, TernaryQuantizer, UniformQuantizer
from .._tensor import _io
from .._tensor._io import json_params, register_model
from .._tensor._runtime import CodeMatrix, InputGrid
from ..metrics import compression_ratio, model_size_bits

__all__ = ["QuantizedMLP"]

#: entries of X made dense float64 at a time (32 MB): the loss gradient's rows,
#: a sparse X's rows to predict
BLOCK_ENTRIES = 1 << 22


def dense_rows(X, rows):
    """Rows ``rows`` of ``X`` (an array or a sparse matrix) as a float64 array."""
    part = X[rows]
    return np.asarray(part.toarray() if sp.issparse(part) else part, np.float64)


#: the quantizers a saved model names and a loaded one rebuilds, by class name
QUANTIZERS = {
    cls.__name__: cls
    for cls in (
        ActivationQuantizer,
        AdaptivePrecisionQuantizer,
        BinaryQuantizer,
        GPTQQuantizer,
        GreedyPathQuantizer,
        NullSpaceQuantizer,
        TernaryQuantizer,
        UniformQuantizer,
    )
}


def _quantizer_from(spec):
    """A quantizer (or a dict of them) from a file's ``[class name, params]``."""

    def one(item):
        if item is None:
            return None
        name, params = item
        cls = QUANTIZERS.get(name)
        if cls is None or not hasattr(cls, "get_params"):
            return None
        valid = cls().get_params()
        return cls(**{k: v for k, v in params.items() if k in valid})

    try:
        if isinstance(spec, dict):
            return {k: one(v) for k, v in spec.items()}
        return one(spec)
    except (TypeError, ValueError):
        return None


def unwrap_mlp(estimator):
    """The MLP inside ``estimator`` (``None``, a FrozenEstimator or the MLP)."""
    if estimator is None:
        return MLPClassifier()
    inner = getattr(estimator, "estimator", None)
    if type(estimator).__name__ == "FrozenEstimator" and inner is not None:
        return inner
    return estimator


def _estimator_has(attr):
    def check(self):
        return hasattr(unwrap_mlp(self.estimator), attr)

    return check


@register_model
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
        ``UniformQuantizer(n_bits=8)`` (give a quantizer to search over its
        parameters: ``quantizer__n_bits`` needs one to set).
    n_calibration : int, default=1024
        Rows of ``X`` (drawn without replacement) used as calibration data.
    random_state : int, RandomState instance or None, default=None
        Draws the calibration rows.
    activations : None, "dynamic" or ActivationQuantizer, default=None
        How the quantized layers' inputs are quantized. ``None``: float inputs
        (weight-only). ``"dynamic"``: 8 bits, one scale per row computed at
        prediction time. An unfitted :class:`ActivationQuantizer`: a static grid
        per layer, fitted on the calibration rows at the layer's input as the
        quantized prefix gives it. Quantized inputs are multiplied with the codes
        on integers (int32 accumulation); a per-feature grid is applied to the
        inputs in float instead (no integer product factors per-feature scales).

    Attributes
    ----------
    estimator_ : MLPClassifier or MLPRegressor
        A fitted copy of the network whose ``coefs_`` hold the quantized weights:
        quantized layers as :class:`~skquant._tensor._runtime.CodeMatrix` (the
        codes; ``x @ W`` is computed from them, ``np.asarray(W)`` gives the
        floats), layers left float as arrays.
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

    Notes
    -----
    Biases, and layers a quantizer mapping leaves float, are float32 values (what
    ``size_bits_`` counts). :func:`skquant.save` writes a fitted model to a file
    of ``size_bits_ / 8`` bytes plus a header (and, with activations on static
    grids, each quantized layer's input scales and zero points: 16 bytes a
    grid, or a feature with ``granularity="per_feature"``, which ``size_bits_``
    does not count); :func:`skquant.load` reads it back
    with the same predictions, without ``float_estimator_`` and ``quantizers_``
    (the file holds the quantized model only). Pickling goes through the same
    file: a pickled fitted model holds packed codes, scales and float32 biases
    (not its calibration data, not the float network), and an unpickled one has
    no ``float_estimator_`` nor ``quantizers_``; an MLP given as ``estimator``
    comes back unfitted, as after ``clone`` (a ``FrozenEstimator`` stays as it
    is). Models fitted in joblib's worker processes come back pickled, so
    without them (``cross_validate(..., return_estimator=True, n_jobs=2)``);
    ``copy.deepcopy`` keeps everything.

    ``X`` may be a SciPy sparse matrix (as the MLP takes): the calibration
    rows, the loss gradient's and the predictions' are made dense a block of
    rows at a time, so they are those of the dense ``X``.

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
        "activations": [None, StrOptions({"dynamic"}), ActivationQuantizer],
    }

    def __init__(
        self,
        estimator=None,
        quantizer=None,
        *,
        n_calibration=1024,
        random_state=None,
        activations=None,
    ):
        self.estimator = estimator
        self.quantizer = quantizer
        self.n_calibration = n_calibration
        self.random_state = random_state
        self.activations = activations

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, sample_weight=None):
        """Train the network if needed, then quantize it on calibration rows of ``X``.

        An unfitted network is trained as a fresh clone in every call (its
        ``warm_start`` does not carry over between calls); a fitted one, or a
        ``FrozenEstimator`` of one, is quantized as it is.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training (and calibration) inputs. For a fitted network, a DataFrame's
            columns must be the features it was fitted on, in its order.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets: to train the network when it has to be, and the loss
            gradient's (``AdaptivePrecisionQuantizer``); checked against a fitted
            network (one per row, labels it knows).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples: they weigh the network's training when it is
            trained (passed to its ``fit``) and the loss gradient
            (``AdaptivePrecisionQuantizer``), and draw the calibration rows (with
            probability proportional to the weight, without replacement; a row
            of weight 0 is never drawn). They do not weigh the layers' least
            squares: a weight of 2 is not the row twice.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        estimator = check_mlp(unwrap_mlp(self.estimator))
        if self.estimator is None:
            estimator = MLPClassifier(random_state=self.random_state)
        quantizer = (
            UniformQuantizer(n_bits=8) if self.quantizer is None else self.quantizer
        )
        # float32 rows stay as they are: only the calibration rows are copied
        # to float64 (a wide X is not copied whole). Checked before any training.
        Xv = validate_data(
            self, X, accept_sparse="csr", dtype=(np.float64, np.float32), reset=True
        )
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, Xv, ensure_non_negative=True
            )  # (also refuses weights all 0)
        try:
            check_is_fitted(estimator, "coefs_")
            base = copy.deepcopy(estimator)
            fitted = True
        except NotFittedError:
            fitted = False
            if type(self.estimator).__name__ == "FrozenEstimator":
                raise ValueError(
                    "estimator is a FrozenEstimator of an unfitted MLP: a frozen "
                    "network is not trained; freeze a fitted one, or pass the MLP "
                    "itself to have it trained."
                ) from None
            if y is None:
                raise ValueError(
                    "QuantizedMLP.fit needs y to train the unfitted estimator; got "
                    "y=None instead."
                ) from None
            weights = {} if sample_weight is None else {"sample_weight": sample_weight}
            base = clone(estimator).fit(X, y, **weights)
        if fitted:
            check_feature_names(base, X)
            if y is not None:
                MLPNetwork(base).check_y(y, Xv.shape[0])
        X = Xv
        if X.shape[1] != base.coefs_[0].shape[0]:
            raise ValueError(
                f"X must have {base.coefs_[0].shape[0]} features (the network's "
                f"inputs), got X.shape={X.shape} instead."
            )
        idx = self._calibration_rows(X.shape[0], sample_weight)
        network = MLPNetwork(base)
        calibration = dense_rows(X, idx)

        def gradients():
            if y is None:
                raise ValueError(
                    "AdaptivePrecisionQuantizer needs the loss gradient: pass y to "
                    "QuantizedMLP.fit; got y=None instead."
                )
            return self._loss_gradients(network, X, y, sample_weight)

        res = quantize_layers(
            network, quantizer, calibration, gradients=gradients, calibrate=True
        )
        self.float_estimator_ = base
        # what is counted is what predicts (and what a file stores): layers left
        # float and the biases are float32 values
        weights = {
            n: res.weights.get(n, W.astype(np.float32).astype(W.dtype))
            for n, W in zip(network.layer_names, base.coefs_)
        }
        qmlp = network.with_weights(weights).model
        qmlp.intercepts_[:] = [  # (in place: the list early stopping's best shares)
            b.astype(np.float32).astype(b.dtype) for b in base.intercepts_
        ]
        self._hold_codes(qmlp, network.layer_names, res.tensors, calibration)
        self.estimator_ = qmlp
        self.quantizers_ = list(res.quantizers.values())
        self.tensors_ = list(res.tensors.values())
        self.report_ = res.report
        for row, W in zip(res.report.rows, qmlp.coefs_):
            coded = isinstance(W, CodeMatrix)
            row["activation_bits"] = (
                W.grid.n_bits if coded and W.grid is not None else None
            )
            row["bytes_held"] = W.nbytes
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
        elif hasattr(self, "classes_"):  # refitted as a regressor
            del self.classes_
        # the quantized network gets arrays: this estimator checks the names
        vars(qmlp).pop("feature_names_in_", None)
        return self

    def _hold_codes(self, mlp, names, tensors, X):
        """Swap the quantized layers' floats for their codes (and input grids).

        Static grids are fitted layer by layer on ``X`` as the quantized prefix
        (weights and input grids) transforms it.
        """
        hidden = ACTIVATIONS[mlp.activation]
        h = X
        for i, name in enumerate(names):
            qt = tensors.get(name)
            if qt is not None:
                grid = None
                if isinstance(self.activations, str):
                    grid = InputGrid()
                elif self.activations is not None:
                    q = clone(self.activations).fit(h)
                    grid = InputGrid(q.scale_, q.zero_point_, q.qmin_, q.qmax_)
                    if not grid.integer:
                        warn(
                            f"layer {name!r}: a per-feature input grid has no "
                            "integer product; the inputs are put on their grid "
                            "and multiplied in float.",
                            UserWarning,
                        )
                mlp.coefs_[i] = CodeMatrix(qt, grid, dtype=mlp.coefs_[i].dtype)
            if i < len(names) - 1:
                h = h @ mlp.coefs_[i] + mlp.intercepts_[i]
                hidden(h)

    # ------------------------------------------------------------ storage
    @staticmethod
    def _loss_gradients(network, X, y, w):
        """The layers' loss gradients over ``(X, y)``, weighted by ``w`` (rows of
        weight 0 read not), in blocks of rows copied to float64 (a wide float32
        X is not copied whole)."""
        y = network.check_y(y, X.shape[0])
        rows = np.arange(X.shape[0]) if w is None else np.flatnonzero(w > 0)
        per = max(1, BLOCK_ENTRIES // X.shape[1])
        total = w[rows].sum() if w is not None else rows.size
        grads = {}
        for start in range(0, rows.size, per):
            block = rows[start : start + per]
            data = (dense_rows(X, block), y[block])
            weights = None if w is None else w[block]
            _, g = network.loss_gradients(data, sample_weight=weights)
            share = (block.size if w is None else weights.sum()) / total
            for n in network.layer_names:
                G = g[f"{n}.weight"] if share == 1 else g[f"{n}.weight"] * share
                grads[n] = G if n not in grads else grads[n] + G
        return grads

    def _calibration_rows(self, n, w):
        """Sorted indices of the calibration rows, drawn with ``random_state``
        (in proportion to the sample weights ``w`` when given)."""
        rng = check_random_state(self.random_state)
        k = min(self.n_calibration, n)
        if w is None:
            return np.sort(rng.choice(n, k, replace=False))
        drawn = np.flatnonzero(w > 0)
        # (equal weights: the unweighted draw of those rows)
        p = None if np.ptp(w[drawn]) == 0 else w[drawn] / w[drawn].sum()
        return np.sort(rng.choice(drawn, min(k, drawn.size), replace=False, p=p))

    def __deepcopy__(self, memo):
        """A copy of everything, the fitted state included (a pickle goes through
        the skquant file, which holds the quantized model only)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        vars(new).update(copy.deepcopy(vars(self), memo))
        return new

    def __getstate__(self):
        """Pickle a fitted model as its skquant file (packed codes, no data)."""
        state = {k: v for k, v in vars(self).items() if not k.endswith("_")}
        if not hasattr(self, "estimator_"):
            return state
        if isinstance(self.estimator, MLPClassifier | MLPRegressor):
            # the fitted float network is not part of the quantized model: the
            # parameter comes back unfitted, as after clone
            state["estimator"] = clone(self.estimator)
        writer = _io.Writer()
        model = self._to_file(writer)
        state["_skquant_file"] = _io.serialize("QuantizedMLP", writer, model)
        return state

    def __setstate__(self, state):
        """Rebuild from :meth:`__getstate__` (through skquant's file reader)."""
        state = dict(state)
        blob = state.pop("_skquant_file", None)
        vars(self).update(state)
        if blob is not None:
            header, data = _io.parse(blob)
            fitted = QuantizedMLP._from_file(
                header["model"],
                _io.tensors_from(header, data, "<pickle>"),
                _io.arrays_from(header, data, "<pickle>"),
                "<pickle>",
            )
            vars(self).update(
                {k: v for k, v in vars(fitted).items() if k.endswith("_")}
            )

    def _to_file(self, writer):
        """Put the fitted model into a skquant file writer; return its description."""
        check_is_fitted(self)
        mlp = self.estimator_
        names = [r["name"] for r in self.report_.rows]
        quantized = [r["name"] for r in self.report_.rows if r["method"] != "float"]
        tensors = dict(zip(quantized, self.tensors_))
        grids = {}
        for name, W, b in zip(names, mlp.coefs_, mlp.intercepts_):
            if name in tensors:
                writer.tensor(f"{name}.weight", tensors[name])
            else:
                writer.array(f"{name}.weight", np.asarray(W, dtype=np.float32))
            writer.array(f"{name}.bias", b.astype(np.float32))
            grid = getattr(W, "grid", None)
            if grid is not None:
                grids[name] = {
                    "dynamic": grid.dynamic,
                    "qmin": grid.qmin,
                    "qmax": grid.qmax,
                }
                if not grid.dynamic:
                    writer.array(f"{name}.input_scale", grid.scale)
                    writer.array(f"{name}.input_zero_point", grid.zero_point)
        quantizer = self.quantizer
        if isinstance(quantizer, dict):
            quantizer = {
                k: None
                if q is None
                else [type(q).__name__, json_params(q.get_params())]
                for k, q in quantizer.items()
            }
        elif quantizer is not None:
            quantizer = [type(quantizer).__name__, json_params(quantizer.get_params())]
        classes = getattr(mlp, "classes_", None)
        activations = self.activations
        if activations is not None and not isinstance(activations, str):
            activations = [
                type(activations).__name__,
                json_params(activations.get_params()),
            ]
        return {
            "activations": activations,
            "input_grids": grids,
            "estimator": [type(mlp).__name__, json_params(mlp.get_params())],
            "quantizer": quantizer,
            "params": json_params(
                {"n_calibration": self.n_calibration, "random_state": self.random_state}
            ),
            "layers": names,
            "coefs_dtype": mlp.coefs_[0].dtype.str,
            "classes": None if classes is None else classes.tolist(),
            "classes_dtype": None if classes is None else classes.dtype.str,
            "label_type": getattr(
                getattr(mlp, "_label_binarizer", None), "y_type_", None
            ),
            "feature_names": (
                self.feature_names_in_.tolist()
                if hasattr(self, "feature_names_in_")
                else None
            ),
            "out_activation": mlp.out_activation_,
            "n_features_in": int(self.n_features_in_),
            "report": [{**r, "shape": list(r["shape"])} for r in self.report_.rows],
            "size_bits": int(self.size_bits_),
            "compression_ratio": float(self.compression_ratio_),
        }

    @classmethod
    def _from_file(cls, model, tensors, arrays, path):
        """Rebuild a fitted QuantizedMLP from a file's description and arrays."""
        from sklearn.preprocessing import LabelBinarizer

        def bad(what):
            return _io.FileFormatError(f"{path!s}: the QuantizedMLP {what}.")

        try:
            est_name, est_params = model["estimator"]
            mlp_cls = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}[
                est_name
            ]
            names = list(model["layers"])
            dtype = np.dtype(model["coefs_dtype"])
            params = dict(est_params)
            if isinstance(params.get("hidden_layer_sizes"), list):
                params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
            valid = mlp_cls().get_params()
            mlp = mlp_cls(**{k: v for k, v in params.items() if k in valid})
            coefs, intercepts = [], []
            grids = model.get("input_grids", {})
            for name in names:
                key = f"{name}.weight"
                if key in tensors:
                    grid = grids.get(name)
                    if grid is not None:
                        static = not grid["dynamic"]
                        grid = InputGrid(
                            arrays[f"{name}.input_scale"] if static else None,
                            arrays[f"{name}.input_zero_point"] if static else None,
                            grid["qmin"],
                            grid["qmax"],
                        )
                    coefs.append(CodeMatrix(tensors[key], grid, dtype=dtype))
                else:
                    coefs.append(np.asarray(arrays[key]).astype(dtype))
                intercepts.append(arrays[f"{name}.bias"].astype(dtype))
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"description is incomplete or invalid ({exc!r})") from exc
        for i, (W, b) in enumerate(zip(coefs, intercepts)):
            if (
                W.ndim != 2
                or b.shape != (W.shape[1],)
                or (i and coefs[i - 1].shape[1] != W.shape[0])
            ):
                raise bad(f"layer {names[i]!r} has inconsistent shapes")
        if not coefs or model.get("n_features_in") != coefs[0].shape[0]:
            raise bad("input size does not match its first layer")
        mlp.coefs_, mlp.intercepts_ = coefs, intercepts
        mlp.n_layers_ = len(coefs) + 1
        mlp.n_outputs_ = coefs[-1].shape[1]
        mlp.n_features_in_ = coefs[0].shape[0]
        mlp.out_activation_ = model.get("out_activation")
        if mlp.out_activation_ not in ("softmax", "logistic", "identity", "exp"):
            raise bad(f"output activation {mlp.out_activation_!r} is unknown")
        if mlp.activation not in ("identity", "logistic", "tanh", "relu"):
            raise bad(f"activation {mlp.activation!r} is unknown")
        if est_name == "MLPClassifier":
            classes = np.asarray(model.get("classes"), dtype=model.get("classes_dtype"))
            multilabel = model.get("label_type") == "multilabel-indicator"
            n_cls = classes.size if classes.size > 2 or multilabel else 1
            if classes.ndim != 1 or n_cls != mlp.n_outputs_:
                raise bad("classes do not match its output layer")
            mlp.classes_ = classes
            mlp._label_binarizer = LabelBinarizer().fit(
                np.eye(classes.size, dtype=int) if multilabel else classes
            )
        out = cls(mlp_cls(**{k: v for k, v in params.items() if k in valid}))
        out.set_params(
            **{
                k: v
                for k, v in model.get("params", {}).items()
                if k in out.get_params()
            }
        )
        out.quantizer = _quantizer_from(model.get("quantizer"))
        activations = model.get("activations")
        out.activations = (
            activations
            if activations is None or isinstance(activations, str)
            else _quantizer_from(activations)
        )
        quantized = [n for n in names if f"{n}.weight" in tensors]
        out.estimator_ = mlp
        out.tensors_ = [tensors[f"{n}.weight"] for n in quantized]
        rows = [dict(r, shape=tuple(r["shape"])) for r in model.get("report", [])]
        out.report_ = QuantizationReport(rows)
        out.layer_errors_ = [r["calibration_error"] for r in rows]
        out.size_bits_ = model.get("size_bits")
        out.compression_ratio_ = model.get("compression_ratio")
        out.n_features_in_ = mlp.n_features_in_
        names_in = model.get("feature_names")
        if names_in is not None:
            if len(names_in) != out.n_features_in_:
                raise bad("feature names do not match its first layer")
            out.feature_names_in_ = np.asarray(names_in, dtype=object)
        if est_name == "MLPClassifier":
            out.classes_ = mlp.classes_
        return out

    def _check_X(self, X):
        check_is_fitted(self)
        # float32 inputs are not copied to float64: the quantized layers compute
        # in float32, and a float layer's product upcasts them exactly
        return validate_data(
            self, X, accept_sparse="csr", dtype=(np.float64, np.float32), reset=False
        )

    def _in_blocks(self, method, X):
        """``estimator_.method`` of ``X`` (checked); a sparse ``X`` a block of
        dense rows at a time (the quantized layers' products are dense)."""
        X = self._check_X(X)
        fn = getattr(self.estimator_, method)
        if not sp.issparse(X):
            return fn(X)
        per = max(1, BLOCK_ENTRIES // max(X.shape[1], 1))
        parts = [
            fn(X[i : i + per].toarray()) for i in range(0, max(X.shape[0], 1), per)
        ]
        return np.concatenate(parts)

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
        return self._in_blocks("predict", X)

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
        return self._in_blocks("predict_proba", X)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X):
        """Logarithms of the class probabilities of the quantized network
        (classifiers).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            ``log(predict_proba(X))``.
        """
        return self._in_blocks("predict_log_proba", X)

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
        if not sp.issparse(X):
            return self.estimator_.score(X, y, sample_weight=sample_weight)
        score = accuracy_score if is_classifier(self.estimator_) else r2_score
        return score(y, self._in_blocks("predict", X), sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        est = unwrap_mlp(self.estimator)
        inner = est.__sklearn_tags__()
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        tags.target_tags.required = False
        tags.input_tags.sparse = True
        return tags
