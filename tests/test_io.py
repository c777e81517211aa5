"""skquant's file format: round trips, sizes, and bad files."""

import json
import os
import pickle
import re
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier, MLPRegressor
from strategies import weight_matrices

import skquant
from skquant import (
    ActivationQuantizer,
    BinaryQuantizer,
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    QuantizedMLP,
    TernaryQuantizer,
    UniformQuantizer,
)
from skquant._tensor._io import FileFormatError


def _data_bytes(path):
    """Bytes of the file after its header (the stored tensors)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    return len(blob) - 8 - n


def _same_tensor(a, b):
    assert a.alphabet == b.alphabet and a.n_bits == b.n_bits
    assert (a.qmin, a.qmax) == (b.qmin, b.qmax)
    assert a.codes.dtype == b.codes.dtype
    assert_array_equal(a.codes, b.codes)
    assert a.scale.dtype == b.scale.dtype
    assert_array_equal(a.scale, b.scale)
    da, db = a.dequantize(), b.dequantize()
    assert da.dtype == db.dtype
    assert_array_equal(da.view(np.uint8), db.view(np.uint8))  # bit for bit


QUANTIZERS = [
    UniformQuantizer(n_bits=2),
    UniformQuantizer(n_bits=5, granularity="per_tensor"),
    UniformQuantizer(n_bits=16),
    TernaryQuantizer(),
    BinaryQuantizer(),
]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(W=weight_matrices(), which=st.integers(0, len(QUANTIZERS) - 1))
def test_tensor_round_trip_and_size(tmp_path, W, which):
    qt = QUANTIZERS[which].fit(W).compress(W)
    path = tmp_path / "t.skq"
    skquant.save(qt, path)
    back = skquant.load(path)
    _same_tensor(qt, back)
    # the stored bytes are exactly the counted size
    assert _data_bytes(path) * 8 == qt.size_bits
    assert os.path.getsize(path) - qt.size_bits // 8 < 1024


def test_affine_and_data_driven_tensors(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 12)) + 1
    aq = ActivationQuantizer(n_bits=4).fit(X)
    from skquant._tensor._qtensor import QuantizedTensor

    codes = aq.encode(X)
    W = rng.standard_normal((12, 6))
    tensors = {
        "gpfq": GreedyPathQuantizer(n_bits=3).fit(W, activations=X).compress(W),
        "ns": NullSpaceQuantizer(n_bits="binary").fit(W, activations=X).compress(W),
        "bias": np.arange(6, dtype=np.float32),
    }
    if codes is not None:
        tensors["affine"] = QuantizedTensor(
            codes=codes,
            scale=aq.scale_,
            n_bits=4,
            qmin=aq.qmin_,
            qmax=aq.qmax_,
            alphabet="affine",
            zero_point=aq.zero_point_,
        )
    skquant.save(tensors, tmp_path / "d.skq")
    back = skquant.load(tmp_path / "d.skq")
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        if isinstance(v, np.ndarray):
            assert_array_equal(back[k], v)
            assert back[k].dtype == v.dtype
        else:
            _same_tensor(v, back[k])


@pytest.fixture(scope="module")
def digits_mlp():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((40,), max_iter=200, random_state=0).fit(X, y)
    return mlp, X, y


@pytest.mark.parametrize(
    "quantizer",
    [
        UniformQuantizer(n_bits=3),
        GreedyPathQuantizer(n_bits=2),
        NullSpaceQuantizer(n_bits="ternary", rank=0.99),
        BinaryQuantizer(),
        {"layer_1": UniformQuantizer(n_bits=4)},
    ],
    ids=["msq", "gpfq", "nullspace", "binary", "mapping"],
)
def test_quantized_mlp_round_trip(tmp_path, digits_mlp, quantizer):
    mlp, X, y = digits_mlp
    q = QuantizedMLP(mlp, quantizer, random_state=0).fit(X, y)
    path = tmp_path / "m.skq"
    skquant.save(q, path)
    assert _data_bytes(path) * 8 == q.size_bits_
    back = skquant.load(path)
    assert_array_equal(back.predict_proba(X), q.predict_proba(X))
    assert_array_equal(back.predict(X), q.predict(X))
    assert back.score(X, y) == q.score(X, y)
    for a, b in zip(q.tensors_, back.tensors_):
        _same_tensor(a, b)
    assert str(back.report_) == str(q.report_)
    assert back.size_bits_ == q.size_bits_
    # pickling goes through the same file
    p = pickle.loads(pickle.dumps(q))
    assert_array_equal(p.predict_proba(X), q.predict_proba(X))
    assert len(pickle.dumps(q)) < _data_bytes(path) + 8192


def test_quantized_mlp_regressor_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    y = X @ rng.standard_normal((5, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = QuantizedMLP(
            MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0),
            GreedyPathQuantizer(n_bits=4),
            random_state=0,
        ).fit(X, y)
    skquant.save(q, tmp_path / "r.skq")
    back = skquant.load(tmp_path / "r.skq")
    assert_array_equal(back.predict(X), q.predict(X))
    assert not hasattr(back, "classes_")


def test_pickle_does_not_keep_the_float_network(digits_mlp):
    mlp, X, y = digits_mlp
    q = QuantizedMLP(mlp, GreedyPathQuantizer(n_bits=2), random_state=0).fit(X, y)
    size = len(pickle.dumps(q))
    assert size < len(pickle.dumps(mlp)) / 10
    back = pickle.loads(pickle.dumps(q))
    assert not hasattr(back, "float_estimator_")
    assert not hasattr(back.estimator, "coefs_")  # the parameter comes back unfitted


def test_save_errors(tmp_path):
    with pytest.raises(TypeError, match="skquant.save stores a QuantizedTensor"):
        skquant.save(np.ones(3), tmp_path / "x")
    with pytest.raises(ValueError, match="without '/'"):
        skquant.save({"a/b": np.ones(3)}, tmp_path / "x")
    with pytest.raises(TypeError, match="must be QuantizedTensor or ndarray"):
        skquant.save({"a": [1, 2]}, tmp_path / "x")


def test_a_file_descriptor_is_not_a_path(tmp_path):
    # open() takes an int for a file descriptor, and closed it after reading
    path = tmp_path / "t.skq"
    skquant.save(skquant.quantize(np.eye(4)), path)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TypeError, match=r"path must be a str or path-like, got \d"):
            skquant.load(fd)
        with pytest.raises(TypeError, match="path must be a str or path-like"):
            skquant.save(skquant.quantize(np.eye(4)), fd)
        os.fstat(fd)  # still open
    finally:
        os.close(fd)
    assert skquant.load(os.fsencode(path)).shape == (4, 4)  # bytes paths are paths


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, digits_mlp):
    mlp, X, y = digits_mlp
    q = QuantizedMLP(mlp, UniformQuantizer(n_bits=3), random_state=0).fit(X, y)
    path = tmp_path_factory.mktemp("files") / "m.skq"
    skquant.save(q, path)
    return q, path.read_bytes()


def test_truncated_and_foreign_files(tmp_path, saved_model):
    _, blob = saved_model
    path = tmp_path / "bad.skq"
    for cut in (0, 5, 8, 100, len(blob) // 2, len(blob) - 1):
        path.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match="truncated|not a skquant file"):
            skquant.load(path)
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a skquant file|truncated"):
        skquant.load(path)
    from safetensors.numpy import save_file

    save_file({"a": np.ones(3)}, str(path))
    with pytest.raises(ValueError, match="a safetensors file but not a skquant file"):
        skquant.load(path)


def _load_error(path):
    with pytest.raises(FileFormatError) as info:
        skquant.load(path)
    message = str(info.value)
    assert message.startswith(f"{path!s} ")  # names the path
    assert "header of" not in message
    return message


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_checkpoint_is_recognised(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    message = _load_error(path)
    assert "is not a skquant file: it is a PyTorch checkpoint" in message
    assert "torch.load" in message and "skquant.torch.quantize_model" in message
    from skquant.torch import load_into

    with pytest.raises(ValueError, match="it is a PyTorch checkpoint"):
        load_into(net, path)
    # what the advice says works
    net.load_state_dict(torch.load(path))
    from skquant.torch import quantize_model, save_model

    save_model(quantize_model(net, UniformQuantizer(n_bits=3)), path)
    load_into(net, path)


def test_pickle_and_numpy_files_are_recognised(tmp_path):
    path = tmp_path / "x.pkl"
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps({"W": np.ones(3)}, protocol=protocol))
        message = _load_error(path)
        assert f"it is a Python pickle (protocol {protocol}" in message
        assert "torch.load" in message
    np.savez(tmp_path / "x.npz", W=np.ones(3))
    message = _load_error(tmp_path / "x.npz")
    assert "NumPy .npz archive" in message and "numpy.load" in message
    np.save(tmp_path / "x.npy", np.ones(3))
    assert "NumPy .npy file" in _load_error(tmp_path / "x.npy")
    import zipfile

    with zipfile.ZipFile(tmp_path / "x.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    assert "it is a zip archive" in _load_error(tmp_path / "x.zip")


def test_random_bytes_say_the_file_size(tmp_path):
    path = tmp_path / "random.bin"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    message = _load_error(path)
    assert "is not a skquant file" in message
    assert "the file has 1000 bytes" in message
    # a header length that fits but no JSON after it
    path.write_bytes(struct.pack("<Q", 4) + b"abcd" + bytes(20))
    assert "has no JSON header" in _load_error(path)


def test_truncated_and_corrupted_headers_are_told_apart(tmp_path, saved_model):
    _, blob = saved_model
    path = tmp_path / "cut.skq"
    path.write_bytes(blob[:200])
    assert re.search(r"is truncated: its header says \d+ bytes", _load_error(path))
    (n,) = struct.unpack("<Q", blob[:8])
    path.write_bytes(blob[: 8 + n - 1] + b"!" + blob[8 + n :])
    assert "is corrupted: its header is not JSON" in _load_error(path)


@pytest.fixture
def umask():
    """Set the umask for one test (restored after)."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_umask_permissions(tmp_path, umask, mask, mode):
    qt = skquant.quantize(np.eye(4), n_bits=2)
    umask(mask)
    path = tmp_path / "w.skq"
    skquant.save(qt, path)
    assert _mode(path) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["w.skq"]  # no temporary left
    _same_tensor(skquant.load(path), qt)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_replaced_files_keep_their_permissions(tmp_path, umask):
    qt = skquant.quantize(np.eye(4), n_bits=2)
    umask(0o022)
    path = tmp_path / "w.skq"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    skquant.save(qt, path)
    assert _mode(path) == 0o640
    os.chmod(path, 0o444)  # read-only: replaced, still read-only
    skquant.save(qt, path)
    assert _mode(path) == 0o444
    _same_tensor(skquant.load(path), qt)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_torch_save_model_gets_the_umask_permissions(tmp_path, umask):
    torch = pytest.importorskip("torch")
    from skquant.torch import quantize_model, save_model

    net = quantize_model(torch.nn.Linear(4, 3), UniformQuantizer(n_bits=3))
    for mask, mode in [(0o022, 0o644), (0o077, 0o600)]:
        umask(mask)
        path = tmp_path / f"{mask:o}.skq"
        save_model(net, path)
        assert _mode(path) == mode


