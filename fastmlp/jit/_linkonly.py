"""In a compile child: each function optimized and made into machine code once, where it is used.

Numba compiles every @njit function a kernel calls as a library of its own and finalizes it:
LLVM optimizes its module (the O3 module passes) and generates its machine code. The caller then
links the callee's optimized module into its own, and LLVM optimizes the whole and generates
its code again; a parallel region adds two more levels (the region's body and two wrappers,
each optimized with everything below it). The callee's own optimized module and machine code
serve only if Python calls the callee, or to save it in Numba's cache on its own. A compile
child (``warmup.py``) exists to fill the cache with the kernels a run calls from Python, whose
machine code holds their callees'. There, ``install()`` makes Numba:

- finalize a library that is being linked into another without optimizing its module on its
  own (the function passes Numba runs on every function as it is added still run): the
  caller's optimization, over the whole module, is the one that shapes the code;
- make a library's machine code (after optimizing it, if that was skipped) only when something
  asks for it: a pointer to one of its functions, or its object code for the cache;
- give a function compiled this way, as its entry point for Python, an object that makes the
  machine code and Numba's real entry point at the first call from Python (and saves the
  function in the cache, which is skipped for a callee that Python does not call: the callers
  that are saved hold its code).

Measured on Zen 4 (docs/performance.md): ``fastmlp warmup`` 74-85 -> 43 s, the training
child of a first run 21.5 -> 19 s alone, the other 18-23 -> 10 s. The kernels' outputs hash the
same as Numba's own way (loss and gradients, predictions, an epoch and full-batch steps, both
dtypes); their machine code differs in which callees LLVM inlines. Only compile children
install it: a process that compiles a kernel itself (without warm_up's children, or when they
fail) does it Numba's way. ``install()`` first checks that Numba has the internals it
replaces, and leaves Numba as it is (returning False) if not.
"""

from __future__ import annotations

import weakref

_installed = False
_depth = 0               # dispatcher compiles in progress (Numba's "numba:compile" events)


class _LazyEntry:
    """A compiled function's entry point for Python until its machine code exists. Numba's
    dispatcher calls an entry point that is not a C function through Python (the dispatcher's
    ``compile_and_invoke``), so this is called at each Python call until the first has put the
    real entry point into the dispatcher."""

    __slots__ = ("_make", "_real", "_dispatcher", "_cres", "_save", "__weakref__")

    def __init__(self, make):
        self._make = make
        self._real = None
        self._dispatcher = None
        self._cres = None
        self._save = None

    def __call__(self, *args, **kws):
        if self._real is None:
            from numba.core.compiler_lock import global_compiler_lock
            with global_compiler_lock:         # two threads may call it first at once
                if self._real is None:
                    real = self._make()
                    if self._dispatcher is not None:
                        cres = self._cres
                        self._dispatcher._insert([a._code for a in cres.signature.args], real,
                                                 cres.objectmode)
                    if self._save is not None:
                        cache, sig = self._save
                        self._save = None
                        _numba["save_overload"](cache, sig, self._cres)
                    self._real = real
        return self._real(*args, **kws)


_numba = {}


def _emit(lib) -> None:
    """Make ``lib``'s machine code, if it has none yet: finalize it (optimized) if it is not,
    optimize its module if finalizing skipped that, hand the module to LLVM's JIT and generate
    the code (Numba's last step of finalizing)."""
    from numba.core.compiler_lock import global_compiler_lock
    with global_compiler_lock:
        if not lib._finalized:
            lib.finalize()
        if getattr(lib, "_fastmlp_unoptimized", False):
            lib._fastmlp_unoptimized = False
            _numba["optimize"](lib)
        if getattr(lib, "_fastmlp_pending", False):
            cleanup = lib._codegen._add_module(lib._final_module)
            if cleanup:
                weakref.finalize(lib, cleanup)
            lib._finalize_specific()
            lib._fastmlp_pending = False


