"""Tests for skquant.datasets."""

import gzip
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal
from sklearn.utils import Bunch

from skquant.datasets import (
    get_data_home,
    load_idx,
    load_mnist,
    make_gaussian_layer,
    mnist_available,
    write_idx,
)

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
# IDX type codes from the format's definition, written out independently of
# the module under test.
TYPE_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}
STRUCT_CODES = {
    np.uint8: "B",
    np.int8: "b",
    np.int16: "h",
    np.int32: "i",
    np.float32: "f",
    np.float64: "d",
}
SHAPES = [(7,), (3, 4), (2, 3, 5), (2, 1, 3, 2), (0,), (2, 0, 3)]


def _random_array(rng, dtype, shape):
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=shape, endpoint=True)
        a = a.astype(dtype)
        if a.size >= 2:  # make sure the extremes are exercised
            a.flat[0], a.flat[-1] = info.min, info.max
        return a
    a = rng.standard_normal(size=shape).astype(dtype) * 1e3
    if a.size >= 4:
        a.flat[:4] = [np.inf, -np.inf, np.nan, -0.0]
    return a


def _hand_idx(dtype, shape, values):
    """IDX bytes built with struct, independently of write_idx."""
    header = struct.pack(">BBBB", 0, 0, TYPE_CODES[dtype], len(shape))
    header += b"".join(struct.pack(">I", d) for d in shape)
    body = struct.pack(f">{len(values)}{STRUCT_CODES[dtype]}", *values)
    return header + body


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
def test_idx_round_trip(tmp_path, dtype, shape, compress):
    rng = np.random.default_rng(0)
    a = _random_array(rng, dtype, shape)
    path = tmp_path / "a.idx"
    write_idx(path, a, compress=compress)
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == compress
    b = load_idx(path)
    assert b.dtype == np.dtype(dtype)
    assert b.dtype.isnative
    assert b.shape == shape
    assert b.flags.writeable
    assert_array_equal(b, a)
    if b.dtype.kind == "f" and b.size >= 4:
        assert np.signbit(b.flat[3])  # -0.0 kept


@pytest.mark.parametrize("dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
def test_idx_round_trip_non_native_and_non_contiguous(tmp_path, dtype):
    a = _random_array(np.random.default_rng(1), dtype, (4, 6))
    swapped = a.astype(a.dtype.newbyteorder("S"))  # opposite byte order
    write_idx(tmp_path / "s", swapped)
    assert_array_equal(load_idx(tmp_path / "s"), a)
    write_idx(tmp_path / "t", a.T)  # Fortran-ordered view
    back = load_idx(tmp_path / "t")
    assert back.shape == (6, 4)
    assert_array_equal(back, a.T)


@settings(max_examples=150, deadline=None)
@given(
    a=hnp.arrays(
        dtype=st.sampled_from([np.dtype(d) for d in IDX_DTYPES]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    compress=st.booleans(),
)
def test_idx_round_trip_property(a, compress):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x")
        write_idx(path, a, compress=compress)
        b = load_idx(path)
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    # Compare bit patterns so that NaN payloads and -0.0 count too.
    assert b.tobytes() == np.ascontiguousarray(a).tobytes()


def test_load_idx_hand_written_int16(tmp_path):
    values = [1, -2, 300, -32768, 32767, 0]
    raw = _hand_idx(np.int16, (2, 3), values)
    assert raw[:4] == b"\x00\x00\x0b\x02"
    path = tmp_path / "hand-idx2"
    path.write_bytes(raw)
    a = load_idx(path)
    assert a.dtype == np.int16
    assert a.shape == (2, 3)
    assert a.tolist() == [[1, -2, 300], [-32768, 32767, 0]]


@pytest.mark.parametrize("dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
def test_load_idx_hand_written_every_type(tmp_path, dtype):
    values = (
        [0, 1, 2, 3, 4, 5, 6, 127]
        if np.dtype(dtype).kind in "iu"
        else [0.5, -1.25, 3.0e10, -0.0, 1.0, 2.0, 1e-3, 7.0]
    )
    shape = (2, 2, 2)
    raw = _hand_idx(dtype, shape, values)
    path = tmp_path / "h"
    path.write_bytes(raw)
    a = load_idx(path)
    assert a.dtype == np.dtype(dtype)
    assert a.shape == shape
    expected = np.array(values, dtype=dtype).reshape(shape)
    assert_array_equal(a, expected)
    # write_idx produces exactly the hand-written bytes.
    write_idx(tmp_path / "w", expected)
    assert (tmp_path / "w").read_bytes() == raw


def test_load_idx_gzip_detected_by_magic_not_extension(tmp_path):
    raw = _hand_idx(np.uint8, (3,), [9, 8, 7])
    gz_no_ext = tmp_path / "plain-looking.idx"
    gz_no_ext.write_bytes(gzip.compress(raw))
    plain_gz_ext = tmp_path / "looks-compressed.gz"
    plain_gz_ext.write_bytes(raw)
    assert load_idx(gz_no_ext).tolist() == [9, 8, 7]
    assert load_idx(plain_gz_ext).tolist() == [9, 8, 7]
    assert load_idx(str(gz_no_ext)).tolist() == [9, 8, 7]


def test_write_idx_compress_default_follows_extension(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "a", a)
    write_idx(tmp_path / "b", a, compress=True)
    write_idx(tmp_path / "b.gz", a, compress=False)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "a").read_bytes()[:2] == b"\x00\x00"
    assert (tmp_path / "b").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "b.gz").read_bytes()[:2] == b"\x00\x00"
    assert (
        gzip.decompress((tmp_path / "a.gz").read_bytes())
        == (tmp_path / "a").read_bytes()
    )


def test_load_idx_bad_magic(tmp_path):
    path = tmp_path / "bad-magic"
    path.write_bytes(b"\x01\x00" + _hand_idx(np.uint8, (2,), [1, 2])[2:])
    with pytest.raises(ValueError, match="magic") as exc:
        load_idx(path)
    assert str(path) in str(exc.value)


def test_load_idx_not_idx_at_all(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("hello, world")
    with pytest.raises(ValueError, match="magic"):
        load_idx(path)


def test_load_idx_unknown_type_code(tmp_path):
    path = tmp_path / "bad-type"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0A, 1, 2) + b"\x01\x02")
    with pytest.raises(ValueError, match=r"(?i)type code 0x0A") as exc:
        load_idx(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x08\x02\x00\x00\x00\x02",  # second dimension missing
        _hand_idx(np.int32, (2, 2), [1, 2, 3, 4])[:-1],  # one byte short
        struct.pack(">BBBBI", 0, 0, 0x08, 1, 2**32 - 1) + b"\x00" * 5,
    ],
    ids=["empty", "half-magic", "short-header", "short-data", "huge-dim"],
)
def test_load_idx_truncated(tmp_path, raw):
    path = tmp_path / "short"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="Truncated") as exc:
        load_idx(path)
    assert str(path) in str(exc.value)
    # Same when gzipped.
    gz = tmp_path / "short.gz"
    gz.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match="Truncated"):
        load_idx(gz)


