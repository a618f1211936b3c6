"""Atomic int64 cells and a spin-wait, for the two threads of the pixel-split epoch (split.py).

    state      an int64 array of task cells, each FREE, TAKEN or DONE
    _take      claim a cell with a compare-and-swap (after waiting ``patience`` spins for the
               owner, if the cell is the other thread's)
    _wait_done spin (with the CPU's pause hint) until a cell is DONE

Without the JIT the plain Python bodies run (one thread: no atomicity needed).
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from llvmlite import ir

from ._options import STRICT

FREE, TAKEN, DONE = 0, 1, 2


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


@njit(**STRICT)
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


@njit(**STRICT)
def _wait_done(state, c):
    while _atomic_load(state, c) != DONE:
        _spin_pause()
