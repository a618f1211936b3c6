"""Params: the network's weights and biases, their initialisation, and save/load.

    params = init_params((784, 72, 36, 10), scheme="he", seed=0, dtype=np.float32)
    params.weights[i]   # shape (fan_in, fan_out), C-contiguous     z = a @ W + b
    params.biases[i]    # shape (fan_out,)

The same seed gives the same numbers on every backend: initialisation happens here, once, in
float64 from ``numpy.random.default_rng(seed)``, and is then cast to the requested dtype.
"""

from __future__ import annotations

import json
import math
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import atomic_write

__all__ = ["Params", "init_params", "load_model", "load_meta", "SCHEMES", "DTYPES", "as_dtype"]

SCHEMES = ("uniform", "he")
DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
FORMAT = "fastmlp.Params/1"


def as_dtype(dtype) -> np.dtype:
    """np.float32 / "float32" / np.dtype(...) -> np.dtype; anything else is a TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64; got {dtype!r}")
    return dt


# Limits on a network's shape (a model file declares its own: it is believed only within these).
MAX_LAYERS = 64                   # weight layers
MAX_WIDTH = 1 << 16               # units in one layer
MAX_INPUTS = 1 << 24              # inputs (features): a sparse input may have many
MAX_PARAMETERS = 100_000_000      # weights and biases in all: 400 MB in float32
MAX_MODEL_MEMBERS = 4 + 2 * MAX_LAYERS   # arrays in a model file: format, sizes, dtype, meta, W
                                         # and b per layer (zipfile parses every entry it lists)
MAX_META_CHARS = 1 << 22                 # a model's description (JSON): class labels, feature
                                         # names, training options


def check_sizes(sizes) -> tuple[int, ...]:
    """Layer widths: a sequence (not a string) of at least two integers (not bools or floats),
    each in 1..MAX_WIDTH (the inputs in 1..MAX_INPUTS), at most MAX_LAYERS + 1 of them, at most
    MAX_PARAMETERS parameters."""
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise TypeError(f"sizes must be a sequence of integers like (784, 72, 36, 10); got {sizes!r}")
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
    if bad:
        raise TypeError(f"sizes must be integers like (784, 72, 36, 10); got {bad[0]!r} in "
                        f"{tuple(sizes)!r}")
    sizes = tuple(int(s) for s in sizes)
    if not 2 <= len(sizes) <= MAX_LAYERS + 1 or min(sizes) < 1 or max(sizes[1:]) > MAX_WIDTH \
            or sizes[0] > MAX_INPUTS:
        raise ValueError(f"sizes must list 2 to {MAX_LAYERS + 1} layer widths, each in "
                         f"1..{MAX_WIDTH} (the inputs in 1..{MAX_INPUTS}); got {sizes}")
    n = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    if n > MAX_PARAMETERS:
        raise ValueError(f"sizes {sizes} make {n} parameters; at most {MAX_PARAMETERS}")
    return sizes


ALIGN = 64   # bytes: a cache line


def empty_aligned(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a cache-line (64-byte) boundary.

    NumPy's own arrays start wherever malloc puts them, often 16 bytes past a line. A weight row
    of 72 float32 is 288 bytes, so then every other 32-byte vector load or store of a row
    straddles two cache lines: a row split across two lines costs a second load, and the
    jitted kernels' sparse products slow down by up to 40%."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    buf = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = (-buf.ctypes.data) % ALIGN
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def zeros_aligned(shape, dtype) -> np.ndarray:
    """Like np.zeros, on a cache-line boundary (see empty_aligned)."""
    a = empty_aligned(shape, dtype)
    a[...] = 0
    return a


def as_aligned(a) -> np.ndarray:
    """a itself if it is C-contiguous and starts on a cache line, else such a copy of it."""
    a = np.ascontiguousarray(a)
    if a.ctypes.data % ALIGN == 0:
        return a
    b = empty_aligned(a.shape, a.dtype)
    b[...] = a
    return b


@dataclass
class Params:
    """Weights and biases of a fully connected network, layer by layer.

    weights[i] : shape (sizes[i], sizes[i+1]), C-contiguous, float32 or float64
    biases[i]  : shape (sizes[i+1],), same dtype

    Every array starts on a cache line (``as_aligned``: a copy is made when one does not).
    Arrays must be float32 or float64 in the machine's byte order, and finite (a network with a
    NaN weight predicts nonsense): anything else is a TypeError or ValueError.

    Gradients are Params too (``grads.weights[i]`` is dL/dW_i); they, and copies, are made with
    ``Params._trusted``, which does not look for non-finite values (a diverged run's gradients
    may hold them; training reports that itself).
    """

    weights: list
    biases: list
    _check_finite: bool = field(default=True, repr=False, compare=False)

    @classmethod
    def _trusted(cls, weights, biases) -> "Params":
        return cls(weights, biases, False)

    def __post_init__(self):
        self.weights, self.biases = list(self.weights), list(self.biases)
        if len(self.weights) != len(self.biases) or not self.weights:
            raise ValueError(f"Params needs one bias per weight matrix and at least one layer; "
                             f"got {len(self.weights)} weights and {len(self.biases)} biases")
        for i, a in enumerate(self.weights + self.biases):
            what = f"{'W' if i < len(self.weights) else 'b'}{i % len(self.weights)}"
            if not isinstance(a, np.ndarray):
                raise TypeError(f"parameter {what} must be a numpy array; got {type(a).__name__}")
            if a.dtype.kind != "f" or not a.dtype.isnative:
                raise TypeError(f"parameters must be float32 or float64 in the machine's byte "
                                f"order; {what} is {a.dtype.str} (convert with "
                                f"a.astype(np.float32))")
            if self._check_finite and not np.isfinite(a).all():
                k = int(np.flatnonzero(~np.isfinite(a.ravel()))[0])
                raise ValueError(f"parameters must be finite; {what} holds {a.ravel()[k]} at flat "
                                 f"index {k}")
        dt = as_dtype(self.weights[0].dtype)
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            if W.dtype != dt or b.dtype != dt:
                raise TypeError(f"all parameters must share one dtype ({dt}); layer {i} has "
                                f"W {W.dtype}, b {b.dtype}")
            if W.ndim != 2 or b.shape != (W.shape[1],):
                raise ValueError(f"layer {i}: W must be (fan_in, fan_out) and b (fan_out,); got "
                                 f"W {W.shape}, b {b.shape}")
            if i and W.shape[0] != self.weights[i - 1].shape[1]:
                raise ValueError(f"layer {i}: W has {W.shape[0]} inputs but layer {i - 1} has "
                                 f"{self.weights[i - 1].shape[1]} outputs")
        self.weights = [as_aligned(W) for W in self.weights]
        self.biases = [as_aligned(b) for b in self.biases]

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.weights[0].shape[0],) + tuple(W.shape[1] for W in self.weights)

    @property
    def dtype(self) -> np.dtype:
        return self.weights[0].dtype

    def arrays(self) -> list:
        """[W0, b0, W1, b1, ...], the order updates and optimiser states use."""
        return [a for pair in zip(self.weights, self.biases) for a in pair]

    def copy(self) -> "Params":
        return Params._trusted([W.copy() for W in self.weights], [b.copy() for b in self.biases])

    def zeros_like(self) -> "Params":
        return Params._trusted([np.zeros_like(W) for W in self.weights],
                               [np.zeros_like(b) for b in self.biases])

    def astype(self, dtype) -> "Params":
        dt = as_dtype(dtype)
        return Params._trusted([W.astype(dt) for W in self.weights],
                               [b.astype(dt) for b in self.biases])

    def all_finite(self) -> bool:
        return all(np.isfinite(a).all() for a in self.arrays())

    def save(self, path, meta: dict | None = None) -> Path:
        """Write an .npz with every array plus the sizes, dtype and a format tag; with ``meta``
        (a dict that JSON can hold: class labels, feature names, the training options), that
        too, for ``load_meta``.

        The file is written to a temporary name beside ``path`` and renamed into place, so an
        interrupted save leaves no partial file.
        """
        path = Path(path)
        arrays = {f"W{i}": W for i, W in enumerate(self.weights)}
        arrays.update({f"b{i}": b for i, b in enumerate(self.biases)})
        arrays["sizes"] = np.asarray(self.sizes, dtype=np.int64)
        arrays["dtype"] = np.asarray(self.dtype.name)
        arrays["format"] = np.asarray(FORMAT)
        if meta is not None:
            text = json.dumps(meta)
            if len(text) > MAX_META_CHARS:
                raise ValueError(f"the model's description must be at most {MAX_META_CHARS} "
                                 f"characters of JSON; got {len(text)}")
            arrays["meta"] = np.asarray(text)
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        return path

    @classmethod
    def load(cls, path) -> "Params":
        """Read a file written by ``save``. Anything else is a ValueError naming the file.

        Nothing the file says is believed before it is bounded: each array's shape and dtype are
        read from its .npy header inside the zip and checked against the declared sizes (within
        check_sizes' limits) before any array is read, so a small file that claims or unpacks
        to gigabytes is refused at once."""
        return _load(path, False)[0]


def load_meta(path) -> dict:
    """The description a model file was saved with (``Params.save(path, meta)``), or {} for a
    model saved without one (the whole file checked, as ``Params.load`` checks it)."""
    return load_model(path)[1]


def load_model(path) -> tuple:
    """(Params, description) from a file written by ``Params.save``, in one reading: the
    description a dict ({} if the model was saved without one). A ValueError naming the file
    if it is not a model file or its description is not a JSON object of at most
    MAX_META_CHARS characters."""
    return _load(path, True)


def _load(path, with_meta: bool):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.is_dir():
        raise ValueError(f"{path}: a directory, not a model file (.npz written by Params.save)")
    if not path.is_file():          # (a FIFO or a device would block, or never end)
        raise ValueError(f"{path}: not a regular file; a model is an .npz written by "
                         f"Params.save")
    try:
        _check_zip_entries(path)
        with zipfile.ZipFile(path) as zf:
            weights, biases, sizes, dtype = _read_model(zf)
            meta = _read_meta(path, zf) if with_meta else None
    except (ValueError, KeyError, OSError, TypeError, zipfile.BadZipFile, EOFError,
            zlib.error, NotImplementedError, RuntimeError, struct.error, OverflowError) as exc:
        # (zipfile raises NotImplementedError for an unknown compression method and
        # RuntimeError for an encrypted member)
        raise ValueError(f"{path}: not a fastmlp model file (.npz written by Params.save): "
                         f"{exc}") from None
    except _Unreadable as exc:
        raise ValueError(str(exc)) from None
    try:
        params = Params(weights, biases)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a usable fastmlp model: {exc}") from None
    return params, meta


class _Unreadable(Exception):
    """A model's description that cannot be read (reported as such, not as a bad model)."""


def _read_meta(path, zf) -> dict:
    """The model's description (a JSON object), or {} if it has none."""
    if "meta.npy" not in zf.namelist():
        return {}
    try:
        shape, dt = _npy_header(zf, "meta")
        if shape != () or dt.kind != "U" or dt.itemsize // 4 > MAX_META_CHARS:
            raise ValueError(f"its description must be a JSON string of at most "
                             f"{MAX_META_CHARS} characters; the file says {dt.str} {shape}")
        meta = json.loads(str(_npy_read(zf, "meta", (), "U")))
    except (ValueError, KeyError, OSError, zipfile.BadZipFile, EOFError, zlib.error,
            RecursionError) as exc:
        raise _Unreadable(f"{path}: unreadable model description: {exc}") from None
    if not isinstance(meta, dict):
        raise _Unreadable(f"{path}: the model's description must be a JSON object; got "
                          f"{type(meta).__name__}")
    return meta


def _check_zip_entries(path: Path) -> None:
    """A ValueError if the zip's end record lists more than MAX_MODEL_MEMBERS entries, read
    before zipfile builds an object for every one of them."""
    with open(path, "rb") as fh:
        try:
            end = zipfile._EndRecData(fh)          # (zipfile's own reader of the end record)
        except (AttributeError, OSError):
            return
    if end is None:
        raise ValueError("not a zip archive")
    total = end[zipfile._ECD_ENTRIES_TOTAL]
    if total > MAX_MODEL_MEMBERS:
        raise ValueError(f"the archive lists {total} entries; a model has at most "
                         f"{MAX_MODEL_MEMBERS}")


def _npy_header(zf, name):
    """(shape, dtype) of member ``name``.npy, from its header alone."""
    with zf.open(name + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"array {name}: unsupported .npy format version {version}")
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        try:
            shape, fortran, dtype = read(fh)
        except (ValueError, SyntaxError, tokenize.TokenError, TypeError) as exc:
            raise ValueError(f"array {name}: unreadable .npy header ({exc})") from None
    if fortran:
        raise ValueError(f"array {name}: stored in Fortran order; Params.save writes C order")
    return tuple(shape), np.dtype(dtype)


def _npy_read(zf, name, shape, kinds):
    """Member ``name``.npy, after its header says it has ``shape`` and a dtype of one of
    ``kinds`` (numpy dtype kinds)."""
    got_shape, dt = _npy_header(zf, name)
    if got_shape != shape or dt.kind not in kinds or dt.hasobject:
        raise ValueError(f"array {name} must have shape {shape} and a dtype of kind "
                         f"{'/'.join(kinds)}; the file says {got_shape} {dt.str}")
    with zf.open(name + ".npy") as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _read_model(zf):
    """(weights, biases, sizes, dtype name) from an open .npz, every shape checked first."""
    names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    for need in ("format", "sizes", "dtype"):
        if need not in names:
            raise ValueError(f"no {need!r} array (no fastmlp format tag)")
    if str(_npy_read(zf, "format", (), "U")) != FORMAT:
        raise ValueError("no fastmlp format tag")
    k = _npy_header(zf, "sizes")[0]
    if len(k) != 1 or not 2 <= k[0] <= MAX_LAYERS + 1:
        raise ValueError(f"sizes must list 2 to {MAX_LAYERS + 1} widths; the file says shape {k}")
    sizes = check_sizes(tuple(_npy_read(zf, "sizes", k, "iu").tolist()))
    dtype = str(_npy_read(zf, "dtype", (), "U"))
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; the file says {dtype!r}")
    L = len(sizes) - 1
    weights, biases = [], []
    for i in range(L):
        for name, shape, out in ((f"W{i}", (sizes[i], sizes[i + 1]), weights),
                                 (f"b{i}", (sizes[i + 1],), biases)):
            if name not in names:
                raise ValueError(f"no array {name!r} for the declared sizes {sizes}")
            got, dt = _npy_header(zf, name)
            if got != shape or dt != DTYPES[dtype]:
                raise ValueError(f"array {name} must be {dtype} of shape {shape} (the declared "
                                 f"sizes {sizes} and dtype); the file says {dt.str} {got}")
            out.append(_npy_read(zf, name, shape, "f"))
    return weights, biases, sizes, dtype


def init_params(sizes=(784, 72, 36, 10), scheme: str = "he", seed: int = 0,
                dtype=np.float32) -> Params:
    """Initial weights and biases.

    scheme "uniform": weights and biases uniform in [-0.5, 0.5) (the original project);
    scheme "he":      weights normal with std sqrt(2 / fan_in), biases zero.

    The draws are made in float64, layer by layer (W then b), then cast to ``dtype``.
    """
    sizes = check_sizes(sizes)
    dt = as_dtype(dtype)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    rng = np.random.default_rng(int(seed))
    weights, biases = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if scheme == "uniform":
            W = rng.random((fan_in, fan_out)) - 0.5
            b = rng.random(fan_out) - 0.5
        else:
            W = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
            b = np.zeros(fan_out)
        weights.append(W.astype(dt))
        biases.append(b.astype(dt))
    return Params(weights, biases)
