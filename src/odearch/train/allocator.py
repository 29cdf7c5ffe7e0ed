"""The host memory allocator on CPU: keep freed memory in the process (glibc) instead of giving it back each step.

A training step allocates the same activation and gradient tensors every time. glibc's ``malloc`` serves blocks
above its mmap threshold with fresh ``mmap`` pages and returns them (and the top of its heap, past the trim
threshold) to the kernel on ``free``, so every step touches new pages again: the kernel zero-fills each one in a
minor page fault. Measured on a 2-core AMD EPYC (results/README.md, "Host allocator on CPU"): the CIFAR
LM-ResNet-20 training of ``odearch train`` took 107,000-169,000 minor faults a second and spent 13-19 % of its CPU
time in the kernel. With the mmap threshold fixed at its maximum (32 MiB on 64-bit: blocks below it come from the
heap) and no trimming, the pages stay mapped and a training step reuses them (a median step: no fault). The cost:
memory freed by the process stays in it (its resident size stays at its peak), which is what a training process
wants; jemalloc and tcmalloc, which PyTorch's CPU performance guides recommend loading with ``LD_PRELOAD``, make the
same trade.

``odearch`` applies it in :func:`odearch.train.numerics.configure_numerics` on CPU (``odearch train`` and the
benchmarks); ``ODEARCH_KEEP_FREED_MEMORY=0`` in the environment leaves the allocator as it is. Nothing happens on a
C library other than glibc (musl, macOS); where another allocator was preloaded, glibc's setting has no effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["allocator_state", "keep_freed_memory"]

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the largest it accepts
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: ~2 GiB of free heap top before any is given back

_state = "system"


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def keep_freed_memory() -> str:
    """Sets glibc's mmap threshold to 32 MiB and its trim threshold to ~2 GiB, once per process, unless
    ``ODEARCH_KEEP_FREED_MEMORY=0``. Returns :func:`allocator_state`."""
    global _state
    if _state == "system" and os.environ.get("ODEARCH_KEEP_FREED_MEMORY", "1") != "0":
        libc = _glibc()
        if libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
            if libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
                _state = "glibc-keep-freed"
    return _state


def allocator_state() -> str:
    """``glibc-keep-freed`` once :func:`keep_freed_memory` has applied, else ``system`` (recorded in provenance)."""
    return _state
