"""The NumPy adapters of the Network protocol: dense layer lists, scikit-learn MLPs."""

import copy

import numpy as np
from scipy.special import expit, xlogy
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.utils.validation import check_is_fitted

from .._common._checks import check_matrix, check_rng
from ._protocol import LayerStep, Network

__all__ = ["mlp_loss_gradient", "DenseNetwork", "MLPNetwork"]


def _relu(Z):
    return np.maximum(Z, 0)


def _identity(Z):  # (a function, not a lambda: joblib's multiprocessing pickles it)
    return Z


#: what a scikit-learn MLP keeps from training beyond its fitted attributes:
#: float copies of its weights (``_optimizer``: adam's moments or sgd's velocities)
MLP_TRAINING_STATE = ("_best_coefs", "_best_intercepts", "_optimizer")

#: the hidden activations of dense networks (scikit-learn's definitions)
ACTIVATIONS = {
    "identity": _identity,
    "relu": _relu,
    "tanh": np.tanh,
    "logistic": expit,
    None: _identity,
}


def _activation(act, index):
    if callable(act):
        return act
    if act in ACTIVATIONS:
        return ACTIVATIONS[act]
    raise ValueError(
        f"layers[{index}] has activation={act!r}; expected a callable or one of "
        f"{sorted(k for k in ACTIVATIONS if k)} instead."
    )


def _act_grad(name, A):
    """Derivative of a hidden activation, from its output ``A``."""
    if name == "relu":
        return (A > 0).astype(A.dtype)
    if name == "tanh":
        return 1.0 - A**2
    if name == "logistic":
        return A * (1.0 - A)
    return np.ones_like(A)


class DenseNetwork(Network):
    """A framework-free sequence of dense layers ``(W, b, activation)``.

    Parameters
    ----------
    layers : list of (W, b, activation)
        ``W`` of shape ``(n_in, n_out)``, bias of shape ``(n_out,)`` (or ``None``)
        and the activation after the layer: a callable or one of ``"identity"``,
        ``"relu"``, ``"tanh"``, ``"logistic"``.
    """

    def __init__(self, layers):
        self._layers = _check_layers(layers)
        self.layer_names = [f"layer_{i}" for i in range(len(self._layers))]
        self._index = {n: i for i, n in enumerate(self.layer_names)}

    @property
    def model(self):
        """The layers ``(W, b, activation)``."""
        return self._layers

    def weight(self, name):
        """The ``(n_in, n_out)`` weight matrix of layer ``name``."""
        return self._layers[self._index[name]][0]

    def _check_X(self, X):
        n_in = self._layers[0][0].shape[0]
        if np.iscomplexobj(X):  # (its imaginary part was dropped, with a warning)
            raise ValueError("X must be real, got complex values.")
        Xf = np.asarray(X, dtype=np.float64)
        if Xf.ndim != 2 or Xf.shape[1] != n_in:
            raise ValueError(
                f"X must have shape (m, {n_in}) for the first layer, got "
                f"X.shape={Xf.shape} instead."
            )
        if Xf.shape[0] == 0:
            raise ValueError("X must hold at least one row, got X.shape[0]=0 instead.")
        if not np.all(np.isfinite(Xf)):
            raise ValueError("X contains NaN or infinity.")
        return Xf

    def walk(self, data, *, max_rows=None, random_state=0):
        """Yield each layer with its inputs (the quantized prefix's and the float's).

        Parameters
        ----------
        data : array-like of shape (m, n_in)
            Calibration inputs of the first layer.
        max_rows : int, default=None
            Largest number of rows (sampled once; each row is one input).
        random_state : int, default=0
            Seed of the sampling.

        Yields
        ------
        step : LayerStep
            Set ``step.quantized`` before advancing.
        """
        Xf = self._check_X(data)
        if max_rows is not None and Xf.shape[0] > max_rows:
            rng = check_rng(random_state)
            Xf = Xf[np.sort(rng.choice(Xf.shape[0], max_rows, replace=False))]
        Xq = Xf
        for name, (W, b, act) in zip(self.layer_names, self._layers):
            pair = (Xq, Xf)
            step = LayerStep(name, W, lambda pair=pair: pair)
            step.inputs()  # free: already computed
            yield step
            Q = W if step.quantized is None else step.quantized
            shared = Xq is Xf and Q is W  # nothing quantized so far
            Xf = act(Xf @ W + b)
            Xq = Xf if shared else act(Xq @ Q + b)

    def outputs(self, data, weights=None):
        """The last layer's output (logits) on ``data``, some weights replaced."""
        if weights:
            self.check_layer_names(list(weights), "weights")
        return self.forward(self._check_X(data), weights)[-1]

    def layer_outputs(self, data, name):
        """``outputs(W)``: the logits with layer ``name``'s weight set to ``W``;
        the float layers before it run on ``data`` once, here."""
        self.check_layer_names([name], "name")
        start = self._index[name]
        A = self.forward(self._check_X(data), stop=start)[-1]
        return lambda W: self.forward(A, {name: W}, start=start)[-1]

    def forward(self, X, weights=None, *, start=0, stop=None):
        """Activations of every layer (the input first, the output last); with
        ``start``/``stop``, of layers ``start`` to ``stop - 1`` only, ``X`` being
        layer ``start``'s input."""
        acts = [np.asarray(X, dtype=np.float64)]
        for name, (W, b, act) in list(zip(self.layer_names, self._layers))[start:stop]:
            W = W if weights is None else weights.get(name, W)
            acts.append(act(acts[-1] @ W + b))
        return acts


