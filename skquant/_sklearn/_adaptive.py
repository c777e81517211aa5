"""adaptive_quantize_mlp: the adaptive-precision loop on a fitted scikit-learn MLP."""

from .._common._checks import check_pair
from .._network._adaptive import adaptive_quantize_network
from .._network._dense import MLPNetwork
from .._precision._options import loop_options, shared_loop_docs

__all__ = ["adaptive_quantize_mlp"]


@shared_loop_docs
def adaptive_quantize_mlp(
    mlp,
    X,
    y,
    *,
    loss_bound=0.1,
    relative=True,
    trust_region=0.05,
    max_iter=10,
    max_bits=24,
    group_size=None,
    group_margin="smallest",
    map_coder="auto",
    payload_coder="range",
    retrain=None,
    retrain_steps=50,
    retrain_lr=1e-3,
    random_state=None,
    retrain_batch_size=None,
    retrain_data=None,
    X_eval=None,
    y_eval=None,
    verbose=False,
    n_jobs=None,
):
    """Khoram & Li's iterative adaptive precision on a fitted scikit-learn MLP.

    Every parameter (weights and biases) gets its own fixed-point precision; the loss
    (on ``X, y``: the mean log-loss of an ``MLPClassifier``, half the mean squared
    error or Poisson deviance of an ``MLPRegressor``; gradient in NumPy by
    :func:`mlp_loss_gradient`) stays within the bound.

    Parameters
    ----------
    mlp : MLPClassifier or MLPRegressor
        A fitted network (left unchanged).
    X : array-like of shape (n_samples, n_features)
        Data for the loss and its gradient.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        Labels, or a regressor's targets.
    {loop_options}
    retrain_batch_size : int, default=None
        Rows per fine-tune step (shuffled minibatches); ``None``: all of ``X``.
    retrain_data : tuple of (X, y), default=None
        Data of the fine-tune (the training set, say); ``None``: ``(X, y)``,
        the loss's data.
    X_eval, y_eval : array-like, default=None
        Data whose score (``model.score``: accuracy, or a regressor's R^2) the
        history records.
    verbose : bool, default=False
        Progress bar.
    n_jobs : int, default=None
        Number of numba threads.

    Returns
    -------
    result : AdaptiveQuantizationResult
        ``result.model`` is the quantized copy of ``mlp``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neural_network import MLPClassifier
    >>> from skquant import adaptive_quantize_mlp
    >>> X, y = load_digits(return_X_y=True)
    >>> X = X / 16
    >>> mlp = MLPClassifier((32,), max_iter=300, random_state=0).fit(X, y)
    >>> res = adaptive_quantize_mlp(mlp, X, y, loss_bound=0.5)
    >>> res.history[-1]["bits_per_param"] < 16, res.model.score(X, y) > 0.95
    (True, True)
    """
    network = MLPNetwork(mlp, torch_twin="adaptive_quantize_model")
    data = network.check_targets(X, y)
    if (X_eval is None) != (y_eval is None):
        raise ValueError(
            "X_eval and y_eval go together (the accuracy or score of each step), "
            f"got {'X_eval' if y_eval is None else 'y_eval'} alone."
        )
    check_pair(retrain_data, "retrain_data")
    evaluate = None
    if X_eval is not None:

        def evaluate(model):
            return float(model.score(X_eval, y_eval))

    options = loop_options(locals())
    if retrain_data is not None:
        options["retrain_data"] = network.check_targets(*retrain_data)
    return adaptive_quantize_network(
        network, data, **options, evaluate=evaluate, verbose=verbose, n_jobs=n_jobs
    )
