"""The sparse input: ``CSR``, the compression that makes it (``to_csr``, ``prepare``), the checks
of a CSR made by hand, and the per-CSR caches of indexes that the kernels reuse.

Legend
------
    indptr   int64 (n + 1,): row i's entries are indptr[i]:indptr[i + 1]
    indices  uint16 (nnz,): each entry's column, increasing within a row; uint32 for a CSR of
             more than 65,536 columns (``_index_dtype``)
    values   uint8 pixels (nnz,) read through lut (pixel / 255 in the working dtype), or floats
    lut      float32/float64 (256,) for uint8 values, else empty

The kernels read a ``KernelCSR``: the same arrays, with uint8 pixels and float values in
separate fields, so that both kinds of CSR have one Numba type per dtype and every kernel
compiles once for them (``_value`` in _codegen picks the field at run time). Wider inputs
than 65,536 columns are a kind of their own (uint32 column indices: one more compiled set, made
the first time such data is used); two bytes per entry instead of four for everything narrower.

``_count_nonzero_rows``, ``_fill_csr`` and ``_row_cuts`` prange over rows (each owns its own
output slots).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload
from llvmlite.binding import llvm_version_info

from ..params import Params
from .._validate import check_X
from . import _options
from ._options import CHUNK, ROW_GROUP, STRICT
from ._codegen import _compress_ir, _left_pack_ir, _target_has
from ._fork import _check_not_forked


class _CSRFields(NamedTuple):
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    lut: np.ndarray
    n_cols: int


class CSR(_CSRFields):
    """A batch of inputs in compressed-sparse-row form.

    indptr  int64 (n + 1,): row i's entries are indptr[i]:indptr[i + 1]
    indices uint16 (nnz,): column (pixel) of each entry, increasing within each row; uint32
            if n_cols > 65,536 (_index_dtype)
    values  uint8 pixels (nnz,), whose input value is lut[pixel] (= pixel / 255 in the working
            dtype, exactly as the reference computes it); or float32/float64 values as they are
    lut     float32 or float64 (256,) for uint8 values; empty, of the values' dtype, otherwise
    n_cols  number of columns (784)

    ``to_csr`` and ``prepare`` make them. One made by hand is checked once, when a function
    first receives it (``_check_csr``: the kernels do no bounds checks). The arrays of a CSR that
    to_csr makes are read-only views: the kernels read writable twins the caller never sees.
    A CSR is not changed
    once built (the kernels cache indexes of it: _cached_for_csr). ``len`` is the number of rows.
    uint8 values make the training set 3 bytes per non-zero pixel (27 MB for MNIST's 9 million),
    small enough for the last-level cache, which matters when mini-batches visit rows at random.
    """

    __slots__ = ()

    @classmethod
    def _make(cls, iterable):
        # NamedTuple's own _make (behind _replace) counts the fields with len(), the rows here
        result = tuple.__new__(cls, iterable)
        if tuple.__len__(result) != len(cls._fields):
            raise TypeError(f"a CSR has {len(cls._fields)} fields "
                            f"({', '.join(cls._fields)}); got {tuple.__len__(result)}")
        return result

    @property
    def shape(self):
        return (len(self.indptr) - 1, self.n_cols)

    @property
    def dtype(self):
        return self.lut.dtype

    def __len__(self):
        return len(self.indptr) - 1

    @property
    def density(self):
        n = len(self)
        return len(self.values) / max(1, n * self.n_cols)


class KernelCSR(NamedTuple):
    """A CSR as the kernels read it (_Entry.kernel), in writable arrays:

    indptr, indices, n_cols   the CSR's
    pixels  uint8 (nnz,) for a CSR of pixels, else empty
    values  float32/float64 (nnz,) for a CSR of floats, else empty, of the lut's dtype
    lut     the CSR's: (256,) for pixels, empty for floats (so ``len(lut) != 0`` tells the kind)
    """
    indptr: np.ndarray
    indices: np.ndarray
    pixels: np.ndarray
    values: np.ndarray
    lut: np.ndarray
    n_cols: int

    def __len__(self):
        return len(self.indptr) - 1


MAX_COLS = 1 << 32     # columns a CSR may have (uint32 indices)


UINT16_COLS = 1 << 16  # columns a CSR may have with uint16 column indices


def _index_dtype(n_cols: int) -> np.dtype:
    """The dtype of the column indices of a CSR of n_cols columns: uint16 up to UINT16_COLS =
    65,536 columns (MNIST and most tables: 2 bytes per entry), uint32 beyond."""
    return np.dtype(np.uint16 if n_cols <= UINT16_COLS else np.uint32)


def _kernel_csr(indptr, indices, values, lut, n_cols) -> KernelCSR:
    """The KernelCSR of a CSR's fields (the arrays themselves, not copies)."""
    if values.dtype == np.uint8:
        return KernelCSR(indptr, indices, values, np.zeros(0, lut.dtype), lut, n_cols)
    return KernelCSR(indptr, indices, np.zeros(0, np.uint8), values, lut, n_cols)


# ----------------------------------------------------------------------------------------------
# building the sparse input (once per dataset)


@njit(parallel=True, **STRICT)
def _count_nonzero_rows(X, bad):
    """Non-zero entries per row; and, if bad has a slot per row, bad[i] = 1 where row i holds a
    NaN or inf (strict arithmetic keeps the test): the check rides along the one pass over X
    that compressing needs anyway (a separate np.isfinite pass cost more than the count)."""
    n = X.shape[0]
    counts = np.empty(n, dtype=np.int64)
    check = bad.shape[0] == n
    for i in prange(n):
        c = 0
        if check:
            b = 0
            for j in range(X.shape[1]):
                x = X[i, j]
                c += x != 0
                b += not np.isfinite(x)
            bad[i] = b > 0
        else:
            for j in range(X.shape[1]):
                if X[i, j] != 0:
                    c += 1
        counts[i] = c
    return counts


@njit(inline="always", **STRICT)
def _compress_range(x, j0, j1, indices, values, p):
    """Copy the non-zero x[j0:j1] to values[p:], their columns to indices[p:], in order; return
    p plus their count. The plain loop."""
    for k in range(j0, j1):
        v = x[k]
        if v != 0:
            indices[p] = k
            values[p] = v
            p += 1
    return p


def _compress_chunk(x, j, indices, values, p):
    """_compress_range over the CHUNK columns from j. This body (the plain loop) runs without
    the JIT and on CPUs without AVX2; compiled code runs a vector form instead (_compress_ir
    with AVX-512, _left_pack_ir with AVX2): the same entries. The AVX2 form also writes
    garbage into up to CHUNK entries past the returned p, which _fill_csr leaves room for."""
    return _compress_range(x, j, j + CHUNK, indices, values, p)


@overload(_compress_chunk, inline="always", jit_options=STRICT)
def _compress_chunk_impl(x, j, indices, values, p):
    # (llvm.experimental.vector.compress exists from LLVM 19 on; without AVX-512 LLVM emulates
    # it lane by lane, 2-3x slower than the plain loop: AVX2 takes the table-driven left-pack)
    # (the vector forms write uint16 columns: wider CSRs take the plain loop)
    if not (x.dtype == types.uint8 or x.dtype in (types.float32, types.float64)) \
            or indices.dtype != types.uint16:
        return _compress_chunk
    if _target_has("avx512f") and llvm_version_info >= (19,):
        return lambda x, j, indices, values, p: _compress_ir(x, j, indices, values, p)
    if _target_has("avx2"):
        return lambda x, j, indices, values, p: _left_pack_ir(x, j, indices, values, p)
    return _compress_chunk


@njit(parallel=True, **STRICT)
def _fill_csr(X, indptr, indices, values):
    """Write row i's non-zero entries at indptr[i]:indptr[i + 1], CHUNK columns at a time, with
    no branch per pixel in compiled code (the plain loop's branch mispredicts at every stroke
    edge): 60,000 MNIST rows in float32 in 7 ms with AVX-512's compress, against 24 ms for the
    plain loop (Zen 4); with AVX2's left-pack 73 -> 12 ms (Zen 3). The left-pack writes whole
    vectors, so a chunk may write past its row's entries into the next row's, which that row
    then writes over: so rows go in groups of ROW_GROUP, in order, each group on one thread,
    and a chunk is written this way only while it cannot reach past its group's entries (the
    rest of a row, the plain loop)."""
    m = X.shape[1]
    n = X.shape[0]
    for g in prange((n + ROW_GROUP - 1) // ROW_GROUP):
        i1 = min(n, (g + 1) * ROW_GROUP)
        limit = indptr[i1]
        for i in range(g * ROW_GROUP, i1):
            x = X[i]
            p = indptr[i]
            j = 0
            while j + CHUNK <= m and p + CHUNK <= limit:
                p = _compress_chunk(x, j, indices, values, p)
                j += CHUNK
            _compress_range(x, j, m, indices, values, p)


def to_csr(X, dtype=None, *, pixels: bool = True, keep_zeros=False) -> CSR:
    """Compress a batch: uint8 pixels (divided by 255 in ``dtype``, exactly as the reference's
    ``prepare`` does; with ``pixels=False``, uint8 values taken as they are, 0..255) or float
    values (kept as they are). Any number of columns (uint16 indices up to 65,536, else uint32).
    The CSR's arrays are read-only.

    ``keep_zeros`` (float X only): True stores every entry, zeros too (a *full* CSR, whose
    blocks the kernels run as dense products in register tiles: faster than the sparse row
    loop from about DENSE_FROM non-zero on); "auto" does so if at least DENSE_FROM of X is
    non-zero (as MLPClassifier and the functions given dense X do); False (default) keeps only
    the non-zeros. The results are the same numbers either way (a zero entry adds a zero
    product), but for the sign of a zero and where a weight is infinite (0 * inf is NaN, as in
    the reference's X @ W)."""
    _check_not_forked()
    return _compress(X, dtype, False, pixels, keep_zeros)


def _compress(X, dtype, find_finite: bool, pixels: bool = True, keep_zeros=False) -> CSR:
    """to_csr; with find_finite, float X is also checked for NaN and inf on the way (recorded
    with the CSR for _all_finite: for predict, where it saves a pass over X; training on dense X
    does not pay for it)."""
    if not (keep_zeros is False or keep_zeros is True or keep_zeros == "auto"):
        raise ValueError(f"keep_zeros must be False, True or 'auto'; got {keep_zeros!r}")
    X = np.ascontiguousarray(X)
    if X.dtype not in (np.uint8, np.float32, np.float64):
        raise TypeError(f"X must hold uint8 pixels or float32/float64 values; got {X.dtype}")
    if dtype is not None and np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64; got {np.dtype(dtype)}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, features); got shape {X.shape}")
    if X.shape[1] > MAX_COLS:
        raise ValueError(f"X must have at most {MAX_COLS} columns; got {X.shape[1]}")
    if keep_zeros is True and X.dtype == np.uint8:
        raise TypeError("keep_zeros=True needs float X (dense rows run as floats); got uint8, "
                        "whose values are read through a table: convert it to float32 first")
    find_finite = find_finite and X.dtype != np.uint8
    bad = np.zeros(len(X) if find_finite else 0, dtype=np.uint8)
    counts = _count_nonzero_rows(X, bad)
    n, m = X.shape
    if keep_zeros == "auto":
        keep_zeros = counts.sum() >= _options.DENSE_FROM * n * m
    if keep_zeros and X.dtype != np.uint8:          # every entry: row i is X[i] itself
        indptr = np.arange(0, n * m + 1, max(m, 1), dtype=np.int64)[:n + 1]
        indices = np.tile(np.arange(m, dtype=_index_dtype(m)), n)
        values = X.reshape(-1).copy()
    else:
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        nnz = int(indptr[-1])
        indices = np.empty(nnz, dtype=_index_dtype(m))
        values = np.empty(nnz, dtype=X.dtype)
        _fill_csr(X, indptr, indices, values)
    if X.dtype == np.uint8:
        dt = np.dtype(dtype or np.float32)
        lut = _pixel_lut(dt, pixels)
        finite = True
    else:
        lut = np.zeros(0, dtype=X.dtype)
        finite = not bad.any() if find_finite else None    # None: found when first asked
    csr = CSR(*(_read_only(a) for a in (indptr, indices, values, lut)), X.shape[1])
    _remember(csr, finite, _kernel_csr(indptr, indices, values, lut, X.shape[1]))
    return csr


def _pixel_lut(dt, pixels: bool = True) -> np.ndarray:
    """The table of a CSR of uint8 values in dtype dt: pixel / 255 (exactly the reference's
    values), or with pixels False the values as they are."""
    lut = np.arange(256).astype(dt)
    if pixels:
        lut /= np.asarray(255, dtype=dt)
    return lut


def from_scipy(A, dtype) -> CSR:
    """A scipy.sparse matrix or array (any format) as a CSR of ``dtype`` values: the same
    numbers, duplicates summed, columns sorted within each row (A itself is not changed).
    Any number of columns, as to_csr. The CSR's arrays are read-only."""
    import scipy.sparse as sp

    _check_not_forked()
    if not sp.issparse(A):
        raise TypeError(f"A must be a scipy.sparse matrix or array; got {type(A).__name__}")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64; got {dt}")
    if A.ndim != 2:
        raise ValueError(f"A must be 2-D (n, features); got shape {A.shape}")
    if A.shape[1] > MAX_COLS:
        raise ValueError(f"A must have at most {MAX_COLS} columns; got {A.shape[1]}")
    A = sp.csr_array(A)
    if not A.has_canonical_format:
        A = A.copy()
        A.sum_duplicates()
    kernel = _kernel_csr(A.indptr.astype(np.int64), A.indices.astype(_index_dtype(A.shape[1])),
                         np.array(A.data, dtype=dt), np.zeros(0, dtype=dt), A.shape[1])
    csr = CSR(*(_read_only(a) for a in (kernel.indptr, kernel.indices, kernel.values,
                                        kernel.lut)), A.shape[1])
    _remember(csr, None, kernel)
    return csr


def _read_only(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.setflags(write=False)
    return v


# CSRs known to be well formed: every one to_csr made, and those _check_csr passed whose arrays
# are all read-only; by the id of their indptr (several CSRs may share one, e.g. through
# _replace), forgotten with it. A CSR whose arrays can still be written is checked at every call
# instead: a change after a one-time check would reach kernels that do no bounds checks.
_CHECKED_CSRS: dict = {}


class _Entry:
    """What is known of a checked CSR: weak references to its four arrays, n_cols, whether its
    values are all finite (None: not yet known), and ``kernel``, the KernelCSR the kernels
    read: the same data in writable arrays (to_csr's own, behind the read-only views it hands
    out; a copy for a read-only CSR made by hand), so that the kernels compile for one array
    type."""

    __slots__ = ("refs", "n_cols", "finite", "kernel")

    def __init__(self, csr, finite, kernel, remember=True):
        self.refs = tuple(weakref.ref(a) for a in csr[:4]) if remember else None
        self.n_cols, self.finite, self.kernel = csr.n_cols, finite, kernel


def _remember(csr: CSR, finite, kernel) -> "_Entry":
    key = id(csr.indptr)
    if key not in _CHECKED_CSRS:
        _CHECKED_CSRS[key] = []
        weakref.finalize(csr.indptr, _CHECKED_CSRS.pop, key, None)
    entry = _Entry(csr, finite, kernel)
    _CHECKED_CSRS[key].append(entry)
    return entry


def _checked_entry(csr: CSR):
    for hit in _CHECKED_CSRS.get(id(csr.indptr), ()):
        if type(hit.n_cols) is type(csr.n_cols) and hit.n_cols == csr.n_cols \
                and all(r() is a for r, a in zip(hit.refs, csr[:4])):
            return hit
    return None


def _describe(a) -> str:
    if isinstance(a, np.ndarray):
        layout = "" if a.flags.c_contiguous else "non-contiguous "
        return f"{layout}{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _row_of(indptr, k) -> int:
    """The row that entry k of a CSR belongs to."""
    return int(np.searchsorted(indptr, k, side="right")) - 1


def _check_csr(csr: CSR) -> None:
    """A CSR that to_csr did not make must be well formed before a kernel reads it: the kernels
    do no bounds checks, so a column past n_cols or row pointers past the entries would read
    and write outside the arrays. Checks the types (as the CSR docstring says), the row
    pointers (from 0, never decreasing, to the number of entries), the columns (below n_cols,
    increasing within each row) and the table; ValueError or TypeError saying what is wrong.
    Once per CSR whose arrays are all read-only (as to_csr's are): such a CSR is remembered
    while it lives; one with a writable array is checked at every call. Returns its _Entry."""
    entry = _checked_entry(csr)
    if entry is not None:
        return entry
    indptr, indices, values, lut, n_cols = csr
    if isinstance(n_cols, bool) or not isinstance(n_cols, (int, np.integer)) \
            or not 1 <= n_cols <= MAX_COLS:
        raise ValueError(f"CSR n_cols must be an integer in 1..{MAX_COLS}; got {n_cols!r}")
    for name, a, want in (("indptr", indptr, np.int64), ("indices", indices, _index_dtype(n_cols)),
                          ("values", values, None), ("lut", lut, None)):
        if not (isinstance(a, np.ndarray) and a.ndim == 1 and a.flags.c_contiguous
                and (want is None or a.dtype == want)):
            kind = f"{np.dtype(want)} " if want is not None else ""
            why = f" (for {n_cols} columns)" if name == "indices" else ""
            raise TypeError(f"CSR {name} must be a C-contiguous 1-D {kind}array{why}; got "
                            f"{_describe(a)}")
    if values.dtype == np.uint8:
        if lut.dtype not in (np.float32, np.float64) or lut.shape != (256,):
            raise TypeError(f"CSR lut must be float32 or float64 of shape (256,) for uint8 values; "
                            f"got {_describe(lut)}")
    elif values.dtype in (np.float32, np.float64):
        if lut.dtype != values.dtype or lut.size != 0:
            raise TypeError(f"CSR lut must be an empty {values.dtype} array for {values.dtype} "
                            f"values; got {_describe(lut)}")
    else:
        raise TypeError(f"CSR values must be uint8 pixels or float32/float64 values; got "
                        f"{_describe(values)}")
    nnz = len(indices)
    if len(values) != nnz:
        raise ValueError(f"CSR values must hold one value per entry ({nnz}); got {len(values)}")
    if len(indptr) < 1 or indptr[0] != 0:
        raise ValueError(f"CSR indptr must start at 0; got "
                         f"{indptr[0] if len(indptr) else 'an empty array'}")
    if indptr[-1] != nnz:
        raise ValueError(f"CSR indptr must end at the number of entries ({nnz}); got {indptr[-1]}")
    down = np.flatnonzero(indptr[1:] < indptr[:-1])
    if len(down):
        i = int(down[0])
        raise ValueError(f"CSR indptr must not decrease; got indptr[{i + 1}] = {indptr[i + 1]} "
                         f"after indptr[{i}] = {indptr[i]}")
    if nnz and indices.max() >= n_cols:
        k = int(np.argmax(indices >= n_cols))
        raise ValueError(f"CSR indices must be below n_cols ({n_cols}); got {indices[k]} at entry "
                         f"{k} (row {_row_of(indptr, k)})")
    step = 1 << 20                      # in pieces: no temporaries the size of the data
    for a in range(1, nnz, step):
        b = min(nnz, a + step)
        drop = np.flatnonzero(indices[a:b] <= indices[a - 1:b - 1]) + a
        drop = drop[~np.isin(drop, indptr)]     # a row's first entry may be below the last one's
        if len(drop):
            k = int(drop[0])
            raise ValueError(f"CSR columns must increase within each row; row "
                             f"{_row_of(indptr, k)} has column "
                             f"{indices[k]} after {indices[k - 1]} (entry {k})")
    if any(a.flags.writeable for a in csr[:4]):
        return _Entry(csr, None, _kernel_csr(*(_writable(a) for a in csr[:4]), csr.n_cols),
                      remember=False)
    return _remember(csr, None, _kernel_csr(*(np.array(a) for a in csr[:4]), csr.n_cols))


def _writable(a: np.ndarray) -> np.ndarray:
    """a, or a writable array with its data: the kernels compile for writable arrays only (a
    read-only one would compile every kernel again). A read-only view of a writable array (as
    to_csr hands out) gives that array; any other read-only array, a copy."""
    if a.flags.writeable:
        return a
    base = a.base
    if isinstance(base, np.ndarray) and base.flags.writeable and base.dtype == a.dtype \
            and base.shape == a.shape and base.ctypes.data == a.ctypes.data:
        return base
    return np.array(a)


def _all_finite(entry: "_Entry") -> None:
    """ValueError if a float CSR holds NaN or inf (once per remembered CSR)."""
    csr = entry.kernel
    if entry.finite is None:                 # (a CSR of pixels has no float values)
        entry.finite = bool(np.isfinite(csr.values).all())
    if not entry.finite:
        k = int(np.flatnonzero(~np.isfinite(csr.values))[0])
        raise ValueError(f"X must be finite; got {csr.values[k]} at row "
                         f"{_row_of(csr.indptr, k)}, column "
                         f"{csr.indices[k]}")


def prepare(X, dtype) -> CSR:
    """The training data in the form this backend's loops take: a CSR matrix in ``dtype``."""
    X = np.asarray(X)
    if X.dtype != np.uint8:
        X = np.ascontiguousarray(X, dtype=dtype)
    return to_csr(X, dtype)


def _numpy_csr(X, dtype) -> CSR:
    """prepare(X, dtype) for a few rows, made by NumPy alone: the same arrays and Numba types,
    without compiling the compression kernels (api._warm_up_train, whose child process would
    otherwise compile them too, beside the one that compiles them for the run)."""
    X = np.asarray(X)
    dt = np.dtype(dtype)
    rows, cols = np.nonzero(X)
    indptr = np.zeros(len(X) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(X)), out=indptr[1:])
    if X.dtype == np.uint8:
        lut = _pixel_lut(dt)
        values = X[rows, cols]
    else:
        lut = np.zeros(0, dtype=dt)
        values = X[rows, cols].astype(dt)
    return CSR(indptr, cols.astype(_index_dtype(X.shape[1])), values, lut, X.shape[1])


def _as_csr(X, params: Params, need_finite: bool = False) -> KernelCSR:
    """Boundary conversion: the KernelCSR the kernels read (see _Entry) for a CSR in the params'
    dtype, checked, or for a checked dense float X, compressed. With need_finite, a ValueError
    if X holds NaN or inf (for dense X found while compressing it)."""
    if isinstance(X, CSR):
        entry = _check_csr(X)
        if X.n_cols != params.sizes[0]:
            raise ValueError(f"X must have shape (n, {params.sizes[0]}); got {X.shape}")
        if X.dtype != params.dtype:
            raise TypeError(f"X must have the params' dtype {params.dtype}; got {X.dtype}")
        if len(X) < 1:
            raise ValueError(f"X must have shape (n, {params.sizes[0]}) with n >= 1; got {X.shape}")
    else:
        check_X(X, params)
        entry = _checked_entry(_compress(X, None, need_finite, keep_zeros="auto"))
    if need_finite:
        _all_finite(entry)
    return entry.kernel


# Indexes of a dataset that the kernels reuse: the split step's split pixel and, for every row,
# where its entries of the upper pixels start (``_row_cuts``: one pass over the data instead of a
# search per row and step, whose dependent cache misses cost more; 1.3 ms per epoch for MNIST's
# training set otherwise), and the pixel bands (_band_cuts). Each depends only
# on the CSR and the first layer's row size, so it is made on first use and kept while the CSR
# lives. A CSR is not changed after to_csr builds it.
_CSR_CACHE: dict = {}


def _cached_for_csr(csr: CSR, what, make):
    """make(), computed once per CSR and ``what`` and forgotten with the CSR."""
    key = (id(csr.indptr), id(csr.indices), what)
    hit = _CSR_CACHE.get(key)
    if hit is not None and hit[0]() is csr.indptr and hit[1]() is csr.indices:
        return hit[2]
    value = make()
    _CSR_CACHE[key] = (weakref.ref(csr.indptr), weakref.ref(csr.indices), value)
    weakref.finalize(csr.indptr, _CSR_CACHE.pop, key, None)
    return value


@njit(parallel=True, **STRICT)
def _row_cuts(indptr, indices, edges):
    """cut[k, i]: row i's first entry whose column is >= edges[k] (a row's columns are sorted)."""
    n = indptr.shape[0] - 1
    cut = np.empty((edges.shape[0], n), dtype=np.int64)
    for i in prange(n):
        for k in range(edges.shape[0]):
            lo = indptr[i]
            hi = indptr[i + 1]
            while lo < hi:
                mid = (lo + hi) >> 1
                if indices[mid] < edges[k]:
                    lo = mid + 1
                else:
                    hi = mid
            cut[k, i] = lo
    return cut


@njit(**STRICT)
def _densest_row(indptr):
    """The most non-zero entries in one row of a CSR (at least 1): room for a block's entries."""
    densest = 1
    for i in range(indptr.shape[0] - 1):
        densest = max(densest, indptr[i + 1] - indptr[i])
    return densest


def _pixel_counts(csr, n_in: int) -> np.ndarray:
    """Cumulative count of non-zero values per pixel (column), over the first (up to) 2,000
    rows: where the work of the sparse first layer lies, for the split point and the pixel
    bands. Zeros a CSR stores (a full CSR, to_csr's keep_zeros) are not counted, so that the
    split step cuts the same data at the same pixel, and sums the same bits, either way."""
    end = csr.indptr[min(len(csr), 2000)]
    values = csr.values if len(csr.values) == len(csr.indices) else csr.pixels   # (or a CSR's)
    sample = csr.indices[:end][values[:end] != 0]
    return np.cumsum(np.bincount(sample, minlength=n_in))
