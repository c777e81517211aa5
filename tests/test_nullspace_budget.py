"""NullSpaceQuantizer(walk_budget=...): the rank="auto" ladder limited to the caps
whose walk costs at most a multiple of GPFQ's arithmetic, the walk then guided
by the data outside the kept directions."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from skquant import NullSpaceQuantizer
from skquant._quantizers import _nullspace, _spectrum, _walk


def _wide(m=100, n_in=600, n_out=6, seed=0):
    """A wide layer with few rows and a decaying spectrum (the case the budget
    binds on), and its weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 40)) @ rng.standard_normal((40, n_in))
    X += 0.1 * rng.standard_normal((m, n_in))
    return X, rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)


def _modelled(k, m, n, guided=False):
    """The walk's modelled arithmetic over GPFQ's, as the docstring states it."""
    rows = min(m, 256)
    return (5 * k * k + (2 * rows * k if guided else 0)) * (n - k) / (4 * m * n)


@pytest.mark.parametrize("bad", [0, -1.0])
def test_walk_budget_is_checked(bad):
    X, W = _wide()
    with pytest.raises(ValueError, match="walk_budget"):
        NullSpaceQuantizer(walk_budget=bad).fit(W, activations=X)
    with pytest.raises((ValueError, TypeError), match="walk_budget"):
        NullSpaceQuantizer(walk_budget="16").fit(W, activations=X)


def test_the_budget_limits_the_ladder_and_guides_the_walk(monkeypatch):
    """On a wide layer whose largest cap is out of budget, the ladder tries only
    the caps within it, every score is the held-out error of a guided walk at
    that cap, and the final fit is the guided walk at the chosen cap."""
    monkeypatch.setattr(_nullspace, "AUTO_PATIENCE", 10)  # the whole ladder
    X, W = _wide()
    m, n = X.shape
    q = NullSpaceQuantizer(n_bits=3).fit(W, activations=X)
    full = NullSpaceQuantizer(n_bits=3, walk_budget=None).fit(W, activations=X)
    assert q.guided_ and not full.guided_
    assert sorted(full.rank_scores_) == [10, 20, 40, 80]  # 80 fitting rows
    assert _modelled(80, m, n) > 16  # the top cap is out of budget
    tried = sorted(q.rank_scores_)
    assert tried == [
        k for k in sorted(full.rank_scores_) if _modelled(k, m, n, True) <= 16
    ]
    assert tried and max(tried) < 80

    class Guided(NullSpaceQuantizer):
        _guided = True

    held = np.zeros(m, dtype=bool)
    held[4::5] = True
    for k, score in q.rank_scores_.items():
        Q = Guided(n_bits=3, rank=k).fit_transform(W, activations=X[~held])
        assert score == pytest.approx(np.linalg.norm(X[held] @ (W - Q)))
    best = min(q.rank_scores_, key=lambda k: (q.rank_scores_[k], -k))
    assert q.rank_ == best
    assert_array_equal(
        q.codes_, Guided(n_bits=3, rank=best).fit(W, activations=X).codes_
    )
    # the guide reaches the walk: the unguided walk at that cap differs
    plain = NullSpaceQuantizer(n_bits=3, rank=best).fit(W, activations=X)
    assert not plain.guided_ and np.mean(plain.codes_ != q.codes_) > 0.05
    # a float rank or the numerical rank with the guide (no direction left)
    assert Guided(n_bits=3, rank=0.9).fit(W, activations=X).guided_
    assert not Guided(n_bits=3, rank=None).fit(W, activations=X).guided_
    # the guided walk's point is still a vertex: at most k coordinates off the
    # alphabet, and the a-posteriori bound holds
    assert np.all(q.n_off_grid_ <= q.rank_)
    err = np.linalg.norm(X @ (W - q.transform(W)), axis=0) / np.linalg.norm(
        X @ W, axis=0
    )
    np.testing.assert_allclose(err, q.calibration_error_, rtol=1e-9)
    assert np.all(err <= q.bound_ * (1 + 1e-9))


