"""Data sets for quantization experiments.

This module reads the MNIST and Fashion-MNIST image data sets from local
IDX files (the format they are distributed in), and makes small synthetic
single-layer problems for theory experiments.

Nothing here downloads anything: the IDX files are fetched once with
``bash benchmarks/get_data.sh`` into the data home (see
:func:`get_data_home`), and :func:`load_mnist` reads them from there.
"""

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch, check_random_state

from ._common._checks import check_int

__all__ = [
    "get_data_home",
    "load_idx",
    "write_idx",
    "load_mnist",
    "mnist_available",
    "make_gaussian_layer",
]

#: Environment variable that overrides the default data home.
DATA_ENV_VAR = "SKQUANT_DATA"

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> NumPy dtype of the data as stored (big-endian).
_IDX_CODE_TO_DTYPE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# (dtype.kind, dtype.itemsize) -> IDX type code, independent of byte order.
_KIND_SIZE_TO_IDX_CODE = {
    (dt.kind, dt.itemsize): code for code, dt in _IDX_CODE_TO_DTYPE.items()
}

_MNIST_DATASETS = ("mnist", "fashion-mnist")
_MNIST_SUBSETS = ("train", "test")
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_IMAGE_SHAPE = (28, 28)


def get_data_home(data_home=None, *, create=False):
    """Return the folder where skquant looks for data sets.

    The folder is, in order of precedence: the ``data_home`` argument, the
    ``SKQUANT_DATA`` environment variable (when set and not empty), and
    ``~/skquant_data``. A leading ``~`` is expanded.

    Parameters
    ----------
    data_home : str or os.PathLike, default=None
        Folder to use. If None, the environment variable ``SKQUANT_DATA``
        is used, then ``~/skquant_data``.
    create : bool, default=False
        Whether to create the folder (and its parents) if it does not exist.

    Returns
    -------
    data_home : pathlib.Path
        The data folder, with ``~`` expanded.

    Examples
    --------
    >>> from pathlib import Path
    >>> from skquant.datasets import get_data_home
    >>> get_data_home("/some/where").as_posix()
    '/some/where'
    >>> get_data_home("~/data") == Path.home() / "data"
    True
    """
    if data_home is None:
        data_home = os.environ.get(DATA_ENV_VAR) or None
    if data_home is None:
        data_home = Path("~") / "skquant_data"
    try:
        data_home = Path(os.path.expanduser(os.fspath(data_home)))
    except TypeError:
        raise TypeError(
            "data_home must be None, a str or an os.PathLike, "
            f"got data_home={data_home!r} instead."
        ) from None
    if create:
        data_home.mkdir(parents=True, exist_ok=True)
    return data_home


