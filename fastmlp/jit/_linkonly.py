"""In a compile child: machine code only for what is run or saved, not for what is only linked.

Numba compiles every @njit function a kernel calls as a library of its own, and finalizing a
library makes its machine code (LLVM's code generation, ``JITCodeLibrary._finalize_specific``);
then the caller links the callee's optimized LLVM module into its own, and optimizes and
generates code for the whole again. The callee's own machine code is used only if Python calls
the callee, or to save the callee in Numba's cache. A compile child (``warmup.py``) is started
to fill the cache with the kernels a run calls, whose machine code holds their callees'; there
the callees' own machine code (and that of a parallel region's two wrapper levels) is work
nobody uses: on Zen 4, 2.2 of the training child's 23 s and 3.6 of the other child's.

``install()`` makes a library's machine code on demand, for libraries that a compile in this
process finalizes (not those loaded from the cache, nor Numba's runtime, set up before):

- finalizing optimizes the library's module as Numba does, but does not hand it to LLVM's JIT;
- the machine code is made (as Numba would have made it) the first time something asks for it:
  a pointer to one of its functions, or its object code for the cache;
- a function compiled this way has, as its entry point for Python, an object that makes the
  machine code and Numba's real entry point at the first call from Python (and then saves the
  function in the cache, which its compile had skipped if it was compiled as a callee);
- a function compiled as a callee (inside another's compile) is not saved in the cache unless
  Python calls it: the callers that are saved hold its code.

The LLVM modules, and so every kernel's machine code, are the same as without it (the kernels'
outputs, loaded from a cache filled either way, hash the same); only when, and whether, code is
generated changes. It is for processes that exist to fill the cache: in one that goes on to
call a callee from Python, that call pays the code generation then. ``install()`` first checks
that Numba has the internals it replaces, and leaves Numba as it is (returning False) if not.
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
    """Finalize ``lib`` if it is not, then Numba's last step of finalizing where it was skipped:
    hand the module to LLVM's JIT and generate its machine code."""
    from numba.core.compiler_lock import global_compiler_lock
    with global_compiler_lock:
        lib._ensure_finalized()
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
                  save_overload=caching.Cache.save_overload)

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

    def get_executable(self, library, fndesc, env):
        library._ensure_finalized()
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
    JIT.get_pointer_to_function = get_pointer_to_function
    codegen.CodeLibrary._get_compiled_object = get_compiled_object
    CPU.get_executable = get_executable
    Dispatcher.add_overload = add_overload
    caching.Cache.save_overload = save_overload
    _installed = True
    return True
