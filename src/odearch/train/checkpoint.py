"""Checkpoints: model weights as safetensors, training state as a ``weights_only``-loadable torch file.

Every file is written atomically (temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory), so a run killed at any instant leaves either the previous or the new file, never a torn one. A run's
checkpoint (weights, state, best weights) is written as one generation by :mod:`odearch.train.generations`, with
sha256 checksums; the two files carry the same ``step`` too, and a resume refuses a pair that disagrees. Files get
the usual mode (0666 less the umask), and write errors (a full disk) name the file.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ..packing import unpack_weights

__all__ = [
    "CheckpointError",
    "atomic_write",
    "capture_rng",
    "check_state",
    "default_mode",
    "fsync_dir",
    "load_state",
    "load_weights",
    "restore_rng",
    "save_state",
    "save_weights",
    "state_bytes",
    "tensors_bytes",
    "weights_bytes",
    "weights_from_bytes",
    "weights_into",
    "write_fsync",
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or saved from another model."""


def default_mode(base: int = 0o666) -> int:
    """``base`` masked by the process umask: the mode ``open()`` would give a new file (0644 under umask 022)."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return base & ~mask


_UMASK_LOCK = threading.Lock()


def _named(e: OSError, path: Path) -> OSError:
    """``e`` with ``path`` in its message (ENOSPC and friends must say which file could not be written)."""
    return OSError(e.errno, f"cannot write {path}: {e.strerror}")


def write_fsync(path: str | Path, data: bytes) -> None:
    """Writes a NEW file ``path`` (mode per umask) and fsyncs it; errors name the file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _named(e, path) from None


def fsync_dir(path: str | Path) -> None:
    """Makes renames and new entries in directory ``path`` durable."""
    try:
        dir_fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise _named(e, Path(path)) from None


def atomic_write(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the complete new one, never a partial file.

    The file gets the usual mode (0666 less the umask, not mkstemp's 0600); an error (a full disk) names ``path``.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _named(e, path) from None
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _named(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # make the rename itself durable


# ------------------------------------------------------------------------------------------------------- weights
def save_weights(path: str | Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Saves ``model.state_dict()`` (parameters and buffers) as safetensors with JSON-encoded ``metadata``.

    Args:
        path: target file, usually ``RUN/checkpoints/{last,best}.safetensors``.
        model: the bare model (not a DDP or compiled wrapper), so keys carry no wrapper prefix.
        metadata: values JSON-encoded into the safetensors header (model name, config, step ...).
    """
    atomic_write(path, weights_bytes(model, metadata))


def weights_bytes(model: nn.Module, metadata: dict[str, Any]) -> bytes:
    """The safetensors file of ``model.state_dict()`` with JSON-encoded ``metadata``, as bytes."""
    # safetensors stores dense row-major tensors: channels_last weights are made contiguous in a copy.
    return tensors_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, metadata)


def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> bytes:
    """The safetensors file of dense CPU ``tensors`` with JSON-encoded ``metadata``, as bytes."""
    return st_save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()})


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a safetensors checkpoint (or a shipped weights file, xz-packed: :mod:`odearch.packing`) as (state_dict
    on CPU, decoded metadata); damage raises CheckpointError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    return weights_from_bytes(data, path)


def weights_from_bytes(data: bytes, path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`load_weights` of bytes already read from ``path`` (e.g. verified against a manifest first)."""
    try:
        data = unpack_weights(data)
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}
        metadata = {k: json.loads(v) for k, v in header.items()}
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors checkpoint (truncated or corrupt): {e}") from None
    return tensors, metadata


def weights_into(
    model: nn.Module, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], path: str | Path, expected_model: str
) -> None:
    """Loads ``tensors`` into ``model`` strictly, explaining a mismatch by the model the checkpoint was saved from."""
    saved = metadata.get("model", "an unknown model")
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or shapes:
        what = ", ".join(
            f"{len(v)} {n}"
            for n, v in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", shapes))
            if v
        )
        first = (shapes or missing or unexpected)[0]
        raise CheckpointError(
            f"{path} was saved from model {saved!r} (num_classes {metadata.get('num_classes')}) "
            f"and does not fit {expected_model!r}: {what} keys, e.g. {first!r}"
        )
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k])  # copy_ keeps the model's dtype, device and memory format


# --------------------------------------------------------------------------------------------------------- state
def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Saves a training-state dict (tensors, dicts, lists, numbers, strings only) atomically with torch.save."""
    atomic_write(path, state_bytes(state))


def state_bytes(state: dict[str, Any]) -> bytes:
    """``state`` serialised by torch.save, as bytes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


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


_INT, _NUM = (int,), (int, float)
STATE_TYPES: dict[str, tuple[type, ...]] = {
    "step": _INT,
    "epoch": _INT,
    "batch": _INT,
    "partial": (dict,),
    "best": (dict,),
    "wall_seconds": _NUM,
    "optimizer": (dict,),
    "scaler": (dict,),
    "rng": (dict,),
    "model": (str,),
}


def check_state(state: dict[str, Any], path: str | Path) -> None:
    """Raises CheckpointError naming ``path`` and the key when a training state lacks a key or has a wrong type."""

    def bad(key: str, want: str) -> CheckpointError:
        got = type(state.get(key)).__name__ if key in state else "missing"
        return CheckpointError(
            f"{path}: training state key {key!r} is {got}, expected {want}; the file is not a usable odearch checkpoint"
        )

    for key, types in STATE_TYPES.items():
        value = state.get(key)
        if key not in state or not isinstance(value, types) or isinstance(value, bool):
            raise bad(key, "/".join(t.__name__ for t in types))
    if state["step"] < 0 or state["epoch"] < 0 or state["batch"] < 0:
        raise bad("step", "non-negative step, epoch and batch")
    opt = state["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        raise bad("optimizer", "an optimizer state_dict (state, param_groups)")
    rng = state["rng"]
    if (
        not isinstance(rng.get("torch"), torch.Tensor)
        or not isinstance(rng.get("python"), list | tuple)
        or len(rng["python"]) != 3
        or not isinstance(rng.get("cuda"), list)
    ):
        raise bad("rng", "RNG states (torch tensor, cuda list, python triple)")
    if not all(k in state["best"] for k in ("acc", "epoch", "on")):
        raise bad("best", "a dict with acc, epoch, on")
    if state["batch"] and not (
        isinstance(state["partial"].get("loss_sum"), torch.Tensor)
        and isinstance(state["partial"].get("correct"), torch.Tensor)
        and isinstance(state["partial"].get("n"), int)
    ):
        raise bad("partial", "partial-epoch sums (loss_sum, correct tensors; n)")


# ----------------------------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and every CUDA device) and Python ``random``, as weights_only-safe values.

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
