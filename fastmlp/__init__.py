"""fastmlp: a from-scratch MNIST multilayer perceptron.

A pure-NumPy reference (``fastmlp.reference``) that reads like the math, and Numba-jitted kernels
(``fastmlp.jit``) with the same functions and meanings, tuned for the CPU.
"""

from .data import load_mnist
from .params import Params, init_params
from . import reference

__version__ = "0.1.0"
__all__ = ["load_mnist", "Params", "init_params", "reference", "__version__"]
