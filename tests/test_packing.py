"""Bit-packing and size accounting."""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

from skquant import QuantizedTensor, pack_codes, quantize, unpack_codes


@st.composite
def codes_and_bits(draw):
    n_bits = draw(st.integers(1, 16))
    qmin = draw(st.integers(-(2**16), 2**16))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=12))
    codes = draw(
        hnp.arrays(np.int64, shape, elements=st.integers(qmin, qmin + 2**n_bits - 1))
    )
    return codes, n_bits, qmin


@given(codes_and_bits(), st.sampled_from([None, 2]))
def test_unpack_pack_is_identity(case, n_jobs):
    codes, n_bits, qmin = case
    packed = pack_codes(codes, n_bits, qmin, n_jobs=n_jobs)
    assert packed.size == -(-codes.size // 8) * n_bits
    back = unpack_codes(
        packed, n_bits, qmin, codes.shape, dtype=np.int64, n_jobs=n_jobs
    )
    assert_array_equal(back, codes)


def test_exact_bytes_by_hand():
    # 2-bit codes 0,1,2,3 -> 0b11_10_01_00 = 228; the rest of the block is padding
    assert_array_equal(pack_codes(np.array([0, 1, 2, 3]), 2, 0), [228, 0])
    # 1-bit codes, LSB first
    assert_array_equal(pack_codes(np.array([1, 0, 0, 0, 0, 0, 0, 1]), 1, 0), [129])
    # qmin offsets: -7..-4 as 4-bit -> 0,1,2,3 -> bytes 0x10, 0x32
    assert_array_equal(pack_codes(np.array([-7, -6, -5, -4]), 4, -7), [16, 50, 0, 0])


def test_pack_errors():
    with pytest.raises(ValueError, match=re.escape("[0, 3]")):
        pack_codes(np.array([0, 4]), 2, 0)
    with pytest.raises(TypeError, match="codes must be an integer array"):
        pack_codes(np.array([0.5]), 2, 0)
    with pytest.raises(
        ValueError, match="n_bits must be an int in \\[1, 16\\], got n_bits=17"
    ):
        pack_codes(np.array([0]), 17, 0)
    with pytest.raises(ValueError, match="must hold 4 bytes"):
        unpack_codes(np.zeros(3, np.uint8), 4, 0, (5,))
    with pytest.raises(TypeError, match="packed must be a 1-D uint8 array"):
        unpack_codes(np.zeros(4, np.int8), 4, 0, (5,))


def test_pack_does_not_modify_input():
    codes = np.array([[1, 2], [3, 0]], dtype=np.int8)
    c0 = codes.copy()
    pack_codes(codes, 2)
    assert_array_equal(codes, c0)


@pytest.mark.parametrize(
    "alphabet, n_bits, bits_per_code",
    [
        ("uniform", 2, 2),
        ("uniform", 4, 4),
        ("uniform", 8, 8),
        ("ternary", 4, 2),
        ("binary", 4, 1),
    ],
)
def test_size_bits_counts_codes_and_scales(alphabet, n_bits, bits_per_code):
    W = np.random.default_rng(0).standard_normal((100, 10)).astype(np.float32)
    qt = quantize(W, n_bits=n_bits, alphabet=alphabet)
    expected = -(-1000 // 8) * bits_per_code * 8 + 10 * 32
    assert qt.size_bits == expected
    assert qt.pack().nbytes * 8 + 10 * 32 == expected
    assert qt.compression_ratio == pytest.approx(32 * 1000 / expected)
    per_tensor = quantize(W, n_bits=n_bits, alphabet=alphabet, granularity="per_tensor")
    assert per_tensor.size_bits == expected - 9 * 32


def test_size_counts_the_scales_real_dtype():
    # quantizers store float32 scales whatever W's dtype; a tensor built with
    # float64 scales is counted at 64 bits a scale
    W = np.random.default_rng(0).standard_normal((16, 4))
    qt = quantize(W, n_bits=4)
    assert qt.scale.dtype == np.float32
    assert qt.size_bits == 16 * 4 * 4 + 4 * 32
    wide = QuantizedTensor(
        codes=qt.codes,
        scale=qt.scale.astype(np.float64),
        n_bits=4,
        qmin=qt.qmin,
        qmax=qt.qmax,
        float_dtype=np.float64,
    )
    assert wide.size_bits == 16 * 4 * 4 + 4 * 64
    assert_array_equal(wide.dequantize(), qt.dequantize())


def test_quantized_tensor_affine_counts_zero_points():
    qt = QuantizedTensor(
        codes=np.zeros((8, 2), np.uint8),
        scale=np.ones(2, np.float32),
        n_bits=8,
        qmin=0,
        qmax=255,
        alphabet="affine",
        zero_point=np.array([3, 4]),
    )
    assert qt.size_bits == 8 * 2 * 8 + 2 * 32 + 2 * 8
    assert_array_equal(qt.dequantize(), np.tile([-3.0, -4.0], (8, 1)))


@st.composite
def tensors_and_columns(draw):
    n_rows, n_cols = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    affine = draw(st.booleans())
    n_scales = draw(st.sampled_from([1, n_cols]))
    codes = draw(hnp.arrays(np.uint8 if affine else np.int8, (n_rows, n_cols)))
    steps = hnp.arrays(np.int64, n_scales, elements=st.integers(1, 10**6))
    scale = (draw(steps) / 1000).astype(np.float32)
    kind = {"alphabet": "affine", "qmin": 0, "qmax": 255} if affine else {}
    zp = draw(hnp.arrays(np.int64, n_scales, elements=st.integers(0, 255)))
    qt = QuantizedTensor(
        codes=codes,
        scale=scale,
        n_bits=8,
        **({"qmin": -128, "qmax": 127} | kind),
        zero_point=zp if affine else None,
    )
    a = draw(st.integers(0, n_cols))
    return qt, slice(a, draw(st.integers(a, n_cols)))


@given(tensors_and_columns())
def test_dequantize_columns_is_a_slice_of_the_whole(case):
    qt, columns = case
    whole = qt.dequantize()
    got = qt.dequantize(columns)
    assert got.dtype == whole.dtype
    assert_array_equal(got, whole[:, columns])


def test_dequantize_columns_refuses_what_is_not_a_slice():
    qt = quantize(np.ones((4, 6)), n_bits=4)
    for bad in ([1, 2], slice(0, 6, 2), 3):
        with pytest.raises(TypeError, match=re.escape(f"got columns={bad!r}")):
            qt.dequantize(bad)


@given(tensors_and_columns())
def test_numpy_reads_a_tensor_as_its_dequantized_values(case):
    """np.asarray(qt) is a new array equal to qt.dequantize(), in a dtype asked
    for; copy=False (no view of codes can be floats) raises."""
    qt, _ = case
    whole = qt.dequantize()
    got = np.asarray(qt)
    assert got.dtype == whole.dtype
    assert_array_equal(got, whole)
    assert not np.shares_memory(got, qt.codes)
    assert_array_equal(np.asarray(qt, dtype=np.float32), whole.astype(np.float32))
    with pytest.raises(ValueError, match="copy=False"):
        np.array(qt, copy=False)


def test_quantize_rejects_unknown_alphabet():
    with pytest.raises(ValueError, match="got alphabet='quaternary'"):
        quantize(np.ones((2, 2)), alphabet="quaternary")


def test_unpack_refuses_a_dtype_that_cannot_hold_the_codes():
    from skquant._tensor._bits import pack_codes, unpack_codes

    packed = pack_codes(np.arange(0, 256, dtype=np.int64), 8, 0)
    with pytest.raises(ValueError, match=r"holds every code in \[0, 255\].*int8"):
        unpack_codes(packed, 8, 0, (256,), dtype=np.int8)  # 200 became -56
    with pytest.raises(ValueError, match="integer dtype"):
        unpack_codes(packed, 8, 0, (256,), dtype=np.float32)
    np.testing.assert_array_equal(
        unpack_codes(packed, 8, 0, (256,), dtype=np.int16), np.arange(256)
    )


def _fields(**changes):
    fields = dict(
        codes=np.zeros((3, 4), np.int8), scale=np.ones(4, np.float32), n_bits=4
    )
    return {**fields, "qmin": -7, "qmax": 7, **changes}


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (
            {"codes": np.full((3, 4), 0.3)},
            TypeError,
            "codes of QuantizedTensor must be integers",
        ),
        (
            {"codes": np.full((3, 4), 100, np.int8)},
            ValueError,
            re.escape("codes must lie in [-7, 7], got values in [100, 100]"),
        ),
        (
            {"codes": np.full((3, 4), -8)},
            ValueError,
            re.escape("codes must lie in [-7, 7]"),
        ),
        (
            {"codes": np.zeros(4, np.int8)},
            ValueError,
            re.escape("codes must be a 2-D array of shape (n_rows, n_cols), got ")
            + re.escape("codes.shape=(4,)"),
        ),
        (
            {"scale": np.ones(3)},
            ValueError,
            re.escape("scale must hold 1 or n_cols=4 float32 or float64 values, got ")
            + re.escape("scale.dtype=float64, ")
            + re.escape("scale.shape=(3,)"),
        ),
        (
            {"scale": np.ones(4, int)},
            ValueError,
            "float32 or float64 values, got scale.dtype=int",
        ),
        ({"scale": np.ones((1, 4))}, ValueError, re.escape("scale.shape=(1, 4)")),
        # a NaN, zero or negative step was made eps, an inf one gave inf
        *[
            ({"scale": np.array([1, bad, 1, 1], np.float32)}, ValueError, match)
            for bad, match in [
                (np.nan, r"scale must hold finite steps > 0, got \[nan\]"),
                (-2.0, r"finite steps > 0, got \[-2.0\]"),
                (0.0, r"finite steps > 0, got \[0.0\]"),
                (np.inf, r"finite steps > 0, got \[inf\]"),
            ]
        ],
        ({"scale": np.ones(4, np.float16)}, ValueError, "scale.dtype=float16"),
        (
            {
                "alphabet": "affine",
                "qmin": 0,
                "qmax": 15,
                "codes": np.ones((3, 4), np.int8),
                "zero_point": np.array([np.nan, 1, 1, 1]),
            },
            ValueError,
            r"zero_point must be integers in \[qmin, qmax\]",
        ),
        (
            {"float_dtype": np.float16},
            ValueError,
            "float_dtype must be float32, float64 or None",
        ),
        (
            {"n_bits": 2},
            ValueError,
            re.escape("n_bits=2 cannot hold the codes of [qmin, qmax]=[-7, 7]: they "),
        ),
        (
            {"alphabet": "foo"},
            ValueError,
            "alphabet must be one of 'uniform', .* got alphabet='foo'",
        ),
        (
            {"alphabet": "fixed_point"},
            ValueError,
            "got alphabet='fixed_point' with no precision_bits",
        ),
        (
            {"precision_bits": np.ones((3, 4), np.int8)},
            ValueError,
            "got alphabet='uniform' with precision_bits",
        ),
        ({"n_bits": 17}, ValueError, "n_bits must be at most 16, got n_bits=17"),
        ({"n_bits": 4.0}, ValueError, "n_bits must be an int >= 1, got n_bits=4.0"),
        ({"qmin": -7.5}, ValueError, "qmin must be an int, got qmin=-7.5"),
        ({"qmin": 8}, ValueError, "qmin must be at most qmax, got qmin=8 and qmax=7"),
        (
            {"alphabet": "binary", "n_bits": 1, "qmin": -1, "qmax": 1},
            ValueError,
            "must be -1 or \\+1, got a 0 code",
        ),
    ],
)
def test_quantized_tensor_checks_its_fields(changes, error, match):
    with pytest.raises(error, match=match):
        QuantizedTensor(**_fields(**changes))


