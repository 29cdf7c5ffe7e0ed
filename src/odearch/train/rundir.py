"""The run directory: its layout, and the few files written outside checkpoints.

::

    RUN/config.yaml                      resolved TrainConfig (model, model_kwargs, num_classes, dataset, ...)
    RUN/metrics.jsonl                    one JSON object per finished epoch
    RUN/tb/                              TensorBoard events
    RUN/checkpoints/last.safetensors     weights after the last finished epoch (or the --max-minutes stop)
    RUN/checkpoints/last.state.pt        optimizer, schedule step, epoch, RNG, best metric (weights_only-loadable)
    RUN/checkpoints/best.safetensors     weights of the best epoch on the selection metric
    RUN/result.json                      summary and provenance, written when the run ends or stops cleanly
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import atomic_write
from .config import ConfigError, TrainConfig

__all__ = ["RunDir", "RunExistsError", "default_out"]


def default_out(cfg: TrainConfig) -> str:
    """``runs/<model>_<dataset>_s<seed>_<YYYYmmdd-HHMMSS>``: a new directory per invocation."""
    return f"runs/{cfg.model}_{cfg.dataset}_s{cfg.seed}_{time.strftime('%Y%m%d-%H%M%S')}"


class RunExistsError(FileExistsError):
    """`--out` names an existing run and neither `--resume` nor `--overwrite` was given."""


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (nothing is created until :meth:`create`)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

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

    def is_run(self) -> bool:
        """True if the directory holds (part of) an odearch run."""
        return self.config.exists() or self.checkpoints.exists() or self.metrics.exists()

    def check_new(self, overwrite: bool) -> None:
        """Raises RunExistsError unless the directory is absent, empty, or `overwrite` allows replacing a run."""
        if not self.root.exists() or (self.root.is_dir() and not any(self.root.iterdir())):
            return
        if not self.root.is_dir():
            raise RunExistsError(f"--out {self.root} exists and is not a directory")
        if not self.is_run():
            raise RunExistsError(f"--out {self.root} is a non-empty directory that is not an odearch run; "
                                 "choose another --out")  # fmt: skip
        if not overwrite:
            raise RunExistsError(f"{self.root} already holds a run: use --resume {self.root} to continue it, "
                                 "--overwrite to replace it, or another --out")  # fmt: skip

    def create(self, cfg: TrainConfig, overwrite: bool) -> None:
        """Creates the directory for a new run (replacing an old run if `overwrite`) and writes config.yaml."""
        self.check_new(overwrite)
        if overwrite and self.root.is_dir() and self.is_run():
            shutil.rmtree(self.root)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.write_config(cfg)

    def write_config(self, cfg: TrainConfig) -> None:
        """Writes the resolved config as config.yaml (atomically)."""
        atomic_write(self.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())

    def read_config(self) -> TrainConfig:
        """The run's resolved config (for --resume and eval)."""
        if not self.config.is_file():
            raise ConfigError(f"{self.root} is not an odearch run (no config.yaml)")
        from .config import load_yaml

        values = load_yaml(self.config)
        # Written before the option existed: k_n was decayed like every weight (odearch.train.optim).
        values.setdefault("lm_weight_decay", "k")
        values.setdefault("memory", "store")  # written before the memory option: it stored every activation
        return TrainConfig.from_dict(values, source=str(self.config))

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Appends one epoch's metrics as a JSON line."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """All metric rows (an unterminated last line, from a kill mid-write, is ignored)."""
        if not self.metrics.is_file():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines(keepends=True):
            if line.endswith("\n") and line.strip():
                rows.append(json.loads(line))
        return rows

    def truncate_metrics(self, epochs: int) -> None:
        """Keeps only the rows of epochs <= `epochs` (rows written after the checkpoint a resume starts from)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= epochs]
        atomic_write(self.metrics, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def read_result(self) -> dict[str, Any]:
        """The result.json of a finished run."""
        return json.loads(self.result.read_text())

    def write_result(self, result: dict[str, Any]) -> None:
        """Writes result.json atomically."""
        atomic_write(self.result, (json.dumps(result, indent=2) + "\n").encode())
