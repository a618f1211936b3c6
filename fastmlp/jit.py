"""The jitted twin of ``fastmlp/reference.py``: the same functions, names and meanings, fast.

Read reference.py first; this file assumes its legend and conventions (row-major batches,
``Z = A @ W + b``, the 1/n factor only in the loss backward, backward overwrites gradients, the
ReLU mask taken from the forward output).

Where the time goes and what this file does about it
----------------------------------------------------
One training pass over the 60,000 training images is 14.6 GFLOP when done densely, almost all of it
in ``X @ W1`` and ``X.T @ dZ1``. Dense BLAS alone runs that at 10-14 passes per second here. Two
facts let the kernels do less arithmetic, exactly:

1. **The input is sparse.** MNIST images are 81% zeros (about 150 non-zero pixels of 784). The
   dataset is converted once into a compressed-sparse-row matrix (``CSR``: row pointers, uint16
   column indices, uint8 pixel values turned into ``pixel / 255`` through a 256-entry table in the
   working dtype, exactly the reference's values; ``_fill_csr`` compresses 16 columns per step,
   on AVX-512 CPUs as a vector compress without branches). The first layer then costs
   ``nnz * 72`` multiply-adds instead of ``784 * 72`` per image, forward
   (``z += x_j * W1[j, :]``) and backward (``dW1[j, :] += x_j * dz1``). Zero pixels contribute
   exactly nothing, so skipping them changes no result beyond summation order.
2. **ReLU makes zeros.** A hidden unit that is inactive for a whole block of rows is skipped in
   the forward product and in the weight gradient.

Rows are processed in blocks of ``BLOCK``. A block's rows are read from the CSR where they lie
(``_block_entries`` only notes where each row's entries start and end; with augmentation shifts
it writes the shifted images into a block-local CSR), the sparse first layer runs row by row, and
from then on the block is kept *feature-major* (one row per unit), so every dense layer, the
softmax, the loss and every backward product are long vector loops along the block, whatever the
layer widths. Nothing (n, 72)-sized is ever allocated; each slot's block scratch is allocated
once per call (``_alloc_scratch``), not once per step. Every array whose rows the kernels stream
in vectors starts on a cache line (the Params and the workspaces: ``params.empty_aligned``; Numba's
own allocations are 32-byte aligned, enough since a 72-float row is a multiple of 32 bytes): with
NumPy's malloc placement, often 16 bytes off, every other vector load and store of a weight row
straddled two lines, and an epoch or a loss_and_grads ran 17-19% slower (measured A/B).

The sparse first layer is where the time goes, so for the default architecture it is written below
the level of Numba: the width is a compile-time constant (``Width``) and each sparse row is a loop
generated in LLVM IR (``_ir_row_loop``) whose 72-float accumulator is nine vector registers for the
whole row: per non-zero pixel, one broadcast and nine fused multiply-adds with the weight row,
nothing stored until the row ends (Numba arrays live in memory, so the same loop in Numba loads and
stores the accumulator at every entry; the IR loop does the same multiply-adds in the same order,
so results are bitwise those of the Numba loops here, which still serve other widths and run
without the JIT). The gradient's loop is the same with the roles turned: dz in registers, each
weight-gradient row read, updated and stored once per entry. Where the time goes then (one thread,
all 60,000 images, about 75 ms for loss_and_grads): the sparse forward about 2.9 ns and the
gradient scatter about 3.4 ns per non-zero pixel, 9 million of them (each a multiply-add of a
72-float row that comes from L2, and for the gradient a read-modify-write of one), the dense layers
~20 ms, transposes and softmax the rest. Where the rows are read in order (full batches, the
forward) the forward runs in *pixel bands* instead: every row's entries of the first third of the
pixels, then of the next (``_sparse_matmul_bands``, with each row's band boundaries found once per
dataset: ``_band_cuts``), so that the weight rows in use are a third of W1 at a time: 2.2 ns per
non-zero pixel, the same bits. Mini-batches read rows at random, and there bands cost more than
they save (``_NO_BANDS``). The split epoch at batch 128 on one thread (about 80 ms when the
machine is quiet, each phase timed on its own): the sparse forward ~28 ms and the gradient
scatter ~30 ms (3.1-3.3 ns per non-zero pixel), the dense layers and the loss ~16 ms, the first
layer's update ~3 ms. On two threads a cycle-counter trace of the tasks found each task as long
as on one thread and the waits between phases at 1-3 us per step in quiet minutes, so the epoch
(~45 ms) is half the one-thread work plus little: what is left to gain is work per step on one
core, and most of that is the first layer at the speed of the L2 cache.

Measured and dropped, each slower or no faster here: a compressed-sparse-*column* pass over each
block (reads each weight row once per block, but building the transposed index costs what it saves;
the same for the split step's weight gradient: the sort alone cost more than the scatter, and
regrouping the entries through a dense pixel-by-row byte matrix and the vector compress, at half the
sort's cost, left the epoch no faster, since the scatter's rows are already in cache there);
blocking the first layer by ranges of pixels with the ranges found per block (the bookkeeping costs
more than the L2 reads it saves; tried again with the IR loops: 0.8-1.04x); row-by-row dense layers
(a quarter of the block version's speed); padding the hidden width to 80; more entries per pass (8
instead of 4); two gradient entries per pass sharing the loads of dz (their rows may overlap as far
as LLVM knows, which brings back the overlap checks); two accumulators per row in the IR loop;
copying each block's entries into a block-local CSR in the working dtype (the copy cost as much as
the multiply-adds it fed); prefetching the weight rows of entries a few ahead in the IR loop
(loss_and_grads on one thread 67 -> 77-87 ms); the split step's weight gradient in pixel bands small
enough for L1 (37.5 -> 42-46 us per half-step: the scatter is not waiting on L2); 512-bit vectors in
the IR row loops (the same bits, and within 3% either way: Zen 4 splits them into two 256-bit
halves); an exp that vectorises for the softmax (without Intel's SVML, which this llvmlite is not
built for, Numba calls libm's scalar expf, ~3 ns each; a Cephes polynomial in IR, within 1 ulp: in
two A/B runs loss_and_grads 2-5% and predict_proba 0-5% faster, the epoch not at all, and every
result's last bits would move).

Parallelism (two cores), measured: BLAS threads are not used at all here, because after
sparsification no dense product remains that is worth a BLAS call (``scripts/bench_numba.py``
prints the dense-BLAS time of the two big products alone beside the whole sparse pass). All
parallelism is Numba ``prange``, in one of two shapes, chosen by batch size:

* **Slots** (full batches, and mini-batches over ``SPLIT_MAX_BATCH`` rows): the batch's rows are
  cut into a fixed number of contiguous slots (``NSLOTS``, independent of the thread count),
  each slot accumulates into its own partial gradient, and the partials are summed in slot
  order afterwards (fused into the optimizer update in the training loops).
* **Pixel split** (mini-batches up to ``SPLIT_MAX_BATCH`` rows; the default 128 is one): with
  slots, every step would move each core's whole partial gradient and half the updated weights
  to the other core (about 340 KB per core per step for the first layer), and on this machine
  that traffic cost more than the arithmetic, and varied from run to run with where the
  hypervisor placed the two cores. So a small step is cut the other way: half 0 owns the first
  layer's weight rows of the upper pixels, half 1 those of the lower (``_split_point``), and
  each step is three phases of two tasks, one per half (``_forward_half``, ``_dense_half``,
  ``_update_half``; the last fused with the next step's first, and with a third task,
  ``_update_small``, for whichever thread is free first), which keep those rows, their
  gradient and their optimizer state on one core for the whole epoch; only the batch's
  activations (~40 KB) cross between cores. The whole epoch is one parallel region
  (``_split_epoch``): the threads hand over from phase to phase through atomic flags instead of
  starting a parallel region per phase (an epoch 5% faster), and a thread takes over the
  other's task if that one is late, so no schedule of threads can deadlock.

Either way the split of the work is fixed, never taken from the thread count, and every sum
runs in a fixed order: no races, and results that are bitwise identical run to run *and for any
thread count*. The forward-only kernels ``prange`` over row ranges (each owns its output rows).

Numba options live in one place (``_FAST`` / ``_STRICT`` below): every kernel is ``cache=True``;
the hot kernels use ``fastmath`` *without* ``nnan``/``ninf`` so that non-finite values still
propagate and the training loop can detect divergence; the optimizer updates and the sums of
partials are strict IEEE arithmetic, as NumPy's (``fastmath=False`` set explicitly: left unset,
Numba lets a kernel inherit fast-math from its caller), so a compiled training step applies
exactly the public ``update`` to exactly ``loss_and_grads``' gradient (tested bitwise). Float32
kernels take all their constants as float32 arrays or scalars prepared by the Python wrappers, so
nothing promotes to float64.
"""

from __future__ import annotations

import math
import platform
import weakref
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange
from numba import types
from numba.core.compiler import Compiler
from numba.core import cgutils
from numba.extending import (NativeValue, intrinsic, models, overload, register_model, typeof_impl,
                             unbox)
from llvmlite import ir
from llvmlite.binding import llvm_version_info

from .params import Params, empty_aligned, zeros_aligned
from ._validate import (check_X, check_y, check_params, check_optimizer, check_perm,
                        check_shifts, check_update)
from .reference import OPTIMIZERS, init_state, one_hot, confusion_matrix  # noqa: F401  (same API)

__all__ = [
    "CSR", "prepare", "to_csr", "forward", "loss_and_grads", "update", "init_state",
    "predict_proba", "predict", "accuracy", "one_hot", "confusion_matrix", "gd_steps",
    "sgd_epoch", "OPTIMIZERS", "NSLOTS",
]

_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # not nnan/ninf: NaN must propagate
_FAST = dict(cache=True, fastmath=_FASTMATH, error_model="numpy", boundscheck=False)
# fastmath=False must be explicit: a kernel that leaves the option unset *inherits* fast-math
# from the kernel whose compilation compiles it (Numba's flag inheritance), and the updates, strict
# when called from Python, then ran with contracted multiply-adds inside the training loops.
_STRICT = dict(cache=True, fastmath=False, error_model="numpy", boundscheck=False)



class _NoAliasCompiler(Compiler):
    """Numba's standard pipeline, with every array argument marked ``noalias`` in LLVM (C's
    ``restrict``): the function promises that memory written through one of its arguments is
    not reached through another. Then a loop like ``z[k] += v * w[k]`` vectorizes without the
    run-time overlap checks LLVM otherwise emits before it, once per call of the inner loop,
    that is once per non-zero pixel here (measured: the sparse products run 17-25% faster).
    Used only for the kernels marked _LEAF, whose callers pass distinct arrays, disjoint parts
    of one array (the dense layers' input and output rows of a block), or the same array to two
    read-only arguments, which the promise allows. On the dense layers it is worth 2-3% of an
    epoch (measured A/B in one process, results bitwise unchanged)."""

    def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
        flags = flags.copy()
        flags.noalias = True
        super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)


_LEAF = dict(_FAST, pipeline_class=_NoAliasCompiler)

NSLOTS = 4           # partial-gradient slots for a large batch (fixed: results do not depend on threads)
MIN_SLOT_ROWS = 64   # a slot gets at least this many rows
NSLOTS_FWD = 4       # row ranges for forward-only kernels (two per core; 16 cost 25% more here)


class _CSRFields(NamedTuple):
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    lut: np.ndarray
    n_cols: int


class CSR(_CSRFields):
    """A batch of inputs in compressed-sparse-row form.

    indptr  int64 (n + 1,): row i's entries are indptr[i]:indptr[i + 1]
    indices uint16 (nnz,): column (pixel) of each entry, increasing within each row
    values  uint8 pixels (nnz,), whose input value is lut[pixel] (= pixel / 255 in the working
            dtype, exactly as the reference computes it); or float32/float64 values as they are
    lut     float32 or float64 (256,) for uint8 values; empty, of the values' dtype, otherwise
    n_cols  number of columns (784)

    ``to_csr`` and ``prepare`` make them. One made by hand is checked once, when a function
    first receives it (``_check_csr``: the kernels do no bounds checks). A CSR is not changed
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


# ----------------------------------------------------------------------------------------------
# building the sparse input (once per dataset)


@njit(parallel=True, **_STRICT)
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


CHUNK = 16   # columns per step of _fill_csr


def _target_has(feature: str) -> bool:
    """Whether Numba compiles for a CPU with this feature (e.g. "avx512f"): the host's, or what
    NUMBA_CPU_NAME/NUMBA_CPU_FEATURES say. (Numba keys its cache by the same CPU and features.)"""
    from numba.core.registry import cpu_target
    try:
        features = cpu_target.target_context.codegen()._tm_features   # (Numba internals)
    except AttributeError:      # another Numba: assume nothing, the plain loops serve everywhere
        return False
    return f"+{feature}" in features.split(",")


@njit(inline="always", **_STRICT)
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
    the JIT and on CPUs without AVX-512; with AVX-512 compiled code runs _compress_ir instead:
    the same output."""
    return _compress_range(x, j, j + CHUNK, indices, values, p)


