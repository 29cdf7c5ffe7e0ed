"""The learning-rate schedule: ``lr_at(step)``, a pure function of the optimizer step, and ``lr_schedule(cfg, ...)``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from .config import TrainConfig

__all__ = ["lr_at", "lr_schedule"]


def lr_at(
    step: int, *, base_lr: float, steps_per_epoch: int, epochs: int, schedule: str = "step",
    milestones: Iterable[int] = (), gamma: float = 0.1, warmup_epochs: float = 0.0,
) -> float:  # fmt: skip
    """Learning rate of optimizer step ``step`` (0-based), a pure function.

    1. Warm-up: during the first ``round(warmup_epochs * steps_per_epoch)`` steps, lr rises linearly to
       ``base_lr`` (step s uses ``base_lr * (s + 1) / warmup_steps``).
    2. ``step``: ``base_lr * gamma ** (number of milestones <= epoch)``, epoch = ``step // steps_per_epoch``, so the
       paper's "divide by 10 at epoch 80" applies from the first step after 80 full epochs.
    3. ``cosine``: ``base_lr * (1 + cos(pi * t)) / 2``, t the fraction of the post-warm-up steps done.
    """
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "step":
        return base_lr * gamma ** sum(step // steps_per_epoch >= m for m in milestones)
    if schedule == "cosine":
        t = (step - warmup) / max(1, epochs * steps_per_epoch - warmup)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    raise ValueError(f"unknown schedule {schedule!r}; expected step or cosine")


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """``lr_at`` with the config's schedule bound: step -> lr."""
    return lambda step: lr_at(
        step, base_lr=cfg.lr, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, schedule=cfg.schedule,
        milestones=cfg.milestones, gamma=cfg.gamma, warmup_epochs=cfg.warmup_epochs,
    )  # fmt: skip