def test_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    from skquant._tensor import _io

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        skquant.save(skquant.quantize(np.eye(4), n_bits=2), tmp_path / "w.skq")
    assert list(tmp_path.iterdir()) == []


def test_newer_version_is_refused(tmp_path):
    from skquant._tensor import _io

    writer = _io.Writer()
    writer.array("a", np.ones(3))
    blob = _io.serialize("dict", writer)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    text = header["__metadata__"]["skquant"].replace(
        f'"version":{_io.VERSION}', '"version":99'
    )
    from safetensors.numpy import save

    data = {"a": np.ones(3)}
    path = tmp_path / "v.skq"
    path.write_bytes(
        save(
            data, metadata={"skquant": text, "skquant_digest": _io._digest(text, data)}
        )
    )
    with pytest.raises(ValueError, match=re.escape("format version 99")):
        skquant.load(path)


def test_file_of_another_kind(tmp_path, saved_model):
    q, blob = saved_model
    path = tmp_path / "m.skq"
    path.write_bytes(blob)
    assert isinstance(skquant.load(path), QuantizedMLP)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flipped_bytes_never_give_a_wrong_model(tmp_path_factory, data):
    """Fuzz: flip bytes anywhere; the loader raises, or returns the same model."""
    import skquant._tensor._io as io

    q = test_flipped_bytes_never_give_a_wrong_model.q
    blob = bytearray(test_flipped_bytes_never_give_a_wrong_model.blob)
    n_flips = data.draw(st.integers(1, 3))
    for _ in range(n_flips):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    try:
        header, arrays = io.parse(bytes(blob))
        back = QuantizedMLP._from_file(
            header["model"],
            io.tensors_from(header, arrays, "x"),
            io.arrays_from(header, arrays, "x"),
            "x",
        )
    except ValueError:
        return
    X = test_flipped_bytes_never_give_a_wrong_model.X
    assert_array_equal(back.predict_proba(X), q.predict_proba(X))