def _compress_lanes(builder, xdata, idata, vdata, j, p, et, n, is_float):
    """IR for n lanes at x[j:j+n]: mask = x != 0; compress the values and the column numbers
    j..j+n-1 to the front of a register (llvm.experimental.vector.compress: vcompressps/
    vpcompressw into a register, cheap, unlike the memory form, which Zen 4 runs as microcode);
    store the first popcount(mask) lanes with a masked store (so nothing past this chunk's own
    entries is written, and a row never writes into the next row's entries, which another thread
    may be filling). Returns p + popcount(mask)."""
    i32, i16 = ir.IntType(32), ir.IntType(16)
    M = ir.VectorType(ir.IntType(1), n)
    V = ir.VectorType(et, n)
    x = builder.load(builder.bitcast(builder.gep(xdata, [j]), V.as_pointer()), align=1)
    zero = ir.Constant(V, None)
    # "une" (unordered or not equal) is the scalar v != 0: NaN kept, -0.0 dropped
    mask = (builder.fcmp_unordered("!=", x, zero) if is_float
            else builder.icmp_unsigned("!=", x, zero))
    bits = builder.bitcast(mask, ir.IntType(n))
    ctpop = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(bits.type, [bits.type]), f"llvm.ctpop.i{n}")
    count = builder.zext(builder.call(ctpop, [bits]), ir.IntType(64))
    first = builder.sub(builder.shl(ir.Constant(i32, 1), builder.trunc(count, i32)),
                        ir.Constant(i32, 1))
    first = builder.bitcast(builder.trunc(first, ir.IntType(n)), M)   # the first `count` lanes

    def compress_store(vec, base):
        vt = vec.type
        e = vt.element
        name = {ir.FloatType: "f32", ir.DoubleType: "f64"}.get(type(e)) or f"i{e.width}"
        compress = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, M, vt]),
            f"llvm.experimental.vector.compress.v{n}{name}")
        packed = builder.call(compress, [vec, mask, ir.Constant(vt, ir.Undefined)])
        store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, M]),
            f"llvm.masked.store.v{n}{name}.p0")
        builder.call(store, [packed, builder.bitcast(builder.gep(base, [p]), vt.as_pointer()),
                             ir.Constant(i32, 1), first])

    compress_store(x, vdata)
    IV = ir.VectorType(i16, n)
    j16 = builder.insert_element(ir.Constant(IV, ir.Undefined), builder.trunc(j, i16),
                                 ir.Constant(i32, 0))
    j16 = builder.shuffle_vector(j16, ir.Constant(IV, ir.Undefined),
                                 ir.Constant(ir.VectorType(i32, n), [0] * n))
    compress_store(builder.add(j16, ir.Constant(IV, list(range(n)))), idata)
    return builder.add(p, count)


