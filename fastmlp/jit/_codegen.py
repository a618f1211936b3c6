"""Code below the level of Numba: LLVM IR written out for the few loops where Numba's own code
leaves speed on the table, and the compile-time helpers the kernels use to choose between them.

Legend
------
    H          a row's width in floats (the first hidden layer's, 72 by default)
    idx        a sparse row's columns
    pix, val   its stored values: uint8 pixels read through lut (a CSR of pixels, whose lut is
               not empty), or floats (val; pix is then empty): one compiled kernel for both
    p0, p1     a row's entries are p0 <= p < p1

What lives here: the vector compress of a CSR row (AVX-512: ``_compress_ir``; AVX2: the
table-driven left-pack, ``_left_pack_ir``), the sparse
row loops with their accumulator in vector registers (``_ir_row_loop``), the 8 x 8 register
transposes (``_ir_tile``), the dense tiles of a block of full rows (``_ir_dense``), a prefetch,
``_value`` (an entry's input value) and ``_zero_of``, which picks code at compile time. Each IR
function has a plain Python/Numba twin elsewhere, which runs without the JIT and on other
targets (the dense tiles' twin is the sparse row loop itself, on the same entries).
"""

from __future__ import annotations

import numba
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload
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


def _chunk_intrinsic(name, x, indices, values, lanes, pack):
    """The typing and code shared by the chunk compressions (_compress_ir, _left_pack_ir):
    CHUNK columns from j, in pieces of lanes(dtype) lanes, each written by pack (the IR of
    _compress_lanes or _left_pack_lanes); the code returns p plus the entries kept."""
    for a in (x, indices, values):
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"):
            raise numba.core.errors.TypingError(f"{name} needs C-contiguous 1-D arrays; got {a}")

    def codegen(context, builder, sig, args):
        xt, _, it, vt = sig.args[:4]
        xa, ia, va = (context.make_array(t)(context, builder, a)
                      for t, a in ((xt, args[0]), (it, args[2]), (vt, args[3])))
        et = context.get_value_type(xt.dtype)
        n = lanes(xt.dtype)
        p = args[4]
        for k in range(0, CHUNK, n):
            j = builder.add(args[1], ir.Constant(ir.IntType(64), k))
            p = pack(builder, xa.data, ia.data, va.data, j, p, et, n,
                     isinstance(xt.dtype, types.Float))
        return p
    return types.int64(x, types.int64, indices, values, types.int64), codegen


