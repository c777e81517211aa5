"""Blocks of rows: elementwise passes over a large matrix a block at a time, so
that their temporaries are a block's, not the whole matrix's."""

__all__ = ["row_blocks"]


def row_blocks(shape, entries):
    """Slices of the rows of a matrix of ``shape``, about ``entries`` entries each
    (at least one row; the last block shorter).

    Examples
    --------
    >>> [(s.start, s.stop) for s in row_blocks((5, 4), 8)]
    [(0, 2), (2, 4), (4, 5)]
    """
    n_rows = int(shape[0])
    n_cols = int(shape[1]) if len(shape) > 1 else 1
    step = max(1, entries // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))
