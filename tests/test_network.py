"""Layer-by-layer quantization of dense networks and QuantizedMLP."""

import pickle
import re
import warnings

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits, make_regression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from skquant import (
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    QuantizedMLP,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant._network._layers import quantize_network
from skquant._tensor._bits import packed_size


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((48,), max_iter=300, random_state=0).fit(Xtr, ytr)
    return mlp, Xtr, Xte, ytr, yte


def _layers(rng, sizes=(20, 30, 3)):
    return [
        (
            rng.standard_normal((a, b)) / np.sqrt(a),
            rng.standard_normal(b) * 0.1,
            "relu" if i < len(sizes) - 2 else "identity",
        )
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]


def test_network_layers_see_the_quantized_prefix():
    rng = np.random.default_rng(0)
    layers = _layers(rng)
    X = rng.standard_normal((40, 20))
    res = quantize_network(layers, GreedyPathQuantizer(n_bits=3), X)
    Q0, Q1 = res.weights["layer_0"], res.weights["layer_1"]
    # layer 2 was calibrated on relu(X Q0 + b0), aiming at relu(X W0 + b0)
    Xq = np.maximum(X @ Q0 + layers[0][1], 0)
    Xf = np.maximum(X @ layers[0][0] + layers[0][1], 0)
    alone = GreedyPathQuantizer(n_bits=3).fit(
        layers[1][0], activations=Xq, target_activations=Xf
    )
    assert_array_equal(alone.codes_, res.quantizers["layer_1"].codes_)
    for t, Q in zip(res.tensors.values(), res.weights.values()):
        assert_array_equal(t.dequantize(), Q)
    # the report's calibration error is the layer's relative output error
    err = np.linalg.norm(Xq @ Q1 - Xf @ layers[1][0]) / np.linalg.norm(
        Xf @ layers[1][0]
    )
    assert res.report.rows[1]["calibration_error"] == pytest.approx(err, rel=1e-12)
    # data-driven beats memoryless on the network's output
    plain = quantize_network(layers, UniformQuantizer(n_bits=3), X)
    assert (
        res.report.rows[-1]["calibration_error"]
        < plain.report.rows[-1]["calibration_error"]
    )


def test_network_one_quantizer_per_layer():
    rng = np.random.default_rng(1)
    layers = _layers(rng)
    res = quantize_network(
        layers,
        [UniformQuantizer(n_bits=8), TernaryQuantizer()],
        rng.standard_normal((10, 20)),
    )
    assert [t.alphabet for t in res.tensors.values()] == ["uniform", "ternary"]


def test_network_per_layer_mapping_and_report():
    rng = np.random.default_rng(3)
    layers = _layers(rng, sizes=(20, 30, 10, 3))
    X = rng.standard_normal((50, 20))
    res = quantize_network(
        layers,
        {"layer_0": GreedyPathQuantizer(n_bits=4), "*": UniformQuantizer(n_bits=8)},
        X,
    )
    methods = [r["method"] for r in res.report.rows]
    assert methods == ["GreedyPath", "Uniform", "Uniform"]
    assert [r["bits"] for r in res.report.rows][1] == pytest.approx(
        (8 * packed_size(300, 8) + 32 * 10) / 300  # packed codes, float32 scales
    )
    # layers not named stay float without a default
    res = quantize_network(layers, {"layer_1": UniformQuantizer(n_bits=2)}, X)
    assert list(res.tensors) == ["layer_1"]
    assert [r["method"] for r in res.report.rows] == ["float", "Uniform", "float"]
    assert res.report.rows[0]["calibration_error"] == 0.0
    assert (
        res.report.size_bits
        == 32 * (20 * 30 + 10 * 3) + res.tensors["layer_1"].size_bits
    )
    text = str(res.report)
    assert "layer_1" in text and "Uniform" in text and "total" in text


def test_network_mapping_errors():
    rng = np.random.default_rng(4)
    layers = _layers(rng)
    X = rng.standard_normal((10, 20))
    with pytest.raises(ValueError, match=re.escape("names layers ['fc9']")):
        quantize_network(layers, {"fc9": UniformQuantizer()}, X)
    with pytest.raises(ValueError, match="empty mapping"):
        quantize_network(layers, {}, X)
    from skquant import ActivationQuantizer

    with pytest.raises(TypeError, match="must be a skquant weight quantizer"):
        quantize_network(layers, ActivationQuantizer(), X)
    with pytest.raises(TypeError, match=re.escape("quantizer['layer_0'] must be")):
        quantize_network(layers, {"layer_0": MinMaxScaler()}, X)


def test_network_bad_input():
    rng = np.random.default_rng(2)
    layers = _layers(rng)
    with pytest.raises(ValueError, match=re.escape("X must have shape (m, 20)")):
        quantize_network(layers, UniformQuantizer(), np.ones((5, 21)))
    with pytest.raises(ValueError, match=re.escape("layers[1] has activation='swish'")):
        quantize_network(
            [layers[0], (layers[1][0], layers[1][1], "swish")],
            UniformQuantizer(),
            np.ones((5, 20)),
        )
    with pytest.raises(
        ValueError, match=re.escape("layers[1] takes 20 inputs but layers[0] gives 30")
    ):
        quantize_network([layers[0], layers[0]], UniformQuantizer(), np.ones((5, 20)))
    with pytest.raises(
        TypeError, match=re.escape("layers[0] must be a (W, b, activation)")
    ):
        quantize_network([layers[0][0]], UniformQuantizer(), np.ones((5, 20)))
    with pytest.raises(ValueError, match="one per layer"):
        quantize_network(layers, [UniformQuantizer()], np.ones((5, 20)))
    with pytest.raises(ValueError, match="NaN"):
        quantize_network(layers, UniformQuantizer(), np.full((5, 20), np.nan))


@pytest.mark.parametrize(
    "quantizer",
    [
        UniformQuantizer(n_bits=4),
        GreedyPathQuantizer(n_bits=4),
        NullSpaceQuantizer(n_bits=4, rank=32),
    ],
)
def test_quantized_mlp_predicts_scores_pickles(digits, quantizer):
    mlp, Xtr, Xte, ytr, yte = digits
    q = QuantizedMLP(mlp, quantizer, n_calibration=512, random_state=0).fit(Xtr, ytr)
    assert q.score(Xte, yte) > mlp.score(Xte, yte) - 0.03
    assert q.predict_proba(Xte).shape == (len(Xte), 10)
    assert_array_equal(q.classes_, mlp.classes_)
    q2 = pickle.loads(pickle.dumps(q))
    assert_array_equal(q2.predict(Xte), q.predict(Xte))
    # the float network is untouched, the quantized copy holds alphabet values
    assert mlp.coefs_[0] is not q.estimator_.coefs_[0]
    for t, Q in zip(q.tensors_, q.estimator_.coefs_):
        assert_array_equal(t.dequantize(), Q)
    assert q.compression_ratio_ > 4


def test_quantized_mlp_at_two_bits_data_driven_beats_msq(digits):
    mlp, Xtr, Xte, ytr, yte = digits
    msq = QuantizedMLP(mlp, UniformQuantizer(n_bits=2), random_state=0).fit(Xtr, ytr)
    gp = QuantizedMLP(mlp, GreedyPathQuantizer(n_bits=2), random_state=0).fit(Xtr, ytr)
    assert gp.score(Xte, yte) > msq.score(Xte, yte) + 0.05


def test_quantized_mlp_grid_search_over_n_bits_in_a_pipeline():
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(
        MinMaxScaler(),
        QuantizedMLP(
            MLPClassifier((16,), max_iter=200, random_state=0),
            UniformQuantizer(),
            n_calibration=256,
            random_state=0,
        ),
    )
    search = GridSearchCV(pipe, {"quantizedmlp__quantizer__n_bits": [2, 8]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert scores[1] > scores[0] + 0.1
    assert search.best_params_ == {"quantizedmlp__quantizer__n_bits": 8}


def test_quantized_mlp_regressor_and_unfitted_estimator():
    X, y = make_regression(200, 8, noise=0.1, random_state=0)
    y = y / y.std()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = QuantizedMLP(
            MLPRegressor(hidden_layer_sizes=(16,), max_iter=500, random_state=0),
            UniformQuantizer(n_bits=8),
            random_state=0,
        ).fit(X, y)
    float_r2 = q.float_estimator_.score(X, y)
    assert float_r2 > 0.8
    assert q.score(X, y) > float_r2 - 0.02
    assert not hasattr(q, "classes_")
    assert not hasattr(q, "predict_proba")


def test_quantized_mlp_errors(digits):
    mlp, Xtr, *_ = digits
    with pytest.raises(ValueError, match="needs y to train the unfitted estimator"):
        QuantizedMLP(MLPClassifier(), UniformQuantizer()).fit(Xtr)
    with pytest.raises(ValueError, match=re.escape("X must have 64 features")):
        QuantizedMLP(mlp, UniformQuantizer()).fit(Xtr[:, :10])
    q = QuantizedMLP(mlp, UniformQuantizer()).fit(Xtr)
    with pytest.raises(ValueError, match="64 features"):
        q.predict(Xtr[:, :10])
    with pytest.raises(ValueError, match="The 'quantizer' parameter"):
        QuantizedMLP(mlp, "uniform").fit(Xtr)
    from sklearn.linear_model import LogisticRegression

    from skquant import ActivationQuantizer

    with pytest.raises(TypeError, match="must be an MLPClassifier or MLPRegressor"):
        QuantizedMLP(LogisticRegression(), UniformQuantizer()).fit(Xtr, ytr_of(mlp))
    with pytest.raises(TypeError, match="must be an MLPClassifier or MLPRegressor"):
        QuantizedMLP(make_pipeline(MinMaxScaler(), mlp)).fit(Xtr)
    with pytest.raises(TypeError, match="must be a skquant weight quantizer"):
        QuantizedMLP(mlp, ActivationQuantizer()).fit(Xtr)
    with pytest.raises(ValueError, match=re.escape("names layers ['fc']")):
        QuantizedMLP(mlp, {"fc": UniformQuantizer()}).fit(Xtr)


def ytr_of(mlp):
    return np.tile(mlp.classes_, 200)[:1257]


def test_quantized_mlp_frozen_estimator_is_not_retrained(digits):
    from sklearn.frozen import FrozenEstimator

    mlp, Xtr, Xte, ytr, yte = digits
    q = QuantizedMLP(FrozenEstimator(mlp), GreedyPathQuantizer(), random_state=0)
    search = GridSearchCV(q, {"quantizer__n_bits": [2, 4]}, cv=2).fit(Xtr, ytr)
    best = search.best_estimator_
    # the float network of every fit is the given one, not a retrained one
    for W, W0 in zip(best.float_estimator_.coefs_, mlp.coefs_):
        assert_array_equal(W, W0)
    assert search.best_params_ == {"quantizer__n_bits": 4}


def test_quantized_mlp_adaptive_precision_and_report(digits):
    from skquant import AdaptivePrecisionQuantizer

    mlp, Xtr, Xte, ytr, yte = digits
    q = QuantizedMLP(mlp, AdaptivePrecisionQuantizer(budget=0.05), random_state=0).fit(
        Xtr, ytr
    )
    assert [t.alphabet for t in q.tensors_] == ["fixed_point", "fixed_point"]
    for t, est in zip(q.tensors_, q.quantizers_):
        assert t.size_bits == est.size_bits_
    assert q.score(Xte, yte) > mlp.score(Xte, yte) - 0.05
    assert len(q.report_.rows) == 2 and "Adaptive" in str(q.report_)
    with pytest.raises(ValueError, match="pass y"):
        QuantizedMLP(mlp, AdaptivePrecisionQuantizer()).fit(Xtr)
    with pytest.raises(ValueError, match=re.escape("one label per row of X")):
        QuantizedMLP(mlp, AdaptivePrecisionQuantizer()).fit(Xtr, ytr[:10])


@pytest.mark.parametrize("quantizer", [GreedyPathQuantizer(), NullSpaceQuantizer()])
def test_pickled_quantized_mlp_does_not_grow_with_calibration_rows(quantizer):
    X, y = load_digits(return_X_y=True)
    X = np.vstack([X / 16] * 4)  # 7188 rows
    y = np.tile(y, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((32,), max_iter=50, random_state=0).fit(X[:500], y[:500])
        sizes = [
            len(
                pickle.dumps(
                    QuantizedMLP(mlp, quantizer, n_calibration=m, random_state=0).fit(X)
                )
            )
            for m in (1000, 6000)
        ]
    # keeping 5000 more rows of 64 + 32 inputs (twice: activations and targets)
    # would add 7.7 MB in float64
    assert abs(sizes[1] - sizes[0]) < 0.001 * 7.7e6, sizes


def test_no_freedom_warnings_are_one_per_model():
    """Layers whose calibration rank reaches their inputs: one warning naming them."""
    rng = np.random.default_rng(0)
    layers = _layers(rng, sizes=(20, 30, 3))
    X = rng.standard_normal((200, 20))  # 200 rows: rank 20 = n_in and 30 = n_in
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_network(layers, NullSpaceQuantizer(n_bits=3, rank=None), X)
    from skquant import NoFreedomWarning

    mine = [w for w in caught if issubclass(w.category, NoFreedomWarning)]
    assert len(mine) == 1
    msg = str(mine[0].message)
    assert "2 of 2 layers" in msg and "layer_0 (20 inputs)" in msg
    assert "layer_1 (30 inputs)" in msg
    # with freedom left (few rows), nothing to say
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_network(layers, NullSpaceQuantizer(n_bits=3), X[:8])
    assert not [w for w in caught if issubclass(w.category, NoFreedomWarning)]


def test_lp_variant_is_refused_in_networks(digits):
    mlp, Xtr, *_ = digits
    lp = NullSpaceQuantizer(n_bits="ternary", variant="lp")
    with pytest.raises(ValueError, match="variant='lp'.* is for single layers"):
        QuantizedMLP(mlp, lp).fit(Xtr[:100])
    with pytest.raises(ValueError, match="layer 'layer_1'"):
        QuantizedMLP(mlp, {"layer_1": lp, "*": UniformQuantizer()}).fit(Xtr[:100])
    # a single layer still takes it
    W = mlp.coefs_[0]
    assert (
        NullSpaceQuantizer(n_bits="ternary", variant="lp")
        .fit(W, activations=Xtr[:16])
        .transform(W)
        .shape
        == W.shape
    )


def test_complex_inputs_are_refused_by_the_network_front_ends(digits_mlp):
    # their imaginary part was dropped, with only NumPy's ComplexWarning
    import skquant

    mlp, X, y = digits_mlp
    Xc = X[:64] + 1j
    for call in (
        lambda: skquant.measure_sensitivity(mlp, Xc, y[:64], bits=(2, 4)),
        lambda: skquant.adaptive_quantize_mlp(mlp, Xc, y[:64], max_iter=1),
        lambda: skquant.LayerBitAllocator(mlp, bits=(2, 4)).fit(Xc, y[:64]),
    ):
        with pytest.raises(ValueError, match="X must be real, got complex values"):
            call()
