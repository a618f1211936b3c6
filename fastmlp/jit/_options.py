"""Every Numba option set and every tunable constant of the jit backend, and only here.

Option sets (each kernel takes one of them, never options of its own):

    FAST    cache=True, fast-math *without* nnan/ninf (NaN and inf still propagate, so training
            can detect divergence and predict can reject them), no bounds checks
    STRICT  the same with strict IEEE arithmetic, as NumPy's: the optimizer updates, the sums
            of partials, anything whose bits must equal the public ``update``'s
    LEAF    FAST compiled with every array argument ``noalias`` (_NoAliasCompiler)

Constants read inside compiled code (BLOCK, CHUNK, ROW_GROUP, UPDATE_ROWS, AHEAD, NSLOTS_FWD,
LOGIT_GAP) are frozen into the machine code when it is compiled: change them here and clear
Numba's cache. Those read by the Python wrappers (NSLOTS, MIN_SLOT_ROWS, SPLIT_MAX_BATCH,
PIXEL_MIN_ENTRIES, DENSE_FROM, BAND_BYTES, MIN_BAND_ENTRIES, PATIENCE, KERNEL_LAYERS,
COMPILE_IN_CHILDREN) are looked up at every call, so a test may patch them on this module.
"""

from numba.core.compiler import Compiler

_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # not nnan/ninf: NaN must propagate
FAST = dict(cache=True, fastmath=_FASTMATH, error_model="numpy", boundscheck=False)
# fastmath=False must be explicit: a kernel that leaves the option unset *inherits* fast-math
# from the kernel whose compilation compiles it (Numba's flag inheritance), and the updates, strict
# when called from Python, would then run with contracted multiply-adds inside the training loops.
STRICT = dict(cache=True, fastmath=False, error_model="numpy", boundscheck=False)


class _NoAliasCompiler(Compiler):
    """Numba's standard pipeline, with every array argument marked ``noalias`` in LLVM (C's
    ``restrict``): the function promises that memory written through one of its arguments is
    not reached through another. Then a loop like ``z[k] += v * w[k]`` vectorizes without the
    run-time overlap checks LLVM otherwise emits before it, once per call of the inner loop,
    that is once per non-zero pixel here (the sparse products run 17-25% faster).
    Used only for the kernels marked LEAF, whose callers pass distinct arrays, disjoint parts
    of one array (the dense layers' input and output rows of a block), or the same array to two
    read-only arguments, which the promise allows."""

    def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
        flags = flags.copy()
        flags.noalias = True
        super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)


LEAF = dict(FAST, pipeline_class=_NoAliasCompiler)

# -- blocks and slots (compiled in) -----------------------------------------------------------
BLOCK = 128          # rows per block: the block's activations stay in L2
NSLOTS_FWD = 4       # row ranges for forward-only kernels (two per core; 16 cost 25% more)
AHEAD = 4            # rows ahead for prefetching a mini-batch's entries (_block_entries)
CHUNK = 16           # columns per step of the CSR compression (_fill_csr)
ROW_GROUP = 256      # rows per task of the CSR compression, in order on one thread (_fill_csr)
UPDATE_ROWS = 8      # weight rows per call of the optimizer rule in the full-batch update
# Logits this far below their column's largest give a probability below the largest one's by
# thousands of units in the last place, whatever rounding exp and the division do.
LOGIT_GAP = 2.0 ** -16

# -- read by the Python wrappers at each call --------------------------------------------------
NSLOTS = 4           # partial-gradient slots for a large batch (fixed: results do not depend on threads)
MIN_SLOT_ROWS = 64   # a slot gets at least this many rows
SPLIT_MAX_BATCH = 512    # mini-batches up to this many rows take the pixel-split step
PIXEL_MIN_ENTRIES = 4    # entries a pixel in a block, from which its gradient may go by pixel
DENSE_FROM = 0.5     # fraction non-zero from which dense float X keeps its zeros (csr.to_csr)
BAND_BYTES = 80 * 1024   # first-layer weight rows per pixel band (sparse._band_cuts)
MIN_BAND_ENTRIES = 16    # entries a row holds per band on average, or no bands (sparse._band_cuts)
PATIENCE = 1 << 12       # spins (~0.1 ms, a few tasks) before a thread takes the other's task
KERNEL_LAYERS = 7        # layers (6 hidden) one compiled set of kernels serves (_types.padded)
COMPILE_IN_CHILDREN = True   # warm_up compiles what is not cached in child processes (warmup.py)
