"""skquant's file format: quantized tensors and models as safetensors files.

A file is a `safetensors <https://github.com/huggingface/safetensors>`_ file (an
8-byte little-endian header length, a JSON header, then the raw tensor bytes;
nothing in it is code, and loading runs none). skquant puts two strings in the
header's ``__metadata__``:

``skquant``
    A JSON document: ``{"format": "skquant", "version": 1, "kind": ...,
    "tensors": {...}, "arrays": {...}, "model": {...}}``. ``tensors`` describes
    each quantized tensor stored under the prefix ``<name>/`` (shape, alphabet,
    ``n_bits``, ``qmin``, ``qmax``, float dtype, whether a zero point is stored);
    ``arrays`` lists plain float arrays (biases, layers left float) and their
    dtypes; ``model`` holds what rebuilds a model (see :func:`save`).
``skquant_digest``
    The BLAKE2b digest (32 bytes, hex) of the ``skquant`` JSON text followed by
    every stored tensor's bytes in name order: a flipped byte anywhere in the
    description or the data is detected on load.

Each quantized tensor ``<name>`` stores ``<name>/codes`` (the bit-packed codes of
:meth:`QuantizedTensor.pack`, ``uint8``), ``<name>/scale`` (its scales, at their
dtype) and, for affine grids, ``<name>/zero_point`` (at the codes' integer dtype):
exactly the bytes that :attr:`QuantizedTensor.size_bits` counts, so a file is its
counted size plus the header.
"""

import hashlib
import json
import numbers
import os
import struct

import numpy as np

from .._common._checks import check_path
from . import _fixedpoint, _safetensors
from ._alphabets import GRID_KINDS, Alphabet, code_dtype
from ._bits import unpack_codes
from ._files import check_target, create_temp, replace_file
from ._qtensor import QuantizedTensor
from ._safetensors import MAX_HEADER, ST_DTYPES, FileFormatError

__all__ = ["load", "save"]

FORMAT = "skquant"
VERSION = 3  # 2: fixed-point tensors; 3: activation grids of torch layers


#: the model classes a file can hold, by the ``kind`` written in the file (filled by
#: :func:`register_model`; the file format knows no model class itself)
_MODELS = {}


def register_model(cls):
    """Class decorator: files of ``kind == cls.__name__`` hold instances of ``cls``.

    ``cls`` writes itself with ``obj._to_file(writer)`` (returning the JSON
    description of the model) and is rebuilt by
    ``cls._from_file(model, tensors, arrays, path)``.
    """
    _MODELS[cls.__name__] = cls
    return cls


# ----------------------------------------------------------------- tensors
def _tensor_entry(qt, codes=True):
    """``(header entry, arrays)`` of ``qt`` as a file stores it; ``codes=False``
    leaves a fixed-width grid's packed codes out (the small arrays only)."""
    if qt.precision_bits is not None:
        coded, arrays = qt.encoded()
        meta = {
            "shape": [int(s) for s in qt.shape],
            "alphabet": "fixed_point",
            "n_max": qt.n_max,
            "group_size": qt.group_size,
            "map_coder": coded["map_coder"],
            "payload_coder": coded["payload_coder"],
            "float_dtype": None
            if qt.float_dtype is None
            else np.dtype(qt.float_dtype).str,
            "codes_dtype": qt.codes.dtype.str,
            # the arrays go into one byte blob (one header entry, not one each)
            "parts": [[k, a.dtype.str, int(a.size)] for k, a in arrays.items()],
        }
        blob = np.concatenate(
            [np.ascontiguousarray(a).view(np.uint8).ravel() for a in arrays.values()]
        )
        return meta, {"data": blob}
    meta = {
        "shape": [int(s) for s in qt.shape],
        "alphabet": qt.alphabet,
        "n_bits": int(qt.n_bits),
        "qmin": int(qt.qmin),
        "qmax": int(qt.qmax),
        "float_dtype": None if qt.float_dtype is None else np.dtype(qt.float_dtype).str,
        "codes_dtype": qt.codes.dtype.str,
        "zero_point": qt.zero_point is not None,
    }
    arrays = {"codes": qt.pack()} if codes else {}
    arrays["scale"] = np.ascontiguousarray(qt.scale)
    if qt.zero_point is not None:
        arrays["zero_point"] = np.asarray(qt.zero_point).astype(
            code_dtype(qt.qmin, qt.qmax)
        )
    return meta, arrays


