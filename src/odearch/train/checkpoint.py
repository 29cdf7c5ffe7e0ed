"""Checkpoints: model weights as safetensors, training state as a `weights_only`-loadable torch file.

Every file is written atomically (temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory), so a run killed at any instant leaves either the previous or the new file, never a torn one. The two
files of a checkpoint carry the same ``step``; :func:`load_checkpoint` refuses a pair that disagrees (a kill between
the two renames), rather than resuming from mismatched weights and optimizer state.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

__all__ = [
    "CheckpointError",
    "atomic_write",
    "capture_rng",
    "load_state",
    "load_weights",
    "restore_rng",
    "save_state",
    "save_weights",
    "weights_into",
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or saved from another model."""


def atomic_write(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` so that readers see the old file or the complete new one, never a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------------------------------------- weights
def save_weights(path: str | Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Saves `model.state_dict()` (parameters and buffers) as safetensors with JSON-encoded `metadata`.

    Args:
        path: target file, usually ``RUN/checkpoints/{last,best}.safetensors``.
        model: the bare model (not a DDP or compiled wrapper), so keys carry no wrapper prefix.
        metadata: values JSON-encoded into the safetensors header (model name, config, step ...).
    """
    # safetensors stores dense row-major tensors: channels_last weights are made contiguous in a copy.
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write(path, st_save(tensors, metadata=header))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a safetensors checkpoint as (state_dict on CPU, decoded metadata); damage raises CheckpointError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    try:
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}
        metadata = {k: json.loads(v) for k, v in header.items()}
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors checkpoint (truncated or corrupt): {e}") from None
    return tensors, metadata


def weights_into(model: nn.Module, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], path: str | Path,
                 expected_model: str) -> None:  # fmt: skip
    """Loads `tensors` into `model` strictly, explaining a mismatch by the model the checkpoint was saved from."""
    saved = metadata.get("model", "an unknown model")
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or shapes:
        what = ", ".join(f"{len(v)} {n}" for n, v in (("missing", missing), ("unexpected", unexpected),
                                                      ("shape-mismatched", shapes)) if v)  # fmt: skip
        first = (shapes or missing or unexpected)[0]
        raise CheckpointError(f"{path} was saved from model {saved!r} (num_classes {metadata.get('num_classes')}) "
                              f"and does not fit {expected_model!r}: {what} keys, e.g. {first!r}")  # fmt: skip
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k])  # copy_ keeps the model's dtype, device and memory format


# --------------------------------------------------------------------------------------------------------- state
def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Saves a training-state dict (tensors, dicts, lists, numbers, strings only) atomically with torch.save."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    """Loads a training-state dict with ``weights_only=True`` (no code execution); damage raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing training state {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # RuntimeError, EOFError, UnpicklingError, zipfile errors ... all mean "damaged"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a valid training-state file (truncated or corrupt): {msg}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not an odearch training-state file (no 'step')")
    return state


# ----------------------------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and every CUDA device) and Python `random`, as weights_only-safe values.

    (odearch draws nothing from numpy's global generator, so its state is not kept.)
    """
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states are restored only when the same devices exist)."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