@intrinsic
def _compress_ir(typingctx, x, j, indices, values, p):
    """_compress_chunk in AVX-512 registers: CHUNK columns as 512-bit vectors (16 float32 or
    uint8 lanes, or two vectors of 8 float64: LLVM's code for one 16-lane float64 compress
    crashed here)."""
    for a in (x, indices, values):
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"):
            raise numba.core.errors.TypingError(
                f"_compress_ir needs C-contiguous 1-D arrays; got {a}")

    def codegen(context, builder, sig, args):
        xt, _, it, vt = sig.args[:4]
        xa, ia, va = (context.make_array(t)(context, builder, a)
                      for t, a in ((xt, args[0]), (it, args[2]), (vt, args[3])))
        et = context.get_value_type(xt.dtype)
        lanes = min(CHUNK, 512 // xt.dtype.bitwidth)
        p = args[4]
        for k in range(0, CHUNK, lanes):
            j = builder.add(args[1], ir.Constant(ir.IntType(64), k))
            p = _compress_lanes(builder, xa.data, ia.data, va.data, j, p, et, lanes,
                                isinstance(xt.dtype, types.Float))
        return p
    return types.int64(x, types.int64, indices, values, types.int64), codegen


@overload(_compress_chunk, jit_options=dict(_STRICT, inline="always"))
def _compress_chunk_impl(x, j, indices, values, p):
    # Without AVX-512, LLVM emulates the compress lane by lane, 2-3x slower than the plain loop
    # (measured by compiling for haswell and x86-64 on this machine): keep the loop there.
    # (llvm.experimental.vector.compress exists from LLVM 19 on)
    if _target_has("avx512f") and llvm_version_info >= (19,) and (
            isinstance(x.dtype, types.Integer) or x.dtype in (types.float32, types.float64)):
        return lambda x, j, indices, values, p: _compress_ir(x, j, indices, values, p)
    return _compress_chunk


@njit(parallel=True, **_STRICT)
def _fill_csr(X, indptr, indices, values):
    """Write row i's non-zero entries at indptr[i]:indptr[i + 1], CHUNK columns at a time. With
    AVX-512 a chunk is a few instructions without branches (60,000 MNIST rows in float32: 7 ms,
    against 24 ms for the plain loop, whose branch on each pixel mispredicts at every stroke
    edge; the count pass and reading X are the rest of to_csr)."""
    m = X.shape[1]
    for i in prange(X.shape[0]):
        x = X[i]
        p = indptr[i]
        j = 0
        while j + CHUNK <= m:
            p = _compress_chunk(x, j, indices, values, p)
            j += CHUNK
        _compress_range(x, j, m, indices, values, p)


def to_csr(X, dtype=None) -> CSR:
    """Compress a batch: uint8 pixels (divided by 255 in ``dtype``, exactly as the reference's
    ``prepare`` does) or float values (kept as they are). Columns must fit in uint16."""
    return _compress(X, dtype, False)


def _compress(X, dtype, find_finite: bool) -> CSR:
    """to_csr; with find_finite, float X is also checked for NaN and inf on the way (recorded
    with the CSR for _all_finite: for predict, where it saves a pass over X; training on dense X
    does not pay for it)."""
    X = np.ascontiguousarray(X)
    if X.dtype not in (np.uint8, np.float32, np.float64):
        raise TypeError(f"X must hold uint8 pixels or float32/float64 values; got {X.dtype}")
    if dtype is not None and np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64; got {np.dtype(dtype)}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, features); got shape {X.shape}")
    if X.shape[1] > 65535:
        raise ValueError(f"at most 65535 columns fit the sparse index type; got {X.shape[1]}")
    find_finite = find_finite and X.dtype != np.uint8
    bad = np.zeros(len(X) if find_finite else 0, dtype=np.uint8)
    counts = _count_nonzero_rows(X, bad)
    indptr = np.zeros(len(X) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    indices = np.empty(nnz, dtype=np.uint16)
    values = np.empty(nnz, dtype=X.dtype)
    _fill_csr(X, indptr, indices, values)
    if X.dtype == np.uint8:
        dt = np.dtype(dtype or np.float32)
        lut = np.arange(256).astype(dt) / np.asarray(255, dtype=dt)
        finite = True
    else:
        lut = np.zeros(0, dtype=X.dtype)
        finite = not bad.any() if find_finite else None    # None: found when first asked
    csr = CSR(indptr, indices, values, lut, X.shape[1])
    _remember_checked(csr, finite)
    return csr


# CSRs known to be well formed: every one to_csr made, and those _check_csr passed; by the id of
# their indptr (several CSRs may share one, e.g. through _replace), forgotten with it. Each entry:
# weak references to the four arrays, n_cols, and whether the values are all finite (known from
# to_csr; found when first asked for a CSR made by hand: _all_finite).
_CHECKED_CSRS: dict = {}


def _remember_checked(csr: CSR, finite=None) -> None:
    key = id(csr.indptr)
    if key not in _CHECKED_CSRS:
        _CHECKED_CSRS[key] = []
        weakref.finalize(csr.indptr, _CHECKED_CSRS.pop, key, None)
    _CHECKED_CSRS[key].append([tuple(weakref.ref(a) for a in csr[:4]), csr.n_cols, finite])


def _checked_entry(csr: CSR):
    for hit in _CHECKED_CSRS.get(id(csr.indptr), ()):
        if type(hit[1]) is type(csr.n_cols) and hit[1] == csr.n_cols \
                and all(r() is a for r, a in zip(hit[0], csr[:4])):
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
    Once per CSR: a CSR that passed (or that to_csr made) is remembered while it lives."""
    if _checked_entry(csr) is not None:
        return
    indptr, indices, values, lut, n_cols = csr
    for name, a, want in (("indptr", indptr, np.int64), ("indices", indices, np.uint16),
                          ("values", values, None), ("lut", lut, None)):
        if not (isinstance(a, np.ndarray) and a.ndim == 1 and a.flags.c_contiguous
                and (want is None or a.dtype == want)):
            kind = f"{np.dtype(want)} " if want is not None else ""
            raise TypeError(f"CSR {name} must be a C-contiguous 1-D {kind}array; got {_describe(a)}")
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
    if isinstance(n_cols, bool) or not isinstance(n_cols, (int, np.integer)) \
            or not 1 <= n_cols <= 65535:
        raise ValueError(f"CSR n_cols must be an integer in 1..65535; got {n_cols!r}")
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
    _remember_checked(csr)


def _all_finite(csr: CSR) -> None:
    """ValueError if a float CSR holds NaN or inf (checked once per CSR)."""
    entry = _checked_entry(csr)
    if entry[2] is None:
        entry[2] = csr.values.dtype == np.uint8 or bool(np.isfinite(csr.values).all())
    if not entry[2]:
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


def _as_csr(X, params: Params, find_finite: bool = False) -> CSR:
    """Boundary conversion: a CSR in the params' dtype, or a checked dense float X compressed
    (see _compress for find_finite)."""
    if isinstance(X, CSR):
        _check_csr(X)
        if X.n_cols != params.sizes[0]:
            raise ValueError(f"X must have shape (n, {params.sizes[0]}); got {X.shape}")
        if X.dtype != params.dtype:
            raise TypeError(f"X must have the params' dtype {params.dtype}; got {X.dtype}")
        if len(X) < 1:
            raise ValueError(f"X must have shape (n, {params.sizes[0]}) with n >= 1; got {X.shape}")
        return X
    check_X(X, params)
    return _compress(X, None, find_finite)


# ----------------------------------------------------------------------------------------------
# one sample through the network and back (the fused core every kernel uses)


def _zero_of(a):
    """Zero in a's dtype. (``a[0] * 0`` would not do: float32 times an integer literal is
    float64 in Numba, and a float64 accumulator turns a float32 loop into conversions.)"""
    return a.dtype.type(0)


@overload(_zero_of, inline="always")
def _zero_of_impl(a):
    dt = a.dtype
    return lambda a: dt(0)


def _prefetch(a, i):
    """Ask the CPU to start loading a[i] into cache now (LLVM's prefetch; no effect on results).
    Without the JIT this does nothing."""


@intrinsic
def _prefetch_intrinsic(typingctx, a, i):
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read (0), keep in all cache levels (3), data cache (1)
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(a, i), codegen


@overload(_prefetch, inline="always")
def _prefetch_impl(a, i):
    return lambda a, i: _prefetch_intrinsic(a, i)


def _value(val, lut, p):
    """The p-th input value: lut[val[p]] for uint8 pixels, val[p] for floats. Compiled code uses
    the overload below, which makes this choice at compile time; this body runs only under
    NUMBA_DISABLE_JIT=1."""
    return lut[val[p]] if val.dtype.kind == "u" else val[p]


@overload(_value, jit_options=dict(inline="always", **_FAST))
def _value_impl(val, lut, p):
    if isinstance(val.dtype, numba.types.Integer):
        return lambda val, lut, p: lut[val[p]]
    return lambda val, lut, p: val[p]


class Width:
    """A layer width that the compiler sees as a constant: ``_width(Width(72))`` is 72, and in
    compiled code it is a literal baked into the machine code, because the width is part of the
    Numba *type* (``Width(72)``), like a tuple's length. Kernels compile once per such width.

    Why: a loop ``for k in range(H)`` with H known only at run time compiles to a vector loop
    plus a remainder, run after every few entries of the sparse first layer; with H = 72 =
    9 x 8 floats as a constant it compiles to nine vector instructions and nothing else, and
    the first layer runs 15-20% faster (measured on this machine). Only the widths in
    CONST_WIDTHS get their own compiled kernels; any other width is passed as a plain int and
    runs the same code with a run-time trip count (one compilation serves them all).
    """

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = int(n)


CONST_WIDTHS = (72,)   # the default architecture's first hidden layer


class _WidthType(types.Type):
    def __init__(self, n):
        self.n = n
        super().__init__(name=f"Width({n})")


@typeof_impl.register(Width)
def _typeof_width(val, c):
    return _WidthType(val.n)


register_model(_WidthType)(models.OpaqueModel)


@unbox(_WidthType)
def _unbox_width(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())      # the type carries everything


def _width(w):
    """The width a kernel loops over: Width(n) -> n, a compile-time constant when compiled;
    an int -> itself. Compiled code uses the overload below; this body runs without the JIT."""
    return w.n if isinstance(w, Width) else w


@overload(_width, jit_options=dict(inline="always"))
def _width_impl(w):
    if isinstance(w, _WidthType):
        n = w.n
        return lambda w: n
    return lambda w: w


def _first_width(params: Params):
    h = params.sizes[1]
    return Width(h) if h in CONST_WIDTHS else int(h)


# The sparse first layer. For a constant width (Width) each row is one LLVM-IR loop written out
# below (_ir_row_loop), whose accumulator lives in vector registers for the whole row; any other
# width runs the plain Numba loops, which are also what runs without the JIT.


def _ir_row_loop(context, builder, sig, args, outer):
    """LLVM IR for one sparse row at a constant width H = sig.args[-1].n, in vector chunks of 32
    bytes (8 float32 or 4 float64: a ymm register each, so the accumulator of H = 72 float32 is
    nine registers). Arguments (z, W, b_or_d, idx, val, lut, p0, p1, width), all arrays
    C-contiguous.

    outer=False (forward): acc = b; for p in [p0, p1): acc += x_p * W[idx[p]]; z[:] = acc.
    outer=True (gradient): d = b_or_d; for p in [p0, p1): W[idx[p]] += x_p * d (z unused).
    x_p is lut[val[p]] for integer val, else val[p]. Each multiply-add is llvm.fmuladd (fused
    where the CPU can), in entry order: here the same bits as the Numba loops, which LLVM
    compiles to the same chain of fused multiply-adds (checked over a whole training epoch)."""
    H = sig.args[-1].n
    arrs = [context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:6], args[:6])]
    za, Wa, ba, ia, va, la = arrs
    dtype = sig.args[1].dtype
    bits = dtype.bitwidth
    ft = context.get_value_type(dtype)
    i64 = ir.IntType(64)
    align = bits // 8
    c = 256 // bits
    chunks = [(k, min(c, H - k)) for k in range(0, H, c)]

    def vptr(ptr, k, n):
        vt = ir.VectorType(ft, n)
        return builder.bitcast(builder.gep(ptr, [ir.Constant(i64, k)]), vt.as_pointer())

    def fmuladd(x, y, acc):
        vt = x.type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3),
                                            f"llvm.fmuladd.v{vt.count}f{bits}")
        return builder.call(fn, [x, y, acc])

    def splat(v, n):
        vt = ir.VectorType(ft, n)
        und = ir.Constant(vt, ir.Undefined)
        x = builder.insert_element(und, v, ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n)
        return builder.shuffle_vector(x, und, zeros)

    fixed = [builder.load(vptr(ba.data, k, n), align=align) for k, n in chunks]   # b or d
    entry = builder.basic_block
    head = builder.append_basic_block("row.head")
    body = builder.append_basic_block("row.body")
    done = builder.append_basic_block("row.done")
    builder.branch(head)
    builder.position_at_end(head)
    p = builder.phi(i64)
    p.add_incoming(args[6], entry)
    accs = []
    if not outer:
        accs = [builder.phi(ir.VectorType(ft, n)) for _, n in chunks]
        for a, a0 in zip(accs, fixed):
            a.add_incoming(a0, entry)
    builder.cbranch(builder.icmp_signed("<", p, args[7]), body, done)
    builder.position_at_end(body)
    j = builder.zext(builder.load(builder.gep(ia.data, [p])), i64)
    x = builder.load(builder.gep(va.data, [p]))
    if isinstance(sig.args[4].dtype, types.Integer):
        x = builder.load(builder.gep(la.data, [builder.zext(x, i64)]))
    wrow = builder.gep(Wa.data, [builder.mul(j, ir.Constant(i64, H))])
    new = []
    for (k, n), f, a in zip(chunks, fixed, accs or fixed):
        w = builder.load(vptr(wrow, k, n), align=align)
        if outer:
            builder.store(fmuladd(splat(x, n), f, w), vptr(wrow, k, n), align=align)
        else:
            new.append(fmuladd(splat(x, n), w, a))
    end = builder.basic_block
    p.add_incoming(builder.add(p, ir.Constant(i64, 1)), end)
    for a, na in zip(accs, new):
        a.add_incoming(na, end)
    builder.branch(head)
    builder.position_at_end(done)
    for (k, n), a in zip(chunks, accs):
        builder.store(a, vptr(za.data, k, n), align=align)
    return context.get_dummy_value()


def _row_signature(z, W, b, idx, val, lut, p0, p1, width):
    for a in (z, W, b, idx, val, lut):
        if not (isinstance(a, types.Array) and a.layout == "C"):
            raise numba.core.errors.TypingError(f"_row_ir needs C-contiguous arrays; got {a}")
    return types.void(z, W, b, idx, val, lut, types.int64, types.int64, width)


@intrinsic
def _row_ir_forward(typingctx, z, W, b, idx, val, lut, p0, p1, width):
    return _row_signature(z, W, b, idx, val, lut, p0, p1, width), (
        lambda context, builder, sig, args: _ir_row_loop(context, builder, sig, args, False))


@intrinsic
def _row_ir_outer(typingctx, z, W, d, idx, val, lut, p0, p1, width):
    return _row_signature(z, W, d, idx, val, lut, p0, p1, width), (
        lambda context, builder, sig, args: _ir_row_loop(context, builder, sig, args, True))


def _sparse_row(z, W, b, idx, val, lut, p0, p1, width):
    """z = x @ W + b for one sparse row x: its non-zero inputs are (idx[p], _value(val, lut, p))
    for p0 <= p < p1. ``width`` is W.shape[1], as ``Width`` (a compile-time trip count) or an int.

    This body serves any width; it combines four rows of W per pass over z, which quarters the
    loads and stores of z and breaks the store-to-load dependency from one entry to the next.
    For a Width, compiled code runs _ir_row_loop instead (the accumulator in registers)."""
    H = _width(width)
    for k in range(H):
        z[k] = b[k]
    p = p0
    while p + 4 <= p1:
        w0 = W[idx[p]]
        w1 = W[idx[p + 1]]
        w2 = W[idx[p + 2]]
        w3 = W[idx[p + 3]]
        v0, v1 = _value(val, lut, p), _value(val, lut, p + 1)
        v2, v3 = _value(val, lut, p + 2), _value(val, lut, p + 3)
        for k in range(H):
            z[k] += (v0 * w0[k] + v1 * w1[k]) + (v2 * w2[k] + v3 * w3[k])
        p += 4
    while p < p1:
        w0 = W[idx[p]]
        v0 = _value(val, lut, p)
        for k in range(H):
            z[k] += v0 * w0[k]
        p += 1


def _sparse_row_outer(gW, d, idx, val, lut, p0, p1, width):
    """gW[idx[p], :] += _value(val, lut, p) * d for p0 <= p < p1: one sparse row's share of the
    first layer's weight gradient x.T @ d. ``width``: as in _sparse_row (d's size)."""
    H = _width(width)
    for p in range(p0, p1):
        g = gW[idx[p]]
        v = _value(val, lut, p)
        for k in range(H):
            g[k] += v * d[k]


@overload(_sparse_row, jit_options=dict(_FAST, inline="always"))
def _sparse_row_impl(z, W, b, idx, val, lut, p0, p1, width):
    if isinstance(width, _WidthType):
        return lambda z, W, b, idx, val, lut, p0, p1, width: _row_ir_forward(
            z, W, b, idx, val, lut, p0, p1, width)
    return _sparse_row


@overload(_sparse_row_outer, jit_options=dict(_FAST, inline="always"))
def _sparse_row_outer_impl(gW, d, idx, val, lut, p0, p1, width):
    if isinstance(width, _WidthType):
        return lambda gW, d, idx, val, lut, p0, p1, width: _row_ir_outer(
            d, gW, d, idx, val, lut, p0, p1, width)
    return _sparse_row_outer


@njit(**_LEAF)
def _sparse_matmul(Z, W, b, rng, idx, val, lut, nrows, width):
    """Z[t] = x_t @ W + b for the rows t < nrows of a sparse block: row t's non-zero inputs are
    (idx[p], _value(val, lut, p)) for p in rng[0, t]..rng[1, t]-1 (see _block_entries). The
    first layer's forward. One call covers many rows, because a call of a Numba function passes
    every array as seven values."""
    for t in range(nrows):
        _sparse_row(Z[t], W, b, idx, val, lut, rng[0, t], rng[1, t], width)


@njit(**_LEAF)
def _sparse_matmul_bands(Z, W, b, rng, cuts, rows, r0, idx, val, lut, nrows, width):
    """_sparse_matmul for the rows t < nrows of a block whose row t is the CSR's row rows[r0 + t],
    band by band (cuts from _band_cuts): first every row's entries in the first pixel band, from the
    bias, then every row's in the next, from the row's partial sum, and so on. One band's weight
    rows are a fraction of W, and they stay closer to the core while the block's rows go by:
    2.2 instead of 2.9 ns per non-zero pixel on one core. Same bits as _sparse_matmul at a
    compile-time width: each row's entries are added in the same order, and its partial sum is
    stored and reloaded exactly between bands."""
    E = cuts.shape[0]
    for t in range(nrows):
        p1 = cuts[0, rows[r0 + t]] if E > 0 else rng[1, t]
        _sparse_row(Z[t], W, b, idx, val, lut, rng[0, t], p1, width)
    for k in range(1, E + 1):
        for t in range(nrows):
            i = rows[r0 + t]
            p1 = cuts[k, i] if k < E else rng[1, t]
            _sparse_row(Z[t], W, Z[t], idx, val, lut, cuts[k - 1, i], p1, width)


def _first_layer(Z, W, b, rng, bands, rows, b0, idx, val, lut, nrows, width):
    """The block's sparse first layer: in pixel bands if there are any (_band_cuts gives them
    only for a compile-time width, and compiled code has the band loop only for one: the
    overload below), else row by row."""
    if bands.shape[0] > 0:
        _sparse_matmul_bands(Z, W, b, rng, bands, rows, b0, idx, val, lut, nrows, width)
    else:
        _sparse_matmul(Z, W, b, rng, idx, val, lut, nrows, width)


@overload(_first_layer, jit_options=dict(_FAST, inline="always"))
def _first_layer_impl(Z, W, b, rng, bands, rows, b0, idx, val, lut, nrows, width):
    if isinstance(width, _WidthType):
        return _first_layer
    return lambda Z, W, b, rng, bands, rows, b0, idx, val, lut, nrows, width: _sparse_matmul(
        Z, W, b, rng, idx, val, lut, nrows, width)


@njit(**_LEAF)
def _sparse_outer(gW, rng, idx, val, lut, nrows, D, width):
    """gW += X.T @ D for the rows t < nrows of a sparse block X (as in _sparse_matmul), only
    where X != 0. The first layer's weight gradient."""
    for t in range(nrows):
        _sparse_row_outer(gW, D[t], idx, val, lut, rng[0, t], rng[1, t], width)


# Transposes between row-major blocks (one row per sample: the sparse layer's output, dL/dZ for
# its gradient) and feature-major ones (one row per unit: the dense layers). An element loop
# strides through memory on one side, a few cycles per element; an 8 x 8 tile transposed in
# registers (eight vector loads, 24 shuffles, eight vector stores) moves a block several times
# faster. Compiled code runs the IR tiles below; without the JIT the Python bodies run.


def _ir_tile(context, builder, sig, args, summed):
    """LLVM IR for an 8 x 8 tile: dst[dr + c, dc + r] = v[r][c], where row r of the tile is
    v[r] = src[sr + r, sc:sc + 8], or, summed, (src[...] + src2[...]) + bias[sc:sc + 8] (added
    in that order, as the element loop does). Arguments (dst, dr, dc, src, sr, sc) or
    (dst, dr, dc, src, src2, bias, sr, sc); 2-D arrays with unit inner stride."""
    tys = sig.args
    arrays = [0, 3, 4, 5] if summed else [0, 3]
    ary = {i: context.make_array(tys[i])(context, builder, args[i]) for i in arrays}
    dr, dc = args[1], args[2]
    sr, sc = (args[6], args[7]) if summed else (args[4], args[5])
    dtype = tys[0].dtype
    vt = ir.VectorType(context.get_value_type(dtype), 8)
    align = dtype.bitwidth // 8
    i64 = ir.IntType(64)

    def at(i, r, c):
        ptr = cgutils.get_item_pointer(context, builder, tys[i], ary[i], [r, c])
        return builder.bitcast(ptr, vt.as_pointer())

    def plus(x, k):
        return builder.add(x, ir.Constant(i64, k))

    rows = []
    for r in range(8):
        v = builder.load(at(3, plus(sr, r), sc), align=align)
        if summed:
            v = builder.fadd(v, builder.load(at(4, plus(sr, r), sc), align=align))
            bias = builder.gep(ary[5].data, [sc])
            v = builder.fadd(v, builder.load(builder.bitcast(bias, vt.as_pointer()), align=align))
        rows.append(v)

    def shuf(x, y, mask):
        return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), 8), mask))

    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = []
    for r in range(0, 8, 2):
        t += [shuf(rows[r], rows[r + 1], lo), shuf(rows[r], rows[r + 1], hi)]
    lo2, hi2 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    u = [shuf(t[0], t[2], lo2), shuf(t[0], t[2], hi2), shuf(t[1], t[3], lo2), shuf(t[1], t[3], hi2),
         shuf(t[4], t[6], lo2), shuf(t[4], t[6], hi2), shuf(t[5], t[7], lo2), shuf(t[5], t[7], hi2)]
    lo4, hi4 = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    for c in range(4):                   # u[c] holds columns c and c + 4 of rows 0-3, u[c + 4] rows 4-7
        builder.store(shuf(u[c], u[c + 4], lo4), at(0, plus(dr, c), dc), align=align)
        builder.store(shuf(u[c], u[c + 4], hi4), at(0, plus(dr, c + 4), dc), align=align)
    return context.get_dummy_value()


