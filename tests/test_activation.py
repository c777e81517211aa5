"""ActivationQuantizer: affine per-tensor / per-feature grids calibrated on data."""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from strategies import weight_matrices

from skquant import ActivationQuantizer


def test_codes_by_hand():
    X = np.array([[0.0, 1.0], [0.5, 3.0], [1.0, 2.0]])
    q = ActivationQuantizer(n_bits=2, granularity="per_feature").fit(X)
    # feature 0: step 1/3, 0.5 * 3 = 1.5 -> 2 (half to even); feature 1: step 1
    assert_array_equal(q.encode(X), [[0, 1], [2, 3], [3, 2]])
    assert_array_equal(q.zero_point_, [0, 0])


def test_zero_point_and_exact_zero():
    X = np.array([[-1.0], [0.0], [3.0]])
    q = ActivationQuantizer(n_bits=8).fit(X)
    assert q.scale_[0] == pytest.approx(4 / 255)
    assert q.zero_point_[0] == round(255 / 4)
    assert q.transform(np.array([[0.0]]))[0, 0] == 0.0
    assert q.encode(X).dtype == np.uint8


def test_symmetric_is_signed_with_zero_point_zero():
    X = np.array([[-2.0, 1.0], [1.0, 4.0]])
    q = ActivationQuantizer(n_bits=4, symmetric=True).fit(X)
    assert (q.qmin_, q.qmax_) == (-7, 7)
    assert_array_equal(q.zero_point_, [0])
    np.testing.assert_allclose(q.scale_, [4 / 7])
    assert q.encode(X).dtype == np.int8


def test_percentile_calibration_clips():
    X = np.concatenate([np.linspace(0, 1, 999), [1000.0]])[:, None]
    q = ActivationQuantizer(calibration="percentile", percentile=99.0).fit(X)
    assert q.data_max_[0] < 2
    assert q.transform(X).max() <= q.data_max_[0] + q.scale_[0]


@pytest.mark.filterwarnings("ignore:ActivationQuantizer found a calibrated range")
@given(
    weight_matrices(max_rows=30, max_cols=5),
    st.integers(2, 16),
    st.booleans(),
    st.sampled_from(["per_tensor", "per_feature"]),
)
def test_oracles(X, n_bits, symmetric, granularity):
    q = ActivationQuantizer(n_bits=n_bits, symmetric=symmetric, granularity=granularity)
    q.fit(X)
    Xq = q.transform(X)
    codes = q.encode(X)
    assert Xq.dtype == X.dtype
    assert codes.min() >= q.qmin_ and codes.max() <= q.qmax_
    assert_array_equal(q.decode(codes), Xq.astype(q.scale_.dtype))
    assert_array_equal(q.transform(Xq), Xq)  # idempotent
    step = np.broadcast_to(q.scale_, (X.shape[1],)).astype(np.float64)
    eps = np.finfo(X.dtype).eps
    tol = step / 2 + 8 * eps * (np.abs(X) + step * (2**n_bits))
    # calibrated on X itself with min/max: nothing is clipped
    assert np.all(np.abs(X - Xq.astype(np.float64)) <= tol)


def test_in_a_pipeline_and_grid_search():
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(
        StandardScaler(),
        ActivationQuantizer(n_bits=4),
        LogisticRegression(max_iter=300),
    )
    search = GridSearchCV(pipe, {"activationquantizer__n_bits": [2, 8]}, cv=2)
    search.fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert scores[1] > scores[0]  # 8 bits keeps more of the signal than 2
    assert search.best_params_ == {"activationquantizer__n_bits": 8}
    names = make_pipeline(ActivationQuantizer()).fit(X).get_feature_names_out()
    assert len(names) == 64


def test_all_zero_feature_warns_and_maps_to_zero():
    X = np.array([[0.0, 1.0], [0.0, 2.0]])
    with pytest.warns(UserWarning, match=re.escape("range of [0, 0] for features [0]")):
        q = ActivationQuantizer(granularity="per_feature").fit(X)
    assert_array_equal(q.transform(X)[:, 0], [0.0, 0.0])


