"""Checkpoints as one unit: generation directories, a ``current`` link switched in one rename, sha256 manifests.

Layout of ``RUN/checkpoints/`` (format 2)::

    gen-000001234-XXXX/last.safetensors   weights after step 1234
    gen-000001234-XXXX/last.state.pt      optimizer, progress, RNG of the same step
    gen-000001234-XXXX/best.safetensors   weights of the best epoch so far (a hard link when unchanged)
    gen-000001234-XXXX/manifest.json      step, epoch and the sha256 and size of each file above
    current -> gen-000001234-XXXX          symbolic link: THE checkpoint
    last.safetensors -> current/last.safetensors     stable paths for readers (eval, analyze, scripts)
    last.state.pt    -> current/last.state.pt
    best.safetensors -> current/best.safetensors

A save writes a complete new generation (every file fsync'ed, the manifest last), then replaces ``current`` by a
new link (``os.replace``: one atomic step), then deletes the older generations. A kill or a full disk at any instant
leaves ``current`` on the old or on the new complete generation; an unfinished generation is garbage, removed by
the next save. Readers verify each file's sha256 against the manifest of its generation.

Format 1 (today's older runs): regular files ``last.safetensors``, ``last.state.pt``, ``best.safetensors`` beside
each other, without a manifest. They are read as they are; the first save adopts them as a generation (hard links,
so the regular files stay valid until each is replaced by its link) before writing the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, default_mode, fsync_dir, write_fsync

__all__ = ["CURRENT", "FILES", "MANIFEST", "commit", "manifest_for", "read_verified", "sha256", "verify"]

CURRENT = "current"
MANIFEST = "manifest.json"
FILES = ("last.safetensors", "last.state.pt", "best.safetensors")
FORMAT = "odearch-checkpoint/2"


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------------- reading
def manifest_for(path: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """(manifest path, manifest) of the generation holding checkpoint file ``path``, None for a format-1 file.

    ``path`` may be a stable link (``checkpoints/last.safetensors``), a file inside a generation, or a regular file
    beside a ``current`` link (a run copied without links): the manifest of its own generation, else ``current``'s.
    """
    real = Path(os.path.realpath(path))
    for candidate in (real.parent / MANIFEST, real.parent / CURRENT / MANIFEST):
        if candidate.is_file():
            try:
                manifest = json.loads(candidate.read_text())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{candidate}: unreadable checkpoint manifest: {e}") from None
            if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
                raise CheckpointError(f"{candidate}: not an odearch checkpoint manifest")
            return candidate, manifest
    return None


def verify(path: str | Path, data: bytes) -> None:
    """Checks ``data`` (the bytes read from checkpoint file ``path``) against its manifest; format 1 passes unchecked.

    Raises:
        CheckpointError: naming the file, when its size or sha256 differs from the manifest's.
    """
    found = manifest_for(path)
    if found is None:
        return
    where, manifest = found
    entry = manifest["files"].get(Path(path).name)
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: not listed in its manifest {where}; the checkpoint is incomplete")
    if entry.get("bytes") != len(data) or entry.get("sha256") != sha256(data):
        raise CheckpointError(
            f"{path}: checksum mismatch with {where} (sha256 {sha256(data)[:12]}..., expected "
            f"{str(entry.get('sha256'))[:12]}...): the file is corrupt; restore it or start the "
            "run again with --overwrite"
        )


def read_verified(path: str | Path) -> bytes:
    """The bytes of checkpoint file ``path``, verified against its manifest (if any)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    verify(path, data)
    return data