def test_load_idx_oversized(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(_hand_idx(np.uint8, (3,), [1, 2, 3]) + b"\x04")
    with pytest.raises(ValueError, match="Oversized") as exc:
        load_idx(path)
    assert str(path) in str(exc.value)


def test_load_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(_hand_idx(np.uint8, (100,), list(range(100))))
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="gzip") as exc:
        load_idx(path)
    assert str(path) in str(exc.value)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "nope")


@pytest.mark.parametrize(
    "dtype", [np.int64, np.uint16, np.float16, np.bool_, np.complex64, "U3"]
)
def test_write_idx_unsupported_dtype(tmp_path, dtype):
    with pytest.raises(ValueError, match="array dtype must be one of"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=dtype))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("compress", ["yes", 1, 0])
def test_write_idx_bad_compress(tmp_path, compress):
    with pytest.raises(
        ValueError, match=r"compress must be None or a bool, got compress="
    ):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint8), compress=compress)


# ------------------------------------------------------------ get_data_home


def test_get_data_home_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SKQUANT_DATA", raising=False)
    assert get_data_home() == tmp_path / "home" / "skquant_data"
    monkeypatch.setenv("SKQUANT_DATA", str(tmp_path / "env"))
    assert get_data_home() == tmp_path / "env"
    assert get_data_home(tmp_path / "arg") == tmp_path / "arg"
    assert get_data_home(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.setenv("SKQUANT_DATA", "")  # empty counts as unset
    assert get_data_home() == tmp_path / "home" / "skquant_data"


def test_get_data_home_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_data_home("~/d") == tmp_path / "d"
    monkeypatch.setenv("SKQUANT_DATA", "~/e")
    assert get_data_home() == tmp_path / "e"
    assert isinstance(get_data_home(), Path)


def test_get_data_home_create(tmp_path):
    target = tmp_path / "a" / "b"
    assert get_data_home(target) == target
    assert not target.exists()
    assert get_data_home(target, create=True) == target
    assert target.is_dir()
    assert get_data_home(target, create=True) == target  # exists: fine


# ------------------------------------------------------------- load_mnist

N_TRAIN, N_TEST = 5, 3


def _fake_mnist(
    home, dataset="mnist", compress=False, n_train=N_TRAIN, n_test=N_TEST, seed=0
):
    """Write a tiny MNIST-like folder; return the arrays written."""
    rng = np.random.default_rng(seed)
    folder = Path(home) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        ext = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        written[prefix] = (images, labels)
    return written


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_load_mnist_fake(tmp_path, dataset, compress):
    written = _fake_mnist(tmp_path, dataset=dataset, compress=compress)
    for subset, prefix, n in [("train", "train", N_TRAIN), ("test", "t10k", N_TEST)]:
        images, labels = written[prefix]
        bunch = load_mnist(subset, dataset=dataset, data_home=tmp_path)
        assert isinstance(bunch, Bunch)
        assert bunch.dataset == dataset
        assert bunch.subset == subset
        assert bunch.images_shape == (28, 28)
        X, y = bunch.data, bunch.target
        assert X.shape == (n, 784)
        assert X.dtype == np.float32
        assert X.min() == 0.0 and X.max() == 1.0
        assert_array_equal(np.rint(X * 255).astype(np.uint8), images.reshape(n, -1))
        assert_array_equal(
            X[0].reshape(bunch.images_shape) * 255, images[0].astype(np.float32)
        )
        assert y.dtype == np.int64
        assert y.shape == (n,)
        assert_array_equal(y, labels)


def test_load_mnist_return_X_y_and_uint8(tmp_path):
    written = _fake_mnist(tmp_path)
    images, labels = written["t10k"]
    X, y = load_mnist("test", data_home=tmp_path, return_X_y=True, as_float=False)
    assert X.dtype == np.uint8
    assert_array_equal(X, images.reshape(N_TEST, 784))
    assert_array_equal(y, labels)
    Xf, yf = load_mnist("test", data_home=tmp_path, return_X_y=True)
    assert_array_equal(Xf, X / np.float32(255))


def test_load_mnist_env_var(tmp_path, monkeypatch):
    env_home = tmp_path / "env"
    arg_home = tmp_path / "arg"
    env_written = _fake_mnist(env_home, seed=1)
    arg_written = _fake_mnist(arg_home, n_train=4, seed=2)
    monkeypatch.setenv("SKQUANT_DATA", str(env_home))
    X, y = load_mnist(return_X_y=True, as_float=False)
    assert X.shape == (N_TRAIN, 784)
    assert_array_equal(y, env_written["train"][1])
    # The argument wins over the environment.
    X, y = load_mnist(data_home=arg_home, return_X_y=True, as_float=False)
    assert X.shape == (4, 784)
    assert_array_equal(X, arg_written["train"][0].reshape(4, -1))
    assert mnist_available()
    assert not mnist_available("fashion-mnist")


def test_load_mnist_prefers_existing_variant(tmp_path):
    # Labels plain, images gzipped: both are found.
    written = _fake_mnist(tmp_path, compress=True)
    folder = tmp_path / "mnist"
    gz = folder / "train-labels-idx1-ubyte.gz"
    write_idx(folder / "train-labels-idx1-ubyte", load_idx(gz))
    gz.unlink()
    y = load_mnist(data_home=tmp_path).target
    assert_array_equal(y, written["train"][1])


@pytest.mark.parametrize(
    "missing", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
)
def test_load_mnist_missing_files(tmp_path, missing):
    _fake_mnist(tmp_path)
    (tmp_path / "mnist" / missing).unlink()
    assert not mnist_available(data_home=tmp_path)
    subset = "train" if missing.startswith("train") else "test"
    with pytest.raises(FileNotFoundError, match="get_data.sh") as exc:
        load_mnist(subset, data_home=tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / "mnist") in msg
    assert missing in msg
    assert "SKQUANT_DATA" in msg
    # The other subset still loads.
    other = "test" if subset == "train" else "train"
    assert load_mnist(other, data_home=tmp_path).subset == other


def test_load_mnist_empty_home(tmp_path):
    assert not mnist_available(data_home=tmp_path)
    assert not mnist_available("fashion-mnist", data_home=tmp_path)
    with pytest.raises(FileNotFoundError, match="get_data.sh") as exc:
        load_mnist(dataset="fashion-mnist", data_home=tmp_path)
    assert str(tmp_path / "fashion-mnist") in str(exc.value)


def test_load_mnist_count_mismatch(tmp_path):
    _fake_mnist(tmp_path)
    folder = tmp_path / "mnist"
    write_idx(
        folder / "train-labels-idx1-ubyte", np.arange(N_TRAIN + 1, dtype=np.uint8)
    )
    with pytest.raises(ValueError, match="numbers of images and labels must agree"):
        load_mnist(data_home=tmp_path)


def test_load_mnist_wrong_image_shape(tmp_path):
    _fake_mnist(tmp_path)
    write_idx(
        tmp_path / "mnist" / "t10k-images-idx3-ubyte",
        np.zeros((N_TEST, 27, 28), dtype=np.uint8),
    )
    with pytest.raises(ValueError, match="28, 28"):
        load_mnist("test", data_home=tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"subset": "validation"}, "subset must be one of .*got subset='validation'"),
        ({"subset": None}, "subset must be one of"),
        ({"dataset": "cifar10"}, "dataset must be one of .*got dataset='cifar10'"),
        ({"dataset": "MNIST"}, "dataset must be one of"),
    ],
)
def test_load_mnist_bad_arguments(tmp_path, kwargs, match):
    _fake_mnist(tmp_path)
    with pytest.raises(ValueError, match=match):
        load_mnist(data_home=tmp_path, **kwargs)


