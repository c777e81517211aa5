"""Hypothesis strategies shared by the tests."""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def weight_matrices(max_rows=24, max_cols=6, dtypes=(np.float32, np.float64)):
    """Finite weight matrices of moderate magnitude, float32 or float64."""

    @st.composite
    def build(draw):
        dtype = draw(st.sampled_from(dtypes))
        shape = draw(st.tuples(st.integers(1, max_rows), st.integers(1, max_cols)))
        elements = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
        return draw(hnp.arrays(dtype, shape, elements=elements))

    return build()
