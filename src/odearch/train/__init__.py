"""Training: config (``TrainConfig``), loop (``fit``, ``train_one_epoch``, ``evaluate``, ``lr_at``), checkpoints.

Arrows point down: ``odearch.cli`` -> ``odearch.train`` -> ``odearch.models`` / ``odearch.data``; nothing here reads
``sys.argv``.

    >>> from odearch.train import TrainConfig, fit
    >>> result = fit(TrainConfig(model="lm_resnet20", epochs=1, subset=1000, out="runs/demo"))  # doctest: +SKIP
"""

from .checkpoint import CheckpointError, load_state, load_weights, save_state, save_weights
from .config import RECIPES, ConfigError, TrainConfig, config_hash, load_yaml
from .loop import NonFiniteLossError, build_model, evaluate, fit, lr_at, resolve_device, train_one_epoch
from .rundir import RunDir, RunExistsError

__all__ = [
    "RECIPES",
    "CheckpointError",
    "ConfigError",
    "NonFiniteLossError",
    "RunDir",
    "RunExistsError",
    "TrainConfig",
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