def _check_layers(layers):
    if len(layers) == 0:
        raise ValueError("layers must hold at least one (W, b, activation) triple.")
    checked = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, tuple | list) or len(layer) != 3:
            raise TypeError(
                f"layers[{i}] must be a (W, b, activation) triple, got {layer!r:.80} "
                "instead."
            )
        W, b, act = layer
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(
                f"layers[{i}] must have a 2-D weight matrix (n_in, n_out), got "
                f"W.shape={W.shape} instead."
            )
        b = np.zeros(W.shape[1], W.dtype) if b is None else np.asarray(b)
        if b.shape != (W.shape[1],):
            raise ValueError(
                f"layers[{i}] has a bias of shape {b.shape}; expected ({W.shape[1]},) "
                "instead."
            )
        if i and checked[-1][0].shape[1] != W.shape[0]:
            raise ValueError(
                f"layers[{i}] takes {W.shape[0]} inputs but layers[{i - 1}] gives "
                f"{checked[-1][0].shape[1]} outputs."
            )
        checked.append((W, b, _activation(act, i)))
    return checked


def check_mlp(mlp, name="estimator", *, fitted=False, torch_twin=None, frozen=True):
    """``mlp``, else a TypeError naming ``name``: a scikit-learn MLP (``fitted``:
    one that is trained; ``frozen``: the caller unwraps a FrozenEstimator), and
    for a torch model the ``skquant.torch`` function that takes it
    (``torch_twin``)."""
    if not isinstance(mlp, MLPClassifier | MLPRegressor):
        which = "a fitted" if fitted else "an"
        hint = (
            f" For a torch model, use skquant.torch.{torch_twin}."
            if torch_twin and type(mlp).__module__.startswith("torch")
            else ""
        )
        notes = [] if fitted else ["fitted or not"]
        notes += ["or wrapped in sklearn.frozen.FrozenEstimator"] if frozen else []
        raise TypeError(
            f"{name} must be {which} MLPClassifier or MLPRegressor"
            f"{' (' + ', '.join(notes) + ')' if notes else ''}, got {mlp!r:.80} "
            f"instead.{hint}"
        )
    return mlp