def _field(meta, key, kind, where):
    value = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise FileFormatError(
            f"{where} lacks a valid {key!r} field (got {value!r}); the file is "
            "corrupted or not written by skquant."
        )
    return value


def _fixed_point_from(meta, arrays, shape, where):
    n_max = _field(meta, "n_max", int, where)
    group_size = meta.get("group_size")
    coder = _field(meta, "map_coder", str, where)
    parts = _field(meta, "parts", list, where)
    try:
        blob = arrays["data"]
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise ValueError("its data is not a byte array")
        arrays, start = {}, 0
        for key, dtype, count in parts:
            dtype = np.dtype(dtype)
            if dtype.kind not in "iu" or not isinstance(count, int) or count < 0:
                raise ValueError(f"part {key!r} has dtype {dtype} and count {count!r}")
            stop = start + count * dtype.itemsize
            if stop > blob.size:
                raise ValueError("its parts run past its data")
            arrays[str(key)] = blob[start:stop].view(dtype).copy()
            start = stop
        if start != blob.size:
            raise ValueError("its data is longer than its parts")
        if not 0 <= n_max < _fixedpoint.MAX_WIDTH:
            raise ValueError(f"n_max={n_max} is out of range")
        _fixedpoint.check_group_size(group_size)
        if coder == "auto":
            raise ValueError("the stored coder cannot be 'auto'")
        _fixedpoint.check_map_coder(coder)
        payload_coder = _fixedpoint.check_payload_coder(meta.get("payload_coder"))
        codes_dtype = np.dtype(_field(meta, "codes_dtype", str, where))
        if codes_dtype.kind not in "iu":
            raise FileFormatError(f"{where} has invalid dtypes.")
        info = np.iinfo(codes_dtype)
        holds = info.min <= -(2**n_max) and 2**n_max <= info.max
        codes, widths, step = _fixedpoint.decode(
            {"map_coder": coder},
            arrays,
            shape,
            n_max,
            group_size,
            codes_dtype if holds else np.int64,  # decoded in place where it can be
        )
        float_dtype = meta.get("float_dtype")
        float_dtype = None if float_dtype is None else np.dtype(float_dtype)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FileFormatError(f"{where} does not decode: {exc}") from exc
    return _tensor(
        where,
        codes=codes.astype(codes_dtype, copy=False),
        scale=np.array([step]),
        n_bits=max(int(widths.max(initial=1)), 1),
        qmin=-(2**n_max),
        qmax=2**n_max,
        alphabet="fixed_point",
        float_dtype=float_dtype,
        precision_bits=widths,
        group_size=group_size,
        map_coder=coder,
        payload_coder=payload_coder,
    )


def _tensor(where, **fields):
    """The stored tensor, its fields checked as any tensor's."""
    try:
        return QuantizedTensor(**fields)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{where} holds an invalid tensor: {exc}") from exc


def tensor_from(meta, arrays, where):
    shape = tuple(_field(meta, "shape", list, where))
    if len(shape) != 2 or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise FileFormatError(f"{where} has an invalid shape {shape!r}.")
    if meta.get("alphabet") == "fixed_point":
        return _fixed_point_from(meta, arrays, shape, where)
    n_bits = _field(meta, "n_bits", int, where)
    qmin = _field(meta, "qmin", int, where)
    qmax = _field(meta, "qmax", int, where)
    alphabet = _field(meta, "alphabet", str, where)
    if alphabet not in GRID_KINDS or not (1 <= n_bits <= 16 and qmin <= qmax):
        raise FileFormatError(
            f"{where} describes an impossible alphabet ({alphabet!r}, n_bits={n_bits}, "
            f"[{qmin}, {qmax}])."
        )
    record = Alphabet(alphabet, qmin, qmax, n_bits)
    try:
        codes_dtype = np.dtype(_field(meta, "codes_dtype", str, where))
        # in the smallest dtype of the packed range (not int64: 8 bytes a code)
        stored = unpack_codes(arrays["codes"], n_bits, record.stored_qmin, shape)
        # copies: views would keep the whole file's bytes alive with the tensor
        scale = np.array(arrays["scale"])
        zp = np.array(arrays["zero_point"]) if meta.get("zero_point") else None
        float_dtype = meta.get("float_dtype")
        float_dtype = None if float_dtype is None else np.dtype(float_dtype)
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(
            f"{where} does not match its stored arrays: {exc}"
        ) from exc
    if codes_dtype.kind not in "iu":
        raise FileFormatError(f"{where} has invalid dtypes.")
    codes = record.from_stored(stored, codes_dtype)
    return _tensor(  # (which checks the scales and the codes' range)
        where,
        codes=codes,
        scale=scale,
        n_bits=n_bits,
        qmin=qmin,
        qmax=qmax,
        alphabet=alphabet,
        zero_point=zp,
        float_dtype=float_dtype,
    )


