"""Numba's on-disk cache, made safe for several processes and for an upgraded fastmlp.

Two faults of ``numba.core.caching.IndexDataCacheFile`` (numba 0.6x; numba issue #10128) that
fastmlp meets because it compiles in several processes at once (``warmup``: one child per dtype;
a GridSearchCV's workers):

- Saving is not atomic across processes. ``save`` reads a function's index, picks the first
  free data-file number, writes the index, then the data. Two processes that compile *different*
  signatures of one function at the same moment both pick number 1: the index ends up naming
  one signature while the file holds the other's machine code (seen here: a float64 call loaded
  the float32 code and failed to unbox; with compatible types it could run the wrong code).
  Here saves take an exclusive lock (one lock file per cache directory), read the index inside
  it, and write the data before the index that names it, so a reader never sees an index entry
  whose file is not yet the right one.
- An index written by an older fastmlp pickles argument types that may no longer exist; Numba
  unpickles it before it checks the source's time stamp, so the stale index raised
  AttributeError at the first call instead of being recompiled. Here an index that cannot be
  unpickled counts as stale (empty), as Numba treats one of another version.

Installed when ``fastmlp.jit`` is imported; it changes those two methods for every Numba cache in
the process (the behaviour, for anyone else's functions too, is Numba's own minus the race).
"""

from __future__ import annotations

import itertools
import os
import pickle

from numba.core import caching

try:
    import fcntl
except ImportError:          # not POSIX: Numba's own save, unlocked
    fcntl = None

LOCK_NAME = "fastmlp-numba-cache.lock"

_File = caching.IndexDataCacheFile
_numba_load_index = _File._load_index


def _load_index(self):
    try:
        return _numba_load_index(self)
    except (AttributeError, ImportError, IndexError, TypeError, ValueError, EOFError,
            pickle.UnpicklingError):
        return {}        # written by other code: stale, as an index of another version is


def _save(self, key, data):
    """Numba's save, under an exclusive lock, data first."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(os.path.join(self._cache_path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        overloads = self._load_index()
        data_name = overloads.get(key)
        if data_name is None:
            taken = set(overloads.values())
            data_name = next(name for name in map(self._data_name, itertools.count(1))
                             if name not in taken)
        self._save_data(data_name, data)
        if overloads.get(key) != data_name:
            overloads[key] = data_name
            self._save_index(overloads)
    finally:
        if fd is not None:
            os.close(fd)             # releases the lock


def install() -> None:
    if getattr(_File.save, "__module__", None) != __name__:
        _File._load_index = _load_index
        _File.save = _save
