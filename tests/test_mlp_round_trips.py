"""QuantizedMLP through pickles and files: multilabel outputs, feature names, and
attributes of an earlier fit."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier, MLPRegressor

import skquant
from skquant import QuantizedMLP, UniformQuantizer


def _fit(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence
        estimator.fit(X, y)
        return QuantizedMLP(estimator, UniformQuantizer(n_bits=8), random_state=0).fit(
            X, y
        )


@pytest.mark.parametrize("n_labels", [2, 3])
def test_multilabel_predictions_survive_a_pickle_and_a_file(n_labels, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 10))
    Y = (X[:, :n_labels] > 0).astype(int)
    q = _fit(MLPClassifier((8,), max_iter=300, random_state=0), X, Y)
    assert q.predict(X).shape == Y.shape
    back = pickle.loads(pickle.dumps(q))
    np.testing.assert_array_equal(back.predict(X), q.predict(X))
    skquant.save(q, tmp_path / "m.skq")
    np.testing.assert_array_equal(
        skquant.load(tmp_path / "m.skq").predict(X), q.predict(X)
    )


def test_a_poisson_regressor_survives_a_pickle_and_a_file(tmp_path):
    """``MLPRegressor(loss="poisson")`` ends in ``exp``: the file and pickles
    of its quantized model load back (the loader refused ``exp``)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((150, 6))
    y = rng.poisson(np.exp(0.5 * X[:, 0]))
    q = _fit(
        MLPRegressor(
            hidden_layer_sizes=(8,), loss="poisson", max_iter=300, random_state=0
        ),
        X,
        y,
    )
    assert q.estimator_.out_activation_ == "exp"
    want = q.predict(X)
    assert (want > 0).all()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(q)).predict(X), want)
    skquant.save(q, tmp_path / "m.skq")
    np.testing.assert_array_equal(skquant.load(tmp_path / "m.skq").predict(X), want)


def test_refit_as_a_regressor_drops_classes():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 10))
    q = _fit(MLPClassifier((8,), max_iter=300, random_state=0), X, X[:, 0] > 0)
    assert hasattr(q, "classes_")
    q.set_params(estimator=MLPRegressor(hidden_layer_sizes=(8,), max_iter=300))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.fit(X, X[:, 0])
    assert not hasattr(q, "classes_")


