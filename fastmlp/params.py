"""Params: the network's weights and biases, their initialisation, and save/load.

    params = init_params((784, 72, 36, 10), scheme="he", seed=0, dtype=np.float32)
    params.weights[i]   # shape (fan_in, fan_out), C-contiguous     z = a @ W + b
    params.biases[i]    # shape (fan_out,)

The same seed gives the same numbers on every backend: initialisation happens here, once, in
float64 from ``numpy.random.default_rng(seed)``, and is then cast to the requested dtype.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import atomic_write

__all__ = ["Params", "init_params", "SCHEMES", "DTYPES", "as_dtype"]

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


def check_sizes(sizes) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in sizes)
    except (TypeError, ValueError):
        raise TypeError(f"sizes must be a sequence of integers like (784, 72, 36, 10); got {sizes!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least two layer widths, each >= 1; got {sizes}")
    return sizes


ALIGN = 64   # bytes: a cache line


def empty_aligned(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a cache-line (64-byte) boundary.

    NumPy's own arrays start wherever malloc puts them, often 16 bytes past a line. A weight row
    of 72 float32 is 288 bytes, so then every other 32-byte vector load or store of a row
    straddles two cache lines: a row split across two lines costs a second load, and the
    jitted kernels' sparse products slow down by up to 40%."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
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

    Gradients are Params too (``grads.weights[i]`` is dL/dW_i).
    """

    weights: list
    biases: list

    def __post_init__(self):
        if len(self.weights) != len(self.biases) or not self.weights:
            raise ValueError(f"Params needs one bias per weight matrix and at least one layer; "
                             f"got {len(self.weights)} weights and {len(self.biases)} biases")
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
        return Params([W.copy() for W in self.weights], [b.copy() for b in self.biases])

    def zeros_like(self) -> "Params":
        return Params([np.zeros_like(W) for W in self.weights], [np.zeros_like(b) for b in self.biases])

    def astype(self, dtype) -> "Params":
        dt = as_dtype(dtype)
        return Params([W.astype(dt) for W in self.weights], [b.astype(dt) for b in self.biases])

    def all_finite(self) -> bool:
        return all(np.isfinite(a).all() for a in self.arrays())

    def save(self, path) -> Path:
        """Write an .npz with every array plus the sizes, dtype and a format tag.

        The file is written to a temporary name beside ``path`` and renamed into place, so an
        interrupted save leaves no partial file.
        """
        path = Path(path)
        arrays = {f"W{i}": W for i, W in enumerate(self.weights)}
        arrays.update({f"b{i}": b for i, b in enumerate(self.biases)})
        arrays["sizes"] = np.asarray(self.sizes, dtype=np.int64)
        arrays["dtype"] = np.asarray(self.dtype.name)
        arrays["format"] = np.asarray(FORMAT)
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        return path

    @classmethod
    def load(cls, path) -> "Params":
        """Read a file written by ``save``. Anything else is a ValueError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z.files or str(z["format"]) != FORMAT:
                    raise ValueError("no fastmlp format tag")
                sizes = tuple(int(s) for s in z["sizes"])
                dtype = str(z["dtype"])
                L = len(sizes) - 1
                weights = [z[f"W{i}"] for i in range(L)]
                biases = [z[f"b{i}"] for i in range(L)]
            params = cls(weights, biases)
        except (ValueError, KeyError, OSError, TypeError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"{path}: not a fastmlp model file (.npz written by Params.save): "
                             f"{exc}") from None
        if params.sizes != sizes or params.dtype.name != dtype:
            raise ValueError(f"{path}: not a consistent fastmlp model file: it declares sizes {sizes} "
                             f"and dtype {dtype}; the arrays have {params.sizes}, {params.dtype}")
        return params


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