def _read_maybe_gzip(path):
    """Return the bytes of ``path``, decompressed if it starts as gzip."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(
                f"Could not decompress the gzip-compressed IDX file {str(path)!r}: "
                f"{exc}"
            ) from exc
    return raw


def load_idx(path):
    """Read one IDX file into a NumPy array.

    The IDX format (used by MNIST) is: two zero bytes, a type byte
    (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
    ``0x0D`` float32, ``0x0E`` float64), a byte with the number of
    dimensions, one big-endian uint32 per dimension, then the data in
    big-endian C order. Gzip-compressed files are recognised by their
    first two bytes (``1f 8b``), whatever the file name.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read, plain or gzip-compressed.

    Returns
    -------
    array : ndarray
        The data, in native byte order, with the shape given in the file.

    Raises
    ------
    ValueError
        If the file does not start with the IDX magic, has an unknown type
        code, or holds fewer or more data bytes than its header says.

    See Also
    --------
    write_idx : Write an array to an IDX file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skquant.datasets import load_idx, write_idx
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "a-idx2-ubyte.gz")
    ...     write_idx(path, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8))
    ...     load_idx(path)
    array([[1, 2, 3],
           [4, 5, 6]], dtype=uint8)
    """
    raw = _read_maybe_gzip(path)
    name = repr(str(path))
    if len(raw) < 4:
        raise ValueError(
            f"Truncated IDX file {name}: {len(raw)} bytes, fewer than the "
            "4 bytes of the magic number."
        )
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"Bad magic number in IDX file {name}: it must start with two zero "
            f"bytes, got {raw[:4].hex(' ')!r} instead."
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_CODE_TO_DTYPE:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_CODE_TO_DTYPE)
        raise ValueError(
            f"Unknown IDX type code 0x{type_code:02X} in {name}: it must be one "
            f"of {known}."
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"Truncated IDX file {name}: its header declares {ndim} dimensions "
            f"({header_size} header bytes) but the file has {len(raw)} bytes."
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = _IDX_CODE_TO_DTYPE[type_code]
    count = math.prod(shape)
    expected = count * dtype.itemsize
    got = len(raw) - header_size
    if got < expected:
        raise ValueError(
            f"Truncated IDX file {name}: shape {shape} of {dtype.name} needs "
            f"{expected} data bytes, got {got}."
        )
    if got > expected:
        raise ValueError(
            f"Oversized IDX file {name}: shape {shape} of {dtype.name} needs "
            f"{expected} data bytes, got {got} ({got - expected} trailing bytes)."
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header_size)
    # astype copies: the result is writable and in native byte order.
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def write_idx(path, array, compress=None):
    """Write an array to an IDX file.

    This is the inverse of :func:`load_idx`.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (overwritten if it exists).
    array : array-like
        The data. Its dtype must be one IDX can hold: uint8, int8, int16,
        int32, float32 or float64 (in any byte order). Each dimension must
        be smaller than 2**32.
    compress : bool, default=None
        Whether to gzip the file. If None, the file is gzipped when
        ``path`` ends with ``.gz``.

    Raises
    ------
    ValueError
        If the dtype cannot be stored in IDX, a dimension is too large, or
        ``compress`` is not None or a bool.

    See Also
    --------
    load_idx : Read an IDX file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skquant.datasets import load_idx, write_idx
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "w-idx1-float")
    ...     write_idx(path, np.array([0.5, -1.0], dtype=np.float32))
    ...     with open(path, "rb") as f:
    ...         header = f.read(8)
    ...     array = load_idx(path)
    >>> header.hex(" ")
    '00 00 0d 01 00 00 00 02'
    >>> array
    array([ 0.5, -1. ], dtype=float32)
    """
    if compress is not None and not isinstance(compress, (bool, np.bool_)):
        raise ValueError(
            f"compress must be None or a bool, got compress={compress!r} instead."
        )
    array = np.asarray(array)
    key = (array.dtype.kind, array.dtype.itemsize)
    if key not in _KIND_SIZE_TO_IDX_CODE:
        raise ValueError(
            "array dtype must be one of uint8, int8, int16, int32, float32, "
            f"float64, got array.dtype={array.dtype!r} instead."
        )
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(
            "array dimensions must each be smaller than 2**32, "
            f"got array.shape={array.shape!r} instead."
        )
    type_code = _KIND_SIZE_TO_IDX_CODE[key]
    header = struct.pack(
        f">BBBB{array.ndim}I", 0, 0, type_code, array.ndim, *array.shape
    )
    body = np.ascontiguousarray(array, dtype=_IDX_CODE_TO_DTYPE[type_code]).tobytes()
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    with open(path, "wb") as f:
        if compress:
            # mtime=0 makes the output reproducible.
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
                gz.write(header)
                gz.write(body)
        else:
            f.write(header)
            f.write(body)


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}, "
            f"got {name}={value!r} instead."
        )


def _find_idx(folder, name):
    """Return the path of ``name`` or ``name.gz`` in folder, else None."""
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _missing_message(dataset, folder, missing):
    return (
        f"{dataset} files not found in {str(folder)!r}: missing "
        f"{', '.join(missing)} (each may also be gzipped, with '.gz'). "
        "Run `bash benchmarks/get_data.sh` to fetch MNIST and Fashion-MNIST "
        f"into the data home, or set {DATA_ENV_VAR} (or pass data_home=) to "
        "the folder that holds them."
    )


def mnist_available(dataset="mnist", data_home=None):
    """Tell whether the four IDX files of a data set are present.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}, default="mnist"
        Which data set.
    data_home : str or os.PathLike, default=None
        Data home; see :func:`get_data_home`. The files are looked for in
        ``<data_home>/<dataset>/``.

    Returns
    -------
    available : bool
        True when the train and test images and labels are all there,
        plain or gzipped.

    Examples
    --------
    >>> import tempfile
    >>> from skquant.datasets import mnist_available
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     mnist_available("fashion-mnist", data_home=tmp)
    False
    """
    _check_choice("dataset", dataset, _MNIST_DATASETS)
    folder = get_data_home(data_home) / dataset
    return all(
        _find_idx(folder, name) is not None
        for names in _MNIST_FILES.values()
        for name in names
    )


def load_mnist(
    subset="train",
    *,
    dataset="mnist",
    data_home=None,
    return_X_y=False,
    as_float=True,
):
    """Load the MNIST or Fashion-MNIST digits from local IDX files.

    The files are read from ``<data_home>/<dataset>/`` under their
    standard names (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``), each plain or gzipped with ``.gz``. Fetch
    them once with ``bash benchmarks/get_data.sh``.

    =================   ==============
    Classes                         10
    Samples (train)              60000
    Samples (test)               10000
    Dimensionality       784 (28 x 28)
    Features            0-1 or 0-255
    =================   ==============

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        Which split to load.
    dataset : {"mnist", "fashion-mnist"}, default="mnist"
        Which data set to load.
    data_home : str or os.PathLike, default=None
        Data home; see :func:`get_data_home`.
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.
    as_float : bool, default=True
        If True, the pixels are float32 scaled to [0, 1]; else the raw
        uint8 values in [0, 255].

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with attributes:

        data : ndarray of shape (n_samples, 784)
            Flattened images, float32 in [0, 1] or uint8.
        target : ndarray of shape (n_samples,)
            Labels 0-9, int64.
        images_shape : tuple
            ``(28, 28)``, the shape to reshape one row of ``data`` to.
        dataset : str
            The data set loaded.
        subset : str
            The split loaded.

    (data, target) : tuple if ``return_X_y`` is True
        The flattened images and the labels, as described above.

    Raises
    ------
    FileNotFoundError
        If a file is missing; the message names the folder searched.
    ValueError
        If the files are malformed, or the numbers of images and labels
        differ.

    Examples
    --------
    >>> from skquant.datasets import load_mnist
    >>> X, y = load_mnist("test", return_X_y=True)  # doctest: +SKIP
    >>> X.shape, X.dtype, y.shape  # doctest: +SKIP
    ((10000, 784), dtype('float32'), (10000,))
    """
    _check_choice("subset", subset, _MNIST_SUBSETS)
    _check_choice("dataset", dataset, _MNIST_DATASETS)
    folder = get_data_home(data_home) / dataset
    names = _MNIST_FILES[subset]
    paths = [_find_idx(folder, name) for name in names]
    missing = [name for name, p in zip(names, paths) if p is None]
    if missing:
        raise FileNotFoundError(_missing_message(dataset, folder, missing))
    images_path, labels_path = paths
    images = load_idx(images_path)
    labels = load_idx(labels_path)

    if images.dtype != np.uint8 or images.shape[1:] != _MNIST_IMAGE_SHAPE:
        raise ValueError(
            f"{str(images_path)!r} must hold uint8 images of shape (n, 28, 28), "
            f"got dtype={images.dtype.name} and shape={images.shape} instead."
        )
    if labels.ndim != 1:
        raise ValueError(
            f"{str(labels_path)!r} must hold a 1-D array of labels, "
            f"got shape={labels.shape} instead."
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"The numbers of images and labels must agree, got "
            f"{images.shape[0]} images in {str(images_path)!r} and "
            f"{labels.shape[0]} labels in {str(labels_path)!r} instead."
        )

    X = images.reshape(images.shape[0], -1)
    if as_float:
        X = X.astype(np.float32)
        X /= np.float32(255)
    y = labels.astype(np.int64)
    if return_X_y:
        return X, y
    return Bunch(
        data=X,
        target=y,
        images_shape=_MNIST_IMAGE_SHAPE,
        dataset=dataset,
        subset=subset,
    )


def make_gaussian_layer(
    m,
    n_in,
    n_out=1,
    *,
    weights="gaussian",
    random_state=None,
    dtype=np.float64,
):
    """Make a synthetic single layer: Gaussian inputs and random weights.

    Useful for theory experiments on quantization error, where the inputs
    are i.i.d. standard normal.

    Parameters
    ----------
    m : int
        Number of input samples (rows of ``X``), at least 1.
    n_in : int
        Number of input features (rows of ``W``), at least 1.
    n_out : int, default=1
        Number of output neurons (columns of ``W``), at least 1.
    weights : {"gaussian", "uniform"}, default="gaussian"
        Distribution of the weights: "gaussian" draws i.i.d. N(0, 1/n_in),
        "uniform" draws i.i.d. U(-1, 1).
    random_state : int, RandomState instance or None, default=None
        Seed or generator, see :func:`sklearn.utils.check_random_state`.
        ``X`` is drawn first, then ``W``.
    dtype : floating dtype, default=np.float64
        Dtype of the returned arrays.

    Returns
    -------
    X : ndarray of shape (m, n_in)
        Inputs, i.i.d. N(0, 1).
    W : ndarray of shape (n_in, n_out)
        Weights.

    Examples
    --------
    >>> from skquant.datasets import make_gaussian_layer
    >>> X, W = make_gaussian_layer(100, 20, 3, random_state=0)
    >>> X.shape, W.shape
    ((100, 20), (20, 3))
    >>> (X @ W).shape
    (100, 3)
    """
    m = check_int(m, "m")
    n_in = check_int(n_in, "n_in")
    n_out = check_int(n_out, "n_out")
    _check_choice("weights", weights, ("gaussian", "uniform"))
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        np_dtype = None
    if np_dtype is None or np_dtype.kind != "f":
        raise ValueError(
            f"dtype must be a floating dtype, got dtype={dtype!r} instead."
        )
    rng = check_random_state(random_state)
    X = rng.standard_normal(size=(m, n_in))
    if weights == "gaussian":
        W = rng.standard_normal(size=(n_in, n_out)) / np.sqrt(n_in)
    else:
        W = rng.uniform(-1.0, 1.0, size=(n_in, n_out))
    return X.astype(np_dtype, copy=False), W.astype(np_dtype, copy=False)