def _tile_arrays_ok(*arrays):
    dt = arrays[0].dtype
    return all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == dt
               and isinstance(dt, types.Float) for a in arrays)


@intrinsic
def _tile_ir(typingctx, dst, dr, dc, src, sr, sc):
    sig = types.void(dst, types.int64, types.int64, src, types.int64, types.int64)
    return sig, lambda context, builder, sig, args: _ir_tile(context, builder, sig, args, False)


@intrinsic
def _tile_sum_ir(typingctx, dst, dr, dc, src, src2, bias, sr, sc):
    sig = types.void(dst, types.int64, types.int64, src, src2, bias, types.int64, types.int64)
    return sig, lambda context, builder, sig, args: _ir_tile(context, builder, sig, args, True)


def _transpose_tile(dst, dr, dc, src, sr, sc):
    """dst[dr + c, dc + r] = src[sr + r, sc + c] for r, c < 8."""
    for r in range(8):
        for c in range(8):
            dst[dr + c, dc + r] = src[sr + r, sc + c]


def _transpose_tile_sum(dst, dr, dc, src, src2, bias, sr, sc):
    """dst[dr + c, dc + r] = (src[sr + r, sc + c] + src2[sr + r, sc + c]) + bias[sc + c]."""
    for r in range(8):
        for c in range(8):
            dst[dr + c, dc + r] = (src[sr + r, sc + c] + src2[sr + r, sc + c]) + bias[sc + c]


@overload(_transpose_tile, jit_options=dict(_FAST, inline="always"))
def _transpose_tile_impl(dst, dr, dc, src, sr, sc):
    if _tile_arrays_ok(dst, src):
        return lambda dst, dr, dc, src, sr, sc: _tile_ir(dst, dr, dc, src, sr, sc)
    return _transpose_tile


@overload(_transpose_tile_sum, jit_options=dict(_STRICT, inline="always"))
def _transpose_tile_sum_impl(dst, dr, dc, src, src2, bias, sr, sc):
    if _tile_arrays_ok(dst, src, src2, bias):
        return lambda dst, dr, dc, src, src2, bias, sr, sc: _tile_sum_ir(
            dst, dr, dc, src, src2, bias, sr, sc)
    return _transpose_tile_sum


@njit(**_FAST)
def _to_features(Z, src, s0, n):
    """Z[k, t] = src[s0 + t, k] for t < n, k < Z.shape[0]: n rows of src, feature-major."""
    H = Z.shape[0]
    n8, H8 = n - n % 8, H - H % 8
    for t0 in range(0, n8, 8):
        for k0 in range(0, H8, 8):
            _transpose_tile(Z, k0, t0, src, s0 + t0, k0)
    for k in range(H8, H):
        for t in range(n8):
            Z[k, t] = src[s0 + t, k]
    for k in range(H):
        for t in range(n8, n):
            Z[k, t] = src[s0 + t, k]


@njit(**_STRICT)
def _to_features_sum(Z, src, src2, bias, s0, n):
    """Z[k, t] = (src[s0 + t, k] + src2[s0 + t, k]) + bias[k], as _to_features. Strict: with
    fast-math flags (which Numba sets on every instruction of a kernel, the IR tile's included)
    the compiler may add the bias first."""
    H = Z.shape[0]
    n8, H8 = n - n % 8, H - H % 8
    for t0 in range(0, n8, 8):
        for k0 in range(0, H8, 8):
            _transpose_tile_sum(Z, k0, t0, src, src2, bias, s0 + t0, k0)
    for k in range(H8, H):
        for t in range(n8):
            Z[k, t] = (src[s0 + t, k] + src2[s0 + t, k]) + bias[k]
    for k in range(H):
        for t in range(n8, n):
            Z[k, t] = (src[s0 + t, k] + src2[s0 + t, k]) + bias[k]


@njit(**_FAST)
def _to_rows(dst, d0, Z, n):
    """dst[d0 + t, k] = Z[k, t] for t < n, k < Z.shape[0]: a feature-major block back to rows."""
    H = Z.shape[0]
    n8, H8 = n - n % 8, H - H % 8
    for t0 in range(0, n8, 8):
        for k0 in range(0, H8, 8):
            _transpose_tile(dst, d0 + t0, k0, Z, k0, t0)
    for t in range(n8):
        for k in range(H8, H):
            dst[d0 + t, k] = Z[k, t]
    for t in range(n8, n):
        for k in range(H):
            dst[d0 + t, k] = Z[k, t]


_AHEAD = 4           # rows ahead for prefetching in _block_entries
BLOCK = 128          # rows per block: the block's activations stay in L2


@njit(**_FAST)
def _block_entries(indptr, indices, values, starts, ends, rows, shifts, b0, nb, rng, bidx, bval,
                   j0, j1):
    """Find the non-zero inputs of the block rows rows[b0:b0+nb] in the columns j0 <= j < j1
    (all of them with 0, n_cols; a pixel range in the split step). Returns arrays (idx, val)
    and fills rng (2, >= nb): row t's entries are idx[p], val[p] for rng[0, t] <= p < rng[1, t].

    Without shifts nothing is copied: (idx, val) are the CSR's own arrays, and row i's entries
    in the column range are starts[i]:ends[i] (indptr[:-1] and indptr[1:] for all columns; for a
    pixel range, the ends of one run, since a row's columns are sorted: see _row_cuts). With
    shifts (an (n, 2) int8 array aligned with rows; empty for none), the image of row
    rows[b0 + t] is moved by shifts[b0 + t] = (dy, dx) pixels, filling with zeros: pixel (r, c)
    goes to (r + dy, c + dx) and pixels that leave the 28x28 frame are dropped (augmentation).
    The moved entries are written to the block-local bidx, bval (columns still sorted), which
    are returned.
    """
    has_shift = shifts.shape[0] > 0
    q = 0
    for t in range(nb):
        if t + _AHEAD < nb:            # rows lie anywhere in the dataset: ask for the memory of
            ahead = rows[b0 + t + _AHEAD]                   # a later row early, so that cache
            for p in range(starts[ahead], ends[ahead], 32):  # misses overlap
                _prefetch(indices, p)
            for p in range(starts[ahead], ends[ahead], 64):
                _prefetch(values, p)
        i = rows[b0 + t]
        if not has_shift:
            rng[0, t] = starts[i]
            rng[1, t] = ends[i]
            continue
        dy = np.int64(shifts[b0 + t, 0])
        dx = np.int64(shifts[b0 + t, 1])
        rng[0, t] = q
        for p in range(indptr[i], indptr[i + 1]):
            j = np.int64(indices[p])
            r = j // 28 + dy
            c = j % 28 + dx
            j = r * 28 + c
            if 0 <= r < 28 and 0 <= c < 28 and j0 <= j < j1:
                bidx[q] = j
                bval[q] = values[p]
                q += 1
        rng[1, t] = q
    if has_shift:
        return bidx, bval
    return indices, values


@njit(parallel=True, **_STRICT)
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


@njit(**_FAST)
def _block_forward(Ws, bs, rng, idx, val, lut, nb, offs, Zrow, AT, width, bands, rows, b0):
    """Forward one block (its inputs found by _block_entries, the CSR's rows rows[b0:b0+nb])
    through the network. With bands (_band_cuts; none if it has no rows, and none for shifted
    images, whose entries are block-local copies) the first layer runs band by band.

    Zrow (BLOCK, sizes[1]) is scratch for the sparse first layer, computed row by row. After it,
    the block is kept *feature-major*: AT[offs[l]:offs[l+1], :nb] holds layer l's output for the
    block, one row per unit (ReLU applied for hidden layers; the last layer's rows are logits).
    Then every dense layer is a sum of long vector updates along the block
    (ZT[m, :] += W[k, m] * AT[k, :]), which vectorizes fully whatever the layer widths, and a
    unit that is inactive for the whole block is skipped.
    """
    _first_layer(Zrow, Ws[0], bs[0], rng, bands, rows, b0, idx, val, lut, nb, width)
    _to_features(AT[offs[0]:offs[1]], Zrow, 0, nb)
    _block_forward_dense(Ws, bs, nb, offs, AT)


@njit(**_FAST)
def _block_forward_dense(Ws, bs, nb, offs, AT):
    """The block's layers after the first, given the first layer's pre-activations (feature-
    major) in AT[offs[0]:offs[1], :nb]: ReLU, then each dense layer (ReLU on all but the last)."""
    L = len(Ws)
    if L > 1:
        _relu_rows(AT[offs[0]:offs[1]], nb)
    for l in range(1, L):
        _dense_forward(Ws[l], bs[l], AT[offs[l - 1]:offs[l]], AT[offs[l]:offs[l + 1]], nb)
        if l < L - 1:
            _relu_rows(AT[offs[l]:offs[l + 1]], nb)


@njit(**_LEAF)
def _dense_forward(W, b, A, Z, nb):
    """Z[:, :nb] = W.T @ A[:, :nb] + b for feature-major A (fan_in, BLOCK), Z (fan_out, BLOCK).

    Each output row is a sum of long vector updates along the block. One pass along the block
    reads four input rows and updates two output rows: eight multiply-adds per six loads and
    two stores (one input row per pass would be bound by loads and stores, not arithmetic). The
    eight weights are read into scalars before the pass, where the compiler can keep them in
    registers (it cannot prove that writing z leaves W unchanged, so W[k, m] inside the loop
    would be re-read at every t)."""
    fan_in, fan_out = W.shape
    for m in range(0, fan_out - 1, 2):
        z0 = Z[m]
        z1 = Z[m + 1]
        b0 = b[m]
        b1 = b[m + 1]
        for t in range(nb):
            z0[t] = b0
            z1[t] = b1
        k = 0
        while k + 4 <= fan_in:
            a0, a1, a2, a3 = A[k], A[k + 1], A[k + 2], A[k + 3]
            u0, u1, u2, u3 = W[k, m], W[k + 1, m], W[k + 2, m], W[k + 3, m]
            v0, v1, v2, v3 = W[k, m + 1], W[k + 1, m + 1], W[k + 2, m + 1], W[k + 3, m + 1]
            for t in range(nb):
                x0 = a0[t]
                x1 = a1[t]
                x2 = a2[t]
                x3 = a3[t]
                z0[t] += (u0 * x0 + u1 * x1) + (u2 * x2 + u3 * x3)
                z1[t] += (v0 * x0 + v1 * x1) + (v2 * x2 + v3 * x3)
            k += 4
        for k in range(k, fan_in):
            a0 = A[k]
            u0 = W[k, m]
            v0 = W[k, m + 1]
            for t in range(nb):
                z0[t] += u0 * a0[t]
                z1[t] += v0 * a0[t]
    if fan_out % 2:                           # an odd last output row, on its own
        m = fan_out - 1
        z0 = Z[m]
        b0 = b[m]
        for t in range(nb):
            z0[t] = b0
        for k in range(fan_in):
            a0 = A[k]
            u0 = W[k, m]
            for t in range(nb):
                z0[t] += u0 * a0[t]


@njit(**_FAST)
def _relu_rows(Z, nb):
    """In place on Z[:, :nb]: negative entries become 0 (NaN stays NaN, as with np.maximum)."""
    for k in range(Z.shape[0]):
        z = Z[k]
        for t in range(nb):
            if z[t] < 0:
                z[t] = 0


@njit(**_FAST)
def _any_nonzero(a, nb):
    for t in range(nb):
        if a[t] != 0:
            return True
    return False


