#!/usr/bin/env python
"""Run the reference and the numba backend on the same real MNIST batch and parameters and print
one row per tensor (activations, loss, every gradient, predictions): max absolute and relative
difference, tolerance, OK or FAIL. Exits 1 on any FAIL.

    python scripts/compare_backends.py [--dtype float32|float64] [--batch-size N] [--seed S]
"""

import sys

from fastmlp.cli import compare_main

if __name__ == "__main__":
    sys.exit(compare_main(sys.argv[1:]))
