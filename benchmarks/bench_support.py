"""Helpers shared by the benchmark suites."""

from fastmlp import jit as J, reference as R

# dense-equivalent floating-point operations per sample (DESIGN.md): what the dense algorithm
# would do; the sparse kernels do less, so their GFLOP/s is an "effective" rate
FLOPS_FORWARD = 2 * (784 * 72 + 72 * 36 + 36 * 10)                          # 118,800
FLOPS_TRAIN = FLOPS_FORWARD + 2 * (784 * 72 + 2 * 72 * 36 + 2 * 36 * 10)    # 243,504


def rounds_for(seconds_per_call, budget=1.0, lo=3, hi=100):
    """How many timed rounds fit the time budget (at least lo)."""
    return int(min(hi, max(lo, budget / max(seconds_per_call, 1e-9))))


BACKENDS = {"reference": R, "numba": J}