def check_feature_names(mlp, X):
    """Raise when ``X`` (a DataFrame) names its columns otherwise, or in another
    order, than the features ``mlp`` was fitted on: the rows would reach the
    wrong inputs."""
    names = getattr(mlp, "feature_names_in_", None)
    columns = getattr(X, "columns", None)
    if names is None or columns is None:
        return
    got = [str(c) for c in columns]
    if got != [str(n) for n in names]:
        raise ValueError(
            f"X's columns must be the features the {type(mlp).__name__} was fitted "
            f"on, in its order (feature_names_in_={list(names)[:8]}"
            f"{' ...' if len(names) > 8 else ''}), got columns {got[:8]}"
            f"{' ...' if len(got) > 8 else ''} instead: pass "
            "X[estimator.feature_names_in_]."
        )


class MLPNetwork(DenseNetwork):
    """The network adapter of a fitted scikit-learn ``MLPClassifier``/``MLPRegressor``.

    Layers are named ``layer_0``, ``layer_1``, ... (``coefs_[i]``); parameters
    ``layer_i.weight`` then ``layer_i.bias``. NumPy only.

    Parameters
    ----------
    mlp : MLPClassifier or MLPRegressor
        A fitted network (not modified: copies are made).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neural_network import MLPClassifier
    >>> from skquant._network._dense import MLPNetwork
    >>> X, y = load_digits(return_X_y=True)
    >>> mlp = MLPClassifier((16,), max_iter=300, random_state=0).fit(X / 16, y)
    >>> net = MLPNetwork(mlp)
    >>> net.layer_names, net.weight("layer_0").shape
    (['layer_0', 'layer_1'], (64, 16))
    >>> loss, grads = net.loss_gradients((X / 16, y))
    >>> list(grads)
    ['layer_0.weight', 'layer_1.weight', 'layer_0.bias', 'layer_1.bias']
    """

    def __init__(self, mlp, name="mlp", torch_twin=None):
        check_mlp(mlp, name, fitted=True, torch_twin=torch_twin, frozen=False)
        check_is_fitted(mlp, "coefs_")
        self.mlp = mlp
        n = len(mlp.coefs_)
        super().__init__(
            [
                (W, b, mlp.activation if i < n - 1 else "identity")
                for i, (W, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_))
            ]
        )

    @property
    def model(self):
        """The scikit-learn estimator."""
        return self.mlp

    def _copy(self, coefs, intercepts):
        """A copy of the MLP with ``coefs`` and ``intercepts``, without the
        float copies of its weights that training keeps (the best weights of
        early stopping, the optimizer's moments: three more float64 copies of
        every weight, held by every quantized copy before), which predictions
        do not read. Early stopping's best weights are the copy's own (the same
        lists: a warm refit that finds none better ends on its weights, as
        scikit-learn ends on its best); its optimizer starts afresh."""
        skip = {"coefs_", "intercepts_", *MLP_TRAINING_STATE}
        mlp = type(self.mlp).__new__(type(self.mlp))
        state = {k: v for k, v in vars(self.mlp).items() if k not in skip}
        vars(mlp).update(copy.deepcopy(state))
        mlp.coefs_, mlp.intercepts_ = coefs, intercepts
        if hasattr(self.mlp, "_best_coefs"):
            mlp._best_coefs, mlp._best_intercepts = mlp.coefs_, mlp.intercepts_
        return mlp

    def with_weights(self, weights):
        """A copy of the MLP (as a network) with some ``coefs_`` replaced."""
        self.check_layer_names(list(weights), "weights")
        coefs = [
            np.asarray(weights.get(n, W)).astype(W.dtype)
            for n, W in zip(self.layer_names, self.mlp.coefs_)
        ]
        return MLPNetwork(self._copy(coefs, [b.copy() for b in self.mlp.intercepts_]))

    def parameters(self):
        """``layer_i.weight`` for every layer, then ``layer_i.bias``."""
        params = {f"{n}.weight": W for n, W in zip(self.layer_names, self.mlp.coefs_)}
        params.update(
            {f"{n}.bias": b for n, b in zip(self.layer_names, self.mlp.intercepts_)}
        )
        return {k: np.asarray(v, dtype=np.float64).copy() for k, v in params.items()}

    def output_axis(self, name):
        """1 for a weight (``(n_in, n_out)``), 0 for a bias."""
        return 1 if name.endswith(".weight") else 0

    def with_parameters(self, params):
        """A copy of the MLP with its weights and biases replaced."""
        coefs = [
            np.asarray(params.get(f"{n}.weight", W)).astype(W.dtype)
            for n, W in zip(self.layer_names, self.mlp.coefs_)
        ]
        intercepts = [
            np.asarray(params.get(f"{n}.bias", b)).astype(b.dtype)
            for n, b in zip(self.layer_names, self.mlp.intercepts_)
        ]
        return MLPNetwork(self._copy(coefs, intercepts))

    def predict(self, X):
        """The MLP's predictions."""
        return self.mlp.predict(X)

    def _check_X(self, X):
        check_feature_names(self.mlp, X)
        return super()._check_X(X)

    def check_targets(self, X, y):
        """Validate ``(X, y)`` for the loss: same length, labels the MLP knows."""
        X = self._check_X(X)
        return X, self.check_y(y, X.shape[0])

    def check_y(self, y, n_rows):
        """``y`` checked against ``n_rows`` rows of X and the MLP: one label per
        row, labels it knows (a classifier), finite numbers (a regressor)."""
        if y is None:
            raise ValueError("y must be given (the loss needs the targets), got None.")
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != n_rows:
            raise ValueError(
                f"y must have one label per row of X ({n_rows}), got "
                f"len(y)={y.shape[0] if y.ndim else 0} instead."
            )
        if not isinstance(self.mlp, MLPClassifier):
            # (finite numbers)
            y = check_matrix(
                y, "y", ensure_2d=False, dtype=np.float64
            )  # finite numbers
            n_out = getattr(self.mlp, "n_outputs_", None)
            if n_out is not None and y.reshape(y.shape[0], -1).shape[1] != n_out:
                raise ValueError(
                    f"y must have {n_out} target(s) per row (the MLPRegressor's "
                    f"outputs), got y.shape={y.shape} instead."
                )
            if getattr(self.mlp, "loss", None) == "poisson" and np.any(y < 0):
                raise ValueError(
                    "y must be >= 0 for an MLPRegressor with loss='poisson', got "
                    f"min(y)={float(y.min())!r} instead."
                )
        else:
            binarizer = getattr(self.mlp, "_label_binarizer", None)
            multilabel = getattr(binarizer, "y_type_", "") == "multilabel-indicator"
            n_out = getattr(self.mlp, "n_outputs_", None)
            if multilabel and (y.ndim != 2 or y.shape[1] != n_out):
                raise ValueError(
                    f"y must have {n_out} labels per row (the MLPClassifier's "
                    f"multilabel outputs), got y.shape={y.shape} instead."
                )
            if not multilabel and y.reshape(y.shape[0], -1).shape[1] != 1:
                raise ValueError(
                    "y must have one label per row (the MLPClassifier was trained "
                    f"on one), got y.shape={y.shape} instead."
                )
            unseen = np.setdiff1d(np.unique(y), self.mlp.classes_)
            if unseen.size:
                raise ValueError(
                    f"y holds labels {unseen.tolist()[:10]} that the MLP was not "
                    f"trained on (its classes_ are {self.mlp.classes_.tolist()[:10]}"
                    f"{'...' if self.mlp.classes_.size > 10 else ''}) instead."
                )
        return y

    def loss_gradients(self, data, params=None, sample_weight=None):
        """Mean loss of the MLP and its gradient (NumPy).

        For an ``MLPClassifier``, the mean cross-entropy of the output (softmax for
        several classes, logistic for two); for an ``MLPRegressor``, the mean over
        samples of half the squared error (or, with ``loss="poisson"``, half the
        Poisson deviance) summed over outputs: the loss whose gradient
        scikit-learn trains it with. Without scikit-learn's L2 penalty ``alpha``.

        Parameters
        ----------
        data : tuple of (X, y)
            Inputs and labels.
        params : dict of {str: ndarray}, default=None
            Parameters to evaluate at (by name); ``None`` takes the MLP's own.
        sample_weight : ndarray of shape (n_samples,), default=None
            Weights of the samples (non-negative, not all 0): the mean is
            weighted by them, as scikit-learn trains with them.

        Returns
        -------
        loss : float
            The (weighted) mean loss.
        grads : dict of {str: ndarray}
            Gradient of every parameter, by name (as :meth:`parameters`).
        """
        net = self if params is None else self.with_parameters(params)
        X, y = data
        mlp = net.mlp
        acts = net.forward(X)
        n_layers = len(mlp.coefs_)
        Z = acts[-1]
        n = Z.shape[0]
        if sample_weight is None:
            share = None
        else:  # each sample's share of the mean
            w = np.asarray(sample_weight, np.float64)
            share = (w / w.sum())[:, None]

        def mean(E):  # over the samples (rows of E), summed over the outputs
            return float(np.sum(E) / n if share is None else np.sum(share * E))

        eps = np.finfo(np.float64).eps
        if mlp.out_activation_ in ("identity", "exp"):  # a regressor
            Y = np.asarray(y, dtype=np.float64).reshape(n, -1)
            if Y.shape[1] != Z.shape[1]:
                raise ValueError(
                    f"y must have {Z.shape[1]} target(s) per sample (the network's "
                    f"outputs), got y.shape={np.shape(y)} instead."
                )
            if mlp.out_activation_ == "identity":  # half the squared error
                P = Z
                loss = mean((P - Y) ** 2) / 2
            else:  # half the Poisson deviance, log link
                P = np.exp(Z)
                loss = mean(xlogy(Y, Y) - Y * Z - Y + P)
        elif mlp.out_activation_ == "softmax":
            Y = mlp._label_binarizer.transform(y).astype(np.float64)
            Z = Z - Z.max(axis=1, keepdims=True)
            P = np.exp(Z)
            P /= P.sum(axis=1, keepdims=True)
            loss = -mean(Y * np.log(np.clip(P, eps, 1)))
        else:
            Y = mlp._label_binarizer.transform(y).astype(np.float64)
            P = 1.0 / (1.0 + np.exp(-Z))
            Pc = np.clip(P, eps, 1 - eps)
            loss = -mean(Y * np.log(Pc) + (1 - Y) * np.log(1 - Pc))
        delta = (P - Y) / n if share is None else (P - Y) * share
        grads = {}
        for i in range(n_layers - 1, -1, -1):
            name = self.layer_names[i]
            grads[f"{name}.weight"] = acts[i].T @ delta
            grads[f"{name}.bias"] = delta.sum(axis=0)
            if i:
                delta = (delta @ mlp.coefs_[i].T) * _act_grad(mlp.activation, acts[i])
        order = list(self.parameters())
        return loss, {k: grads[k] for k in order}


def mlp_loss_gradient(mlp, X, y):
    """Mean loss of a fitted ``MLPClassifier`` or ``MLPRegressor`` and its gradient.

    The loss is the mean cross-entropy of a classifier's output (softmax for
    several classes, logistic for two), or half the mean squared error of a
    regressor's (summed over outputs), without scikit-learn's L2 penalty ``alpha``
    (:meth:`skquant._network._dense.MLPNetwork.loss_gradients`).

    Parameters
    ----------
    mlp : MLPClassifier or MLPRegressor
        A fitted network.
    X : array-like of shape (n_samples, n_features)
        Inputs.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        Labels or targets.

    Returns
    -------
    loss : float
        The mean loss.
    grads : list of ndarray
        Gradients with respect to ``coefs_`` then ``intercepts_`` (same order and
        shapes as ``mlp.coefs_ + mlp.intercepts_``).
    """
    network = MLPNetwork(mlp)
    loss, grads = network.loss_gradients(network.check_targets(X, y))
    return loss, list(grads.values())