# ------------------------------------------------------------------------------------------------------- writing
def commit(ckdir: Path, files: dict[str, bytes | None], meta: dict[str, Any]) -> Path:
    """Writes a new generation and makes it ``current`` in one rename; returns its directory.

    Args:
        ckdir: ``RUN/checkpoints`` (created if missing).
        files: name -> bytes to write; None: carry the current generation's file over (hard link), if it has one.
        meta: step, epoch ... recorded in the manifest.
    """
    ckdir.mkdir(parents=True, exist_ok=True)
    _adopt_format1(ckdir)
    gen = _new_generation(ckdir, meta.get("step", 0))
    try:
        entries = {name: _put(gen, name, data, ckdir) for name, data in files.items()}
        manifest = {"format": FORMAT, **meta, "files": {k: v for k, v in entries.items() if v is not None}}
        write_fsync(gen / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        fsync_dir(gen)
    except BaseException:
        shutil.rmtree(gen, ignore_errors=True)
        raise
    try:
        _point_current(ckdir, gen.name)
    except BaseException:  # `current` still names the previous generation: this one is garbage
        shutil.rmtree(gen, ignore_errors=True)
        raise
    _stable_links(ckdir, [n for n in FILES if n in manifest["files"]])
    _collect_garbage(ckdir, keep=gen.name)
    return gen


def _new_generation(ckdir: Path, step: int) -> Path:
    gen = Path(tempfile.mkdtemp(prefix=f"gen-{step:09d}-", dir=ckdir))
    os.chmod(gen, default_mode(0o777))
    return gen


def _put(gen: Path, name: str, data: bytes | None, ckdir: Path) -> dict[str, Any] | None:
    """Writes (or hard-links from ``current``) one file of the generation; returns its manifest entry."""
    if data is None:
        old = ckdir / CURRENT / name
        if not old.is_file():
            return None
        data = read_verified(old)  # a corrupt best must not be carried into the new generation unnoticed
        try:
            os.link(os.path.realpath(old), gen / name)
        except OSError:  # a file system without hard links: copy
            write_fsync(gen / name, data)
    else:
        write_fsync(gen / name, data)
    return {"sha256": sha256(data), "bytes": len(data)}


def _point_current(ckdir: Path, target: str) -> None:
    """Replaces the ``current`` link by one to ``target``: the single atomic step of a save."""
    _replace_link(ckdir / CURRENT, target)


def _stable_links(ckdir: Path, names: list[str]) -> None:
    """Makes each ``checkpoints/NAME`` a link to ``current/NAME`` (atomically replacing a format-1 file)."""
    for name in names:
        path = ckdir / name
        if path.is_symlink() and os.readlink(path) == f"{CURRENT}/{name}":
            continue
        _replace_link(path, f"{CURRENT}/{name}")


def _replace_link(path: Path, target: str) -> None:
    """Makes ``path`` a symbolic link to ``target`` in one atomic rename (a temporary link is never left behind)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _collect_garbage(ckdir: Path, keep: str) -> None:
    """Removes generations other than ``keep`` and leftover temporary files of killed saves."""
    for p in ckdir.iterdir():
        if p.name.startswith("gen-") and p.name != keep and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".") and p.name.endswith(".tmp") and not p.is_dir():
            p.unlink(missing_ok=True)


def _adopt_format1(ckdir: Path) -> None:
    """Turns a format-1 checkpoint (regular files, or a copied run whose ``current`` is a real directory) into a
    generation without ever leaving the directory unreadable: hard links first, then ``current``, then the links."""
    current = ckdir / CURRENT
    if current.is_symlink():
        return
    if current.is_dir():  # a copy that followed the links (its regular top-level files are copies of current/)
        name = f"gen-copied-{os.getpid()}"
        os.replace(current, ckdir / name)
        _point_current(ckdir, name)
        _stable_links(ckdir, [n for n in FILES if (ckdir / name / n).is_file()])
        return
    regular = [n for n in FILES if (ckdir / n).is_file() and not (ckdir / n).is_symlink()]
    if not regular:
        return
    gen = _new_generation(ckdir, 0)
    entries = {}
    for name in regular:
        data = (ckdir / name).read_bytes()
        os.link(ckdir / name, gen / name)
        os.chmod(gen / name, default_mode())  # format-1 files were written 0600
        entries[name] = {"sha256": sha256(data), "bytes": len(data)}
    write_fsync(
        gen / MANIFEST, (json.dumps({"format": FORMAT, "adopted": "format 1", "files": entries}) + "\n").encode()
    )
    fsync_dir(gen)
    _point_current(ckdir, gen.name)
    _stable_links(ckdir, regular)
