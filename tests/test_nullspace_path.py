"""NullSpaceQuantizer(variant="path"): the kept directions absorbed by a basis,
the other coordinates rounded by greedy path following on the rest of the data."""

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from skquant import NullSpaceQuantizer
from skquant._quantizers import _nullspace
from skquant.datasets import make_gaussian_layer

ALPHABETS = [2, 3, 4, 8, "ternary", "binary"]


def _correlated(m=120, n_in=90, n_out=5, seed=0):
    """Inputs with a decaying spectrum (as a real layer's), and weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 20)) @ rng.standard_normal((20, n_in))
    X += 0.05 * rng.standard_normal((m, n_in))
    return X, rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)


def _reference_points(W, X, V, alphabet, step):
    """The path points by a plain loop: GPFQ on M = X_N - X_B T over the
    non-basic coordinates (decreasing energy), the basis absorbing T d."""
    n, k = V.shape
    piv = scipy.linalg.qr(V.T, pivoting=True, mode="r")[1][:k]
    order = np.argsort(-np.einsum("ij,ij->j", X, X), kind="stable")
    N = np.array([j for j in order if j not in set(piv)])
    T = np.linalg.solve(V[piv].T, V[N].T)
    M = X[:, N] - X[:, piv] @ T
    zp, inv, cmin, cmax = alphabet.code_grid(step)
    Z = W.astype(np.float64).copy()
    u = np.zeros((X.shape[0], W.shape[1]))
    for i, j in enumerate(N):
        col = M[:, i]
        e = col @ col
        target = W[j] + (col @ u) / e if e > 0 else W[j]
        c = np.clip(np.rint(target * inv + zp), cmin, cmax)
        Z[j] = (c - zp) / inv
        u += np.outer(col, W[j] - Z[j])
    Z[piv] += T @ (W[N] - Z[N])
    return Z


@pytest.mark.parametrize("n_bits", ALPHABETS)
@pytest.mark.parametrize("gram_form", [False, True])
def test_path_points_match_a_plain_loop(n_bits, gram_form, monkeypatch):
    """Both forms of the path (the per-neuron kernel and the Gram form) give the
    points of a plain NumPy loop: with rounding="nearest" the codes are theirs."""
    monkeypatch.setattr(_nullspace, "use_gram", lambda m, n, n_out: gram_form)
    X, W = _correlated()
    q = NullSpaceQuantizer(n_bits=n_bits, variant="path", rank=12, rounding="nearest")
    q.fit(W, activations=X)
    step = np.broadcast_to(q.scale_.astype(np.float64), (W.shape[1],))
    Z = _reference_points(W, X, q.components_, q.alphabet_record_, step)
    zp, inv, cmin, cmax = q.alphabet_record_.code_grid(step)
    ref = q.alphabet_record_.final_codes(np.clip(np.rint(Z * inv + zp), cmin, cmax))
    codes = q.encode(W)
    assert (codes == ref).mean() >= 0.99  # (a tie may round the other way)
    assert q.n_off_grid_.max() <= q.rank_ == 12


@pytest.mark.parametrize("n_bits", ALPHABETS)
def test_path_variant_oracles(n_bits):
    """Without a cap the kept directions are the data's: X z = X w to round-off,
    at most rank coordinates off the alphabet, the error within the bound."""
    X, W = make_gaussian_layer(16, 256, 6, random_state=0)
    q = NullSpaceQuantizer(n_bits=n_bits, variant="path", rank=None).fit(
        W, activations=X
    )
    Q = q.transform(W)
    assert_array_equal(q.decode(q.encode(W)), Q)
    assert q.preprocessing_residual_ <= 1e-9
    assert q.rank_ == 16 and q.n_off_grid_.max() <= 16
    err = np.linalg.norm(X @ (W - Q), axis=0) / np.linalg.norm(X @ W, axis=0)
    np.testing.assert_allclose(err, q.calibration_error_, rtol=1e-10)
    assert np.all(err <= q.bound_ * (1 + 1e-9))


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(4, 40),
    n_in=st.integers(8, 60),
    rank=st.one_of(st.none(), st.integers(1, 12), st.just("auto")),
    seed=st.integers(0, 10**6),
)
def test_property_path_keeps_the_bound(m, n_in, rank, seed):
    X, W = make_gaussian_layer(m, n_in, 3, random_state=seed)
    q = NullSpaceQuantizer(n_bits=3, variant="path", rank=rank).fit(W, activations=X)
    assert q.n_off_grid_.max() <= q.rank_
    assert np.all(q.calibration_error_ <= q.bound_ * (1 + 1e-9) + 1e-12)
    codes = q.encode(W)
    assert codes.min() >= q.qmin_ and codes.max() <= q.qmax_


def test_path_beats_the_walk_at_a_small_cap():
    """At a cap below the data's rank the walk ignores what it does outside the
    kept directions; the path rounds against exactly that part of the data, so
    its output error (on the calibration rows and on held-out rows) is lower."""
    rng = np.random.default_rng(0)
    n_in, m = 400, 1000
    X = rng.standard_normal((m, 40)) @ rng.standard_normal((40, n_in))
    X += 0.3 * rng.standard_normal((m, n_in))
    W = rng.standard_normal((n_in, 16)) / np.sqrt(n_in)
    fit, held = X[:800], X[800:]
    errors = {}
    for variant in ("path", "grid"):
        est = NullSpaceQuantizer(n_bits=2, variant=variant, rank=10)
        Q = est.fit(W, activations=fit).transform(W)
        held_err = np.linalg.norm(held @ (W - Q)) / np.linalg.norm(held @ W)
        errors[variant] = (float(np.linalg.norm(est.calibration_error_)), held_err)
    assert errors["path"][0] < errors["grid"][0]
    assert errors["path"][1] < errors["grid"][1]


def test_path_variant_is_checked():
    X, W = _correlated()
    with pytest.raises(ValueError, match="variant"):
        NullSpaceQuantizer(variant="paths").fit(W, activations=X)
    # no freedom: the start points themselves, then rounded (no basis to solve)
    q = NullSpaceQuantizer(n_bits=3, variant="path", rank=None)
    with pytest.warns(_nullspace.NoFreedomWarning):
        q.fit(W[:10], activations=X[:, :10])
    assert q.rank_ == 10


def test_the_ladder_tries_the_allowed_caps():
    """``allow`` (for a caller choosing between variants, skipping the walks it
    finds too costly): the caps it allows are the full ladder's, no others."""
    X, W = _correlated(m=300, n_in=120)
    est = NullSpaceQuantizer(n_bits=3)
    full, top = est._ladder_errors(W, X, X)
    some, top_some = est._ladder_errors(W, X, X, allow=lambda k, top: k <= 20)
    assert top_some == top and max(some) <= 20 < max(full)
    for k, errors in some.items():
        np.testing.assert_array_equal(errors, full[k])