def test_feature_names_are_checked_and_kept(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((60, 4)), columns=list("abcd"))
    y = (df["a"] > 0).astype(int)
    q = _fit(MLPClassifier((8,), max_iter=300, random_state=0), df, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about feature names
        want = q.predict(df)
    skquant.save(q, tmp_path / "m.skq")
    for back in (pickle.loads(pickle.dumps(q)), skquant.load(tmp_path / "m.skq")):
        assert list(back.feature_names_in_) == list("abcd")
        np.testing.assert_array_equal(back.predict(df), want)
        with pytest.raises(ValueError, match="feature names"):
            back.predict(df[list("dcba")])


def test_a_fitted_mlp_refuses_columns_in_another_order():
    """Fitted on named columns, the MLP would see reordered ones in the wrong
    inputs: QuantizedMLP.fit, the sensitivity, the bit allocator and the adaptive
    loop refuse them by name."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((80, 4)), columns=list("abcd"))
    y = (df["a"] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence
        mlp = MLPClassifier((8,), max_iter=300, random_state=0).fit(df, y)
    swapped = df[list("dcba")]
    match = r"X's columns must be the features .*\['a', 'b', 'c', 'd'\].* \['d'"
    calls = [
        lambda X: QuantizedMLP(mlp, UniformQuantizer(n_bits=8)).fit(X, y),
        lambda X: skquant.measure_sensitivity(mlp, X, y, bits=(4, 8)),
        lambda X: skquant.LayerBitAllocator(mlp, bits=(4, 8)).fit(X, y),
        lambda X: skquant.adaptive_quantize_mlp(mlp, X, y, loss_bound=0.5),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call(swapped)
        call(df)  # the right order passes


def test_a_fitted_mlp_checks_y_and_sample_weight():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 4))
    y = (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((8,), max_iter=300, random_state=0).fit(X, y)
        reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=300, random_state=0).fit(
            X, X[:, :2]
        )
    q = QuantizedMLP(mlp, UniformQuantizer(n_bits=8))
    with pytest.raises(ValueError, match=r"one label per row of X \(80\), got len"):
        q.fit(X, y[:5])
    with pytest.raises(ValueError, match=r"labels \[100, 101\] that the MLP"):
        q.fit(X, y + 100)
    with pytest.raises(ValueError, match="at least one non-zero"):
        q.fit(X, y, sample_weight=np.zeros(80))
    with pytest.raises(ValueError, match="[Nn]egative"):
        q.fit(X, y, sample_weight=-np.ones(80))
    with pytest.raises(ValueError, match=r"2 target\(s\) per row .*=\(80,\)"):
        QuantizedMLP(reg, UniformQuantizer(n_bits=8)).fit(X, X[:, 0])
    # labels of another shape (they were taken, or refused by scikit-learn's
    # label binarizer without naming y)
    with pytest.raises(ValueError, match=r"one label per row .*y.shape=\(80, 2\)"):
        q.fit(X, np.c_[y, 1 - y])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        multi = MLPClassifier((8,), max_iter=50, random_state=0).fit(X, np.c_[y, y])
    with pytest.raises(ValueError, match=r"2 labels per row .*y.shape=\(80,\)"):
        QuantizedMLP(multi, UniformQuantizer(n_bits=8)).fit(X, y)
    assert abs(q.fit(X, y).score(X, y) - mlp.score(X, y)) <= 0.05


def test_sample_weight_trains_the_network(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 4))
    y = (X[:, 0] > 0).astype(int)
    w = rng.uniform(0.1, 2.0, 80)
    mlp = MLPClassifier((8,), max_iter=50, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = QuantizedMLP(mlp, UniformQuantizer(n_bits=8)).fit(X, y, sample_weight=w)
        direct = MLPClassifier((8,), max_iter=50, random_state=0)
        direct.fit(X, y, sample_weight=w)
        plain = QuantizedMLP(mlp, UniformQuantizer(n_bits=8)).fit(X, y)
    for a, b in zip(q.float_estimator_.coefs_, direct.coefs_):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(
        q.float_estimator_.coefs_[0], plain.float_estimator_.coefs_[0]
    )


def test_x_is_checked_before_the_network_trains(monkeypatch):
    scipy_sparse = pytest.importorskip("scipy.sparse")

    def no_training(self, *args, **kwargs):
        raise AssertionError("trained before X was checked")

    monkeypatch.setattr(MLPClassifier, "fit", no_training)
    X = scipy_sparse.random(20, 4, density=0.5, format="csr", random_state=0)
    X.data[0] = np.inf  # (a sparse X is taken, and checked)
    with pytest.raises(ValueError, match="infinity"):
        QuantizedMLP(MLPClassifier((4,))).fit(X, np.arange(20) % 2)
    with pytest.raises(ValueError, match="NaN"):
        QuantizedMLP(MLPClassifier((4,))).fit(np.full((20, 4), np.nan), np.zeros(20))


def test_sample_weight_draws_the_calibration_rows():
    """A fitted network is not trained: the weights draw its calibration rows,
    and a row of weight 0 never calibrates (the rows of garbage below leave
    the quantization as if they were not there, with all rows drawn)."""
    from skquant import GreedyPathQuantizer

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((8,), max_iter=300, random_state=0).fit(X, y)
    garbage = 50 * rng.standard_normal((200, 6))
    Xg, yg = np.vstack([X, garbage]), np.concatenate([y, y])
    w = np.r_[np.ones(200), np.zeros(200)]
    q = GreedyPathQuantizer(n_bits=3)
    weighted = QuantizedMLP(mlp, q, n_calibration=400).fit(Xg, yg, sample_weight=w)
    clean = QuantizedMLP(mlp, q, n_calibration=400).fit(X, y)
    for a, b in zip(weighted.tensors_, clean.tensors_):
        np.testing.assert_array_equal(a.codes, b.codes)
    unweighted = QuantizedMLP(mlp, q, n_calibration=400).fit(Xg, yg)
    assert any(
        not np.array_equal(a.codes, b.codes)
        for a, b in zip(unweighted.tensors_, clean.tensors_)
    )


def test_a_deep_copy_keeps_the_fitted_network():
    """copy.deepcopy keeps everything (a pickle goes through the file): the
    copy's estimator is still the fitted MLP, and a refit quantizes it."""
    import copy

    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 5))
    y = (X[:, 0] > 0).astype(int)
    q = _fit(MLPClassifier((8,), max_iter=300, random_state=0), X, y)
    twin = copy.deepcopy(q)
    assert hasattr(twin.estimator, "coefs_") and hasattr(twin, "float_estimator_")
    np.testing.assert_array_equal(twin.predict(X), q.predict(X))
    for a, b in zip(twin.fit(X, y).tensors_, q.tensors_):
        np.testing.assert_array_equal(a.codes, b.codes)


