"""The run directory: its layout, and the few files written outside checkpoints.

::

    RUN/config.yaml                      resolved TrainConfig (model, model_kwargs, num_classes, dataset, ...)
    RUN/metrics.jsonl                    one JSON object per finished epoch
    RUN/lm_k_init.json                   LM models: the k_n before the first epoch (epoch 0 of the k plots)
    RUN/tb/                              TensorBoard events
    RUN/checkpoints/last.safetensors     weights after the last finished epoch (or the --max-minutes stop)
    RUN/checkpoints/last.state.pt        optimizer, schedule step, epoch, RNG, best metric (weights_only-loadable)
    RUN/checkpoints/best.safetensors     weights of the best epoch on the selection metric
    RUN/checkpoints/current, gen-*/      the generation those three paths lead to (odearch.train.generations)
    RUN/result.json                      summary and provenance, written when the run ends or stops cleanly
    RUN/eval_*.json, RUN/analysis/       written by ``odearch eval`` and ``odearch analyze``
    RUN/shipped.json                     ``odearch ship --prune-checkpoints``: the checkpoints were deleted, the final
                                         weights ship inside the package under the name recorded here

A process writing a run holds an exclusive ``flock`` on the directory (released by the kernel when it exits, so a
lock of a dead process never blocks). ``--overwrite`` deletes only the names above and refuses a directory that
holds anything else, or a finished run (a ``complete`` result.json, or a shipped.json): what would be lost cannot be
made again by a command. A run with a config.yaml but no checkpoint, no metrics row and no such record was stopped
before its first checkpoint (:meth:`RunDir.never_trained`); starting it again loses nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..runfiles import INITIAL_K_FILE, METRICS_FILE, SHIPPED_FILE, read_metrics
from .checkpoint import atomic_write
from .config import ConfigError, TrainConfig

__all__ = ["LAYOUT", "RunDir", "RunExistsError", "RunLockedError", "default_out", "resolve_data_dir"]

# What a run directory may hold (names a run writes); --overwrite deletes these and nothing else.
LAYOUT = (
    "config.yaml",
    METRICS_FILE,
    "result.json",
    "tb",
    "checkpoints",
    "analysis",
    ".lock",
    INITIAL_K_FILE,
    SHIPPED_FILE,
)
CHECKPOINT_NAMES = ("last.safetensors", "last.state.pt", "best.safetensors", "current")


def default_out(cfg: TrainConfig) -> str:
    """``runs/<model>_<dataset>_s<seed>_<YYYYmmdd-HHMMSS>``: a new directory per invocation."""
    return f"runs/{cfg.model}_{cfg.dataset}_s{cfg.seed}_{time.strftime('%Y%m%d-%H%M%S')}"


class RunExistsError(FileExistsError):
    """``--out`` names an existing run and neither ``--resume`` nor ``--overwrite`` was given."""


class RunLockedError(RunExistsError):
    """Another process is writing the run directory (it holds the lock)."""


def _ours(name: str, allowed: tuple[str, ...]) -> bool:
    """A name a run writes: one of ``allowed``, eval_*.json, a generation, or a temporary file of an atomic write."""
    return (
        name in allowed
        or (name.startswith("eval_") and name.endswith(".json"))
        or name.startswith("gen-")
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def resolve_data_dir(stored: str | None, run_root: Path, flag: str | None = None) -> str | None:
    """The data directory of a run read back: ``--data-dir`` (``flag``), else ``$ODEARCH_DATA``, else the stored
    path: as is when absolute, else relative to the run directory if it exists there, else to the working
    directory (runs of older versions stored the path as given, relative to where they were started)."""
    if flag:
        return flag
    if os.environ.get("ODEARCH_DATA"):
        return os.environ["ODEARCH_DATA"]
    if stored is None or Path(stored).is_absolute():
        return stored
    beside = run_root / stored
    return str(beside.resolve()) if beside.is_dir() else stored


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (nothing is created until :meth:`create`); ``root`` may be given as a string."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_weights(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def last_state(self) -> Path:
        return self.checkpoints / "last.state.pt"

    @property
    def best_weights(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def shipped(self) -> Path:
        return self.root / SHIPPED_FILE

    def foreign(self) -> list[str]:
        """Entries that no odearch run writes (in RUN and RUN/checkpoints)."""
        out = [p.name for p in self.root.iterdir() if not _ours(p.name, LAYOUT)]
        if self.checkpoints.is_dir() and not self.checkpoints.is_symlink():
            out += [f"checkpoints/{p.name}" for p in self.checkpoints.iterdir() if not _ours(p.name, CHECKPOINT_NAMES)]
        return sorted(out)

    @contextlib.contextmanager
    def locked(self, create: bool = False) -> Iterator[None]:
        """Holds an exclusive lock on the run directory (created first if ``create``) while the block runs.

        Raises:
            RunLockedError: another process holds it.
        """
        created = create and not self.root.exists()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            with self._flock():
                yield
        finally:
            if created and all(p.name == ".lock" for p in self.root.iterdir()):  # failed before writing anything
                shutil.rmtree(self.root, ignore_errors=True)

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        fd = _lock_fd(self.root)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{self.root} is being written by another odearch process (it holds the run's "
                    "lock); wait for it to end or stop it, then try again"
                ) from None
            raise
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    def remove_temporaries(self) -> None:
        """Deletes the temporary files of atomic writes a killed process left (call with the lock held)."""
        for folder in (self.root, self.checkpoints):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    if p.is_file() or p.is_symlink():
                        p.unlink(missing_ok=True)

    def is_run(self) -> bool:
        """True if the directory holds (part of) an odearch run."""
        return self.config.exists() or self.checkpoints.exists() or self.metrics.exists()

    def check_new(self, overwrite: bool) -> None:
        """Raises RunExistsError unless the directory is absent, empty, or ``overwrite`` allows replacing a run (one
        that is not finished: :meth:`finished_record` empty)."""
        if not self.root.exists() or (self.root.is_dir() and all(p.name == ".lock" for p in self.root.iterdir())):
            return
        if not self.root.is_dir():
            raise RunExistsError(f"--out {self.root} exists and is not a directory")
        if not self.is_run():
            raise RunExistsError(
                f"--out {self.root} is a non-empty directory that is not an odearch run; choose another --out"
            )
        foreign, record = self.foreign(), self.finished_record()
        if foreign and overwrite:
            raise RunExistsError(
                f"--overwrite refused: {self.root} holds files that are not part of an odearch run "
                f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them or "
                "choose another --out"
            )
        if record and overwrite:
            raise RunExistsError(
                f"--overwrite refused: {self.root} is a finished run; replacing it would delete "
                f"{', '.join(record)}. Choose another --out (or move the run away first)"
            )
        if not overwrite:
            hint = "--overwrite to replace it, " if not foreign and not record else ""
            raise RunExistsError(
                f"{self.root} already holds a run: use --resume {self.root} to continue it, {hint}or another --out"
            )

    def has_checkpoint(self) -> bool:
        """Whether ``checkpoints/`` holds any trace of a checkpoint: ``current`` or a stable path, even a dangling
        link (a generation directory without ``current`` is the garbage of a killed first save)."""
        return any(os.path.lexists(self.checkpoints / name) for name in CHECKPOINT_NAMES)

    def shipped_as(self) -> str | None:
        """The name of the shipped weights that shipped.json records (``?`` when unreadable); None if not shipped."""
        if not self.shipped.is_file():
            return None
        try:
            record = json.loads(self.shipped.read_text())
        except (OSError, ValueError):
            return "?"
        return str(record.get("weights", "?")) if isinstance(record, dict) else "?"

    def complete_result(self) -> dict[str, Any] | None:
        """result.json when it says ``status: complete``, else None (absent, unreadable, or another status)."""
        try:
            result = self.read_result()
        except (OSError, ValueError):
            return None
        return result if isinstance(result, dict) and result.get("status") == "complete" else None

    def finished_record(self) -> list[str]:
        """What marks a finished run (a complete result.json, shipped.json) and its metrics: what deleting it would
        lose, e.g. ``["result.json (complete, 160 epochs, final test acc 91.00%)", ...]``; empty when not finished."""
        record = []
        if (result := self.complete_result()) is not None:
            acc = result.get("final_test_acc")
            acc_text = f", final test acc {100 * acc:.2f}%" if isinstance(acc, int | float) else ""
            record.append(f"result.json (complete, {result.get('epochs_done', '?')} epochs{acc_text})")
        if (name := self.shipped_as()) is not None:
            record.append(f"shipped.json (shipped as {name}, checkpoints pruned)")
        if record:
            record.append(f"metrics.jsonl ({self._metric_rows()} epochs)")
        return record

    def never_trained(self) -> bool:
        """config.yaml, but no checkpoint (:meth:`has_checkpoint`), no metrics row, no complete result.json and no
        shipped.json: a run stopped before its first checkpoint, which starting again loses nothing."""
        return (
            self.config.is_file()
            and not self.has_checkpoint()
            and self.complete_result() is None
            and not self.shipped.exists()
            and self._metric_rows() == 0
        )

    def _metric_rows(self) -> int | str:
        """The number of rows in metrics.jsonl (``?`` when a line is unreadable)."""
        try:
            return len(self.read_metrics())
        except (OSError, ValueError):
            return "?"

    def no_checkpoint_message(self) -> str:
        """Why a run without a checkpoint cannot be resumed, and what to do; ``--overwrite`` is suggested only for a
        run that never trained (nothing would be lost)."""
        if (name := self.shipped_as()) is not None:
            return (
                f"{self.root} is a finished run, shipped as {name}, whose checkpoints were pruned after shipping "
                f"({self.shipped}): there is nothing to resume. Evaluate it with: odearch eval {self.root}; the "
                f"deleted checkpoints are in the repository history (git log -- {self.checkpoints})"
            )
        if record := self.finished_record():
            return (
                f"{self.root} is a finished run ({', '.join(record)}) without checkpoints: there is nothing to "
                f"resume; restore {self.checkpoints} (e.g. from the repository history) to extend it"
            )
        if (rows := self._metric_rows()) != 0:
            return (
                f"{self.root} has no checkpoint, but metrics.jsonl records {rows} epochs: its checkpoints were "
                f"deleted or lost and it cannot be resumed; restore {self.checkpoints}, or train it again with "
                "another --out"
            )
        return (
            f"{self.root} has no checkpoint yet (it was stopped before its first one was saved); start it again "
            f"with: odearch train --config {self.config} --out {self.root} --overwrite"
        )

    def create(self, cfg: TrainConfig, overwrite: bool) -> None:
        """Creates the directory for a new run (replacing an old run if ``overwrite``: only the run's own files are
        deleted) and writes config.yaml."""
        self.check_new(overwrite)
        if overwrite and self.root.is_dir() and self.is_run():
            for name in self.root.iterdir():
                if name.name != ".lock":
                    shutil.rmtree(name) if name.is_dir() and not name.is_symlink() else name.unlink()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.write_config(cfg)

    def write_config(self, cfg: TrainConfig) -> None:
        """Writes the resolved config as config.yaml (atomically), less the keys that do not apply to it."""
        atomic_write(self.config, yaml.safe_dump(config_record(cfg), sort_keys=False).encode())

    def read_config(self) -> TrainConfig:
        """The run's resolved config (for --resume and eval)."""
        if not self.config.is_file():
            raise ConfigError(f"{self.root} is not an odearch run (no config.yaml)")
        from .config import load_yaml

        values = load_yaml(self.config)
        # Written before the option existed: k_n was decayed like every weight (odearch.train.optim).
        values.setdefault("lm_weight_decay", "k")
        values.setdefault("memory", "store")  # written before the memory option: it stored every activation
        values.setdefault("lm_init", "global")  # written before paired init: k_n drawn from the global RNG
        return TrainConfig.from_dict(values, source=str(self.config))

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Appends one epoch's metrics as a JSON line (a write error names the file)."""
        try:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise OSError(e.errno, f"cannot write {self.metrics}: {e.strerror}") from None

    def read_metrics(self) -> list[dict[str, Any]]:
        """All metric rows (:func:`odearch.runfiles.read_metrics`; none when the file does not exist yet)."""
        return read_metrics(self.metrics) if self.metrics.is_file() else []

    def repair_metrics(self, epochs: int, row: dict[str, Any] | None = None) -> None:
        """Keeps the rows of epochs <= ``epochs`` (rows written after the checkpoint a resume starts from) and adds
        ``row``, the checkpoint's own epoch row, if a kill between checkpoint and log lost it. Writes only if needed."""
        old = self.read_metrics()
        rows = [r for r in old if r["epoch"] <= epochs]
        if row is not None and row.get("epoch") == epochs and not any(r["epoch"] == epochs for r in rows):
            rows.append(row)
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if rows != old or (self.metrics.is_file() and self.metrics.read_text(errors="replace") != text):
            atomic_write(self.metrics, text.encode())

    def read_result(self) -> dict[str, Any]:
        """The result.json of a finished run."""
        return json.loads(self.result.read_text())

    def write_result(self, result: dict[str, Any]) -> None:
        """Writes result.json atomically."""
        atomic_write(self.result, (json.dumps(result, indent=2) + "\n").encode())


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    """What config.yaml records: ``cfg.to_dict()`` less the ImageNet-only keys (help ``imagenet: ...``: crop_size,
    resize_size, workers, decode) of a run on another data set while they hold their defaults. Reading the file back
    fills them in again, so the config and its ``config_hash`` are unchanged; old files that list them still read."""
    d = cfg.to_dict()
    if cfg.dataset != "imagenet":
        for f in dataclasses.fields(cfg):
            if f.metadata.get("help", "").startswith("imagenet:") and d[f.name] == f.default:
                del d[f.name]
    return d


def _lock_fd(root: Path) -> int:
    """A descriptor to flock for ``root``: the directory itself, or RUN/.lock where directories cannot be locked."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # probe: can this file system lock a directory?
        fcntl.flock(fd, fcntl.LOCK_UN)
        return fd
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return fd  # locked by someone else: the caller reports it
        os.close(fd)
    return os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
