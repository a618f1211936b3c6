#!/usr/bin/env python
"""Train the 784-72-36-10 network on MNIST: the main job.

    python scripts/train_fast.py                       # the fast default recipe (numba)
    python scripts/train_fast.py --preset original     # the original: full-batch GD, 500 it, lr 0.2
    python scripts/train_fast.py --help                # every option

The same as ``fastmlp train``; the code lives in fastmlp.cli and fastmlp.train.
"""

import sys

from fastmlp.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
