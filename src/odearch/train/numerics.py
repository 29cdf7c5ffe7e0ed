"""Device, precision and determinism of a run: ``resolve_device``, ``amp_dtype``, ``configure_numerics``,
``seed_everything``.

Shared by the trainer, ``odearch eval`` and the benchmarks, so that all of them resolve ``--device`` and ``--amp``
alike.
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager
from typing import Any

import torch

from .allocator import keep_freed_memory
from .config import ConfigError, TrainConfig

__all__ = [
    "DTYPE_NAMES",
    "amp_dtype",
    "autocast",
    "configure_numerics",
    "cpu_has_native_bf16",
    "dtype_from_name",
    "dtype_name",
    "resolve_device",
    "seed_everything",
]

DTYPE_NAMES: dict[torch.dtype | None, str] = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
"""Autocast dtype (None: off) -> the precision name recorded in checkpoints, metrics rows and result.json."""


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU raises ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but CUDA is not available (use --device auto or cpu)")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 on CUDA (no loss scaling needed) and off (float32) on CPU.

    ``bf16`` on CPU is supported (autocast runs convolutions and matmuls in bf16 through oneDNN); it is fast only
    where the CPU computes bf16 natively (:func:`cpu_has_native_bf16`). ``auto`` stays float32 on CPU: runs of one
    campaign on CPUs of different kinds then train in one precision (see README, "Precision on CPU").
    """
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; disabled (float32) when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def dtype_name(dtype: torch.dtype | None) -> str:
    """The effective training precision recorded in checkpoints, metrics rows and result.json."""
    return DTYPE_NAMES[dtype]


def dtype_from_name(name: str) -> torch.dtype | None:
    """Inverse of :func:`dtype_name`."""
    return {v: k for k, v in DTYPE_NAMES.items()}[name]


def cpu_has_native_bf16() -> bool:
    """True where this CPU computes bf16 natively (AVX512-BF16 or AMX), so that bf16 autocast can beat float32."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def configure_numerics(cfg: TrainConfig, device: torch.device) -> None:
    """Deterministic switch, else let cuDNN pick the fastest kernels; TF32 matmuls on CUDA unless deterministic.
    On CPU, the host allocator keeps freed memory (:func:`odearch.train.allocator.keep_freed_memory`)."""
    if device.type == "cpu":
        keep_freed_memory()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def seed_everything(seed: int) -> None:
    """Seeds the global torch and Python RNGs (model init; the data order has its own generators)."""
    torch.manual_seed(seed)
    random.seed(seed)
