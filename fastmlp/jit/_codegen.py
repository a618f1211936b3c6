"""Code below the level of Numba: LLVM IR written out for the few loops where Numba's own code
leaves speed on the table, and the compile-time helpers the kernels use to choose between them.

Legend
------
    Width(n)   a layer width the compiler sees as a constant (part of the Numba type)
    H          a row's width in floats (the first hidden layer's, 72 by default)
    idx, val   a sparse row's columns and stored values; lut turns uint8 values into floats
    p0, p1     a row's entries are p0 <= p < p1

What lives here: the vector compress of a CSR row (AVX-512 only, ``_compress_ir``), the sparse
row loops with their accumulator in vector registers (``_ir_row_loop``), the 8 x 8 register
transposes (``_ir_tile``), a prefetch, and ``_value``/``_zero_of``/``_width``, which pick code at
compile time. Each IR function has a plain Python/Numba twin elsewhere (the one that runs without
the JIT and on other targets), and produces the same bits as that twin.
"""

from __future__ import annotations

import numba
from numba import types
from numba.core import cgutils
from numba.extending import (NativeValue, intrinsic, models, overload, register_model, typeof_impl,
                             unbox)
from llvmlite import ir

from ._options import CHUNK, FAST


def _target_has(feature: str) -> bool:
    """Whether Numba compiles for a CPU with this feature (e.g. "avx512f"): the host's, or what
    NUMBA_CPU_NAME/NUMBA_CPU_FEATURES say. (Numba keys its cache by the same CPU and features.)"""
    from numba.core.registry import cpu_target
    try:
        features = cpu_target.target_context.codegen()._tm_features   # (Numba internals)
    except AttributeError:      # another Numba: assume nothing, the plain loops serve everywhere
        return False
    return f"+{feature}" in features.split(",")


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
    fails in LLVM's code generation)."""
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


@overload(_value, jit_options=dict(inline="always", **FAST))
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
    the first layer runs 15-20% faster. Only the widths in
    _options.CONST_WIDTHS get their own compiled kernels; any other width is passed as a plain int and
    runs the same code with a run-time trip count (one compilation serves them all).
    """

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = int(n)



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
