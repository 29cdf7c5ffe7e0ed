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

Where memory is the point (the ``recompute`` and ``reversible`` activation-memory modes), keeping freed memory would
keep the peak the mode frees: the process a user watches would still grow with depth. There ``odearch train``
chooses the opposite policy (:func:`policy_for`, the config's ``allocator: auto``): :func:`return_freed_memory`
fixes glibc's mmap threshold at 64 KiB and its trim threshold at 128 KiB, so a freed activation goes back to the
kernel and the resident size follows the live tensors, at the cost of the page faults above (measured per mode:
docs/memory.md). ``allocator: keep`` / ``return`` choose either policy whatever the mode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = [
    "ALLOCATOR_POLICIES",
    "allocator_state",
    "apply_policy",
    "keep_freed_memory",
    "policy_for",
    "return_freed_memory",
]

ALLOCATOR_POLICIES = ("auto", "keep", "return")
RETURN_MMAP_THRESHOLD = 64 * 1024  # blocks above 64 KiB are mmap'ed and unmapped on free: RSS follows live tensors
RETURN_TRIM_THRESHOLD = 128 * 1024  # glibc's default: the heap top is given back past 128 KiB free

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
    if _state != "glibc-keep-freed" and os.environ.get("ODEARCH_KEEP_FREED_MEMORY", "1") != "0":
        libc = _glibc()
        if libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
            if libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
                _state = "glibc-keep-freed"
    return _state


def return_freed_memory() -> str:
    """Sets glibc's mmap threshold to 64 KiB and its trim threshold to 128 KiB (freed memory goes back to the
    kernel; also after :func:`keep_freed_memory`). Returns :func:`allocator_state`."""
    global _state
    libc = _glibc()
    if libc is not None and libc.mallopt(M_MMAP_THRESHOLD, RETURN_MMAP_THRESHOLD) == 1:
        if libc.mallopt(M_TRIM_THRESHOLD, RETURN_TRIM_THRESHOLD) == 1:
            _state = "glibc-return-freed"
    return _state


def policy_for(option: str, memory_mode: str) -> str:
    """The allocator policy of a run: ``option`` (``keep`` / ``return``), or for ``auto`` ``return`` under the
    ``recompute`` and ``reversible`` memory modes (memory is the point) and ``keep`` otherwise (speed)."""
    if option not in ALLOCATOR_POLICIES:
        raise ValueError(f"allocator must be one of {ALLOCATOR_POLICIES}, got {option!r}")
    if option != "auto":
        return option
    return "return" if memory_mode in ("recompute", "reversible") else "keep"


def apply_policy(policy: str) -> str:
    """Applies ``keep`` (:func:`keep_freed_memory`) or ``return`` (:func:`return_freed_memory`); returns
    :func:`allocator_state`."""
    return return_freed_memory() if policy == "return" else keep_freed_memory()


def allocator_state() -> str:
    """``glibc-keep-freed`` / ``glibc-return-freed`` once a policy has applied, else ``system`` (in provenance)."""
    return _state