def install() -> bool:
    """Patch Numba in this process (once); False (and nothing changed) if its internals are not
    the ones this was written for."""
    global _installed
    if _installed:
        return True
    from numba.core import caching, codegen, cpu, dispatcher, event
    from numba.core.registry import cpu_target

    CodeLibrary, CPU, JIT = codegen.CPUCodeLibrary, cpu.CPUContext, codegen.JITCodeLibrary
    Dispatcher = dispatcher._DispatcherBase
    needed = [(CodeLibrary, "finalize"), (CodeLibrary, "_finalize_final_module"),
              (CodeLibrary, "_finalize_dynamic_globals"),
              (CodeLibrary, "_verify_declare_only_symbols"), (JIT, "get_pointer_to_function"),
              (JIT, "_finalize_specific"), (codegen.CodeLibrary, "_get_compiled_object"),
              (CodeLibrary, "_optimize_final_module"), (CodeLibrary, "add_linking_library"),
              (CPU, "get_executable"), (Dispatcher, "add_overload"), (Dispatcher, "_insert"),
              (caching.Cache, "save_overload")]
    if not all(hasattr(cls, name) for cls, name in needed):
        return False
    cpu_target.target_context          # Numba's runtime library is finalized as Numba does

    _numba.update(finalize=CodeLibrary.finalize,
                  finalize_final_module=CodeLibrary._finalize_final_module,
                  get_pointer=JIT.get_pointer_to_function,
                  compiled_object=codegen.CodeLibrary._get_compiled_object,
                  get_executable=CPU.get_executable, add_overload=Dispatcher.add_overload,
                  save_overload=caching.Cache.save_overload,
                  optimize=CodeLibrary._optimize_final_module,
                  add_linking=CodeLibrary.add_linking_library)

    def finalize(self):
        self._fastmlp_defer = True
        try:
            _numba["finalize"](self)
        finally:
            self._fastmlp_defer = False

    def finalize_final_module(self):
        if not getattr(self, "_fastmlp_defer", False):
            return _numba["finalize_final_module"](self)
        # Numba's, up to handing the module to the JIT (_emit does the rest)
        self._finalize_dynamic_globals()
        self._verify_declare_only_symbols()
        self._final_module._CPUCodeLibrary__library = weakref.proxy(self)   # the object cache hook
        self._fastmlp_pending = True
        self._finalized = True

    def get_pointer_to_function(self, name):
        _emit(self)
        return _numba["get_pointer"](self, name)

    def get_compiled_object(self):
        _emit(self)
        return _numba["compiled_object"](self)

    def optimize_final_module(self):
        if getattr(self, "_fastmlp_linking", False):
            self._fastmlp_unoptimized = True        # the caller optimizes it with its own code
            return
        _numba["optimize"](self)

    def add_linking_library(self, library):
        if not library._finalized:
            library._fastmlp_linking = True
            try:
                library.finalize()
            finally:
                library._fastmlp_linking = False
        _numba["add_linking"](self, library)

    def get_executable(self, library, fndesc, env):
        if not library._finalized:
            library._fastmlp_pending = True     # finalized when it is linked, run or saved
        if not getattr(library, "_fastmlp_pending", False):
            return _numba["get_executable"](self, library, fndesc, env)
        return _LazyEntry(lambda: _numba["get_executable"](self, library, fndesc, env))

    def add_overload(self, cres):
        entry = cres.entry_point
        if not isinstance(entry, _LazyEntry):
            return _numba["add_overload"](self, cres)
        entry._dispatcher, entry._cres = self, cres
        self.overloads[tuple(cres.signature.args)] = cres

    def save_overload(self, sig, data):
        entry = getattr(data, "entry_point", None)
        if isinstance(entry, _LazyEntry) and entry._real is None and _depth > 0:
            entry._save = (self, sig)          # a callee: saved only if Python calls it
            return None
        return _numba["save_overload"](self, sig, data)

    class Depth(event.Listener):
        def on_start(self, ev):
            global _depth
            _depth += 1

        def on_end(self, ev):
            global _depth
            _depth -= 1

    event.register("numba:compile", Depth())
    CodeLibrary.finalize = finalize
    CodeLibrary._finalize_final_module = finalize_final_module
    CodeLibrary._optimize_final_module = optimize_final_module
    CodeLibrary.add_linking_library = add_linking_library
    JIT.get_pointer_to_function = get_pointer_to_function
    codegen.CodeLibrary._get_compiled_object = get_compiled_object
    CPU.get_executable = get_executable
    Dispatcher.add_overload = add_overload
    caching.Cache.save_overload = save_overload
    _installed = True
    return True
