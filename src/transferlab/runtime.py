"""The process a run works in: which device, how many CPU threads, glibc's handling of freed memory, the seeds."""
from __future__ import annotations

import ctypes
import platform
import random
from contextlib import contextmanager

import numpy as np
import torch

from .errors import TransferlabError
from .machine import free_cpus


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when there is a GPU, else the CPU; asking for CUDA without one is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TransferlabError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise TransferlabError(f"--device {device}: {str(exc).splitlines()[0]}") from None


def choose_threads(requested: int | None = None) -> int:
    """torch CPU threads for a run: `requested`, else torch's default (one per core, or what was set before)
    reduced to the CPUs free right now, at least 1. On a machine shared with other jobs, more threads than free
    CPUs make every operation wait for its slowest thread (a demo took 5x the CPU time at 2 threads on 2 busy
    cores)."""
    if requested:
        return int(requested)
    default = torch.get_num_threads()
    if default <= 1:
        return 1
    return max(1, min(default, int(free_cpus() + 0.5)))


@contextmanager
def cpu_threads(n: int):
    """torch.set_num_threads(n) while the block runs, then the previous count again."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # mallopt parameters (malloc.h)
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_reuse_depth = 0   # nested blocks: the outermost one sets and restores


@contextmanager
def reuse_freed_memory(enabled: bool = True):
    """While the block runs, let glibc keep freed memory for reuse instead of handing it back to the OS.

    glibc serves every allocation above 32 MB (e.g. one activation map of a batch) with a fresh mmap, and
    unmaps it when freed, so each forward pass on the CPU page-faults its activations in again: on 2 cores
    this kernel time was as large as the convolutions (benchmarks/transfer_speed.py; BENCHMARKS.md). With
    mmap off and trimming deferred, tensors reuse heap memory. Afterwards the defaults come back and the
    freed memory is released (malloc_trim). No-op off glibc (macOS, Windows, musl)."""
    global _reuse_depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    if _reuse_depth == 0:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    _reuse_depth += 1
    try:
        yield
    finally:
        _reuse_depth -= 1
        if _reuse_depth == 0:
            for param, value in _GLIBC_DEFAULTS.items():
                libc.mallopt(param, value)
            libc.malloc_trim(0)


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
