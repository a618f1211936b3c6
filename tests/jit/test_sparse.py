"""The sparse first layer: pixel bands change no bit.

Tests marked ``small`` use small inputs; CI runs them a second time with NUMBA_DISABLE_JIT=1 so
that the kernel bodies run as plain Python (and coverage sees them).
"""

import numpy as np
import pytest

from fastmlp import init_params, jit as J
from fastmlp.jit import csr, sparse

from support import JIT_DISABLED


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_bands_change_no_bit(mnist_train, dtype):
    """On a CSR the forward kernels add each row's first-layer terms band by band (_band_cuts,
    cached with the CSR); on dense X in one run. Every output is the same bits either way.
    (The uint8 CSR of prepare, with the training kernels: test_csr_input_equals_dense_input.)"""
    import gc
    X = mnist_train[0][:300]
    params = init_params(dtype=dtype)
    Xf = X.astype(dtype) / dtype(255)
    C = J.to_csr(Xf)     # float values: the kernels the dense input compiles (uint8: see above)
    before = len(csr._CSR_CACHE)
    cuts = sparse._band_cuts(params, C)
    if JIT_DISABLED:                  # no IR row loop without the JIT: no bands
        assert cuts.shape == (0, len(C))
        return
    assert cuts.shape == (2 if dtype == np.float32 else 5, len(C))    # 3 or 6 bands
    assert sparse._band_cuts(params, C) is cuts and len(csr._CSR_CACHE) == before + 1
    bounds = np.vstack([C.indptr[:-1], cuts, C.indptr[1:]])
    assert np.all(np.diff(bounds, axis=0) >= 0)                      # bands in order in each row
    assert np.all(np.diff(bounds, axis=0).max(axis=1) > 0)           # none empty everywhere
    for k in range(len(bounds) - 1):                                 # band k: pixels in one range
        band = np.concatenate([C.indices[a:b] for a, b in zip(bounds[k], bounds[k + 1])])
        later = np.concatenate([C.indices[a:b] for a, b in zip(bounds[k + 1], bounds[-1])])
        assert band.size == 0 or later.size == 0 or band.max() < later.min()
    for a, b in zip(J.forward(params, C)[1:], J.forward(params, Xf)[1:]):
        assert np.array_equal(a, b)
    assert np.array_equal(J.predict_proba(params, C), J.predict_proba(params, Xf))
    assert np.array_equal(J.predict(params, C), J.predict(params, Xf))
    del C, cuts
    gc.collect()
    assert len(csr._CSR_CACHE) == before
