"""A run directory as the report and the arm analysis read it: :class:`RunSummary`, the paper's numbers and recipe,
and the pre-registered primary metric (:func:`last_phase_mean`). :mod:`odearch.report` fills it
(:func:`odearch.report.summarize`); :mod:`odearch.arms` and the report both read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PAPER_CIFAR10", "PAPER_LM_WEIGHT_DECAY", "PAPER_RECIPE", "RunSummary", "last_phase_mean"]

# The paper's CIFAR-10 test errors (%) for the recipe of 160 epochs, from ../shared/PAPER.md ("Results to
# reproduce"): (error, confirmed). False = marked (?) there: recalled, not confirmed against the PDF. ResNet-20..56
# are He et al.'s post-activation nets (our `resnet*`); ResNet-110 is pre-activation (our `preact_resnet110`). The
# paper has no pre-activation ResNet-20..56 row: `preact_resnet20` (the LM net's exact plain twin) has no number.
PAPER_CIFAR10: dict[str, tuple[float, bool]] = {
    "resnet20": (8.75, True),
    "resnet32": (7.51, True),
    "resnet44": (7.17, True),
    "resnet56": (6.97, True),
    "preact_resnet110": (6.37, True),
    "preact_resnet164": (5.46, False),
    "preact_resnet1001": (4.92, False),
    "lm_resnet20": (8.33, False),
    "lm_resnet32": (7.18, False),
    "lm_resnet44": (6.66, False),
    "lm_resnet56": (6.31, False),
    "lm_resnet110": (6.16, False),
}
# The paper's recipe, as config.yaml keys; a run that differs in any of them is not comparable to its numbers.
PAPER_RECIPE: dict[str, Any] = {
    "dataset": "cifar10",
    "epochs": 160,
    "milestones": [80, 120],
    "lr": 0.1,
    "momentum": 0.9,
    "gamma": 0.1,
    "batch_size": 128,
    "weight_decay": 1e-4,
    "subset": None,
    "val_split": 0,
    "augment": True,
    "schedule": "step",
    "label_smoothing": 0.0,
}
PAPER_LM_WEIGHT_DECAY = "kappa"  # the official code decays kappa = 1 - k (odearch.train.optim); LM runs only


@dataclass
class RunSummary:
    """What the report says about one run directory."""

    name: str
    path: Path
    model: str
    dataset: str
    seed: int
    epochs: int  # of the recipe
    epochs_done: int
    complete: bool
    final_err: float | None  # % after the last epoch done
    best_err: float | None  # % lowest over the epochs (chosen on test)
    best_epoch: int | None
    params: int | None
    wall_s: float | None
    wall_exact: bool  # False: a lower bound (sum of the epochs' training seconds)
    img_s: float | None
    devices: list[str]
    commits: list[str]
    dirty: bool
    precision: str
    recipe_diff: list[str] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, test error %)
    lm_k: dict[str, list[float]] = field(default_factory=dict)  # learned k_n per stage after the last epoch done
    lm_weight_decay: str | None = None  # LM runs: where weight decay pulls k_n (kappa: toward 1, k: toward 0)
    last_phase: int | None = None  # first epoch of the last lr phase (a step schedule's last milestone + 1)
    lm_init: str | None = None  # LM runs: paired (k drawn from a copy of the RNG) or global (before paired init)
    superseded: str | None = None  # why the run no longer counts (RUN/superseded.txt), listed apart

    @property
    def paper(self) -> tuple[float, bool] | None:
        return PAPER_CIFAR10.get(self.model) if self.dataset == "cifar10" else None


def last_phase_mean(s: RunSummary) -> float | None:
    """Mean test error (%) over the epochs of a finished run's last lr phase (121-160 in the paper's recipe): the
    final epoch's number without its epoch-to-epoch jitter (not seed noise: one seed is one curve)."""
    if not s.complete or s.last_phase is None:
        return None
    errs = [e for epoch, e in s.curve if epoch >= s.last_phase]
    return sum(errs) / len(errs) if errs else None
