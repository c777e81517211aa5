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