def _fuzz_setup():
    X, y = load_digits(return_X_y=True)
    X = X[:300] / 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((8,), max_iter=50, random_state=0).fit(X, y[:300])
    q = QuantizedMLP(mlp, UniformQuantizer(n_bits=3), random_state=0).fit(X)
    from skquant._tensor import _io

    writer = _io.Writer()
    model = q._to_file(writer)
    test_flipped_bytes_never_give_a_wrong_model.q = q
    test_flipped_bytes_never_give_a_wrong_model.X = X
    test_flipped_bytes_never_give_a_wrong_model.blob = _io.serialize(
        "QuantizedMLP", writer, model
    )


_fuzz_setup()


def test_load_errors_are_value_errors(tmp_path):
    assert issubclass(FileFormatError, ValueError)
    with pytest.raises(ValueError, match="is a folder; give a skquant file"):
        skquant.load(tmp_path)  # (IsADirectoryError, as its docstring did not say)


def test_big_endian_arrays_are_stored_little_endian(tmp_path):
    from skquant._tensor._io import SpooledWriter

    arrays = {
        "f": np.arange(3, dtype=">f8") / 3,
        "i": np.arange(-2, 4, dtype=">i4").reshape(2, 3)[:, ::2],  # strided too
    }
    skquant.save(arrays, tmp_path / "d.skq")
    back = skquant.load(tmp_path / "d.skq")
    for k, a in arrays.items():
        np.testing.assert_array_equal(back[k], a)
        assert back[k].dtype == a.dtype.newbyteorder("<")
    with SpooledWriter(tmp_path / "s.skq") as w:  # it refused them
        w.array("f", arrays["f"])
        w.write("dict")
    np.testing.assert_array_equal(skquant.load(tmp_path / "s.skq")["f"], arrays["f"])


