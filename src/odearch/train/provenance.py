"""Where a result came from: source commit (and whether the tree was dirty), device, library versions."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from .allocator import allocator_state

__all__ = ["device_name", "git_state", "provenance"]


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """The commit checked out at ``path`` (default: this package's source tree) and whether it has local changes.

    Returns:
        ``{"commit": sha or None, "dirty": bool or None}``; None where git or a repository is unavailable
        (e.g. an installed wheel).
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_name(device: torch.device) -> str:
    """Human-readable name of ``device``: the GPU model for CUDA, the CPU model otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # platform.processor() is often empty on Linux; /proc/cpuinfo has the marketing name
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def provenance(device: torch.device) -> dict[str, Any]:
    """Commit, dirty flag, device name, torch / CUDA versions, Python version and host platform."""
    git = git_state()
    return {
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cpu_allocator": allocator_state(),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