@intrinsic
def _compress_ir(typingctx, x, j, indices, values, p):
    """_compress_chunk in AVX-512 registers: CHUNK columns as 512-bit vectors (16 float32 or
    uint8 lanes, or two vectors of 8 float64: LLVM's code for one 16-lane float64 compress
    fails in LLVM's code generation)."""
    return _chunk_intrinsic("_compress_ir", x, indices, values,
                            lambda dt: min(CHUNK, 512 // dt.bitwidth), _compress_lanes)


# Left-pack table: entry m (a mask of 8 lanes) holds, byte by byte, the lanes whose bit is set,
# in increasing order (the rest 0): the permutation that moves the kept lanes to the front.
_PACK_TABLE = [sum(lane << (8 * k) for k, lane in enumerate(l for l in range(8) if m >> l & 1))
               for m in range(256)]


def _pack_table(builder):
    """The module's copy of _PACK_TABLE (256 x i64: 2 KB, stays in L1)."""
    module = builder.module
    name = "fastmlp.pack_table"
    try:
        return module.get_global(name)
    except KeyError:
        i64 = ir.IntType(64)
        ty = ir.ArrayType(i64, 256)
        g = ir.GlobalVariable(module, ty, name)
        g.initializer = ir.Constant(ty, [ir.Constant(i64, v) for v in _PACK_TABLE])
        g.global_constant = True
        g.linkage = "internal"
        return g


def _left_pack_lanes(builder, xdata, idata, vdata, j, p, et, n, is_float):
    """IR for n <= 8 lanes at x[j:j+n] with AVX2 (no compress instruction): mask = x != 0 as
    bits, the table's permutation for them, a variable permute (vpermps; pshufb for bytes) that
    moves the kept values to the front, and full-width stores of n values and n column numbers
    at values[p:], indices[p:]. Lanes past popcount(mask) are written too (garbage, overwritten
    by what comes next): the caller leaves room for them (see _fill_csr). Returns p +
    popcount(mask)."""
    i8, i16, i32, i64 = (ir.IntType(b) for b in (8, 16, 32, 64))
    V = ir.VectorType(et, n)
    x = builder.load(builder.bitcast(builder.gep(xdata, [j]), V.as_pointer()), align=1)
    zero = ir.Constant(V, None)
    mask = (builder.fcmp_unordered("!=", x, zero) if is_float          # as in _compress_lanes
            else builder.icmp_unsigned("!=", x, zero))
    bits = builder.zext(builder.bitcast(mask, ir.IntType(n)), i64)
    entry = builder.load(builder.gep(_pack_table(builder), [ir.Constant(i64, 0), bits]))
    lanes = builder.bitcast(entry, ir.VectorType(i8, 8))
    if n < 8:
        lanes = builder.shuffle_vector(lanes, ir.Constant(ir.VectorType(i8, 8), ir.Undefined),
                                       ir.Constant(ir.VectorType(i32, n), list(range(n))))

    def intrinsic_fn(name, ret, argtys):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, argtys), name)

    width = et.width if isinstance(et, ir.IntType) else (32 if isinstance(et, ir.FloatType) else 64)
    if width == 8:                   # bytes: pshufb within the low 8 of 16
        V16 = ir.VectorType(i8, 16)
        wide = builder.shuffle_vector(x, ir.Constant(V, ir.Undefined),
                                      ir.Constant(ir.VectorType(i32, 16), list(range(8)) * 2))
        sel = builder.shuffle_vector(lanes, ir.Constant(ir.VectorType(i8, 8), ir.Undefined),
                                     ir.Constant(ir.VectorType(i32, 16), list(range(8)) * 2))
        pshufb = intrinsic_fn("llvm.x86.ssse3.pshuf.b.128", V16, [V16, V16])
        packed = builder.shuffle_vector(builder.call(pshufb, [wide, sel]), ir.Constant(V16, ir.Undefined),
                                        ir.Constant(ir.VectorType(i32, 8), list(range(8))))
    else:                            # 8 float32, or 4 float64 as 8 float32 halves
        F8, I8 = ir.VectorType(ir.FloatType(), 8), ir.VectorType(i32, 8)
        permps = intrinsic_fn("llvm.x86.avx2.permps", F8, [F8, I8])
        perm = builder.zext(lanes, ir.VectorType(i32, n))
        if width == 64:
            two = builder.shl(perm, ir.Constant(perm.type, [1] * n))
            twin = builder.add(two, ir.Constant(perm.type, [1] * n))
            perm = builder.shuffle_vector(two, twin, ir.Constant(
                ir.VectorType(i32, 8), [k // 2 + (n if k % 2 else 0) for k in range(8)]))
        packed = builder.bitcast(builder.call(permps, [builder.bitcast(x, F8), perm]), V)
    builder.store(packed, builder.bitcast(builder.gep(vdata, [p]), V.as_pointer()), align=1)
    IV = ir.VectorType(i16, n)
    j16 = builder.insert_element(ir.Constant(IV, ir.Undefined), builder.trunc(j, i16),
                                 ir.Constant(i32, 0))
    j16 = builder.shuffle_vector(j16, ir.Constant(IV, ir.Undefined),
                                 ir.Constant(ir.VectorType(i32, n), [0] * n))
    cols = builder.add(builder.zext(lanes, IV), j16)
    builder.store(cols, builder.bitcast(builder.gep(idata, [p]), IV.as_pointer()), align=1)
    ctpop = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
    return builder.add(p, builder.call(ctpop, [bits]))


@intrinsic
def _left_pack_ir(typingctx, x, j, indices, values, p):
    """_compress_chunk with AVX2: CHUNK columns in pieces of 8 lanes (4 for float64) left-packed
    through a table (_left_pack_lanes). Writes up to CHUNK entries from p on, of which the
    returned p says how many are kept: the caller leaves that room."""
    return _chunk_intrinsic("_left_pack_ir", x, indices, values,
                            lambda dt: min(8, 256 // dt.bitwidth), _left_pack_lanes)


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


@numba.njit(inline="always", **FAST)
def _value(pix, val, lut, p):
    """The p-th input value: lut[pix[p]] for a CSR of uint8 pixels, else val[p]. A test at run
    time rather than a compiled variant per kind: every kernel compiles once per dtype, not
    twice. (The IR row loop picks between the two addresses without a branch: _ir_row_loop.)"""
    return lut[pix[p]] if lut.shape[0] != 0 else val[p]


# The sparse first layer. Each row is one LLVM-IR loop written out below (_ir_row_loop), whose
# accumulator lives in vector registers for the whole row, at any width; without the JIT the
# plain Numba loops of sparse.py run instead.

VECTOR_BYTES = 32   # the row loops' vectors: a ymm register (the IR below; sparse._by_pixel_pays)


class _Vec:
    """Helpers for IR over vectors of 32 bytes (8 float32 or 4 float64: a ymm register each) of
    one float dtype: constants, (masked) loads and stores, llvm.fmuladd, broadcasts, counted
    loops, and how a row of H floats falls into vectors."""

    def __init__(self, context, builder, dtype):
        self.builder = builder
        self.bits = dtype.bitwidth
        self.ft = context.get_value_type(dtype)
        self.i64, self.i32 = ir.IntType(64), ir.IntType(32)
        self.align = self.bits // 8
        self.c = c = VECTOR_BYTES * 8 // self.bits
        self.V = V = ir.VectorType(self.ft, c)
        M = ir.VectorType(ir.IntType(1), c)
        vname = f"v{c}f{self.bits}"
        self.fma = self._fn(f"llvm.fmuladd.{vname}", V, [V, V, V])
        self.fma1 = self._fn(f"llvm.fmuladd.f{self.bits}", self.ft, [self.ft] * 3)
        self._mload = self._fn(f"llvm.masked.load.{vname}.p0", V, [V.as_pointer(), self.i32, M, V])
        self._mstore = self._fn(f"llvm.masked.store.{vname}.p0", ir.VoidType(),
                                [V, V.as_pointer(), self.i32, M])

    def _fn(self, name, ret, argtys):
        return cgutils.get_or_insert_function(self.builder.module,
                                              ir.FunctionType(ret, argtys), name)

    def const(self, v):
        return ir.Constant(self.i64, v)

    def vptr(self, ptr, k):
        return self.builder.bitcast(self.builder.gep(ptr, [k]), self.V.as_pointer())

    def load(self, ptr, k, mask):
        """The vector at ptr + k; only the lanes of mask (None: all)."""
        if mask is None:
            return self.builder.load(self.vptr(ptr, k), align=self.align)
        return self.builder.call(self._mload, [self.vptr(ptr, k), ir.Constant(self.i32, self.align),
                                               mask, ir.Constant(self.V, None)])

    def store(self, v, ptr, k, mask):
        if mask is None:
            self.builder.store(v, self.vptr(ptr, k), align=self.align)
        else:
            self.builder.call(self._mstore, [v, self.vptr(ptr, k),
                                             ir.Constant(self.i32, self.align), mask])

    def splat(self, v):
        und = ir.Constant(self.V, ir.Undefined)
        x = self.builder.insert_element(und, v, ir.Constant(self.i32, 0))
        return self.builder.shuffle_vector(x, und, ir.Constant(ir.VectorType(self.i32, self.c),
                                                               [0] * self.c))

    def loop_head(self, name, start):
        """Open a counted loop: its head block, with the counter's phi (from start) and the
        blocks (before, head, body, done); the caller adds any other phis here, then branches
        to body or done."""
        builder = self.builder
        before = builder.basic_block
        head, body, done = (builder.append_basic_block(f"{name}.{part}")
                            for part in ("head", "body", "done"))
        builder.branch(head)
        builder.position_at_end(head)
        i = builder.phi(self.i64)
        i.add_incoming(start, before)
        return i, before, head, body, done

    def layout(self, H):
        """(nvec, rem, tail_mask) of a row of H floats: its vectors, the lanes of a partial last
        vector (0 if none) and the mask of those lanes."""
        builder, c, i64 = self.builder, self.c, self.i64
        nvec = builder.udiv(builder.add(H, self.const(c - 1)), self.const(c))
        rem = builder.urem(H, self.const(c))
        lanes = ir.Constant(ir.VectorType(i64, c), list(range(c)))
        remv = builder.shuffle_vector(
            builder.insert_element(ir.Constant(ir.VectorType(i64, c), ir.Undefined), rem,
                                   ir.Constant(self.i32, 0)),
            ir.Constant(ir.VectorType(i64, c), ir.Undefined),
            ir.Constant(ir.VectorType(self.i32, c), [0] * c))
        return nvec, rem, builder.icmp_signed("<", lanes, remv)


PANEL_VECTORS = 14   # accumulator registers per pass over a row's entries (of 16 ymm on AVX2)


def _ir_row_loop(context, builder, sig, args, outer):
    """LLVM IR for one sparse row of a layer of width H (a run-time int, the last argument), in
    vector chunks of 32 bytes (8 float32 or 4 float64: a ymm register each). Arguments
    (z, W, b_or_d, idx, pix, val, lut, p0, p1, H), all arrays C-contiguous.

    outer=False (forward): acc = b; for p in [p0, p1): acc += x_p * W[idx[p]]; z[:] = acc.
    outer=True (gradient): d = b_or_d; for p in [p0, p1): W[idx[p]] += x_p * d (z unused).
    x_p is lut[pix[p]] if lut is not empty, else val[p] (_value). Each multiply-add is
    llvm.fmuladd (fused where the CPU can), in entry order, so every element's bits depend on nothing but its own
    chain of entries: not on H, not on how the row is cut into passes.

    The row's ceil(H / lanes) vectors are cut into passes of at most PANEL_VECTORS, as even as
    possible (72 float32: one pass of 9; 72 float64: two of 9; 256 float32: three of 11, 11 and
    10); each pass keeps its accumulators in registers while it runs through the entries. The
    pass width is known only at run time, so the loop is written out once per possible width
    (1..PANEL_VECTORS vectors, with and without a partial last vector, which masked loads and
    stores keep inside the row; the gradient's partial vector goes lane by lane, see
    tail_lanes) and a switch picks one: any width runs register-tiled code, from one
    compilation. 14 accumulators leave a register for the broadcast x (the weights are read
    by the multiply-adds themselves): width 100 float32 (13 vectors) runs in one pass, 6%
    faster than in two of 12."""
    arrs = [context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:7], args[:7])]
    za, Wa, ba, ia, xa, va, la = arrs
    vec = _Vec(context, builder, sig.args[1].dtype)
    const, load, store, splat, loop_head = vec.const, vec.load, vec.store, vec.splat, vec.loop_head
    fma, fma1, ft, align, c = vec.fma, vec.fma1, vec.ft, vec.align, vec.c
    i64 = vec.i64
    R = PANEL_VECTORS
    p0, p1, H = args[7], args[8], args[9]

    def tail_lanes(wrow, ddata, k, x):
        """wrow[k + l] += x * ddata[k + l] for l < rem, one scalar multiply-add each."""
        lane, _, head, body, done = loop_head("tail", const(0))
        builder.cbranch(builder.icmp_signed("<", lane, rem), body, done)
        builder.position_at_end(body)
        at = builder.add(k, lane)
        wp = builder.gep(wrow, [at])
        d = builder.load(builder.gep(ddata, [at]), align=align)
        builder.store(builder.call(fma1, [x, d, builder.load(wp, align=align)]), wp, align=align)
        lane.add_incoming(builder.add(lane, const(1)), body)
        builder.branch(head)
        builder.position_at_end(done)

    # the passes: nvec vectors in npass passes, the first `extra` of them one vector longer
    # (all of it depends on H alone and is free of branches and of divisions that could trap,
    # so LLVM hoists it out of the callers' loops over rows: once per block, not once per row)
    nvec, rem, tail_mask = vec.layout(H)
    npass = builder.udiv(builder.add(nvec, const(R - 1)), const(R))
    npass1 = builder.select(builder.icmp_unsigned(">", npass, const(0)), npass, const(1))
    base = builder.udiv(nvec, npass1)
    extra = builder.urem(nvec, npass1)
    pixels = builder.icmp_signed("!=", la.nitems, const(0))  # the kind of values (_value)
    # _value without a branch: entry p's value is read from the address lut + pix[p] or
    # val + p, picked by a select. The pixel is read for both kinds, from a stack byte (offset
    # 0) when the CSR holds floats, whose pix may be empty. (A branch per entry on the kind
    # cost 6% of predict on Zen 4, and kept LLVM from unrolling the entry loop by 4.)
    safe = cgutils.alloca_once_value(builder, ir.Constant(ir.IntType(8), 0))
    pix_base = builder.select(pixels, xa.data, safe)
    pix_mask = builder.select(pixels, const(-1), const(0))

    def value(p):
        """_value(pix, val, lut, p)."""
        q = builder.zext(builder.load(builder.gep(pix_base, [builder.and_(p, pix_mask)])), i64)
        return builder.load(builder.select(pixels, builder.gep(la.data, [q]),
                                           builder.gep(va.data, [p])))

    q, entry, phead, pbody, pdone = loop_head("pass", const(0))           # q: the pass
    pnext = builder.append_basic_block("pass.next")
    v0 = builder.phi(i64)                                     # its first vector
    v0.add_incoming(const(0), entry)
    builder.cbranch(builder.icmp_signed("<", q, npass), pbody, pdone)

    builder.position_at_end(pbody)
    nv = builder.add(base, builder.zext(builder.icmp_signed("<", q, extra), i64))
    last = builder.icmp_signed("==", builder.add(q, const(1)), npass)
    partial = builder.and_(last, builder.icmp_signed("!=", rem, const(0)))
    sel = builder.add(builder.mul(builder.sub(nv, const(1)), const(2)), builder.zext(partial, i64))
    k0 = builder.mul(v0, const(c))                            # the pass's first column
    cases = []
    switch = builder.switch(sel, pnext)                       # (default: unreachable)
    for n in range(1, R + 1):
        for masked in (False, True):
            bb = builder.append_basic_block(f"pass.{n}{'m' if masked else ''}")
            switch.add_case(ir.Constant(i64, 2 * (n - 1) + masked), bb)
            cases.append((bb, n, masked))

    for bb, n, masked in cases:
        builder.position_at_end(bb)
        masks = [None] * (n - 1) + [tail_mask if masked else None]
        offsets = [const(i * c) for i in range(n)]          # from the pass's first column:
        bdata = builder.gep(ba.data, [k0])                  # constants, which the loads take
        zdata = builder.gep(za.data, [k0])                  # as displacements
        wdata = builder.gep(Wa.data, [k0])
        fixed = [load(bdata, k, m) for k, m in zip(offsets, masks)]      # b or d
        p, before, head, body, done = loop_head("row", p0)
        accs = []
        if not outer:
            accs = [builder.phi(vec.V) for _ in range(n)]
            for a, a0 in zip(accs, fixed):
                a.add_incoming(a0, before)
        builder.cbranch(builder.icmp_signed("<", p, p1), body, done)
        builder.position_at_end(body)
        j = builder.zext(builder.load(builder.gep(ia.data, [p])), i64)
        x = value(p)
        xs = splat(x)
        wrow = builder.gep(wdata, [builder.mul(j, H, flags=["nsw", "nuw"])])
        new = []
        for i in range(n):
            if outer and masks[i] is not None:
                # the gradient's partial last vector lane by lane: a masked store is microcode
                # on AMD CPUs (width 100: the training pass 222 ms with it, 199 ms without)
                tail_lanes(wrow, bdata, offsets[i], x)
                continue
            w = load(wrow, offsets[i], masks[i])
            if outer:
                store(builder.call(fma, [xs, fixed[i], w]), wrow, offsets[i], masks[i])
            else:
                new.append(builder.call(fma, [xs, w, accs[i]]))
        end = builder.basic_block
        p.add_incoming(builder.add(p, const(1)), end)
        for a, na in zip(accs, new):
            a.add_incoming(na, end)
        builder.branch(head)
        builder.position_at_end(done)
        for i, a in enumerate(accs):
            store(a, zdata, offsets[i], masks[i])
        builder.branch(pnext)

    builder.position_at_end(pnext)
    q.add_incoming(builder.add(q, const(1)), pnext)
    v0.add_incoming(builder.add(v0, nv), pnext)
    builder.branch(phead)
    builder.position_at_end(pdone)
    return context.get_dummy_value()


def _row_signature(z, W, b, idx, pix, val, lut, p0, p1, width):
    for a in (z, W, b, idx, pix, val, lut):
        if not (isinstance(a, types.Array) and a.layout == "C"):
            raise numba.core.errors.TypingError(f"_row_ir needs C-contiguous arrays; got {a}")
    return types.void(z, W, b, idx, pix, val, lut, types.int64, types.int64, types.int64)


@intrinsic
def _row_ir_forward(typingctx, z, W, b, idx, pix, val, lut, p0, p1, width):
    return _row_signature(z, W, b, idx, pix, val, lut, p0, p1, width), (
        lambda context, builder, sig, args: _ir_row_loop(context, builder, sig, args, False))


@intrinsic
def _row_ir_outer(typingctx, z, W, d, idx, pix, val, lut, p0, p1, width):
    return _row_signature(z, W, d, idx, pix, val, lut, p0, p1, width), (
        lambda context, builder, sig, args: _ir_row_loop(context, builder, sig, args, True))


# The first layer of a block whose rows are full (every column of a range is an entry: dense
# data compressed with its zeros kept, csr.to_csr(keep_zeros=...)): register tiles, in which
# one load of a weight vector serves TILE_ROWS rows, where the sparse row loop loads it once
# per row and is bound by those loads (the row's weights come from L2).

TILE_ROWS = 4       # rows (forward) or weight rows (gradient) per dense tile
TILE_VECTORS = 3    # vectors per tile: 4 x 3 accumulators, 3 operands and a broadcast: 16 ymm


def _ir_dense(context, builder, sig, args, outer):
    """LLVM IR for the first layer of a block of full rows (sparse._full_run): row t's entries
    are the columns c0 .. c0 + K - 1, in order, its values at val[rng[0, t]:][:K].

    outer=False, args (Z, W, b, rng, val, nrows, c0, K):
        Z[t, :] = b + sum over k of val[rng[0, t] + k] * W[c0 + k, :]   for t < nrows
    outer=True, args (gW, D, rng, val, nrows, c0, K):
        gW[c0 + k, :] += sum over t of val[rng[0, t] + k] * D[t, :]     for k < K
    Z, W, gW and D are C-contiguous with rows of H = W.shape[1] floats. Every output element
    is a chain of llvm.fmuladd in the order of the sparse row loop (k increasing from b; t
    increasing from gW's value): the same bits as _ir_row_loop on the same entries.

    Tiles of TILE_ROWS rows (forward) or weight rows (gradient) by up to TILE_VECTORS vectors
    of the row (a last tile short of rows repeats its last row and does not store it); as in
    _ir_row_loop, a switch picks the code written out for each vector count, with or without a
    partial last vector (masked loads and stores, once per tile, not per multiply-add)."""
    arrs = [context.make_array(t)(context, builder, a)
            for t, a in zip(sig.args, args) if isinstance(t, types.Array)]
    vec = _Vec(context, builder, sig.args[0].dtype)
    const, load, store, splat, loop_head = vec.const, vec.load, vec.store, vec.splat, vec.loop_head
    c, i64, T, G = vec.c, vec.i64, TILE_ROWS, TILE_VECTORS
    if outer:
        ga, Da, ra, va = arrs
    else:
        za, Wa, ba, ra, va = arrs
    H = cgutils.unpack_tuple(builder, (ga if outer else Wa).shape)[1]
    nrows, c0, K = args[-3:]
    nvec, rem, tail_mask = vec.layout(H)
    ngroups = builder.udiv(builder.add(nvec, const(G - 1)), const(G))

    def lt(a, b):
        return builder.icmp_signed("<", a, b)

    def start(t):                                       # rng[0, t]
        return builder.load(builder.gep(ra.data, [t]))

    # the outer loop: tiles of rows (forward) or of weight rows (gradient); row o + r of a
    # tile, or the last row if there are fewer
    rows = K if outer else nrows
    o, _, ohead, obody, odone = loop_head("tile", const(0))
    builder.cbranch(lt(o, rows), obody, odone)
    builder.position_at_end(obody)
    tile = [builder.add(o, const(r)) for r in range(T)]
    clamped = [builder.select(lt(t, rows), t, builder.sub(rows, const(1))) for t in tile]
    if not outer:
        xrows = [builder.gep(va.data, [start(t)]) for t in clamped]

    g, _, ghead, gbody, gdone = loop_head("group", const(0))
    gnext = builder.append_basic_block("group.next")
    builder.cbranch(lt(g, ngroups), gbody, gdone)
    builder.position_at_end(gbody)
    v0 = builder.mul(g, const(G))
    left = builder.sub(nvec, v0)
    nv = builder.select(lt(left, const(G)), left, const(G))
    partial = builder.and_(builder.icmp_signed("==", nv, left),
                           builder.icmp_signed("!=", rem, const(0)))
    sel = builder.add(builder.mul(builder.sub(nv, const(1)), const(2)), builder.zext(partial, i64))
    col0 = builder.mul(v0, const(c))
    switch = builder.switch(sel, gnext)                 # (default: unreachable)
    cases = []
    for n in range(1, G + 1):
        for masked in (False, True):
            bb = builder.append_basic_block(f"tile.{n}{'m' if masked else ''}")
            switch.add_case(ir.Constant(i64, 2 * (n - 1) + masked), bb)
            cases.append((bb, n, masked))

    def row_of(base, t):                                # &base[t, col0]
        return builder.gep(base, [builder.add(builder.mul(t, H), col0)])

    for bb, n, masked in cases:
        builder.position_at_end(bb)
        masks = [None] * (n - 1) + [tail_mask if masked else None]
        offsets = [const(i * c) for i in range(n)]
        if outer:                                       # T weight rows of gW, from row c0 + o
            grows = [row_of(ga.data, builder.add(c0, t)) for t in clamped]
            init = [[load(grow, k, m) for k, m in zip(offsets, masks)] for grow in grows]
        else:
            b0 = [load(builder.gep(ba.data, [col0]), k, m) for k, m in zip(offsets, masks)]
            init = [b0] * T
        i, before, head, body, done = loop_head("inner", const(0))   # k (forward), t (gradient)
        accs = [[builder.phi(vec.V) for _ in range(n)] for _ in range(T)]
        for row, row0 in zip(accs, init):
            for a, a0 in zip(row, row0):
                a.add_incoming(a0, before)
        builder.cbranch(lt(i, nrows if outer else K), body, done)
        builder.position_at_end(body)
        if outer:          # D[t] times the values of row t at the tile's columns c0 + o + r
            vs = [load(row_of(Da.data, i), k, m) for k, m in zip(offsets, masks)]
            xp = builder.gep(va.data, [start(i)])
            xs = [splat(builder.load(builder.gep(xp, [t]))) for t in clamped]
        else:              # W[c0 + k] times the value at column c0 + k of each of the T rows
            vs = [load(row_of(Wa.data, builder.add(c0, i)), k, m) for k, m in zip(offsets, masks)]
            xs = [splat(builder.load(builder.gep(xrow, [i]))) for xrow in xrows]
        new = [[builder.call(vec.fma, [x, v, a]) for v, a in zip(vs, row)]
               for x, row in zip(xs, accs)]
        end = builder.basic_block
        i.add_incoming(builder.add(i, const(1)), end)
        for row, nrow in zip(accs, new):
            for a, na in zip(row, nrow):
                a.add_incoming(na, end)
        builder.branch(head)
        builder.position_at_end(done)
        for r, (row, t) in enumerate(zip(accs, tile)):
            dst = grows[r] if outer else row_of(za.data, t)
            if r > 0:                                   # a short last tile stores its own rows
                keep, skip = (builder.append_basic_block(f"row{r}.{part}")
                              for part in ("keep", "skip"))
                builder.cbranch(lt(t, rows), keep, skip)
                builder.position_at_end(keep)
            for a, k, m in zip(row, offsets, masks):
                store(a, dst, k, m)
            if r > 0:
                builder.branch(skip)
                builder.position_at_end(skip)
        builder.branch(gnext)

    builder.position_at_end(gnext)
    g.add_incoming(builder.add(g, const(1)), gnext)
    builder.branch(ghead)
    builder.position_at_end(gdone)
    o.add_incoming(builder.add(o, const(T)), gdone)
    builder.branch(ohead)
    builder.position_at_end(odone)
    return context.get_dummy_value()


def _dense_signature(name, arrays, dims):
    for a, d in zip(arrays, dims):
        if not (isinstance(a, types.Array) and a.layout == "C" and a.ndim == d):
            raise numba.core.errors.TypingError(f"{name} needs C-contiguous {d}-D arrays; got {a}")
    return types.void(*arrays, types.int64, types.int64, types.int64)


@intrinsic
def _dense_ir_forward(typingctx, Z, W, b, rng, val, nrows, c0, K):
    return _dense_signature("_dense_ir_forward", (Z, W, b, rng, val), (2, 2, 1, 2, 1)), (
        lambda context, builder, sig, args: _ir_dense(context, builder, sig, args, False))


@intrinsic
def _dense_ir_outer(typingctx, gW, D, rng, val, nrows, c0, K):
    return _dense_signature("_dense_ir_outer", (gW, D, rng, val), (2, 2, 2, 1)), (
        lambda context, builder, sig, args: _ir_dense(context, builder, sig, args, True))


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