def test_quantized_tensor_takes_array_likes_and_per_tensor_scales():
    qt = QuantizedTensor(**_fields(codes=[[1, -2, 3, 7]], scale=[1.0, 2.0, 0.5, 1.0]))
    assert isinstance(qt.codes, np.ndarray) and isinstance(qt.scale, np.ndarray)
    assert_array_equal(qt.dequantize(), [[1.0, -4.0, 1.5, 7.0]])
    for scale in (np.float32(0.5), np.array([0.5], np.float32)):  # one per tensor
        qt = QuantizedTensor(**_fields(codes=np.full((2, 4), 2, np.int8), scale=scale))
        assert_array_equal(qt.dequantize(), np.ones((2, 4)))


def test_pack_and_unpack_check_their_ints_by_name():
    codes = np.array([-1, 0, 1, 1, 0, -1], np.int8)
    packed = pack_codes(codes, 2, qmin=-1)
    for qmin in (-1.7, "x", -1.0):
        with pytest.raises(
            ValueError, match=f"qmin must be an int or None, got qmin={qmin!r}"
        ):
            pack_codes(codes, 2, qmin=qmin)
        with pytest.raises(ValueError, match=f"qmin must be an int, got qmin={qmin!r}"):
            unpack_codes(packed, 2, qmin, (6,))
    for n_jobs in (0, "x", 1.5):
        with pytest.raises(ValueError, match=f"got n_jobs={n_jobs!r}"):
            pack_codes(codes, 2, -1, n_jobs=n_jobs)
        with pytest.raises(ValueError, match=f"got n_jobs={n_jobs!r}"):
            unpack_codes(packed, 2, -1, (6,), n_jobs=n_jobs)
    for shape in ((6.5,), (-2, -3), None, "6"):
        with pytest.raises(
            ValueError,
            match="shape must be a tuple of ints >= 0, got shape="
            + re.escape(repr(shape)),
        ):
            unpack_codes(packed, 2, -1, shape)
    for shape in (6, np.int64(6), (2, 3), np.array([3, 2])):
        assert unpack_codes(packed, 2, -1, shape).size == 6


def test_quantizer_unpack_checks_n_rows():
    from skquant import UniformQuantizer

    W = np.random.default_rng(0).standard_normal((8, 4))
    q = UniformQuantizer(4).fit(W)
    for n_rows in (8.5, -1, "8"):
        with pytest.raises(
            ValueError, match=f"n_rows must be an int >= 0, got n_rows={n_rows!r}"
        ):
            q.unpack(q.pack(W), n_rows)
    assert_array_equal(q.unpack(q.pack(W), np.int64(8)), q.encode(W))
