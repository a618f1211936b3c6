"""The optimizers and every hyperparameter's allowed range, in one table.

``_validate.check_optimizer`` (both backends), ``train.Config.check`` and the command line's
option types all read their limits and messages from here, so a range is written once.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Optimizer(NamedTuple):
    buffers: int    # state arrays per parameter array (see common.init_state)
    code: int       # the rule the compiled update runs (jit.optim)


# the compiled update's rules, by name rather than number
GD, MOMENTUM, NESTEROV, ADAM = 0, 1, 2, 3

OPTIMIZER_TABLE = {
    "gd": Optimizer(0, GD),
    "sgd": Optimizer(0, GD),            # the same rule; "sgd" reads better for mini-batches
    "momentum": Optimizer(1, MOMENTUM),
    "nesterov": Optimizer(1, NESTEROV),
    "adam": Optimizer(2, ADAM),
    # Adam with Kingma and Ba's "epsilon hat" (their section 2, last paragraph): the bias
    # corrections move into the step size and eps is added to sqrt(v) itself, as scikit-learn's
    # and Keras's Adam do (the same compiled rule, given other corrections: jit.optim._opt_args)
    "adam_hat": Optimizer(2, ADAM),
}
OPTIMIZERS = tuple(OPTIMIZER_TABLE)

HYPER_DEFAULTS = dict(momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)


class Range(NamedTuple):
    """A number's allowed interval: lo < v (or lo <= v with lo_closed), v < hi (or v <= hi)."""
    lo: float
    hi: float = math.inf
    lo_closed: bool = True
    hi_closed: bool = False

    def holds(self, v) -> bool:
        return (math.isfinite(v) and (v >= self.lo if self.lo_closed else v > self.lo)
                and (v <= self.hi if self.hi_closed else v < self.hi))

    def describe(self) -> str:
        if self.hi == math.inf:
            return f"{'>=' if self.lo_closed else '>'} {self.lo:g}"
        return (f"in {'[' if self.lo_closed else '('}{self.lo:g}, {self.hi:g}"
                f"{']' if self.hi_closed else ')'}")


RANGES = {
    "lr": Range(0, lo_closed=False),             # a training run's (peak) learning rate
    "lrs": Range(0),                              # each step's learning rate (0 allowed)
    "momentum": Range(0, 1),
    "beta1": Range(0, 1),
    "beta2": Range(0, 1),
    "eps": Range(0, lo_closed=False),
    "weight_decay": Range(0),
    "warmup": Range(0, 1),
    "val_fraction": Range(0, 1),
}