def test_a_budget_that_fits_changes_nothing():
    """Where the top cap's walk is within budget (a tall layer; or a budget
    large enough on a wide one), the fit is the unlimited ladder's, unguided;
    the path variant never walks, so its budget does nothing."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 64))
    X += 0.05 * rng.standard_normal((300, 64))
    W = rng.standard_normal((64, 4)) / 8
    cases = [(X, W, 16.0), (*_wide(), 1e9)]
    for X_, W_, budget in cases:
        a = NullSpaceQuantizer(n_bits=3, walk_budget=budget).fit(W_, activations=X_)
        b = NullSpaceQuantizer(n_bits=3, walk_budget=None).fit(W_, activations=X_)
        assert not a.guided_
        assert a.rank_scores_ == b.rank_scores_ and a.rank_ == b.rank_
        assert_array_equal(a.codes_, b.codes_)
    X, W = _wide()
    path = [
        NullSpaceQuantizer(n_bits=3, variant="path", walk_budget=b).fit(
            W, activations=X
        )
        for b in (1.0, None)
    ]
    assert path[0].rank_scores_ == path[1].rank_scores_
    assert_array_equal(path[0].codes_, path[1].codes_)
    # an explicit cap is the user's: no budget, no guide
    capped = NullSpaceQuantizer(n_bits=3, rank=80, walk_budget=1.0).fit(
        W, activations=X
    )
    assert capped.rank_ == 80 and not capped.guided_


def test_a_budget_below_every_cap_keeps_the_smallest():
    X, W = _wide()
    q = NullSpaceQuantizer(n_bits=3, walk_budget=1e-6).fit(W, activations=X)
    assert sorted(q.rank_scores_) == [10] and q.rank_ == 10 and q.guided_


@pytest.mark.parametrize("directions", [None, 8])
def test_the_guide_carries_the_responses_of_moves_that_keep_the_constraint(
    directions, monkeypatch
):
    """The guided walk's data at cap k (``_Products.guide``): the directions
    after the k kept ones, scaled by their singular values. A move d with
    V_k^T d = 0 has the same response norm and inner products in them as in
    the data when they hold all its remaining directions (its rank at most
    k + GUIDE_DIRECTIONS), and the walk guided by them reaches the vertices of
    the walk guided by the data; with fewer, the leading part of it."""
    from skquant._quantizers._nullspace import _Products
    from skquant._quantizers._walk import walk_to_vertices

    if directions is not None:
        monkeypatch.setattr(_walk, "GUIDE_DIRECTIONS", directions)
    X, W = _wide(m=60, n_in=200, n_out=3)
    V_all, s, rank = _spectrum.row_space(X)
    k = 12
    C = _Products(W, X, X, V_all, s=s).guide(k)
    assert C.shape == (min(rank, k + _walk.GUIDE_DIRECTIONS) - k, 200)
    rng = np.random.default_rng(2)
    V = V_all[:, :k]
    D = rng.standard_normal((200, 5))
    D -= V @ (V.T @ D)  # moves that keep the k kept products
    if directions is None:
        XD = X @ D
        np.testing.assert_allclose((C @ D).T @ (C @ D), XD.T @ XD, rtol=1e-8)
        step = np.abs(W).max(axis=0) / 3
        lo = np.floor(W / step) * step
        order = np.arange(200)
        a = walk_to_vertices(V, W, lo, lo + step, order, X=X)[0]
        b = walk_to_vertices(V, W, lo, lo + step, order, X=C)[0]
        np.testing.assert_allclose(a, b, atol=1e-9 * step.max())
    else:  # the leading part: the data's response less its later directions
        XD = X @ D
        U = np.linalg.svd(X, full_matrices=False)[0]
        lead = U[:, k : k + directions]
        np.testing.assert_allclose(
            (C @ D).T @ (C @ D), (lead.T @ XD).T @ (lead.T @ XD), rtol=1e-8
        )


def test_a_flat_spectrum_is_not_guided(monkeypatch):
    """The guide's directions must hold most of the data's energy outside the
    kept directions: on structureless data (a flat spectrum) they do not, and
    the walk is left unguided, its ladder still limited by the budget."""
    monkeypatch.setattr(_walk, "GUIDE_DIRECTIONS", 16)
    monkeypatch.setattr(_nullspace, "AUTO_PATIENCE", 10)
    rng = np.random.default_rng(4)
    m, n = 100, 600
    X = rng.standard_normal((m, n))
    W = rng.standard_normal((n, 4)) / np.sqrt(n)
    held = np.zeros(m, dtype=bool)
    held[4::5] = True
    s = np.linalg.svd(X[~held], compute_uv=False)
    share = _walk.guide_share(s, 10)
    s2 = s[10:] ** 2
    assert share == pytest.approx(s2[:16].sum() / s2.sum())
    assert share < _walk.GUIDE_SHARE
    q = NullSpaceQuantizer(n_bits=3).fit(W, activations=X)
    assert not q.guided_
    assert sorted(q.rank_scores_) == [
        k for k in (10, 20, 40) if _modelled(k, m, n) <= 16
    ]
    Xs, Ws = _wide(m=100, n_in=600)  # 40 strong directions: 16 hold most
    s = np.linalg.svd(Xs[~held], compute_uv=False)
    assert _walk.guide_share(s, 10) >= _walk.GUIDE_SHARE
    assert NullSpaceQuantizer(n_bits=3).fit(Ws, activations=Xs).guided_


def test_the_budget_leaves_out_middle_caps_of_an_unguided_ladder(monkeypatch):
    """With more fitting rows than inputs the top cap is n_in (no walk, in any
    budget): the walk stays unguided, but the middle caps whose walk is out
    of budget are left out of the ladder."""
    monkeypatch.setattr(_nullspace, "AUTO_PATIENCE", 10)
    rng = np.random.default_rng(6)
    m, n = 260, 200
    X = rng.standard_normal((m, 30)) @ rng.standard_normal((30, n))
    X += 0.1 * rng.standard_normal((m, n))
    W = rng.standard_normal((n, 4)) / np.sqrt(n)
    q = NullSpaceQuantizer(n_bits=3).fit(W, activations=X)
    full = NullSpaceQuantizer(n_bits=3, walk_budget=None).fit(W, activations=X)
    assert not q.guided_ and not full.guided_
    assert sorted(full.rank_scores_) == [12, 25, 50, 100, 200]
    assert sorted(q.rank_scores_) == [
        k for k in sorted(full.rank_scores_) if _modelled(k, m, n) <= 16
    ]
    assert 100 not in q.rank_scores_ and 200 in q.rank_scores_
    for k in q.rank_scores_:
        assert q.rank_scores_[k] == full.rank_scores_[k]


@pytest.mark.parametrize("m, n", [(100, 600), (300, 280)])
def test_the_guide_from_the_gram_spectra(m, n, monkeypatch):
    """With the spectra from X X^T (fewer rows than inputs) or X^T X (the
    Lanczos vectors of the fitting rows), the guided fit is the SVD path's:
    the same caps and scores (to round-off) and nearly all the same codes."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((m, 40)) @ rng.standard_normal((40, n))
    X += 0.1 * rng.standard_normal((m, n))
    W = rng.standard_normal((n, 6)) / np.sqrt(n)
    fits = []
    for size in (10**9, 64):
        monkeypatch.setattr(_nullspace, "GRAM_SPECTRUM", size)
        fits.append(NullSpaceQuantizer(n_bits=3).fit(W, activations=X))
    svd, gram = fits
    assert svd.guided_ and gram.guided_
    assert sorted(gram.rank_scores_) == sorted(svd.rank_scores_)
    for k, score in svd.rank_scores_.items():
        assert gram.rank_scores_[k] == pytest.approx(score, rel=1e-6)
    assert gram.rank_ == svd.rank_
    assert np.mean(gram.codes_ == svd.codes_) > 0.99


@pytest.mark.parametrize("scale", [1e-25, 1e18, 1e22])
def test_the_guided_fit_does_not_depend_on_the_activations_scale(scale):
    """The guide runs in float32; scaled to magnitude ~1 first, it neither
    overflows nor underflows, and a guided fit gives the same codes whatever
    the activations' scale."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((80, 20)) @ rng.standard_normal((20, 120))
    X += 0.1 * rng.standard_normal(X.shape)
    W = rng.standard_normal((120, 4)) / np.sqrt(120)
    ref = NullSpaceQuantizer(n_bits=2, walk_budget=0.05).fit(W, activations=X)
    got = NullSpaceQuantizer(n_bits=2, walk_budget=0.05).fit(W, activations=X * scale)
    assert ref.guided_ and got.guided_
    assert_array_equal(got.codes_, ref.codes_)
