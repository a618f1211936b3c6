"""_linkonly: a compile child optimizes and makes machine code only for what is run or saved, and
the cache it fills serves a normal process (in processes of their own: install() patches Numba for good)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from support import JIT_DISABLED

pytestmark = pytest.mark.skipif(JIT_DISABLED, reason="about compiling")

MODULE = '''
import numpy as np
from numba import njit, prange


@njit(cache=True)
def helper(a, k):
    return a * k + 1.0


@njit(cache=True)
def kernel(a):
    s = 0.0
    for i in range(a.size):
        s += helper(a[i], 2.0)
    return s


@njit(cache=True, parallel=True)
def region(a):
    out = np.empty_like(a)
    for i in prange(a.size):
        out[i] = helper(a[i], 3.0)
    return out
'''

CHILD = '''
import json, os, sys
import numpy as np
from fastmlp.jit import _linkonly
assert _linkonly.install()
import linkonly_mod as m

a = np.arange(7.0)
out = {"kernel": m.kernel(a), "region": m.region(a).tolist()}
out["again"] = [m.kernel(a), m.region(a).tolist()]        # through the real entry points now
lib = next(iter(m.helper.overloads.values())).library
out["helper_pending"] = lib._fastmlp_pending            # linked twice, never made machine code
out["helper_unoptimized"] = lib._fastmlp_unoptimized    # nor optimized on its own
out["kernel_pending"] = next(iter(m.kernel.overloads.values())).library._fastmlp_pending
def saved():
    return sorted(f.split("-")[0] for _, _, files in os.walk(os.environ["NUMBA_CACHE_DIR"])
                  for f in files if f.startswith("linkonly_mod.") and f.endswith(".nbi"))
out["saved"] = saved()
out["helper"] = m.helper(1.5, 2.0)                      # called from Python: made, then saved
out["saved_after"] = saved()
print(json.dumps(out))
'''

PARENT = '''
import json
import numpy as np
from fastmlp.jit.api import _refuse_compiling
import linkonly_mod as m

a = np.arange(7.0)
with _refuse_compiling():                                # everything from the child's cache
    print(json.dumps({"kernel": m.kernel(a), "region": m.region(a).tolist(),
                      "helper": m.helper(1.5, 2.0)}))
'''


def _run(code, tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_callees_get_no_machine_code_and_the_cache_serves_a_normal_process(tmp_path):
    (tmp_path / "linkonly_mod.py").write_text(MODULE)
    child = _run(CHILD, tmp_path)
    expected_region = [x * 3.0 + 1.0 for x in range(7)]
    assert child["kernel"] == sum(x * 2.0 + 1.0 for x in range(7))
    assert child["region"] == expected_region
    assert child["again"] == [child["kernel"], expected_region]
    assert child["helper_pending"] is True
    assert child["helper_unoptimized"] is True
    assert child["kernel_pending"] is False
    assert child["saved"] == ["linkonly_mod.kernel", "linkonly_mod.region"]
    assert child["helper"] == 4.0
    assert child["saved_after"] == ["linkonly_mod.helper", "linkonly_mod.kernel",
                                    "linkonly_mod.region"]
    parent = _run(PARENT, tmp_path)
    assert parent == {"kernel": child["kernel"], "region": expected_region, "helper": 4.0}