@njit(inline="always", **_FAST)
def _block_softmax(Z, nb, E, colmax, colsum):
    """Column-wise softmax numerators of the logits Z[:, :nb]: E = exp(Z - column max) (E may be
    Z itself); colmax and colsum receive each column's maximum and sum of E."""
    K = Z.shape[0]
    for t in range(nb):
        colmax[t] = Z[0, t]
        colsum[t] = 0
    for m in range(1, K):
        z = Z[m]
        for t in range(nb):
            if z[t] > colmax[t]:
                colmax[t] = z[t]
    for m in range(K):
        z = Z[m]
        e = E[m]
        for t in range(nb):
            v = np.exp(z[t] - colmax[t])
            e[t] = v
            colsum[t] += v


@njit(**_FAST)
def _block_softmax_xent(ZT, y, rows, b0, nb, inv_n, dZT, colmax, colsum):
    """Softmax over each column of the logits ZT[:, :nb]. Returns the summed cross-entropy of
    the block (float64) and writes dZT[:, :nb] = (softmax - onehot(y)) * inv_n."""
    K = ZT.shape[0]
    _block_softmax(ZT, nb, dZT, colmax, colsum)
    loss = 0.0
    for t in range(nb):
        yi = y[rows[b0 + t]]
        loss += float(np.log(colsum[t])) + float(colmax[t]) - float(ZT[yi, t])
        colsum[t] = inv_n / colsum[t]
    for m in range(K):
        d = dZT[m]
        for t in range(nb):
            d[t] *= colsum[t]
    for t in range(nb):
        dZT[y[rows[b0 + t]], t] -= inv_n
    return loss


@njit(inline="always", **_FAST)
def _add_row_sums(gb, dZ, nb):
    """gb[m] += sum of dZ[m, :nb] (a bias gradient from a feature-major block)."""
    for m in range(dZ.shape[0]):
        d = dZ[m]
        acc = _zero_of(d)
        for t in range(nb):
            acc += d[t]
        gb[m] += acc


@njit(**_FAST)
def _block_backward(Ws, rng, idx, val, lut, nb, offs, AT, dZT, dZrow, pWs, pbs, s, width):
    """Add the block's gradients into slot s of the partials, from dZT (the output layer's
    dL/dZ, feature-major) down to the first layer. Layers in reverse order of the forward pass:

        dW[l][k, m] += sum_t A[k, t] dZ[m, t]      db[l][m] += sum_t dZ[m, t]
        dA[k, t]     = sum_m W[k, m] dZ[m, t]      dZ_below = dA where A > 0 (the ReLU mask)

    The first layer's gradient is the sparse x.T @ dz per row (dZrow: the block's dZ row-major).
    The input layer's dA is never formed.
    """
    _block_backward_dense(Ws, nb, offs, AT, dZT, pWs, pbs, s, dZrow)
    gW = pWs[0][s]
    _sparse_outer(gW, rng, idx, val, lut, nb, dZrow, width)


@njit(**_FAST)
def _block_backward_dense(Ws, nb, offs, AT, dZT, pWs, pbs, s, dZrow):
    """The backward of every layer but the first's weights: layers L-1..1 into slot s of the
    partials, the first layer's bias gradient, and the first layer's dL/dZ for the block
    written row-major into dZrow[:nb] (what the sparse weight gradient reads)."""
    L = len(Ws)
    for l in range(L - 1, 0, -1):
        dZ = dZT[offs[l]:offs[l + 1]]
        _add_row_sums(pbs[l][s], dZ, nb)
        _dense_backward(Ws[l], AT[offs[l - 1]:offs[l]], dZ, dZT[offs[l - 1]:offs[l]], pWs[l][s], nb)
    dZ0 = dZT[offs[0]:offs[1]]
    _add_row_sums(pbs[0][s], dZ0, nb)
    _to_rows(dZrow, 0, dZ0, nb)


@njit(**_LEAF)
def _dense_backward(W, A, dZ, dA, gW, nb):
    """One dense layer backward on a feature-major block: gW[k, m] += A[k, :nb] . dZ[m, :nb] and
    dA[k, :nb] = (W[k, :] @ dZ[:, :nb]) masked by A[k, :nb] > 0 (the ReLU below).

    Four output rows are taken per pass along the block: the pass reads a[t] and dA[t] once for
    four gradient dot products and four multiply-adds into dA. A unit k inactive for the whole
    block gets no gradient and dA = 0 without any arithmetic."""
    fan_in, fan_out = W.shape
    for k in range(fan_in):
        a = A[k]
        da = dA[k]
        for t in range(nb):
            da[t] = 0
        if not _any_nonzero(a, nb):
            continue
        m = 0
        while m + 4 <= fan_out:
            d0, d1, d2, d3 = dZ[m], dZ[m + 1], dZ[m + 2], dZ[m + 3]
            w0, w1, w2, w3 = W[k, m], W[k, m + 1], W[k, m + 2], W[k, m + 3]
            s0 = _zero_of(a)
            s1, s2, s3 = s0, s0, s0
            for t in range(nb):
                at = a[t]
                s0 += at * d0[t]
                s1 += at * d1[t]
                s2 += at * d2[t]
                s3 += at * d3[t]
                da[t] += (w0 * d0[t] + w1 * d1[t]) + (w2 * d2[t] + w3 * d3[t])
            gW[k, m] += s0
            gW[k, m + 1] += s1
            gW[k, m + 2] += s2
            gW[k, m + 3] += s3
            m += 4
        while m < fan_out:
            d0 = dZ[m]
            w0 = W[k, m]
            s0 = _zero_of(a)
            for t in range(nb):
                s0 += a[t] * d0[t]
                da[t] += w0 * d0[t]
            gW[k, m] += s0
            m += 1
        for t in range(nb):            # the ReLU mask from the forward output
            if not a[t] > 0:
                da[t] = 0


@njit(**_STRICT)
def _densest_row(indptr):
    """The most non-zero entries in one row of a CSR (at least 1): room for a block's entries."""
    densest = 1
    for i in range(indptr.shape[0] - 1):
        densest = max(densest, indptr[i + 1] - indptr[i])
    return densest


@njit(**_STRICT)
def _alloc_scratch(Ws, offs, lut, indptr, values, nslots):
    """Per-slot scratch for the block kernels, in the working dtype (lut's); index [s] is slot
    s's share. Allocated once per call of a kernel or a training loop, not once per step. Per
    slot: the first layer's rows (BLOCK, sizes[1]); the feature-major activations and their
    gradients (units, BLOCK); the softmax's per-column max and sum (2, BLOCK); the block-local
    CSR, with room for BLOCK of the densest row (a shifted image never has more non-zero pixels
    than the original). Allocated in compiled code: a tuple of arrays passed from Python costs
    a few microseconds per array at every call, which small batches feel."""
    cap = BLOCK * _densest_row(indptr)
    dt = lut.dtype
    units = offs[-1]
    return (np.empty((nslots, BLOCK, Ws[0].shape[1]), dtype=dt),
            np.empty((nslots, units, BLOCK), dtype=dt), np.empty((nslots, units, BLOCK), dtype=dt),
            np.empty((nslots, 2, BLOCK), dtype=dt), np.empty((nslots, 2, BLOCK), dtype=np.int64),
            np.empty((nslots, cap), dtype=np.uint16), np.empty((nslots, cap), dtype=values.dtype))


@njit(**_FAST)
def _slot_grads(Ws, bs, indptr, indices, values, lut, y, rows, shifts, r0, r1, inv_n, offs, pWs,
                pbs, scr, s, width, bands):
    """Forward and backward rows[r0:r1], block by block, into slot s of the partials.
    Returns the slot's summed cross-entropy (float64).

    The slot first zeroes its own partials and reads the weights once in order. Both are cache
    work, not arithmetic: after an update on the other core, the weights and partials live in
    that core's cache, and fetching them in one sequential sweep (which the prefetcher streams)
    is far cheaper than the random row accesses of the sparse products fetching them line by line.
    """
    touched = _warm_slot(Ws, pWs, pbs, s)
    Zrow, AT, dZT, colmax, colsum = scr[0][s], scr[1][s], scr[2][s], scr[3][s, 0], scr[3][s, 1]
    rng, bidx, bval = scr[4][s], scr[5][s], scr[6][s]
    L = len(Ws)
    loss = 0.0 * touched
    for b0 in range(r0, r1, BLOCK):
        nb = min(BLOCK, r1 - b0)
        idx, val = _block_entries(indptr, indices, values, indptr[:-1], indptr[1:], rows, shifts,
                                  b0, nb, rng, bidx, bval, 0, Ws[0].shape[0])
        _block_forward(Ws, bs, rng, idx, val, lut, nb, offs, Zrow, AT, width,
                       bands if shifts.shape[0] == 0 else bands[:0], rows, b0)
        loss += _block_softmax_xent(AT[offs[L - 1]:offs[L]], y, rows, b0, nb, inv_n,
                                    dZT[offs[L - 1]:offs[L]], colmax, colsum)
        _block_backward(Ws, rng, idx, val, lut, nb, offs, AT, dZT, Zrow, pWs, pbs, s, width)
    return loss


@njit(**_STRICT)
def _warm_slot(Ws, pWs, pbs, s):
    """Zero slot s's partials and read every cache line of the weights once, in order.
    Returns a number derived from the reads (0.0 unless a weight is not finite), so that the
    reads are not optimised away."""
    for l in range(len(pWs)):
        pWs[l][s][:] = 0
        pbs[l][s][:] = 0
    acc = 0.0
    for l in range(len(Ws)):
        w = Ws[l].reshape(-1)
        for q in range(0, w.shape[0], 8):
            acc += w[q] * 0.0
    return acc


@njit(parallel=True, **_FAST)
def _slots_kernel(Ws, bs, indptr, indices, values, lut, y, rows, shifts, inv_n, offs, pWs, pbs, scr,
                  width, bands):
    """Gradients of the batch rows (row numbers into the CSR), left as per-slot partials.

    pWs[l] has shape (nslots, fan_in, fan_out); each slot zeroes its own first. prange over slots:
    slot s takes a contiguous share of the rows and owns pWs[l][s]; nothing is shared, so there
    are no races, and the split does not depend on the number of threads.
    Returns the summed cross-entropy over the rows (float64).
    """
    nslots = pWs[0].shape[0]
    n = rows.shape[0]
    losses = np.zeros(nslots)
    for i in prange(nslots):
        s = np.int64(i)      # (a prange index is uint64 in the parallel code and int64 when typed
        r0 = (n * s) // nslots                # as a plain loop: without the cast every callee
        r1 = (n * (s + 1)) // nslots          # is compiled twice, once for each)
        losses[s] = _slot_grads(Ws, bs, indptr, indices, values, lut, y, rows, shifts, r0, r1,
                                inv_n, offs, pWs, pbs, scr, s, width, bands)
    total = 0.0
    for s in range(nslots):
        total += losses[s]
    return total


@njit(**_STRICT)
def _sum_slots(pWs, pbs, gWs, gbs):
    """gWs[l] = sum over s of pWs[l][s], in slot order (deterministic); the same for biases.
    Serial: it moves at most a few hundred KB, less than starting a parallel region costs."""
    nslots = pWs[0].shape[0]
    for l in range(len(gWs)):
        gW = gWs[l]
        pW = pWs[l]
        for k in range(gW.shape[0]):
            for m in range(gW.shape[1]):
                gW[k, m] = pW[0, k, m]
            for s in range(1, nslots):
                for m in range(gW.shape[1]):
                    gW[k, m] += pW[s, k, m]
        gb = gbs[l]
        pb = pbs[l]
        for m in range(gb.shape[0]):
            acc = pb[0, m]
            for s in range(1, nslots):
                acc += pb[s, m]
            gb[m] = acc