def test_pack_codes_takes_big_endian_codes():
    from skquant._tensor._bits import pack_codes, unpack_codes

    codes = np.arange(-3, 5, dtype=">i4")
    packed = pack_codes(codes, 3, -3)
    assert packed.tolist() == pack_codes(codes.astype("<i4"), 3, -3).tolist()
    np.testing.assert_array_equal(unpack_codes(packed, 3, -3, (8,)), codes)


def test_save_refuses_what_load_would_refuse(tmp_path):
    path = tmp_path / "x.skq"
    qt = skquant.quantize(np.eye(4), n_bits=2)
    for value in (np.zeros(3), qt):  # the safetensors header's own key
        with pytest.raises(
            ValueError, match="other than '__metadata__', got '__metadata__'"
        ):
            skquant.save({"__metadata__": value}, path)
    if np.dtype(np.longdouble).itemsize > 8:  # no safetensors dtype holds it
        with pytest.raises(TypeError, match="cannot store an array of dtype float"):
            skquant.save({"a": np.zeros(3, np.longdouble)}, path)
    with pytest.raises(
        ValueError, match="got alphabet='foo'"
    ):  # no such tensor is made
        skquant.QuantizedTensor(
            codes=np.zeros((2, 4), np.int8),
            scale=np.ones(4, np.float32),
            n_bits=4,
            qmin=-7,
            qmax=7,
            alphabet="foo",
        )
    assert not path.exists()
    skquant.save({"__metadata__x": np.zeros(3), "b": np.zeros(3, np.float16)}, path)
    assert sorted(skquant.load(path)) == ["__metadata__x", "b"]