def test_mnist_available_bad_dataset():
    with pytest.raises(ValueError, match="dataset must be one of"):
        mnist_available("emnist")


# ----------------------------------------------------- make_gaussian_layer


@pytest.mark.parametrize("weights", ["gaussian", "uniform"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_make_gaussian_layer_shapes_dtype(weights, dtype):
    X, W = make_gaussian_layer(7, 5, 3, weights=weights, random_state=0, dtype=dtype)
    assert X.shape == (7, 5)
    assert W.shape == (5, 3)
    assert X.dtype == dtype and W.dtype == dtype
    X, W = make_gaussian_layer(4, 2, random_state=0)
    assert W.shape == (2, 1)


def test_make_gaussian_layer_reproducible():
    X1, W1 = make_gaussian_layer(20, 10, 4, random_state=42)
    X2, W2 = make_gaussian_layer(20, 10, 4, random_state=42)
    X3, W3 = make_gaussian_layer(20, 10, 4, random_state=43)
    assert_array_equal(X1, X2)
    assert_array_equal(W1, W2)
    assert not np.array_equal(X1, X3)
    assert not np.array_equal(W1, W3)
    rs = np.random.RandomState(42)
    X4, W4 = make_gaussian_layer(20, 10, 4, random_state=rs)
    assert_array_equal(X4, X1)
    X5, _ = make_gaussian_layer(20, 10, 4, random_state=rs)  # state advanced
    assert not np.array_equal(X5, X1)


def test_make_gaussian_layer_distributions():
    n_in = 400
    X, W = make_gaussian_layer(500, n_in, 200, random_state=0)
    # X ~ N(0, 1): 200k samples, so the moments are within a few 1e-2.
    assert abs(X.mean()) < 0.02
    assert abs(X.var() - 1.0) < 0.02
    # W ~ N(0, 1/n_in): 80k samples.
    assert abs(W.mean()) < 5 * W.std() / np.sqrt(W.size)
    assert abs(W.var() * n_in - 1.0) < 0.03
    _, Wu = make_gaussian_layer(10, n_in, 200, weights="uniform", random_state=0)
    assert Wu.min() >= -1.0 and Wu.max() <= 1.0
    assert abs(Wu.var() - 1.0 / 3.0) < 0.01  # Var U(-1, 1) = 1/3
    assert Wu.min() < -0.99 and Wu.max() > 0.99


@pytest.mark.parametrize("name", ["m", "n_in", "n_out"])
@pytest.mark.parametrize("value", [0, -1, 2.5, "3", True, None])
def test_make_gaussian_layer_bad_sizes(name, value):
    kwargs = {"m": 3, "n_in": 2, "n_out": 1}
    kwargs[name] = value
    with pytest.raises(ValueError, match=f"{name} must be an int >= 1, got {name}="):
        make_gaussian_layer(**kwargs)


def test_make_gaussian_layer_numpy_int_sizes():
    X, W = make_gaussian_layer(np.int64(3), np.int32(2), np.uint8(4), random_state=0)
    assert X.shape == (3, 2) and W.shape == (2, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": "normal"}, "weights must be one of .*got weights='normal'"),
        ({"dtype": np.int32}, "dtype must be a floating dtype"),
        ({"dtype": "not-a-dtype"}, "dtype must be a floating dtype"),
    ],
)
def test_make_gaussian_layer_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_gaussian_layer(3, 2, **kwargs)


# -------------------------------------------------------------- real data


@pytest.mark.parametrize(
    "dataset",
    [
        pytest.param(
            ds,
            marks=pytest.mark.skipif(
                not mnist_available(ds),
                reason=f"{ds} files absent; run `bash benchmarks/get_data.sh`",
            ),
        )
        for ds in ["mnist", "fashion-mnist"]
    ],
)
def test_real_data(dataset):
    for subset, n in [("train", 60000), ("test", 10000)]:
        X, y = load_mnist(subset, dataset=dataset, return_X_y=True)
        assert X.shape == (n, 784)
        assert X.dtype == np.float32
        assert 0.0 <= X.min() and X.max() <= 1.0
        assert X.max() == 1.0
        assert y.shape == (n,)
        assert y.dtype == np.int64
        assert set(np.unique(y).tolist()) == set(range(10))
        # Every class is well represented (at least 5% of the samples).
        assert np.bincount(y, minlength=10).min() > 0.05 * n
