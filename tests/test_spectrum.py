"""GramSpectrum (singular values and leading vectors from X^T X) and the
null-space default's Gram path on large calibration data."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skquant import NullSpaceQuantizer
from skquant._quantizers import _nullspace as ns
from skquant._quantizers import _spectrum
from skquant._quantizers._spectrum import GramSpectrum, LeadingSpectrum, RowSpectrum


@settings(deadline=None, max_examples=40)
@given(
    st.integers(1, 40),
    st.integers(1, 30),
    st.integers(0, 5),
    st.integers(0, 10**6),
)
def test_spectrum_matches_the_svd(m, n, deficit, seed):
    """The singular values are the SVD's (to round-off of the Gram matrix), the
    rank is the true rank of a product of low-rank factors, and the leading
    vectors are orthonormal and span the SVD's leading subspace wherever the
    spectrum has a gap."""
    rng = np.random.default_rng(seed)
    r = max(min(m, n) - deficit, 1)
    # singular values 1 .. 100 on a geometric scale: gaps between all of them
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    s = np.geomspace(100, 1, r)
    X = (U * s) @ V.T
    spec = GramSpectrum(X.T @ X, m)
    ref = np.linalg.svd(X, compute_uv=False)
    assert spec.singular_values.shape == (min(m, n),)
    assert np.all(np.diff(spec.singular_values) <= 1e-9)
    np.testing.assert_allclose(spec.singular_values[:r], ref[:r], rtol=1e-8)
    assert np.all(spec.singular_values[r:] <= 1e-6 * ref[0])
    assert spec.rank == r
    for k in sorted({1, max(r // 2, 1), r}):
        Vk = spec.vectors(k)
        assert Vk.shape == (n, k)
        np.testing.assert_allclose(Vk.T @ Vk, np.eye(k), atol=1e-10)
        # the same subspace as the SVD's leading k right vectors
        cos = np.linalg.svd(V[:, :k].T @ Vk, compute_uv=False)
        np.testing.assert_allclose(cos, 1.0, atol=1e-8)


def test_spectrum_vectors_grow_and_keep_the_first_ones():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 20)) * np.geomspace(10, 1, 20)
    spec = GramSpectrum(X.T @ X, 50)
    first = spec.vectors(3).copy()
    more = spec.vectors(7)
    np.testing.assert_array_equal(more[:, :3], first)
    fresh = GramSpectrum(X.T @ X, 50).vectors(7)
    np.testing.assert_allclose(np.abs(np.sum(fresh * more, axis=0)), 1, atol=1e-10)


@pytest.mark.parametrize("n, m", [(120, 200), (150, 150), (150, 170), (150, 120)])
def test_auto_rank_on_the_gram_path_picks_what_the_svd_path_picks(monkeypatch, n, m):
    """With GRAM_SPECTRUM lowered, rank="auto" takes its spectra from the Gram
    matrix ``X^T X`` when there are at least as many rows as inputs, else from
    ``X X^T`` (the fitting rows' too, when they are fewer than the inputs): the
    same caps, scores and codes as with full SVDs (to round-off), and the bound
    still holds."""
    rng = np.random.default_rng(3)
    n_out = 6
    X = rng.standard_normal((m, n)) * np.geomspace(8, 0.5, n)
    Xq = X + 0.05 * rng.standard_normal(X.shape)
    W = rng.standard_normal((n, n_out)) / np.sqrt(n)
    fits = {}
    for name, size in (("svd", 10**9), ("gram", 100)):
        monkeypatch.setattr(ns, "GRAM_SPECTRUM", size)
        calls = []
        for cls in (GramSpectrum, LeadingSpectrum, RowSpectrum):
            recorded = type(
                cls.__name__,
                (cls,),
                {
                    "__init__": lambda self, *a, _c=cls, **kw: (
                        calls.append(_c) or _c.__init__(self, *a, **kw)
                    )
                },
            )
            monkeypatch.setattr(ns, cls.__name__, recorded)
        q = NullSpaceQuantizer(n_bits=3).fit(W, activations=Xq, target_activations=X)
        fits[name] = (q, calls)
    (svd, calls_svd), (grm, calls_gram) = fits["svd"], fits["gram"]
    # all rows: one tridiagonal reduction; the fitting rows (every fifth row
    # held out): Lanczos, or their own rows' Gram matrix when they are wide (or
    # a block of all rows' one)
    m_fit = m - m // 5
    expected = [GramSpectrum, LeadingSpectrum if m_fit >= n else RowSpectrum]
    expected = expected if m >= n else [RowSpectrum]
    assert calls_svd == [] and calls_gram == expected
    assert grm.rank_ == svd.rank_ < n
    assert sorted(grm.rank_scores_) == sorted(svd.rank_scores_)
    for k in svd.rank_scores_:
        assert grm.rank_scores_[k] == pytest.approx(svd.rank_scores_[k], rel=1e-6)
    np.testing.assert_allclose(grm.singular_values_, svd.singular_values_, rtol=1e-7)
    assert np.mean(grm.codes_ == svd.codes_) > 0.99
    err = np.linalg.norm(X @ W - Xq @ grm.transform(W), axis=0)
    np.testing.assert_allclose(
        err / np.linalg.norm(X @ W, axis=0), grm.calibration_error_, rtol=1e-9
    )
    assert np.all(grm.calibration_error_ <= grm.bound_ * (1 + 1e-9))


def test_leading_spectrum_lanczos_then_the_reduction(monkeypatch):
    """Up to LANCZOS_VECTORS vectors come from Lanczos iterations, more from the
    tridiagonal reduction; both are the SVD's."""
    monkeypatch.setattr(_spectrum, "LANCZOS_VECTORS", 6)
    rng = np.random.default_rng(2)
    m, n = 60, 40
    X = rng.standard_normal((m, n)) * np.geomspace(20, 1, n)
    _, s, Vt = np.linalg.svd(X)
    lead = LeadingSpectrum(X.T @ X, m)
    for k in (3, 6, 9):  # the third one leaves Lanczos
        V = lead.vectors(k)
        np.testing.assert_allclose(lead.singular_values(k), s[:k], rtol=1e-9)
        np.testing.assert_allclose(np.abs(np.sum(V * Vt[:k].T, axis=0)), 1, atol=1e-8)
    assert lead._full is not None


def test_gram_path_on_data_of_low_rank(monkeypatch):
    """Data of rank 5 on the Gram path: the ladder's caps stop at the rank (no
    Lanczos iterations on the zero eigenvalues), as on the SVD path."""
    rng = np.random.default_rng(4)
    m, n, r = 300, 150, 5
    X = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
    W = rng.standard_normal((n, 4)) / np.sqrt(n)
    fits = {}
    for name, size in (("svd", 10**9), ("gram", 100)):
        monkeypatch.setattr(ns, "GRAM_SPECTRUM", size)
        fits[name] = NullSpaceQuantizer(n_bits=3).fit(W, activations=X)
    assert fits["gram"].rank_ == fits["svd"].rank_ <= r
    assert sorted(fits["gram"].rank_scores_) == sorted(fits["svd"].rank_scores_)


@settings(deadline=None, max_examples=30)
@given(st.integers(2, 30), st.integers(0, 5), st.integers(0, 10**6))
def test_row_spectrum_matches_the_svd(m, deficit, seed):
    """Wide data from ``X X^T``: the SVD's singular values and rank, leading
    right vectors orthonormal and spanning the SVD's, and a block of rows
    gives the spectrum of those rows."""
    rng = np.random.default_rng(seed)
    n, r = m + 7, max(m - deficit, 1)
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    X = (U * np.geomspace(100, 1, r)) @ V.T
    spec = RowSpectrum(X @ X.T, X)
    ref = np.linalg.svd(X, compute_uv=False)
    np.testing.assert_allclose(spec.singular_values[:r], ref[:r], rtol=1e-8)
    assert spec.rank == r
    for k in sorted({1, max(r // 2, 1), r}):
        Vk = spec.vectors(k)
        np.testing.assert_allclose(Vk.T @ Vk, np.eye(k), atol=1e-9)
        cos = np.linalg.svd(V[:, :k].T @ Vk, compute_uv=False)
        np.testing.assert_allclose(cos, 1.0, atol=1e-8)
    assert spec.vectors(r + 3).shape == (n, r)  # no more than the rank
    rows = rng.random(m) < 0.7
    if rows.any():  # (the values the Gram matrix resolves: above 1e-3 of s[0])
        want = np.linalg.svd(X[rows], compute_uv=False)[: min(rows.sum(), r)]
        got = spec.rows(rows).singular_values[: want.size]
        big = want > 1e-3 * ref[0]
        np.testing.assert_allclose(got[big], want[big], rtol=1e-7)


@settings(deadline=None, max_examples=30)
@given(
    st.integers(2, 30),
    st.integers(1, 40),
    st.sampled_from([None, 3, 0.9]),
    st.integers(0, 10**6),
)
def test_gram_row_space_is_the_svds_on_well_conditioned_data(n, extra, rank, seed):
    """On tall data whose singular values span less than GRAM_CONDITION allows,
    ``gram_row_space`` gives ``row_space``'s singular values, kept count and
    subspace; on data of lower rank it declines (None), and the SVD serves."""
    rng = np.random.default_rng(seed)
    m = n + extra
    U = np.linalg.qr(rng.standard_normal((m, n)))[0]
    V = np.linalg.qr(rng.standard_normal((n, n)))[0]
    X = (U * np.geomspace(50, 1, n)) @ V.T
    got = _spectrum.gram_row_space(X.T @ X, rank, every=True)
    V_ref, s_ref, k_ref = _spectrum.row_space(X, rank, every=True)
    assert got is not None
    V_got, s_got, k_got = got
    assert k_got == k_ref and V_got.shape == V_ref.shape
    np.testing.assert_allclose(s_got, s_ref, rtol=1e-8)
    # the same kept subspace (projectors), and orthonormal columns
    P_got, P_ref = (
        V_got[:, :k_got] @ V_got[:, :k_got].T,
        V_ref[:, :k_ref] @ V_ref[:, :k_ref].T,
    )
    np.testing.assert_allclose(P_got, P_ref, atol=1e-8)
    np.testing.assert_allclose(V_got.T @ V_got, np.eye(n), atol=1e-10)
    low = X[:, :-1] @ rng.standard_normal((n - 1, n))  # rank n - 1
    assert _spectrum.gram_row_space(low.T @ low) is None


def test_gram_row_space_refuses_a_dead_input_without_eigendecomposing(monkeypatch):
    # a zero column (a dead unit): its diagonal entry bounds lambda_min, so the
    # Gram matrix is refused before any eigendecomposition; a well-conditioned
    # one with the same other columns is not
    X = np.random.default_rng(0).standard_normal((40, 6))
    dead = X.copy()
    dead[:, 2] = 0.0
    real = _spectrum.scipy.linalg.eigh
    calls = []
    monkeypatch.setattr(
        _spectrum.scipy.linalg, "eigh", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    assert _spectrum.gram_row_space(dead.T @ dead) is None and not calls
    assert _spectrum.gram_row_space(X.T @ X) is not None and calls


@pytest.mark.parametrize("target", [False, True])
def test_the_fit_from_gram_matrices_is_the_fit_from_svds(monkeypatch, target):
    """``rank="auto"`` on tall, well-conditioned data takes its spectra from Gram
    matrices (the fitting rows', then all rows' as theirs plus the held-out
    rows'); with the condition made impossible it takes QRs and SVDs. Both pick
    the same cap and give the same codes but for round-off ties, the same
    calibration error, and ``bound_`` holds."""
    rng = np.random.default_rng(5)
    m, n = 300, 60  # a decaying, well-conditioned spectrum: a cap below n wins
    U = np.linalg.qr(rng.standard_normal((m, n)))[0]
    X = (U * np.geomspace(30, 0.3, n)) @ np.linalg.qr(rng.standard_normal((n, n)))[0]
    Xf = X + 0.05 * rng.standard_normal(X.shape) if target else None
    W = rng.standard_normal((n, 24)) / np.sqrt(n)
    calls = []
    real = _spectrum.gram_row_space

    def counted(G, *args, **kwargs):
        out = real(G, *args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(_spectrum, "gram_row_space", counted)
    grm = NullSpaceQuantizer(n_bits=2).fit(W, activations=X, target_activations=Xf)
    assert calls == [True, True]  # the ladder's rows, then all rows
    monkeypatch.setattr(_spectrum, "GRAM_CONDITION", 2.0)  # (no matrix meets it)
    calls.clear()
    svd = NullSpaceQuantizer(n_bits=2).fit(W, activations=X, target_activations=Xf)
    # no Gram matrix is formed (its diagonal fails the condition already); all
    # rows: a QR update of the fitting rows' factor
    assert calls == []
    assert grm.rank_ == svd.rank_ < n
    assert grm.rank_scores_.keys() == svd.rank_scores_.keys()
    np.testing.assert_allclose(grm.singular_values_, svd.singular_values_, rtol=1e-8)
    assert np.mean(grm.codes_ == svd.codes_) > 0.99
    np.testing.assert_allclose(
        grm.calibration_error_, svd.calibration_error_, rtol=1e-3
    )
    assert np.all(grm.calibration_error_ <= grm.bound_ * (1 + 1e-9))