def test_stored_codes_off_the_grid_are_a_file_format_error():
    from skquant._tensor import _io

    writer = _io.Writer()
    writer.tensor("t", skquant.quantize(np.eye(8), n_bits=4))  # codes in [-7, 7]
    writer.data["t/codes"][:] = 0xFF  # every packed code becomes -7 + 15 = 8
    header, arrays = _io.parse(_io.serialize("dict", writer))
    with pytest.raises(
        FileFormatError,
        match=r"'t' holds an invalid tensor: codes must lie in \[-7, 7\], got values "
        r"in \[8, 8\]",
    ):
        _io.tensors_from(header, arrays, "f.skq")


def test_tensors_refuse_what_a_file_could_not_hold():
    """Binary codes other than -1/+1 (a file kept their sign), zero points that
    are no integers of the code range or have another length (a file cast them:
    7.5 came back 7, 300 came back 44), a zero point on a fixed-point tensor (a
    file dropped it), and fixed-point fields refused at construction (repr
    raised later); NumPy ints are Python ints (int8 qmax - qmin wrapped)."""
    from skquant import QuantizedTensor

    one = np.ones(3, np.float32)
    with pytest.raises(
        ValueError, match=r"binary tensor's codes are -1 and \+1 \(qmin"
    ):
        QuantizedTensor(np.array([[-3, 2, 5]]), one, 1, -5, 5, alphabet="binary")
    with pytest.raises(ValueError, match=r"must be -1 or \+1, got a 0 code"):
        QuantizedTensor(np.array([[-1, 0, 1]]), one, 1, -1, 1, alphabet="binary")
    codes = np.array([[0, 7, 15]])
    for zp in (np.full(3, 7.5), np.full(3, 300.0), np.zeros(2), np.zeros((3, 1))):
        with pytest.raises(ValueError, match=r"zero_point must be integers in \[qmin"):
            QuantizedTensor(codes, one, 4, 0, 15, zero_point=zp)
    good = QuantizedTensor(codes, one, 4, 0, 15, zero_point=np.array([7, 8, 9]))
    assert good.dequantize().shape == (1, 3)
    q = QuantizedTensor(
        np.array([[-7, 7]]), np.ones(2, np.float32), 8, np.int8(-128), np.int8(127)
    )
    assert (type(q.qmin), type(q.qmax), q.qmax - q.qmin) == (int, int, 255)
    with pytest.raises(ValueError, match=r"n_bits=1 cannot hold"):
        QuantizedTensor(
            np.array([[-7, 7]]), np.ones(2, np.float32), 1, np.int8(-128), np.int8(127)
        )
    big = QuantizedTensor(np.array([[-7, 0, 7]], ">i2"), one, 4, -7, 7)
    np.testing.assert_array_equal(big.dequantize(), [[-7.0, 0.0, 7.0]])


def test_save_refuses_special_files_and_replaces_a_links_target(tmp_path):
    """A pipe (or a device) at the path became a regular file; a link was
    replaced by a file and its target left as it was."""
    qt = skquant.quantize(np.random.default_rng(0).random((4, 3)), n_bits=4)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="exists and is not a regular file"):
        skquant.save(qt, fifo)
    target, link = tmp_path / "target.skq", tmp_path / "link.skq"
    skquant.save({"a": np.zeros(2)}, target)
    link.symlink_to(target)
    skquant.save(qt, link)
    assert link.is_symlink()
    np.testing.assert_array_equal(skquant.load(target).dequantize(), qt.dequantize())


def test_an_arrays_recorded_dtype_and_shape_are_checked(tmp_path):
    """The digest covers the bytes, not the safetensors entry's dtype and
    shape: a flipped byte there loaded a float32 bias as int32, silently."""
    path = tmp_path / "a.skq"
    skquant.save({"bias": np.arange(4, dtype=np.float32)}, path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"F32"')
    raw[at : at + 5] = b'"I32"'
    path.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="array 'bias' is int32 of shape"):
        skquant.load(path)
