"""SQClassifier: Smart Quantization as a scikit-learn classifier over NumPy arrays."""

import copy
import inspect

import numpy as np
import torch
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .._common._checks import check_int, check_positive
from ._sq._train import train_sq
from ._state import seeded

__all__ = ["SQClassifier"]


class _MLP(nn.Sequential):
    """The default module: ``n_features -> hidden (ReLU) ... -> n_classes``."""

    def __init__(self, n_features, n_classes, hidden=(64,)):
        layers, width = [], n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        super().__init__(*layers)


class SQClassifier(ClassifierMixin, BaseEstimator):
    """A classifier trained once with Smart Quantization: binary or ternary layers.

    Wraps :func:`skquant.torch.train_sq` behind ``fit`` / ``predict`` on NumPy
    arrays, so that it sits in a ``Pipeline`` and a ``GridSearchCV`` over
    ``gamma``. Following skorch's conventions, ``module`` is an ``nn.Module``
    class (instantiated in :meth:`fit` with the ``module__*`` parameters, and with
    ``n_features`` and ``n_classes`` from the data when its constructor takes
    them) or an instance (deep-copied at every fit).

    Parameters
    ----------
    module : type or torch.nn.Module, default=None
        The network; ``None``: an MLP with one hidden layer of 64 ReLU units
        (``module__hidden=(128, 64)`` changes it).
    gamma : float, default=1e-3
        The memory knob (larger: more binary layers).
    lam : float, default=1e-3
        Final ``lambda`` of the wells (ramped up over the first half).
    p : float, default=2
        Power of the wells.
    max_epochs : int, default=30
        Epochs with the penalty.
    finetune_epochs : int, default=3
        Straight-through epochs after the projection.
    batch_size : int, default=64
        Batch size.
    lr : float, default=1e-2
        Adam's learning rate (also the fine-tune's).
    lr_schedule : {"cosine", "constant"}, default="cosine"
        Cosine decay from ``lr`` to ``lr / 100`` over the training epochs,
        restarted over the fine-tune epochs (see :func:`~skquant.torch.train_sq`).
    device : str, default="cpu"
        Where to train.
    random_state : int or None, default=None
        Seed of the initialisation and the shuffling (``None``: 0).
    verbose : int, default=0
        Progress bar when positive.
    **module_params :
        ``module__<name>`` parameters passed to the module's constructor.

    Attributes
    ----------
    model_ : torch.nn.Module
        The quantized network (``QuantLinear``/``QuantConv2d`` layers).
    classes_ : ndarray
        The class labels.
    layer_alphabets_ : dict of {str: str}
        ``"binary"`` or ``"ternary"`` by layer.
    size_bits_ : int
        Bits of the quantized layers (codes + one scale each).
    history_ : list of dict
        Per-epoch training history (see :class:`~skquant.torch.SQResult`).
    n_features_in_ : int
        Number of input features.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skquant.torch import SQClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = SQClassifier(max_epochs=10, random_state=0).fit(X[:1200] / 16,
    ...                                                      y[:1200])
    >>> bool(clf.score(X[1200:] / 16, y[1200:]) > 0.8)
    True
    >>> set(clf.layer_alphabets_.values()) <= {"binary", "ternary"}
    True
    """

    def __init__(
        self,
        module=None,
        *,
        gamma=1e-3,
        lam=1e-3,
        p=2.0,
        max_epochs=30,
        finetune_epochs=3,
        batch_size=64,
        lr=1e-2,
        lr_schedule="cosine",
        device="cpu",
        random_state=None,
        verbose=0,
        **module_params,
    ):
        self.module = module
        self.gamma = gamma
        self.lam = lam
        self.p = p
        self.max_epochs = max_epochs
        self.finetune_epochs = finetune_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        for key, value in module_params.items():
            setattr(self, key, value)  # checked in fit (init never raises)

    # skorch's convention: module__* parameters are parameters of the estimator
    def _module_params(self):
        return {k: v for k, v in vars(self).items() if k.startswith("module__")}

    def get_params(self, deep=True):
        """Parameters, the ``module__*`` ones included."""
        params = super().get_params(deep=False)
        params.update(self._module_params())
        return params

    def set_params(self, **params):
        """Set parameters, ``module__*`` ones included."""
        for key in [k for k in params if k.startswith("module__")]:
            setattr(self, key, params.pop(key))
        return super().set_params(**params)

    def _build(self, n_features, n_classes):
        kwargs = {k[len("module__") :]: v for k, v in self._module_params().items()}
        module = _MLP if self.module is None else self.module
        if isinstance(module, nn.Module):
            if kwargs:
                raise ValueError(
                    f"module__ parameters {sorted(kwargs)} need a module class, got "
                    "an instance."
                )
            return copy.deepcopy(module)
        if not (inspect.isclass(module) and issubclass(module, nn.Module)):
            raise TypeError(
                "module must be a torch.nn.Module class or instance, got "
                f"{module!r:.80} instead."
            )
        accepted = inspect.signature(module).parameters
        for key, value in (("n_features", n_features), ("n_classes", n_classes)):
            if key in accepted and key not in kwargs:
                kwargs[key] = value
        return module(**kwargs)

    def _check_params(self):
        known = set(self._get_param_names())
        bad = [
            k
            for k in vars(self)
            if k not in known
            and not k.startswith(("_", "module__"))
            and not k.endswith("_")
        ]
        if bad:
            raise TypeError(
                f"SQClassifier got unexpected parameters {bad}; module parameters "
                "are passed as module__<name>."
            )
        for name in ("gamma", "lam"):
            check_positive(getattr(self, name), name, zero=True)
        check_int(self.max_epochs, "max_epochs")  # train_sq names it "epochs"
        check_int(self.random_state, "random_state", low=0, none=True)

    def fit(self, X, y):
        """Train the network with the SQ penalty and quantize it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (reshaped by the module if it needs images).
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32, reset=True)
        check_classification_targets(y)
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        codes = self._encoder.transform(y)
        seed = 0 if self.random_state is None else int(self.random_state)
        with seeded(seed, self.device):  # the caller's generators left alone
            res = self._train(X, codes, seed)
        self.model_ = res.model.cpu().eval()
        self.layer_alphabets_ = res.alphabets
        self.size_bits_ = res.size_bits
        self.history_ = res.history
        return self

    def _train(self, X, codes, seed):
        model = self._build(X.shape[1], len(self.classes_))
        dtype = next(model.parameters()).dtype  # (a float64 module takes float64)
        # torch.tensor copies: a module that works in place (ReLU(inplace=True))
        # must not write to the caller's X, here or in _logits
        was = model.training
        with torch.no_grad():  # (in eval mode: BatchNorm takes one row)
            out = model.eval()(torch.tensor(X[:1], dtype=dtype))
        model.train(was)
        if out.ndim != 2 or out.shape[1] != len(self.classes_):
            raise ValueError(
                f"the module has {out.shape[-1]} outputs but y holds "
                f"{len(self.classes_)} classes."
            )
        return train_sq(
            model,
            (torch.tensor(X), torch.from_numpy(codes.astype(np.int64))),
            gamma=self.gamma,
            lam=self.lam,
            p=self.p,
            epochs=self.max_epochs,
            finetune_epochs=self.finetune_epochs,
            lr=self.lr,
            lr_schedule=self.lr_schedule,
            batch_size=self.batch_size,
            device=self.device,
            random_state=seed,
            verbose=bool(self.verbose),
        )

    def _logits(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        dtype = next(self.model_.parameters()).dtype
        with torch.no_grad():
            return self.model_(torch.tensor(X, dtype=dtype)).numpy()

    def predict_proba(self, X):
        """Class probabilities (softmax of the quantized network's logits).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities, columns in the order of ``classes_``.
        """
        return softmax(self._logits(X), axis=1)

    def predict(self, X):
        """Predicted class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        Z = self._logits(X)
        return self.classes_[np.argmax(Z, axis=1)]