@njit(parallel=True, **_FAST)
def _forward_kernel(Ws, bs, indptr, indices, values, lut, offs, outs, proba, labels, width,
                    bands):
    """Forward every row. With proba False: outs[l] (n, sizes[l+1]) receives layer l's output
    (logits for the last). With proba True: outs[-1] (n, 10) receives the softmax probabilities
    and the hidden layers are not stored (their outs are empty (0, sizes[l+1]) arrays: one tuple
    type for both uses, so forward and predict_proba share one compiled kernel; 7-9 s of
    compiling each). If labels has n entries (else it is empty), it receives
    each row's most probable class instead, found by the thread that owns the row: read from
    the logits where the largest is clear of the others (_clear_argmax; no exp, no division, no
    probabilities written), else the first maximum of the row's probabilities, which are then
    computed and written to outs[-1] for that block only. The first layer runs in pixel bands
    (bands: _band_cuts; none if it has no rows). prange over row ranges (each owns its output
    rows)."""
    n = indptr.shape[0] - 1
    nslots = min(NSLOTS_FWD, (n + BLOCK - 1) // BLOCK)
    scr = _alloc_scratch(Ws, offs, lut, indptr, values, nslots)
    rows = np.arange(n)              # the identity: row numbers for _block_entries
    for i in prange(nslots):
        s = np.int64(i)                      # (see _slots_kernel)
        _forward_range(Ws, bs, indptr, indices, values, lut, offs, outs, proba, labels, width,
                       bands, scr, rows, s, (n * s) // nslots, (n * (s + 1)) // nslots)


@njit(**_FAST)
def _forward_range(Ws, bs, indptr, indices, values, lut, offs, outs, proba, labels, width, bands,
                   scr, rows, s, r0, r1):
    """_forward_kernel's work on rows r0:r1, with slot s's scratch."""
    L = len(Ws)
    Zrow, AT, colmax, colsum = scr[0][s], scr[1][s], scr[3][s, 0], scr[3][s, 1]
    rng, bidx, bval = scr[4][s], scr[5][s], scr[6][s]
    no_shifts = np.zeros((0, 2), dtype=np.int8)
    for b0 in range(r0, r1, BLOCK):
        nb = min(BLOCK, r1 - b0)
        idx, val = _block_entries(indptr, indices, values, indptr[:-1], indptr[1:], rows,
                                  no_shifts, b0, nb, rng, bidx, bval, 0, Ws[0].shape[0])
        _block_forward(Ws, bs, rng, idx, val, lut, nb, offs, Zrow, AT, width, bands, rows, b0)
        if proba:
            Z = AT[offs[L - 1]:offs[L]]
            if labels.shape[0] > 0 and _clear_argmax(Z, nb, colmax, labels[b0:b0 + nb]):
                continue                # the block's classes, read from the logits
            _block_softmax(Z, nb, Z, colmax, colsum)
            for m in range(Z.shape[0]):
                z = Z[m]
                for t in range(nb):
                    z[t] = z[t] / colsum[t]
            P = outs[L - 1]
            _to_rows(P, b0, Z, nb)
            if labels.shape[0] > 0:
                _argmax_rows(P, b0, b0 + nb, labels)
        else:
            for l in range(L):
                o = outs[l]
                Z = AT[offs[l]:offs[l + 1]]
                _to_rows(o, b0, Z, nb)


# Logits this far below their column's largest give a probability below the largest one's by
# thousands of units in the last place, whatever rounding exp and the division do.
LOGIT_GAP = 2.0 ** -16


@njit(**_FAST)
def _clear_argmax(Z, nb, colmax, out):
    """out[t] = the first row m with the largest Z[m, t] (t < nb), for feature-major logits Z.
    Returns True when that is provably predict_proba's argmax in every column: the largest logit
    is finite and every other one is at least LOGIT_GAP below it, so its probability is strictly
    the largest, bit for bit. Otherwise (near-ties, equal logits, inf or NaN) False: the caller
    computes the probabilities and takes their first maximum, as NumPy's argmax does."""
    K = Z.shape[0]
    gap = Z.dtype.type(LOGIT_GAP)
    z = Z[0]
    for t in range(nb):
        colmax[t] = z[t]
        out[t] = 0
    for m in range(1, K):
        z = Z[m]
        for t in range(nb):
            if z[t] > colmax[t]:
                colmax[t] = z[t]
                out[t] = m
    unclear = 0
    for m in range(K):
        z = Z[m]
        for t in range(nb):
            d = colmax[t] - z[t]                # 0 for the largest itself, NaN if it is inf
            ok = d == 0 if out[t] == m else d >= gap
            unclear += not ok
    return unclear == 0


@njit(**_FAST)
def _loss_kernel(Ws, bs, indptr, indices, values, lut, y, shifts, inv_n, offs, pWs, pbs, gWs, gbs,
                 width, bands):
    """loss_and_grads in one compiled call: scratch, the slots, their sum into gWs, gbs. Returns
    the summed cross-entropy (float64). (shifts: the empty array, passed in rather than taken
    from a global, whose type would be a read-only array, and would compile the whole chain of
    kernels a second time for it.)"""
    n = indptr.shape[0] - 1
    scr = _alloc_scratch(Ws, offs, lut, indptr, values, pWs[0].shape[0])
    total = _slots_kernel(Ws, bs, indptr, indices, values, lut, y, np.arange(n), shifts,
                          inv_n, offs, pWs, pbs, scr, width, bands)
    _sum_slots(pWs, pbs, gWs, gbs)
    return total


# ----------------------------------------------------------------------------------------------
# the update: the same rules as reference.update, one fused pass per array

_OPT_CODE = {"gd": 0, "sgd": 0, "momentum": 1, "nesterov": 2, "adam": 3}


@njit(inline="always", **_STRICT)
def _opt_rule(w, g, m, v, code, lr, hp, c1, c2):
    """One optimizer step on the 1-D arrays w (in place), with gradient g and state m, v (used as
    the rule needs: v for momentum/nesterov, m and v for adam; otherwise untouched).
    hp = [momentum, beta1, 1 - beta1, beta2, 1 - beta2, eps] in w's dtype; c1, c2 are Adam's
    bias corrections 1 - beta^t. Each rule is its own loop, so each vectorizes."""
    n = w.shape[0]
    if code == 0:
        for j in range(n):
            w[j] -= lr * g[j]
    elif code == 1:
        mu = hp[0]
        for j in range(n):
            v[j] = v[j] * mu + g[j]
            w[j] -= lr * v[j]
    elif code == 2:
        mu = hp[0]
        for j in range(n):
            v[j] = v[j] * mu + g[j]
            w[j] -= lr * (g[j] + mu * v[j])
    else:
        b1, ob1, b2, ob2, eps = hp[1], hp[2], hp[3], hp[4], hp[5]
        for j in range(n):
            m[j] = m[j] * b1 + ob1 * g[j]
            v[j] = v[j] * b2 + ob2 * g[j] * g[j]
            w[j] -= lr * (m[j] / c1) / (np.sqrt(v[j] / c2) + eps)


@njit(inline="always", **_STRICT)
def _update_rows(W, pW, mW, vW, k0, k1, code, lr, hp, wd, c1, c2):
    """Rows k0:k1 of the optimizer step, as one flat run of numbers (the rows are contiguous):
    the slots' partials pW[:, k0:k1] summed in slot order into slot 0's (the gradient), weight
    decay, then the rule. m, v state rows as the rule needs."""
    w = W[k0:k1].reshape(-1)
    g = pW[0, k0:k1].reshape(-1)
    for s in range(1, pW.shape[0]):
        gs = pW[s, k0:k1].reshape(-1)
        for j in range(g.shape[0]):
            g[j] += gs[j]
    if wd != 0:
        for j in range(g.shape[0]):
            g[j] += wd * w[j]
    m = mW[k0:k1].reshape(-1) if code == 3 else w
    v = vW[k0:k1].reshape(-1) if code != 0 else w
    _opt_rule(w, g, m, v, code, lr, hp, c1, c2)


@njit(inline="always", **_STRICT)
def _update_bias(b, pb, mb, vb, code, lr, hp, c1, c2):
    """The optimizer step of a bias from its slot partials pb (summed in slot order; no decay)."""
    gb = pb[0]
    for s in range(1, pb.shape[0]):
        for j in range(gb.shape[0]):
            gb[j] += pb[s, j]
    _opt_rule(b, gb, mb if code == 3 else b, vb if code != 0 else b, code, lr, hp, c1, c2)


@njit(parallel=True, **_STRICT)
def _update_from_slots(Ws, bs, pWs, pbs, mWs, mbs, vWs, vbs, code, lr, hp, wd, c1, c2):
    """The optimizer step fused with the sum of the slot partials, row by row (_update_rows).
    No separate gradient array is written; the next step's slots zero their partials.
    prange over weight rows: each thread owns its rows."""
    for l in range(len(Ws)):
        for i in prange(Ws[l].shape[0]):
            k = np.int64(i)                  # (see _slots_kernel)
            _update_rows(Ws[l], pWs[l], mWs[l], vWs[l], k, k + 1, code, lr, hp, wd, c1, c2)
        _update_bias(bs[l], pbs[l], mbs[l], vbs[l], code, lr, hp, c1, c2)


# ----------------------------------------------------------------------------------------------
# the mini-batch step split by pixels: each core keeps its half of the first layer

SPLIT_MAX_BATCH = 512   # mini-batches up to this many rows take the split step


def _pixel_counts(csr: CSR, n_in: int) -> np.ndarray:
    """Cumulative count of non-zero entries per pixel (column), over the first (up to) 2,000
    rows: where the work of the first layer lies, for the split point and the pixel bands."""
    sample = csr.indices[:csr.indptr[min(len(csr), 2000)]]
    return np.cumsum(np.bincount(sample, minlength=n_in))


def _split_point(params: Params, csr: CSR) -> int:
    """Half 0 owns first-layer weight rows (pixels) [0, j), half 1 [j, n_in): j is where half of
    the non-zero pixels of the first (up to) 2,000 rows lie below (so both halves get about the
    same work), moved to the nearest row that starts on a 64-byte cache line (for a line-aligned
    array), so that the two halves never write to the same line. For MNIST, j = 406."""
    n_in, H = params.sizes[0], params.sizes[1]
    step = 64 // math.gcd(64, H * params.dtype.itemsize)
    counts = _pixel_counts(csr, n_in)
    j = int(np.searchsorted(counts, counts[-1] / 2)) if counts[-1] > 0 else n_in // 2
    return int(min(n_in, step * round(j / step)))


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


def _split_index(params: Params, csr: CSR):
    """(jsplit, cut) for this CSR and the params' first-layer row size; cached per CSR."""
    def make():
        jsplit = _split_point(params, csr)
        return jsplit, _row_cuts(csr.indptr, csr.indices, np.array([jsplit]))[0]
    return _cached_for_csr(csr, ("split", params.sizes[1] * params.dtype.itemsize), make)


BAND_BYTES = 80 * 1024   # first-layer weight rows per pixel band (see _band_cuts)


def _band_cuts(params: Params, csr: CSR) -> np.ndarray:
    """The pixel bands of this CSR for the kernels that read its rows in order (the forward ones,
    and the slot step of full batches; see _NO_BANDS): (B - 1, n) int64, row i's entries of band k
    are cuts[k - 1, i]:cuts[k, i] (with indptr[i] and indptr[i + 1] at the ends). B bands of
    pixels whose first-layer weight rows total about BAND_BYTES, cut at equal shares of the
    entries (counted on the first 2,000 rows): 3 for the default float32 network. Only where
    the IR row loop runs (a compile-time width, compiled), which adds a row's entries one by one
    to its sum, so that adding them band by band changes no bit; (0, n) otherwise (the Numba
    loops add four entries at a time). Cached per CSR."""
    n_in, H = params.sizes[0], params.sizes[1]
    B = max(1, round(n_in * H * params.dtype.itemsize / BAND_BYTES))
    if B == 1 or not isinstance(_first_width(params), Width) or numba.config.DISABLE_JIT:
        return np.zeros((0, len(csr)), dtype=np.int64)

    def make():
        counts = _pixel_counts(csr, n_in)
        edges = np.searchsorted(counts, counts[-1] * np.arange(1, B) / B, side="right")
        return _row_cuts(csr.indptr, csr.indices, edges.astype(np.int64))
    return _cached_for_csr(csr, ("bands", H * params.dtype.itemsize), make)


def _split_scratch(params: Params, batch: int, csr: CSR, cut):
    """The split step's arrays, made once per epoch: per half, where the batch's entries of its
    pixel range are (ranges, and room for shifted copies; see _block_entries) and its partial
    first-layer product; the batch's first-layer dL/dZ (row-major); the first layer's weight
    gradient (one slot); a zero bias; the first layer's width (see Width); and ``cut`` from
    _split_index."""
    dt = params.dtype
    n_in, H = params.sizes[0], params.sizes[1]
    cap = batch * _densest_row(csr.indptr)
    return (np.empty((2, 2, batch), np.int64), np.empty((2, cap), np.uint16),
            np.empty((2, cap), csr.values.dtype), empty_aligned((2, batch, H), dt),
            empty_aligned((batch, H), dt), empty_aligned((1, n_in, H), dt),
            zeros_aligned(H, dt), _first_width(params), cut)


@njit(inline="always", **_STRICT)
def _halves(h, jsplit, n_in):
    """Half h's range of first-layer weight rows (pixels)."""
    return (0, jsplit) if h == 0 else (jsplit, n_in)


@njit(**_FAST)
def _forward_half(h, W1, indptr, indices, values, lut, rows, shifts, jsplit, sp):
    """Phase 1 of the split step, half h's part: find, for every row of the batch, the non-zero
    pixels in h's own pixel range, and multiply them by h's own rows of W1: sp's zpart[h]
    receives the partial first-layer products (no bias). W1 rows never leave their core."""
    hrng, hidx, hval, zpart, dz1, gW1, zero_b, width, cut = sp
    j0, j1 = _halves(h, jsplit, W1.shape[0])
    starts = indptr[:-1] if h == 0 else cut
    ends = cut if h == 0 else indptr[1:]
    n = rows.shape[0]
    idx, val = _block_entries(indptr, indices, values, starts, ends, rows, shifts, 0, n,
                              hrng[h], hidx[h], hval[h], j0, j1)
    _sparse_matmul(zpart[h], W1, zero_b, hrng[h], idx, val, lut, n, width)


@njit(**_FAST)
def _dense_half(h, Ws, bs, y, rows, inv_n, offs, pWs, pbs, scr, sp):
    """Phase 2, half h: half h of the batch's rows, block by block: the first layer's output
    (the two halves' partial products plus the bias), the dense layers, the loss, their backward
    into slot h of the partials (layers after the first, and every bias), and the first layer's
    dL/dZ into sp's dz1. Returns the half's summed cross-entropy (float64)."""
    hrng, hidx, hval, zpart, dz1, gW1, zero_b, width, cut = sp
    n = rows.shape[0]
    L = len(Ws)
    for l in range(L):
        if l > 0:
            pWs[l][h][:] = 0
        pbs[l][h][:] = 0
    AT, dZT, colmax, colsum = scr[1][h], scr[2][h], scr[3][h, 0], scr[3][h, 1]
    Z0 = AT[offs[0]:offs[1]]
    r1 = (n * (h + 1)) // 2
    loss = 0.0
    for b0 in range((n * h) // 2, r1, BLOCK):
        nb = min(BLOCK, r1 - b0)
        _to_features_sum(Z0, zpart[0], zpart[1], bs[0], b0, nb)
        _block_forward_dense(Ws, bs, nb, offs, AT)
        loss += _block_softmax_xent(AT[offs[L - 1]:offs[L]], y, rows, b0, nb, inv_n,
                                    dZT[offs[L - 1]:offs[L]], colmax, colsum)
        _block_backward_dense(Ws, nb, offs, AT, dZT, pWs, pbs, h, dz1[b0:b0 + nb])
    return loss


@njit(**_STRICT)
def _update_half(h, Ws, bs, indices, values, lut, shifts, jsplit, n, pWs, pbs, sp, mWs, mbs, vWs,
                 vbs, code, lr, hp, wd, c1, c2):
    """Phase 3, half h: the first layer's weight gradient for h's own pixel rows (the sparse
    x.T @ dz over the batch's n rows, in row order) and the optimizer step of those rows.
    Strict arithmetic in the update, as everywhere (see _STRICT)."""
    hrng, hidx, hval, zpart, dz1, gW1, zero_b, width, cut = sp
    W1 = Ws[0]
    g = gW1[0]
    j0, j1 = _halves(h, jsplit, W1.shape[0])
    g[j0:j1] = 0
    idx, val = (hidx[h], hval[h]) if shifts.shape[0] > 0 else (indices, values)
    _sparse_outer(g, hrng[h], idx, val, lut, n, dz1, width)
    _update_rows(W1, gW1, mWs[0], vWs[0], j0, j1, code, lr, hp, wd, c1, c2)


@njit(**_STRICT)
def _update_small(Ws, bs, pWs, pbs, mWs, mbs, vWs, vbs, code, lr, hp, wd, c1, c2):
    """Phase 3's third task: the optimizer step of the layers after the first and of every
    bias, from the two slots' partials. Whichever thread is free first runs it."""
    for l in range(1, len(Ws)):
        _update_rows(Ws[l], pWs[l], mWs[l], vWs[l], 0, Ws[l].shape[0], code, lr, hp, wd, c1, c2)
    for l in range(len(Ws)):
        _update_bias(bs[l], pbs[l], mbs[l], vbs[l], code, lr, hp, c1, c2)


# The split step's tasks and how the two cores share them.
#
# An epoch of S steps is a chain of 2S + 1 phases: phase 0 is the first step's forward
# (_forward_half), then for each step i: phase 2i + 1 its dense layers (_dense_half), phase
# 2i + 2 its first-layer gradient and update (_update_half) fused with the next step's forward.
# Each phase is two tasks, one per half (phase 2i + 2 has a third, the small layers' update,
# _update_small, which has no owner: whichever thread is done first runs it, which evens out
# the halves' step-to-step imbalance), and a phase starts only when all tasks of the one before
# are done. One parallel region runs the whole epoch: starting a region per phase cost
# 2.5-3.5 us here (a fork and join of the thread team, and Numba's scheduling and packing of ~40
# array arguments); with flags instead the epoch is 5% faster (48 vs 50 ms, measured A/B).
#
# Task t of half k has a state cell: FREE, TAKEN (claimed with an atomic compare-and-swap) or
# DONE. Each thread claims and runs its own half's task, then waits for the other's to be done;
# if the other stays FREE for ``patience`` spins (the other thread is late, descheduled, or the
# threading layer runs the two prange iterations one after the other on one thread), it claims
# that task and runs it itself. So no schedule can deadlock, and since a task's arithmetic and
# outputs do not depend on which thread runs it, the results are the same bits whoever runs
# what.

FREE, TAKEN, DONE = 0, 1, 2
PATIENCE = 1 << 12      # spins (~0.1 ms here, a few tasks) before taking over the other's task


def _patience() -> int:
    """No waiting where the two halves cannot run at once (one thread; no JIT)."""
    return PATIENCE if numba.get_num_threads() > 1 and not numba.config.DISABLE_JIT else 0


def _atomic_cas(a, i, expected, new):
    """If a[i] == expected, set a[i] = new and return True (one atomic step when compiled)."""
    if a[i] == expected:
        a[i] = new
        return True
    return False


def _atomic_load(a, i):
    return a[i]


def _atomic_store(a, i, v):
    a[i] = v


def _spin_pause():
    """The CPU's spin-wait hint (x86 ``pause``), between two looks at a flag."""


def _atomic_ptr(context, builder, aryty, ary, i):
    return cgutils.get_item_pointer(context, builder, aryty, context.make_array(aryty)(
        context, builder, ary), [i], wraparound=False)


def _int64_cells(a):
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64):
        raise numba.core.errors.TypingError(f"atomics need a 1-D int64 array; got {a}")


@intrinsic
def _atomic_cas_ir(typingctx, a, i, expected, new):
    _int64_cells(a)

    def codegen(context, builder, sig, args):
        ptr = _atomic_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.extract_value(builder.cmpxchg(ptr, args[2], args[3], "seq_cst", "seq_cst"), 1)
    return types.boolean(a, types.int64, types.int64, types.int64), codegen


@intrinsic
def _atomic_load_ir(typingctx, a, i):
    _int64_cells(a)

    def codegen(context, builder, sig, args):
        ptr = _atomic_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "seq_cst", 8)
    return types.int64(a, types.int64), codegen


@intrinsic
def _atomic_store_ir(typingctx, a, i, v):
    _int64_cells(a)

    def codegen(context, builder, sig, args):
        ptr = _atomic_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, "seq_cst", 8)
        return context.get_dummy_value()
    return types.void(a, types.int64, types.int64), codegen


