"""Training: config (``TrainConfig``), loop (``fit``, ``train_one_epoch``, ``evaluate``, ``lr_at``), checkpoints.

Modules: ``config`` (TrainConfig), ``loop`` (``fit`` and its named steps), ``state`` (the training state built once,
checkpoint save / restore), ``epoch`` (``TrainStep``, ``train_one_epoch``, ``evaluate``), ``schedule`` (``lr_at``),
``numerics`` (device, autocast precision, determinism), ``console`` (progress output), ``optim``, ``rundir``,
``checkpoint``, ``generations``, ``distributed``, ``signals``, ``tensorboard``, ``provenance``, ``ship``.

Arrows point down: ``odearch.cli`` -> ``odearch.train`` -> ``odearch.models`` / ``odearch.data``; nothing here reads
``sys.argv``.

    >>> from odearch.train import TrainConfig, fit
    >>> result = fit(TrainConfig(model="lm_resnet20", epochs=1, subset=1000, out="runs/demo"))  # doctest: +SKIP
"""

from .checkpoint import CheckpointError, load_state, load_weights, save_state, save_weights
from .config import RECIPES, ConfigError, TrainConfig, config_hash, load_yaml
from .epoch import NonFiniteLossError, TrainStep, evaluate, train_one_epoch
from .loop import fit
from .numerics import resolve_device
from .rundir import RunDir, RunExistsError
from .schedule import lr_at
from .state import build_model

__all__ = [
    "RECIPES",
    "CheckpointError",
    "ConfigError",
    "NonFiniteLossError",
    "RunDir",
    "RunExistsError",
    "TrainConfig",
    "TrainStep",
    "build_model",
    "config_hash",
    "evaluate",
    "fit",
    "load_state",
    "load_weights",
    "load_yaml",
    "lr_at",
    "resolve_device",
    "save_state",
    "save_weights",
    "train_one_epoch",
]
