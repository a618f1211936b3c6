"""fastmlp: a from-scratch MNIST multilayer perceptron.

A pure-NumPy reference (``fastmlp.reference``) that reads like the math, and Numba-jitted kernels
(``fastmlp.jit``) with the same functions and meanings, tuned for the CPU.
"""

from .data import load_mnist
from .params import Params, init_params
from . import reference

__version__ = "0.1.0"
__all__ = ["load_mnist", "Params", "init_params", "MLPClassifier", "reference", "__version__"]


def __getattr__(name):
    # scikit-learn is imported only by those who use the estimator
    if name == "MLPClassifier":
        from .estimator import MLPClassifier
        return MLPClassifier
    raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")