def test_bad_input():
    q = ActivationQuantizer().fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="2 features"):
        q.transform(np.ones((3, 3)))
    with pytest.raises(ValueError, match="Input X contains NaN"):
        q.transform(np.array([[np.nan, 1.0]]))
    with pytest.raises(
        ValueError, match="The 'n_bits' parameter of ActivationQuantizer"
    ):
        ActivationQuantizer(n_bits=1).fit(np.ones((3, 2)))
    with pytest.raises(TypeError, match="2-D integer array"):
        q.decode(np.ones((3, 2)))
    with pytest.raises(ValueError, match="must have 2 columns"):
        q.decode(np.ones((3, 3), dtype=np.uint8))


def test_input_not_modified_and_layouts():
    X = np.asfortranarray(np.random.default_rng(0).standard_normal((20, 3)))
    X.flags.writeable = False
    X0 = X.copy()
    q = ActivationQuantizer(granularity="per_feature").fit(X)
    out = q.transform(X)
    assert_array_equal(X, X0)
    assert_array_equal(out, q.transform(np.ascontiguousarray(X)))


@given(
    seed=st.integers(0, 2**16),
    n_bits=st.integers(2, 8),
    symmetric=st.booleans(),
    per_feature=st.booleans(),
)
def test_mse_calibration_never_loses_to_minmax(seed, n_bits, symmetric, per_feature):
    """Oracle: the MSE range is chosen among shrinks that include the min-max one,
    so its squared error on the calibration data is at most min-max's."""
    rng = np.random.default_rng(seed)
    X = rng.standard_t(3, size=(300, 4))  # heavy tails: outliers worth clipping
    kw = dict(
        n_bits=n_bits,
        symmetric=symmetric,
        granularity="per_feature" if per_feature else "per_tensor",
    )
    mse = ActivationQuantizer(calibration="mse", **kw).fit(X)
    mm = ActivationQuantizer(calibration="minmax", **kw).fit(X)
    err_mse = ((mse.transform(X) - X) ** 2).sum(axis=0)
    err_mm = ((mm.transform(X) - X) ** 2).sum(axis=0)
    if per_feature:
        assert np.all(err_mse <= err_mm * (1 + 1e-9))
    else:
        assert err_mse.sum() <= err_mm.sum() * (1 + 1e-9)
    assert np.all(mse.data_max_ <= mm.data_max_ + 1e-12)


def test_a_range_wider_than_the_largest_float():
    X = np.array([[-1.5e308, 1.5e308], [0.0, 1.0], [1e307, -1e307]])
    q = ActivationQuantizer().fit(X)
    assert np.isfinite(q.scale_).all()
    Xq = q.transform(X)
    assert np.isfinite(Xq).all()
    assert np.abs(Xq - X).max() <= q.scale_.max() / 2 * (1 + 1e-12)


def test_decode_rejects_codes_off_the_calibrated_grid():
    X = np.random.default_rng(0).standard_normal((20, 3))
    q = ActivationQuantizer(n_bits=4).fit(X)
    assert (q.qmin_, q.qmax_) == (0, 15)
    for code in (1000, 16, -1):
        with pytest.raises(ValueError, match=re.escape("codes must lie in [0, 15]")):
            q.decode(np.full((1, 3), code))
    assert_array_equal(q.decode(q.encode(X)), q.transform(X))


def test_code_range_is_python_ints_whatever_the_bit_width_type():
    X = np.random.default_rng(0).random((10, 3))
    for n_bits in (4, np.int64(4), np.int32(4)):
        q = ActivationQuantizer(n_bits=n_bits).fit(X)
        assert (type(q.qmin_), type(q.qmax_)) == (int, int)
        assert (q.qmin_, q.qmax_) == (0, 15)