def test_the_path_ladder_tries_no_freedom_whatever_the_climb(monkeypatch):
    """The path's held-out error is not monotone in the cap: with the rank at
    ``n_in`` (no freedom, GPFQ from the start points) it can be lowest after
    the small caps got worse. So its ladder tries that cap even when the climb
    stops at the first cap; the walk's does not, and neither does the path's
    when the rank is below ``n_in`` (its kept directions then hold all the
    data)."""
    monkeypatch.setattr(_nullspace, "AUTO_PATIENCE", 0)  # stop after one cap
    X, W = _correlated(m=400, n_in=64)
    path = NullSpaceQuantizer(n_bits=2, variant="path")
    errors, top = path._ladder_errors(W, X, X)
    walk, _ = NullSpaceQuantizer(n_bits=2)._ladder_errors(W, X, X)
    assert top == 64
    assert sorted(errors) == [8, 64] and sorted(walk) == [8]
    q = path.fit(W, activations=X)
    assert sorted(q.rank_scores_) == [8, 64]
    assert q.rank_ == (64 if q.rank_scores_[64] <= q.rank_scores_[8] else 8)
    X, W = _correlated(m=60, n_in=64)  # 48 fitting rows: the rank is below n_in
    wide, top = path._ladder_errors(W, X, X)
    assert top < 64 and len(wide) == 1


def test_the_path_makes_one_copy_of_the_data_outside_the_kept_directions(
    traced_peak,
):
    """M = X_N - X_B T was formed from three data-sized temporaries and then
    transposed for the per-neuron path; it is now made once, a block of rows at
    a time, in the order that path reads it."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 30)) @ rng.standard_normal((30, 200))
    W = rng.standard_normal((200, 8)) / 14
    NullSpaceQuantizer(4, variant="path", rank=10).fit(W[:, :2], activations=X[:300])
    _, peak = traced_peak(
        lambda: NullSpaceQuantizer(4, variant="path", rank=10).fit(W, activations=X)
    )
    assert peak < 3.3 * X.nbytes, peak / X.nbytes  # 3.89 before