def test_a_frozen_unfitted_network_is_not_trained():
    from sklearn.frozen import FrozenEstimator

    X = np.random.default_rng(0).standard_normal((40, 3))
    q = QuantizedMLP(FrozenEstimator(MLPClassifier((4,))), UniformQuantizer(n_bits=8))
    with pytest.raises(ValueError, match="FrozenEstimator of an unfitted MLP"):
        q.fit(X, (X[:, 0] > 0).astype(int))


def test_weights_of_ones_are_no_weights():
    from skquant import GreedyPathQuantizer

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5))
    y = (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((8,), max_iter=200, random_state=0).fit(X, y)
    q = QuantizedMLP(
        mlp, GreedyPathQuantizer(n_bits=3), n_calibration=100, random_state=0
    )
    a = q.fit(X, y).tensors_
    b = q.fit(X, y, sample_weight=np.full(300, 2.5)).tensors_
    for ta, tb in zip(a, b):
        np.testing.assert_array_equal(ta.codes, tb.codes)


@pytest.mark.parametrize("kind", ["classifier", "binary", "regressor"])
def test_sample_weight_weighs_the_loss_gradient(monkeypatch, kind):
    """The loss gradient with integer weights is that of the rows repeated
    (a weight of 2: the row twice), in blocks of rows or whole; in
    QuantizedMLP, AdaptivePrecisionQuantizer's codes do not depend on the
    labels of rows of weight 0 (they moved predict_proba by 0.2)."""
    import skquant._sklearn._mlp as mlp_module
    from skquant import AdaptivePrecisionQuantizer
    from skquant._network._dense import MLPNetwork

    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 5))
    y = {
        "classifier": rng.integers(0, 3, 60),
        "binary": (X[:, 0] > 0).astype(int),
        "regressor": X[:, :2] @ [1.0, -2.0],
    }[kind]
    est = MLPRegressor if kind == "regressor" else MLPClassifier
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = est(hidden_layer_sizes=(7,), max_iter=100, random_state=0).fit(X, y)
    net = MLPNetwork(mlp)
    w = rng.integers(0, 4, 60).astype(float)
    loss, g = net.loss_gradients((X, y), sample_weight=w)
    rep = np.repeat(np.arange(60), w.astype(int))
    loss_rep, g_rep = net.loss_gradients((X[rep], y[rep]))
    assert loss == pytest.approx(loss_rep, rel=1e-12)
    for k in g:
        np.testing.assert_allclose(g[k], g_rep[k], rtol=1e-10, atol=1e-14)
    whole = QuantizedMLP._loss_gradients(net, X, y, w)
    monkeypatch.setattr(mlp_module, "BLOCK_ENTRIES", 7)  # (blocks of 1)
    for grads in (whole, QuantizedMLP._loss_gradients(net, X, y, w)):
        for n in net.layer_names:
            np.testing.assert_allclose(grads[n], g[f"{n}.weight"], rtol=1e-10)
    if kind == "regressor":
        return
    noisy = y.copy()
    noisy[w == 0] = (noisy[w == 0] + 1) % 2
    fits = [
        QuantizedMLP(mlp, AdaptivePrecisionQuantizer(), random_state=0).fit(
            X, labels, sample_weight=w
        )
        for labels in (y, noisy)
    ]
    for a, b in zip(fits[0].tensors_, fits[1].tensors_):
        np.testing.assert_array_equal(a.codes, b.codes)


