"""Artificial background load for the benchmarks: N processes that each keep one CPU busy (as other jobs on a
shared machine would), started and stopped around a block."""
from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

SPIN = "import torch; torch.set_num_threads(1); a = torch.randn(256, 256)\nwhile True: a = (a @ a).tanh()"


@contextmanager
def background_load(processes: int):
    """`processes` CPU-bound processes (single-threaded matrix products) while the block runs."""
    children = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(processes)]
    try:
        yield children
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
