"""The learning-rate schedule: ``lr_at(step)``, a pure function of the optimizer step, and ``lr_schedule(cfg, ...)``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from .config import RECIPES, TrainConfig

__all__ = ["late_milestones", "lr_at", "lr_schedule"]


def lr_at(
    step: int,
    *,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    schedule: str = "step",
    milestones: Iterable[int] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> float:
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
        step,
        base_lr=cfg.lr,
        steps_per_epoch=steps_per_epoch,
        epochs=cfg.epochs,
        schedule=cfg.schedule,
        milestones=cfg.milestones,
        gamma=cfg.gamma,
        warmup_epochs=cfg.warmup_epochs,
    )


def late_milestones(cfg: TrainConfig) -> str | None:
    """Why a step schedule whose milestones are not below ``cfg.epochs`` does not do what its recipe does
    (``--epochs 4`` of the 160-epoch recipe, milestones 80 120: the lr never drops), with milestones scaled to the
    run; None when every milestone falls inside the run (or the schedule is cosine)."""
    late = [m for m in cfg.milestones if m >= cfg.epochs]  # milestone m divides the lr from epoch m + 1 on
    if cfg.schedule != "step" or not late:
        return None
    total, recipe = RECIPES[cfg.dataset]
    if tuple(cfg.milestones) != tuple(recipe):  # a YAML's own: its last at 3/4 of the run, as in the paper's recipes
        total = round(max(cfg.milestones) * 4 / 3)
    scaled = sorted({min(cfg.epochs - 1, max(1, round(m * cfg.epochs / total))) for m in cfg.milestones})
    hint = f"e.g. --milestones {' '.join(map(str, scaled))}" if cfg.epochs > 1 else "and more --epochs"
    what = f"stays {cfg.lr:g} throughout" if len(late) == len(cfg.milestones) else "does not drop there"
    return (
        f"lr milestones {' '.join(map(str, late))} are not below the {cfg.epochs} epochs: the lr {what}; to "
        f"shorten the schedule with the run, give milestones ({hint})"
    )