# ------------------------------------------------------------- containers
class Writer:
    """Collects tensors and arrays under unique names, with their descriptions."""

    def __init__(self):
        self.tensors, self.arrays, self.data = {}, {}, {}

    def tensor(self, name, qt):
        self.entry(name, *_tensor_entry(qt))

    def entry(self, name, meta, arrays):
        """A tensor already in its stored form (``_tensor_entry``'s)."""
        self.tensors[name] = meta
        for k, a in arrays.items():
            self._store(f"{name}/{k}", np.asarray(a))

    def array(self, name, a):
        a = _storable(np.asarray(a))
        if a.dtype.kind not in "fiub" or a.dtype.str[1:] not in ST_DTYPES:
            raise TypeError(f"cannot store an array of dtype {a.dtype} ({name!r}).")
        self._store(name, a)  # (first: a refused write records nothing)
        self.arrays[name] = {"dtype": a.dtype.str, "shape": list(a.shape)}

    def _store(self, name, a):
        self.data[name] = _storable(a)


def _storable(a):
    """``a`` C-contiguous and little-endian, as files hold arrays (a copy where
    it is not: a big-endian array's bytes are swapped)."""
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if not a.flags.c_contiguous:  # (ascontiguousarray would make 0-d arrays 1-d)
        a = a.copy(order="C")
    return a


#: bytes read or copied at a time when a spooled file is finished
_CHUNK = 16 * 2**20