@intrinsic
def _spin_pause_ir(typingctx):
    def codegen(context, builder, sig, args):
        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@overload(_atomic_cas, inline="always")
def _atomic_cas_impl(a, i, expected, new):
    return lambda a, i, expected, new: _atomic_cas_ir(a, np.int64(i), np.int64(expected),
                                                      np.int64(new))


@overload(_atomic_load, inline="always")
def _atomic_load_impl(a, i):
    return lambda a, i: _atomic_load_ir(a, np.int64(i))


@overload(_atomic_store, inline="always")
def _atomic_store_impl(a, i, v):
    return lambda a, i, v: _atomic_store_ir(a, np.int64(i), np.int64(v))


@overload(_spin_pause, inline="always")
def _spin_pause_impl():
    return lambda: _spin_pause_ir()


@njit(**_STRICT)
def _take(state, c, mine, patience):
    """Claim cell c (a task) for this thread; True if this thread is to run it. The other
    half's task (mine False) is left to its own thread unless it stays FREE for ``patience``
    spins."""
    if not mine:
        for _ in range(patience):
            if _atomic_load(state, c) != FREE:
                return False
            _spin_pause()
    return _atomic_cas(state, c, FREE, TAKEN)


@njit(**_STRICT)
def _wait_done(state, c):
    while _atomic_load(state, c) != DONE:
        _spin_pause()


@njit(**_STRICT)
def _split_task(t, k, Ws, bs, indptr, indices, values, lut, y, perm, shifts, batch, offs, inv_ns,
                pWs, pbs, sp, jsplit, mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s, scr,
                halfloss):
    """Run task t (phase t, see above) of half k."""
    n = perm.shape[0]
    i = (t - 1) // 2                     # the step of phases 2i + 1 and 2i + 2
    r0 = i * batch
    r1 = min(n, r0 + batch)
    r2 = min(n, r1 + batch)              # the next step's rows (none after the last step)
    has_shifts = shifts.shape[0] > 0
    if t == 0:
        _forward_half(k, Ws[0], indptr, indices, values, lut, perm[:batch],
                      shifts[:batch] if has_shifts else shifts, jsplit, sp)
    elif t % 2 == 1:
        halfloss[i, k] = _dense_half(k, Ws, bs, y, perm[r0:r1], inv_ns[i], offs, pWs, pbs, scr,
                                     sp)
    else:
        _update_half(k, Ws, bs, indices, values, lut, shifts[r0:r1] if has_shifts else shifts,
                     jsplit, r1 - r0, pWs, pbs, sp, mWs, mbs, vWs, vbs, code, lrs[i], hp, wd,
                     c1s[i], c2s[i])
        if r2 > r1:
            _forward_half(k, Ws[0], indptr, indices, values, lut, perm[r1:r2],
                          shifts[r1:r2] if has_shifts else shifts, jsplit, sp)


@njit(parallel=True, **_STRICT)
def _split_epoch(Ws, bs, indptr, indices, values, lut, y, perm, shifts, batch, offs, inv_ns, pWs,
                 pbs, sp, jsplit, mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s, scr, halfloss,
                 state, patience):
    """Every task of an epoch's split steps, in one parallel region (see above). halfloss
    (steps, 2) receives each step's summed cross-entropy per half; state (3 * (2S + 1),) int64
    FREE on entry: cells 3t and 3t + 1 are phase t's two halves, 3t + 2 a phase 3's third task
    (_update_small), which has no owner: the first thread done with its half takes it."""
    ntasks = 2 * lrs.shape[0] + 1
    for h in prange(2):
        me = np.int64(h)
        for t in range(ntasks):
            for j in range(2):
                k = (me + j) % 2             # first this thread's own half, then the other
                if _take(state, 3 * t + k, j == 0, patience):
                    _split_task(t, k, Ws, bs, indptr, indices, values, lut, y, perm, shifts,
                                batch, offs, inv_ns, pWs, pbs, sp, jsplit, mWs, mbs, vWs, vbs,
                                code, lrs, hp, wd, c1s, c2s, scr, halfloss)
                    _atomic_store(state, 3 * t + k, DONE)
            if t > 0 and t % 2 == 0:
                if _take(state, 3 * t + 2, True, patience):
                    i = (t - 1) // 2
                    _update_small(Ws, bs, pWs, pbs, mWs, mbs, vWs, vbs, code, lrs[i], hp, wd,
                                  c1s[i], c2s[i])
                    _atomic_store(state, 3 * t + 2, DONE)
                _wait_done(state, 3 * t + 2)
            _wait_done(state, 3 * t)
            _wait_done(state, 3 * t + 1)


@njit(**_STRICT)
def _update_all(Ws, bs, gWs, gbs, mWs, mbs, vWs, vbs, code, lr, hp, wd, c1, c2):
    """The optimizer step from full gradients (the public ``update``): the same rule."""
    use_m = code == 3
    use_v = code != 0
    for l in range(len(Ws)):
        w = Ws[l].reshape(-1)
        g = gWs[l].reshape(-1) + wd * w
        m = mWs[l].reshape(-1) if use_m else w
        v = vWs[l].reshape(-1) if use_v else w
        _opt_rule(w, g, m, v, code, lr, hp, c1, c2)
        b = bs[l]
        _opt_rule(b, gbs[l], mbs[l] if use_m else b, vbs[l] if use_v else b, code, lr, hp, c1, c2)


# ----------------------------------------------------------------------------------------------
# whole training loops in compiled code


@njit(**_FAST)
def _gd_loop(Ws, bs, indptr, indices, values, lut, y, rows, shifts, inv_n, offs, pWs, pbs, width,
             bands, mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s, losses):
    """len(lrs) full-batch steps: gradients of all rows, then the update. losses[i] is step i's
    mean loss, before its update."""
    scr = _alloc_scratch(Ws, offs, lut, indptr, values, pWs[0].shape[0])
    for it in range(lrs.shape[0]):
        total = _slots_kernel(Ws, bs, indptr, indices, values, lut, y, rows, shifts, inv_n, offs,
                              pWs, pbs, scr, width, bands)
        losses[it] = total / rows.shape[0]
        _update_from_slots(Ws, bs, pWs, pbs, mWs, mbs, vWs, vbs, code, lrs[it], hp, wd, c1s[it],
                           c2s[it])