def test_sparse_inputs_give_what_dense_ones_give(monkeypatch):
    """A SciPy sparse X (the MLP takes one) fits, predicts and scores as the
    dense X does, code for code, in blocks of rows; predict_log_proba is the
    log of predict_proba (cross_val_predict asks for it)."""
    sparse = pytest.importorskip("scipy.sparse")
    import skquant._sklearn._mlp as mlp_module
    from skquant import GreedyPathQuantizer

    rng = np.random.default_rng(0)
    Xs = sparse.random(150, 40, density=0.1, format="csc", random_state=0)
    X = Xs.toarray()
    y = rng.integers(0, 3, 150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((8,), max_iter=50, random_state=0).fit(X, y)
    make = lambda: QuantizedMLP(  # noqa: E731
        mlp, GreedyPathQuantizer(n_bits=3), n_calibration=64, random_state=0
    )
    dense = make().fit(X, y)
    monkeypatch.setattr(mlp_module, "BLOCK_ENTRIES", 400)  # (10 rows)
    sparse_fit = make().fit(Xs, y)
    for a, b in zip(dense.tensors_, sparse_fit.tensors_):
        np.testing.assert_array_equal(a.codes, b.codes)
    for model in (dense, sparse_fit):
        np.testing.assert_array_equal(model.predict(Xs), dense.predict(X))
        np.testing.assert_array_equal(model.predict_proba(Xs), dense.predict_proba(X))
        assert model.score(Xs, y) == dense.score(X, y)
    np.testing.assert_allclose(
        dense.predict_log_proba(X), np.log(dense.predict_proba(X)), rtol=1e-12
    )
    assert not hasattr(QuantizedMLP(MLPRegressor()), "predict_log_proba")


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_the_quantized_network_holds_no_training_state(solver):
    """The quantized network keeps what predicts: not the float copies of its
    weights that training left (early stopping's best weights, the optimizer's
    moments: 36x the codes' bytes on a digits MLP), which the float network
    keeps; its predictions are those of the codes."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (few iterations)
        mlp = MLPClassifier(
            (32,), solver=solver, max_iter=20, early_stopping=True, random_state=0
        ).fit(X, y)
    q = QuantizedMLP(mlp, UniformQuantizer(n_bits=4)).fit(X, y)
    assert hasattr(q.float_estimator_, "_optimizer")
    held = {  # the arrays the network's lists hold: the biases only
        id(a)
        for v in vars(q.estimator_).values()
        if isinstance(v, list)
        for a in v
        if type(a) is np.ndarray and a.ndim  # (codes, and sgd's 0-d losses, left)
    }
    assert held == {id(b) for b in q.estimator_.intercepts_}  # (coefs_: codes)
    assert not hasattr(q.estimator_, "_optimizer")
    before = q.predict(X)
    q.estimator_.coefs_ = [np.asarray(W) for W in q.estimator_.coefs_]
    assert np.array_equal(q.estimator_.predict(X), before)


def test_a_quantized_copy_trained_with_early_stopping_refits_warm():
    """A quantized copy of an MLP trained with early stopping refits warm
    (its best weights are its own: the copy dropped the float ones and raised
    where no epoch beat the float model's best score)."""
    from skquant import adaptive_quantize_mlp

    rng = np.random.RandomState(0)
    X = rng.randn(300, 6)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(
            (16,), max_iter=300, early_stopping=True, random_state=0
        ).fit(X, y)
        res = adaptive_quantize_mlp(mlp, X, y, loss_bound=0.5, max_iter=2)
        model = res.model
        assert model.coefs_[0] is model._best_coefs[0]  # (no float copies)
        model.set_params(warm_start=True, max_iter=5).fit(X, y)
    assert model.score(X, y) > 0.5