class SpooledWriter(Writer):
    """A :class:`Writer` whose arrays go to disk as they come, not to memory.

    The bytes are appended to a temporary file next to ``path``;
    :meth:`write` then writes the file ``path`` (the same bytes as
    :func:`write_file` would for the same entries, up to their order) by
    copying them behind the header, a chunk at a time, and replaces ``path``
    atomically. Memory holds the descriptions only. Use it as a context manager
    (the temporary file is removed on leaving, written or not).

    Parameters
    ----------
    path : str or path-like
        The file to write.
    name : str, default="path"
        The parameter an error about ``path`` names.
    """

    def __init__(self, path, name="path"):
        super().__init__()
        self.path = check_path(path, name)
        folder = check_target(self.path, name)
        fd, self._spool_path = create_temp(folder, readable=True)
        self._spool = os.fdopen(fd, "w+b")
        self._entries = {}  # name -> (offset, nbytes, dtype, shape)
        self._size = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Remove the temporary file."""
        if not self._spool.closed:
            self._spool.close()
        if os.path.exists(self._spool_path):
            os.unlink(self._spool_path)

    def _store(self, name, a):
        if name in self._entries:
            raise ValueError(f"{name!r} is written twice.")
        a = _storable(a)
        key = a.dtype.newbyteorder("<").str[1:]
        if key not in ST_DTYPES:
            raise TypeError(f"cannot store an array of dtype {a.dtype} ({name!r}).")
        self._spool.write(memoryview(a.reshape(-1).view(np.uint8)))
        self._entries[name] = (self._size, a.nbytes, ST_DTYPES[key], list(a.shape))
        self._size += a.nbytes

    def _chunks(self, offset, nbytes):
        self._spool.seek(offset)
        while nbytes > 0:
            block = self._spool.read(min(_CHUNK, nbytes))
            if not block:  # pragma: no cover - the spool is ours
                raise OSError(f"{self._spool_path} is shorter than written.")
            nbytes -= len(block)
            yield block

    def write(self, kind, model=None):
        """Write the file: the header, then the spooled bytes."""
        text = _header_text(kind, self, model)
        h = hashlib.blake2b(digest_size=32)
        h.update(text.encode())
        for name in sorted(self._entries):
            h.update(name.encode())
            for block in self._chunks(*self._entries[name][:2]):
                h.update(block)
        head = {
            name: {"dtype": dt, "shape": shape, "data_offsets": [off, off + nbytes]}
            for name, (off, nbytes, dt, shape) in self._entries.items()
        }
        head["__metadata__"] = {"skquant": text, "skquant_digest": h.hexdigest()}
        raw = json.dumps(head, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data start 8-byte aligned

        def emit(f):
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for block in self._chunks(0, self._size):
                f.write(block)

        replace_file(self.path, emit)


def _digest(text, data):
    h = hashlib.blake2b(digest_size=32)
    h.update(text.encode())
    for name in sorted(data):
        h.update(name.encode())
        h.update(np.ascontiguousarray(data[name]).tobytes())
    return h.hexdigest()


def _header_text(kind, writer, model):
    header = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "tensors": writer.tensors,
        "arrays": writer.arrays,
        "model": model or {},
    }
    return json.dumps(header, sort_keys=True, separators=(",", ":"))


def serialize(kind, writer, model=None):
    """The bytes of a skquant file."""
    from safetensors.numpy import save

    text = _header_text(kind, writer, model)
    return save(
        writer.data,
        metadata={"skquant": text, "skquant_digest": _digest(text, writer.data)},
    )


def write_file(path, kind, writer, model=None):
    """Write atomically: a temporary file in the same folder, then ``os.replace``.

    A new file gets the permissions of any new file (``0o666`` less the umask,
    e.g. ``0o644``); a file that is replaced keeps its permission bits.
    """
    blob = serialize(kind, writer, model)
    replace_file(path, lambda f: f.write(blob))


def read_file(path):
    """``(header, arrays)`` of a file, checked end to end."""
    if os.path.isdir(check_path(path)):  # (open raised IsADirectoryError)
        raise ValueError(f"path={path!s} is a folder; give a skquant file's path.")
    with open(check_path(path), "rb") as f:
        blob = bytearray(os.fstat(f.fileno()).st_size)
        n = f.readinto(blob)
    return parse(memoryview(blob)[:n], path)


_TORCH_ADVICE = (
    "Load it with torch.load (model.load_state_dict(torch.load(path))), quantize "
    "the model with skquant.torch.quantize_model and write the result with "
    "skquant.torch.save_model."
)
# the pickled magic number that starts torch.save's legacy (non-zip) format
_TORCH_LEGACY = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _zip_names(blob):
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return []


def _foreign(blob, path, n):
    """The error for a file that is not a skquant (safetensors) file: what it
    looks like from its first bytes, and what to do with it."""
    what = None
    if blob[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        names = _zip_names(blob)
        if any(name.endswith("data.pkl") for name in names):
            what = (
                "it is a PyTorch checkpoint (a zip archive written by torch.save, as "
                "a .pt or .pth file is). " + _TORCH_ADVICE
            )
        elif names and all(name.endswith(".npy") for name in names):
            what = (
                "it is a NumPy .npz archive (numpy.savez). Read it with numpy.load, "
                "quantize its arrays with skquant.quantize and write them with "
                "skquant.save."
            )
        else:
            what = (
                "it is a zip archive, as a PyTorch checkpoint (torch.save, .pt or "
                ".pth) is. If it is one: "
                + _TORCH_ADVICE[0].lower()
                + _TORCH_ADVICE[1:]
            )
    elif blob.startswith(_TORCH_LEGACY):
        what = (
            "it is a PyTorch checkpoint in torch.save's legacy (pickle) format. "
            + _TORCH_ADVICE
        )
    elif blob[:1] == b"\x80" and 2 <= blob[1] <= 5:
        what = (
            f"it is a Python pickle (protocol {blob[1]}: pickle, joblib or an old "
            "torch.save). skquant files hold no pickle and no code. If it is a "
            "PyTorch checkpoint: " + _TORCH_ADVICE[0].lower() + _TORCH_ADVICE[1:]
        )
    elif blob.startswith(b"\x93NUMPY"):
        what = (
            "it is a NumPy .npy file. Read it with numpy.load, quantize it with "
            "skquant.quantize and write that with skquant.save."
        )
    elif blob.startswith(b"\x89HDF\r\n\x1a\n"):
        what = "it is an HDF5 file (a Keras .h5 model is one)."
    if what is not None:
        return FileFormatError(f"{path!s} is not a skquant file: {what}")
    fits = n <= len(blob) - 8
    if blob[8:9] == b"{" and n <= MAX_HEADER:  # a safetensors header
        if fits:
            return FileFormatError(f"{path!s} is corrupted: its header is not JSON.")
        return FileFormatError(
            f"{path!s} is truncated: its header says {n} bytes, and the file has "
            f"{len(blob)} bytes in all."
        )
    found = (
        "this one's has no JSON header after them"
        if fits
        else f"this one's give {n} bytes, and the file has {len(blob)} bytes"
    )
    return FileFormatError(
        f"{path!s} is not a skquant file: skquant.load reads files written by "
        "skquant.save (and skquant.torch.load_into those of "
        "skquant.torch.save_model), whose first 8 bytes are the length of the JSON "
        f"header that follows; {found}."
    )


def _views(raw, blob, start, path):
    """The arrays of a skquant file as views of its bytes (``start``: where its
    data begin), laid out as :func:`._safetensors.layout` checks."""
    dtypes = {v: np.dtype(k).newbyteorder("<") for k, v in ST_DTYPES.items()}
    out = {}
    for name, (dt, shape, begin, _) in _safetensors.layout(
        raw, len(blob) - start, f"{path!s}"
    ).items():
        if dt not in dtypes:
            raise FileFormatError(f"{path!s}: entry {name!r} has dtype {dt}.")
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(blob, dtypes[dt], count, start + begin).reshape(shape)
    return out


def parse(blob, path="<bytes>"):
    """``(header, arrays)`` of a file's bytes, checked end to end; the arrays are
    views of ``blob`` (writable when it is a ``bytearray``)."""
    if len(blob) < 8:
        raise FileFormatError(
            f"{path!s} is not a skquant file: it has {len(blob)} bytes."
        )
    (n,) = struct.unpack("<Q", blob[:8])
    if n > min(MAX_HEADER, len(blob) - 8):
        raise _foreign(bytes(blob), path, n)
    try:
        raw = json.loads(bytes(blob[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _foreign(bytes(blob), path, n) from exc
    try:
        meta = raw.get("__metadata__") or {}
        text = meta["skquant"]
        digest = meta["skquant_digest"]
    except (AttributeError, KeyError, TypeError) as exc:
        raise FileFormatError(
            f"{path!s} is a safetensors file but not a skquant file (no readable "
            f"skquant header: {exc!r}). Read it with safetensors "
            "(safetensors.torch.load_file or safetensors.numpy.load_file); to "
            "quantize the weights in it, load them into their model and use "
            "skquant.torch.quantize_model, or quantize arrays with skquant.quantize."
        ) from exc
    if not isinstance(raw, dict):
        raise FileFormatError(f"{path!s} is corrupted: its header is not a table.")
    data = _views(raw, blob, 8 + n, path)
    if not isinstance(text, str) or _digest(text, data) != digest:
        raise FileFormatError(
            f"{path!s} is corrupted: its contents do not match the digest written "
            "with them."
        )
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:  # pragma: no cover - the digest caught it
        raise FileFormatError(f"{path!s} has an unreadable skquant header.") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FileFormatError(f"{path!s} is not a skquant file.")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise FileFormatError(
            f"{path!s} has format version {version!r}; this skquant reads version "
            f"{VERSION} and older. Upgrade skquant to read it."
        )
    for key in ("tensors", "arrays", "model"):
        if not isinstance(header.get(key), dict):
            raise FileFormatError(f"{path!s} has no valid {key!r} section.")
    return header, data


def tensors_from(header, data, path):
    return {name: tensor_named(header, data, path, name) for name in header["tensors"]}


def tensor_named(header, data, path, name):
    """The quantized tensor ``name`` of a parsed file."""
    meta = header["tensors"].get(name)
    if not isinstance(meta, dict):
        raise FileFormatError(f"{path!s}: tensor {name!r} has no description.")
    arrays = {
        k.split("/", 1)[1]: v for k, v in data.items() if k.startswith(name + "/")
    }
    return tensor_from(meta, arrays, f"{path!s}: tensor {name!r}")


def arrays_from(header, data, path):
    out = {}
    for name, meta in header["arrays"].items():
        if name not in data:
            raise FileFormatError(f"{path!s}: array {name!r} is missing.")
        a = data[name]
        # (the digest covers the bytes and the skquant header, not the
        # safetensors entry's dtype and shape: they must be the recorded ones)
        if not isinstance(meta, dict) or (
            np.dtype(a.dtype).newbyteorder("<").str,
            list(a.shape),
        ) != (meta.get("dtype"), meta.get("shape")):
            raise FileFormatError(
                f"{path!s} is corrupted: array {name!r} is {a.dtype} of shape "
                f"{tuple(a.shape)}, recorded as {meta!r:.80}."
            )
        out[name] = np.array(a)  # its own memory, not the file's
    return out


# ------------------------------------------------------------------- public
def save(obj, path):
    """Write a quantized tensor, a dict of them, or a fitted ``QuantizedMLP``.

    The file is a safetensors file (no code runs when it is read) whose bytes are
    the counted size (:attr:`QuantizedTensor.size_bits`, ``QuantizedMLP.size_bits_``)
    plus a header; see :mod:`skquant._tensor._io` for the layout. torch models are saved
    by :func:`skquant.torch.save_model`.

    Parameters
    ----------
    obj : QuantizedTensor, dict of {str: QuantizedTensor or ndarray} or QuantizedMLP
        What to store. A dict may mix quantized tensors and plain arrays.
    path : str or path-like
        The file to write, replaced atomically. A new file gets the permissions
        of any new file (``0o666`` less the umask, e.g. ``0o644``); a file that
        is replaced keeps its permission bits.

    See Also
    --------
    load : Read it back.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import skquant
    >>> W = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    >>> qt = skquant.quantize(W, n_bits=4)
    >>> path = os.path.join(tempfile.mkdtemp(), "w.skq")
    >>> skquant.save(qt, path)
    >>> back = skquant.load(path)
    >>> bool(np.array_equal(back.dequantize(), qt.dequantize()))
    True
    >>> os.path.getsize(path) - qt.size_bits // 8 < 1024   # bytes of header
    True
    """
    writer = Writer()
    model = None
    if isinstance(obj, QuantizedTensor):
        kind = "tensor"
        writer.tensor("tensor", obj)
    elif isinstance(obj, dict):
        kind = "dict"
        for name, value in obj.items():
            if (
                not isinstance(name, str)
                or not name
                or "/" in name
                or name == "__metadata__"  # the safetensors header's own entry
            ):
                raise ValueError(
                    "dict keys must be non-empty strings without '/', other than "
                    f"'__metadata__', got {name!r} instead."
                )
            if isinstance(value, QuantizedTensor):
                writer.tensor(name, value)
            elif isinstance(value, np.ndarray):
                writer.array(name, value)
            else:
                raise TypeError(
                    f"dict values must be QuantizedTensor or ndarray, got "
                    f"{type(value).__name__} for {name!r} instead."
                )
    elif isinstance(obj, tuple(_MODELS.values())):
        kind = type(obj).__name__
        model = obj._to_file(writer)
    else:
        raise TypeError(
            "skquant.save stores a QuantizedTensor, a dict of them or a fitted "
            f"QuantizedMLP, got {type(obj).__name__} instead (torch models: "
            "skquant.torch.save_model)."
        )
    write_file(path, kind, writer, model)


def load(path):
    """Read what :func:`save` wrote; no code from the file runs.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.

    Returns
    -------
    obj : QuantizedTensor, dict or QuantizedMLP
        What was saved: codes, scales and predictions are bit for bit the same.

    Raises
    ------
    ValueError
        When the file is truncated, corrupted (the digest does not match), of a
        newer format version, or not a skquant file; the message names the path
        and, for a PyTorch checkpoint, a pickle or a NumPy file, says so and what
        to do with it.

    See Also
    --------
    save : Write one.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import skquant
    >>> path = os.path.join(tempfile.mkdtemp(), "t.skq")
    >>> skquant.save({"w": skquant.quantize(np.eye(4), n_bits=2),
    ...               "b": np.zeros(4)}, path)
    >>> sorted(skquant.load(path))
    ['b', 'w']
    """
    header, data = read_file(path)
    kind = header.get("kind")
    if kind == "tensor":
        return tensors_from(header, data, path)["tensor"]
    if kind == "dict":
        out = arrays_from(header, data, path)
        out.update(tensors_from(header, data, path))
        return out
    if kind in _MODELS:
        return _MODELS[kind]._from_file(
            header["model"],
            tensors_from(header, data, path),
            arrays_from(header, data, path),
            path,
        )
    if kind == "torch":
        raise FileFormatError(
            f"{path!s} holds a torch model: read it with "
            "skquant.torch.load_into(model, path)."
        )
    raise FileFormatError(f"{path!s} holds an unknown kind {kind!r}.")


def json_params(params):
    """The parameters that are JSON values (numbers, strings, None, lists of them).

    Others (estimator objects, random generators) are left out: a loaded model
    predicts without them.
    """
    out = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, tuple):
            v = list(v)
        if v is None or isinstance(v, str | bool | numbers.Real | list):
            out[k] = v
    return out