@njit(**_FAST)
def _sgd_loop(Ws, bs, indptr, indices, values, lut, y, perm, shifts, batch, offs, inv_ns, pWs, pbs,
              width, bands, mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s, losses):
    """One epoch of mini-batch steps over the rows in the order perm (the shuffle is the
    caller's). Step i takes perm[i*batch:(i+1)*batch]; losses[i] is its mean loss."""
    scr = _alloc_scratch(Ws, offs, lut, indptr, values, pWs[0].shape[0])
    n = perm.shape[0]
    for it in range(lrs.shape[0]):
        r0 = it * batch
        r1 = min(n, r0 + batch)
        total = _slots_kernel(Ws, bs, indptr, indices, values, lut, y, perm[r0:r1],
                              shifts[r0:r1] if shifts.shape[0] else shifts, inv_ns[it],
                              offs, pWs, pbs, scr, width, bands)
        losses[it] = total / (r1 - r0)
        _update_from_slots(Ws, bs, pWs, pbs, mWs, mbs, vWs, vbs, code, lrs[it], hp, wd, c1s[it],
                           c2s[it])


@njit(**_FAST)
def _sgd_loop_split(Ws, bs, indptr, indices, values, lut, y, perm, shifts, batch, offs, inv_ns, pWs,
                    pbs, sp, jsplit, patience, mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s,
                    losses):
    """The same epoch as _sgd_loop with the split step: all its tasks in one parallel region
    (_split_epoch)."""
    scr = _alloc_scratch(Ws, offs, lut, indptr, values, 2)
    steps = lrs.shape[0]
    halfloss = np.zeros((steps, 2))
    state = np.zeros(3 * (2 * steps + 1), dtype=np.int64)
    _split_epoch(Ws, bs, indptr, indices, values, lut, y, perm, shifts, batch, offs, inv_ns, pWs,
                 pbs, sp, jsplit, mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s, scr, halfloss,
                 state, patience)
    n = perm.shape[0]
    for it in range(steps):
        losses[it] = (halfloss[it, 0] + halfloss[it, 1]) / (min(n, (it + 1) * batch) - it * batch)


# ----------------------------------------------------------------------------------------------
# the public functions: same signatures and meanings as reference.py


_NO_SHIFTS = np.zeros((0, 2), dtype=np.int8)
# Pixel bands pay where a kernel reads the CSR's rows in order (full batches, the forward), not
# where mini-batches visit rows at random: there each row's entries would be fetched once per
# band (measured, same bits either way: the split step's epoch 46.4 vs 52.3 ms, an epoch at batch
# 1,000 68.9 vs 74.0 ms). So mini-batches get none.
_NO_BANDS = np.zeros((0, 0), dtype=np.int64)


def _check_shifts(shifts, n, n_cols):
    """Validated augmentation shifts as int8 (n, 2), or the empty array for none."""
    shifts = check_shifts(shifts, n, n_cols)
    return _NO_SHIFTS if shifts is None else shifts


def _nslots(n: int) -> int:
    return int(max(1, min(NSLOTS, n // MIN_SLOT_ROWS)))


def _offsets(params: Params) -> np.ndarray:
    """Where each layer's output starts in the per-row scratch vector."""
    return np.concatenate([[0], np.cumsum(params.sizes[1:])]).astype(np.int64)


class _Workspace:
    """Per-slot partial gradients for a given architecture, dtype and slot count."""

    def __init__(self, params: Params, nslots: int):
        self.pWs = tuple(zeros_aligned((nslots,) + W.shape, W.dtype) for W in params.weights)
        self.pbs = tuple(zeros_aligned((nslots,) + b.shape, b.dtype) for b in params.biases)
        self.offs = _offsets(params)
        self.width = _first_width(params)


def _tuples(params: Params):
    return tuple(params.weights), tuple(params.biases)


def forward(params: Params, X):
    """Run the network up to the logits: [A0 = X, A1, ..., A(L-1), Z(L-1)], as the reference.

    X: dense float (n, 784) in the params' dtype, or a CSR. A0 is returned as given.
    """
    check_params(params)
    csr = _as_csr(X, params)
    n = len(csr)
    outs = tuple(np.empty((n, m), params.dtype) for m in params.sizes[1:])
    Ws, bs = _tuples(params)
    _forward_kernel(Ws, bs, csr.indptr, csr.indices, csr.values, csr.lut, _offsets(params), outs,
                    False, _NO_LABELS, _first_width(params), _bands_for(params, X, csr))
    return [X] + list(outs)


def loss_and_grads(params: Params, X, y):
    """Mean cross-entropy of the batch and its gradients (a Params), as the reference.

    X: dense float (n, 784) in the params' dtype (compressed on the way in), or a CSR from
    ``prepare``/``to_csr`` (the fast path for repeated calls on the same data).
    """
    check_params(params)
    csr = _as_csr(X, params)
    n = len(csr)
    y = check_y(y, n, params.sizes[-1])
    ws = _Workspace(params, _nslots(n))
    Ws, bs = _tuples(params)
    grads = params.zeros_like()
    gWs, gbs = _tuples(grads)
    total = _loss_kernel(Ws, bs, csr.indptr, csr.indices, csr.values, csr.lut, y, _NO_SHIFTS,
                         params.dtype.type(1.0 / n), ws.offs, ws.pWs, ws.pbs, gWs, gbs, ws.width,
                         _bands_for(params, X, csr))
    return total / n, grads


_NO_LABELS = np.zeros(0, dtype=np.int64)


def _bands_for(params: Params, X, csr: CSR) -> np.ndarray:
    """Pixel bands for a CSR the caller made (cached with it); none for dense X, compressed for
    this call only (finding them would cost about what they save in one pass)."""
    return _band_cuts(params, csr) if X is csr else _NO_BANDS


def _probabilities(params: Params, X, labels: bool):
    """Class probabilities (n, 10); or, if labels, the predicted class per row (and the
    probabilities of only some rows: not for the caller)."""
    check_params(params)
    csr = _as_csr(X, params, find_finite=True)
    _all_finite(csr)           # for dense X, known from compressing it
    n = len(csr)
    P = np.empty((n, params.sizes[-1]), params.dtype)
    out = np.empty(n, dtype=np.int64) if labels else _NO_LABELS
    Ws, bs = _tuples(params)
    outs = tuple(np.empty((0, m), params.dtype) for m in params.sizes[1:-1]) + (P,)
    _forward_kernel(Ws, bs, csr.indptr, csr.indices, csr.values, csr.lut, _offsets(params), outs,
                    True, out, _first_width(params), _bands_for(params, X, csr))
    return P, out


def predict_proba(params: Params, X):
    """Class probabilities, shape (n, 10), each row summing to 1. X must be finite."""
    return _probabilities(params, X, False)[0]


def predict(params: Params, X):
    """Predicted class per row, shape (n,), int64: the most probable class, exactly this
    backend's ``predict_proba(params, X).argmax(axis=1)`` (the first on ties), as the reference's
    predict is its own. Read from the logits wherever that is provably the same (_clear_argmax)."""
    return _probabilities(params, X, True)[1]


@njit(**_STRICT)
def _argmax_rows(P, r0, r1, out):
    """out[i] = P[i].argmax() for r0 <= i < r1 (the first maximum; NaN counts as a maximum, as in
    NumPy), without NumPy's per-row overhead."""
    for i in range(r0, r1):
        best = 0
        for m in range(1, P.shape[1]):
            if P[i, m] > P[i, best] or (np.isnan(P[i, m]) and not np.isnan(P[i, best])):
                best = m
        out[i] = best


def accuracy(params: Params, X, y) -> float:
    """Fraction of rows whose prediction equals the label."""
    y = check_y(y, len(X))
    return float((predict(params, X) == y).mean())


def _opt_args(params: Params, state, optimizer, lrs, t0, steps=None, **hyper):
    """Everything the compiled update needs, as arrays in the params' dtype (all of it checked
    first, as the reference checks it: _validate.check_optimizer)."""
    lrs, hyper = check_optimizer(params, state, optimizer, lrs, t0, steps, **hyper)
    momentum, beta1, beta2, eps, weight_decay = (hyper[k] for k in (
        "momentum", "beta1", "beta2", "eps", "weight_decay"))
    dt = params.dtype
    L = len(params.weights)
    k = 2 * L
    empty2, empty1 = np.zeros((0, 0), dt), np.zeros(0, dt)
    if optimizer == "adam":
        mWs, mbs = tuple(state[0:k:2]), tuple(state[1:k:2])
        vWs, vbs = tuple(state[k::2]), tuple(state[k + 1::2])
    elif optimizer in ("momentum", "nesterov"):
        mWs, mbs = (empty2,) * L, (empty1,) * L
        vWs, vbs = tuple(state[0:k:2]), tuple(state[1:k:2])
    else:
        mWs, mbs, vWs, vbs = (empty2,) * L, (empty1,) * L, (empty2,) * L, (empty1,) * L
    t = (t0 + 1 + np.arange(len(lrs))).astype(np.float64)   # Adam's bias corrections, vectorized
    c1s = (1 - np.power(float(beta1), t)).astype(dt)         # (a Python loop cost 1.3 ms per epoch)
    c2s = (1 - np.power(float(beta2), t)).astype(dt)
    hp = np.array([momentum, beta1, 1 - beta1, beta2, 1 - beta2, eps], dtype=dt)
    return (mWs, mbs, vWs, vbs, _OPT_CODE[optimizer], lrs.astype(dt), hp, dt.type(weight_decay),
            c1s, c2s)


def update(params: Params, grads: Params, state, lr, t=1, optimizer="sgd", **hyper):
    """One optimizer step in place, the same rules as ``reference.update``."""
    t = check_update(params, grads, t)
    opt = _opt_args(params, state, optimizer, [lr], t - 1, **hyper)
    mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s = opt
    Ws, bs = _tuples(params)
    gWs, gbs = _tuples(grads)
    _update_all(Ws, bs, gWs, gbs, mWs, mbs, vWs, vbs, code, lrs[0], hp, wd, c1s[0], c2s[0])


def gd_steps(params, state, X, y, lrs, t0=0, optimizer="gd", **hyper):
    """len(lrs) full-batch steps in compiled code (the twin of reference.gd_steps).
    X is a CSR (from ``prepare``) or dense float. Returns each step's loss, float64."""
    check_params(params)
    csr = _as_csr(X, params)
    n = len(csr)
    y = check_y(y, n, params.sizes[-1])
    opt = _opt_args(params, state, optimizer, lrs, t0, **hyper)
    ws = _Workspace(params, _nslots(n))
    Ws, bs = _tuples(params)
    losses = np.empty(len(opt[5]))
    rows = np.arange(n, dtype=np.int64)
    _gd_loop(Ws, bs, csr.indptr, csr.indices, csr.values, csr.lut, y, rows, _NO_SHIFTS,
             params.dtype.type(1.0 / n), ws.offs, ws.pWs, ws.pbs, ws.width,
             _bands_for(params, X, csr), *opt, losses)
    return losses


def sgd_epoch(params, state, X, y, perm, batch_size, lrs, t0=0, optimizer="sgd", shifts=None,
              **hyper):
    """One epoch of mini-batch steps in compiled code (the twin of reference.sgd_epoch): the
    rows in the order ``perm``, batches of ``batch_size``; step i uses lrs[i]. ``shifts``
    (len(perm), 2) moves the image perm[k] by shifts[k] = (dy, dx) pixels (augmentation)."""
    check_params(params)
    csr = _as_csr(X, params)
    y = check_y(y, len(csr), params.sizes[-1])
    perm = check_perm(perm, len(csr), batch_size)
    shifts = _check_shifts(shifts, len(perm), csr.n_cols)
    n = len(perm)
    steps = -(-n // batch_size)
    opt = _opt_args(params, state, optimizer, lrs, t0, steps, **hyper)
    sizes = np.minimum(batch_size, n - batch_size * np.arange(steps))
    inv_ns = (1.0 / sizes).astype(params.dtype)
    Ws, bs = _tuples(params)
    losses = np.empty(steps)
    if batch_size <= SPLIT_MAX_BATCH:
        ws = _Workspace(params, 2)
        jsplit, cut = _split_index(params, csr)
        _sgd_loop_split(Ws, bs, csr.indptr, csr.indices, csr.values, csr.lut, y, perm, shifts,
                        batch_size, ws.offs, inv_ns, ws.pWs, ws.pbs,
                        _split_scratch(params, batch_size, csr, cut), jsplit,
                        _patience(), *opt, losses)
        return losses
    ws = _Workspace(params, _nslots(batch_size))
    _sgd_loop(Ws, bs, csr.indptr, csr.indices, csr.values, csr.lut, y, perm, shifts, batch_size,
              ws.offs, inv_ns, ws.pWs, ws.pbs, ws.width, _NO_BANDS, *opt, losses)
    return losses
