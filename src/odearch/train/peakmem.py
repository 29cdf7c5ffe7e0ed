"""The training process's peak memory per epoch, as a user watching it sees it.

CPU: the peak resident set size of the process (Linux ``VmHWM``), reset at the start of each epoch by writing 5 to
``/proc/self/clear_refs``; where that cannot be reset, the process's lifetime peak (``ru_maxrss``), labelled so.
CUDA: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of the device, reset likewise. Values in MiB.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

__all__ = ["PeakMemory", "peak_rss_mib"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Peak memory since the last :meth:`reset`: ``read()`` gives ``peak_rss_mib`` (and ``peak_rss_since``:
    ``epoch`` or ``process start``), plus ``cuda_peak_allocated_mib`` / ``cuda_peak_reserved_mib`` on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.since = "process start"

    def reset(self) -> None:
        """Starts a new window: the kernel's RSS high-water mark and CUDA's peak statistics."""
        try:
            _CLEAR_REFS.write_text("5")
            self.since = "epoch"
        except OSError:
            self.since = "process start"
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, float | str]:
        """The window's peaks in MiB."""
        hwm = _status_kib("VmHWM") if self.since == "epoch" else None
        kib = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out: dict[str, float | str] = {"peak_rss_mib": kib / 1024, "peak_rss_since": self.since}
        if hwm is None:
            out["peak_rss_since"] = "process start"
        if self.device.type == "cuda":
            out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved(self.device) / 2**20
        return out


def peak_rss_mib() -> float | None:
    """The process's peak resident size in MiB since the last reset (Linux ``VmHWM``), None where unreadable."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024
