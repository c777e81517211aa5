"""The products of one layer's data that the null-space fits at every rank cap
share (the ladder's and the final fit)."""

import numpy as np
import scipy.linalg

from ._gram import cholesky_threads, gram
from ._spectrum import GRAM_CONDITION
from ._walk import guide_rows

#: the greedy rounding runs on the data's triangular factor ``F`` (``n x n``,
#: ``F^T F = Xq^T Xq``) in place of its ``m`` rows when there are at least twice
#: as many rows as inputs, the factor or the Gram matrix is at hand, and the
#: data's smallest singular value is at least this fraction of its largest: the
#: Gram row spaces' own bound (``GRAM_CONDITION`` on the eigenvalues), so a
#: factor from a Cholesky of ``G`` keeps the residual's part in range, solved
#: through ``F^T``, to round-off (a looser 1e-6 let ``calibration_error_`` drift
#: by 2.5e-6 relative on a Gram matrix of condition 2.5e11)
ROUNDING_CONDITION = GRAM_CONDITION**0.5


class _LazyValues:
    """``values[:k]`` of a :class:`LeadingSpectrum`'s singular values."""

    def __init__(self, lead):
        self._lead = lead

    def __getitem__(self, key):
        return self._lead.singular_values(key.stop)


class _Products:
    """The products of one layer's data that every fit of it at some rank cap
    needs (the ladder's caps and the final fit share them): ``Xf W``, the start
    points' residual ``(Xf - Xq) W`` and its products ``Xq^T (Xf - Xq) W`` with
    the data, the walk's order, ``Xq^T`` for the greedy rounding (when asked
    for), the leading columns of ``V`` (an array or a function of the number of
    columns) and the Gram matrix ``G`` of ``Xq`` or its triangular factor when
    the caller holds them."""

    def __init__(self, W, Xq, Xf, V, G=None, s=None, factor=None):
        self.W, self.Xq, self.G, self.s, self.factor = W, Xq, G, s, factor
        self.V = V if callable(V) else (lambda k: V[:, :k])
        self.XfW = Xf @ W
        R = None if Xf is Xq else (Xf - Xq) @ W
        self.XqTR = None if R is None else Xq.T @ R
        # ||(Xf - Xq) w||^2 per neuron (in_range's parts outside the range)
        self._R2 = None if R is None else np.einsum("ij,ij->j", R, R)
        self.order = np.argsort(-np.einsum("ij,ij->j", Xq, Xq), kind="stable")
        self._XqT = None  # Xq.T contiguous, once asked for (XqT)
        # once the points Z and the codes are known (the greedy rounding's
        # residuals): ||Xf w - Xq z|| per neuron, and Xf W - Xq Q
        self.drift_norms = self.residual = self.residual_norms = None
        self._rows = None  # rounding_rows, once asked for
        self.on = None  # which entries of Z are on the grid, once known
        # (F^{-T} Xq^T (Xf - Xq) W, the parts outside the range), once asked for
        self._in_range = None
        self.off_rows = None  # the others' rows per neuron (_padded_rows)

    @property
    def XqT(self):
        """``Xq.T``, contiguous (for the greedy rounding on the rows; the
        rounding on :meth:`rounding_rows` does without it)."""
        if self._XqT is None:
            self._XqT = np.ascontiguousarray(self.Xq.T)
        return self._XqT

    def gram(self, cols=None):
        """The Gram matrix of ``Xq``'s columns ``cols`` (all by default): a block
        of ``G``, or from the triangular factor when it has fewer rows."""
        if self.G is not None:
            return self.G if cols is None else self.G[np.ix_(cols, cols)]
        F = self.Xq
        if self.factor is not None and self.factor.shape[0] < F.shape[0]:
            F = self.factor
        return gram(F if cols is None else F[:, cols])

    def rounding_rows(self):
        """Rows with ``Xq``'s inner products between its columns, fewer than
        ``Xq``'s: ``F^T`` (``n x n``, its rows the columns of the triangular
        factor ``F``, ``F^T F = Xq^T Xq``), when ``Xq`` has at least ``2 n``
        rows, its Gram matrix or factor is at hand and its singular values
        ``s`` are within :data:`ROUNDING_CONDITION` of each other; else
        ``None``. Greedy rounding on them costs ``n``, not ``m``, a step."""
        if self._rows is None:
            self._rows = False
            m, n = self.Xq.shape
            s = self.s
            if (
                2 * n <= m
                and isinstance(s, np.ndarray)
                and s.size == n
                and s[-1] >= ROUNDING_CONDITION * s[0] > 0
            ):
                F = self.factor
                if (F is None or F.shape[0] != n) and self.G is not None:
                    try:
                        with cholesky_threads(n):
                            F = scipy.linalg.cholesky(self.G, check_finite=False)
                    except np.linalg.LinAlgError:  # pragma: no cover - s says PD
                        F = None
                if F is not None and F.shape[0] == n:
                    self._rows = np.ascontiguousarray(F.T)
        return None if self._rows is False else self._rows

    def in_range(self, Z, rows):
        """The residuals ``u = Xf w - Xq z`` of points ``Z`` (columns) in the
        coordinates of :meth:`rounding_rows` ``rows = F^T``: their parts in the
        data's range, ``F^{-T} Xq^T u`` (as rows, ``n_out x n``), and the
        squared norms of their parts outside it (per neuron; the same for every
        ``z``, as ``Xq z`` lies in the range).

        Since ``Xq^T Xq = F^T F``, ``u = Xq (w - z) + (Xf - Xq) w`` gives
        ``F^{-T} Xq^T u = F (w - z) + D w``, ``D w = F^{-T} Xq^T (Xf - Xq) w``
        computed once for all the caps that share these products (from
        ``Xq^T (Xf - Xq) W``, which the start points use too): ``2 n^2`` flops
        a neuron per cap in place of the ``4 m n`` of forming ``u`` from the
        ``m`` rows and multiplying it by ``Xq^T``. The part outside the range
        is ``(Xf - Xq) w``'s: ``||(Xf - Xq) w||^2 - ||D w||^2`` (from the
        target's difference, not from ``||Xf w||^2``, whose round-off would
        swamp a small residual)."""
        W = self.W
        if self._in_range is None:
            D, outside = None, np.zeros(W.shape[1])
            if self.XqTR is not None:
                D = scipy.linalg.solve_triangular(
                    rows, self.XqTR, lower=True, check_finite=False
                ).T  # (D W)^T
                outside = np.maximum(self._R2 - np.einsum("ij,ij->i", D, D), 0.0)
            self._in_range = (D, outside)
        D, outside = self._in_range
        Ur = (W - Z).T @ rows  # (F (W - Z))^T
        if D is not None:
            Ur += D
        return Ur, outside

    def guide(self, k):
        """The guided walk's data at cap ``k`` (:func:`guide_rows` of ``Xq``'s
        leading vectors ``V`` and singular values ``s``)."""
        return guide_rows(self.V, self.s, k)
