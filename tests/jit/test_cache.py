"""Numba's on-disk cache as fastmlp.jit._cache leaves it: processes that save different
compiled versions of one function at once each keep their own, and an index that names classes
which no longer exist is recompiled instead of raising."""

import os
import pickle
import subprocess
import sys
import textwrap
import time

import numba
import pytest
from numba.core import caching

import fastmlp.jit  # noqa: F401  (importing it installs the fix)
from fastmlp.jit import _cache

MODULE = """
from numba import njit

@njit(cache=True)
def plus_one(x):
    return x + 1
"""

# A child: imports fastmlp.jit (the fix), makes every index write slow (so that two processes'
# saves overlap for certain), waits for the go file, then compiles one signature and saves it.
CHILD = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import fastmlp.jit
from numba.core import caching
write = caching.IndexDataCacheFile._save_index
def slow(self, overloads):
    time.sleep(0.5)
    write(self, overloads)
caching.IndexDataCacheFile._save_index = slow
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
import kernels
print(kernels.plus_one(1 if sys.argv[3] == "int" else 1.5))
"""


@pytest.mark.slow
def test_concurrent_saves_of_two_signatures_keep_both(tmp_path):
    (tmp_path / "kernels.py").write_text(MODULE)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("NUMBA_DISABLE_JIT", None)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(go), kind],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for kind in ("int", "float")]
    time.sleep(1.0)              # both children imported and waiting
    go.write_text("")
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    # a third process loads both versions from the cache: each the right code, nothing compiled
    check = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        import fastmlp.jit, kernels
        print(kernels.plus_one(41), kernels.plus_one(0.25), dict(kernels.plus_one.stats.cache_misses))
    """)
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["42", "1.25", "{}"]


def test_an_index_naming_a_vanished_class_is_stale(tmp_path, monkeypatch):
    """An index pickled by older code (here: a class since removed from its module) counts as
    empty: the function compiles instead of failing."""
    import types
    gone = types.ModuleType("fastmlp_vanished")
    exec("class Old:\n    pass", gone.__dict__)
    monkeypatch.setitem(sys.modules, "fastmlp_vanished", gone)
    payload = pickle.dumps(("stamp", {("key",): gone.Old()}))
    del gone.Old
    index = caching.IndexDataCacheFile(str(tmp_path), "kernels.plus_one-1.py311", "stamp")
    with open(index._index_path, "wb") as f:
        pickle.dump(numba.__version__, f)
        f.write(payload)
    with pytest.raises(AttributeError):
        _cache._numba_load_index(index)          # Numba's own reading of it
    assert index._load_index() == {}
    index.save(("new",), b"data")                # and saving over it works
    assert index._load_index() == {("new",): "kernels.plus_one-1.py311.1.nbc"}
