"""One epoch of training and one evaluation (airbench's loop, timm's dict return values).

``train_one_epoch`` runs :class:`TrainStep` over an iterator of batches that already starts where the epoch is to
resume (:func:`batches_from`), summing the loss and the correct count on the device, so the host reads them once per
epoch: every ``.item()`` is a host-device sync.

Extending the step: gradient clipping, an EMA of the weights or another update rule is one short override of
:meth:`TrainStep.update`, the only place where the gradients exist, e.g. clipping the global gradient norm::

    class ClippedStep(TrainStep):
        def update(self, loss):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # with a GradScaler: scaler.scale(loss).backward(); scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
            self.optimizer.step()

An EMA of the weights is :class:`odearch.train.ema.EmaStep` (``--ema-decay``): an ``update`` override plus the three
hooks every step has, :meth:`TrainStep.eval_models` (what evaluation reads), :meth:`TrainStep.state_dict` /
:meth:`TrainStep.load_state_dict` (what checkpoints keep); another optimizer is one branch of
:func:`odearch.train.optim.build_optimizer`. The trainer builds its step once, in
:func:`odearch.train.state.build_state` (:func:`odearch.train.state.make_train_step`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistEnv, all_reduce_sum
from .kforces import KForces

__all__ = ["NonFiniteLossError", "TrainStep", "batches_from", "evaluate", "new_sums", "train_one_epoch"]

Batch = tuple[torch.Tensor, torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint on disk is the last good one."""


@dataclass
class TrainStep:
    """One optimizer step on a batch: lr = ``lr_fn(step)``; loss = cross-entropy(model(x), y) under ``autocast``;
    gradients of the loss (scaled by ``scaler`` for fp16); ``p <- optimizer update``.

    Args:
        optimizer: the optimizer of the model's parameters.
        lr_fn: global step (0-based) -> learning rate, set on every parameter group before the step.
        autocast: context manager factory of the forward pass (``contextlib.nullcontext``: float32).
        scaler: fp16 only: scale the loss so that small gradients survive the cast.
        label_smoothing: cross-entropy label smoothing.
    """

    optimizer: torch.optim.Optimizer
    lr_fn: Callable[[int], float]
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, ...]:
        """Trains on ``(x, y)`` at global step ``step``; returns (loss, logits)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_fn(step)
        with self.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.update(loss)
        return loss, logits

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """The models an epoch's evaluation reads, by metrics-key prefix: ``model`` alone here (an EMA adds its own)."""
        return {"": model}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the step beyond the optimizer (nothing here; an EMA keeps its weights)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output (a checkpoint's ``train_step`` entry)."""

    def update(self, loss: torch.Tensor) -> None:
        """Gradients of ``loss``, then the optimizer step (the hook for clipping, EMA or another rule)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


def new_sums() -> dict[str, Any]:
    """Empty running sums of an epoch: ``loss_sum`` and ``correct`` (tensors), ``n`` (samples)."""
    return {"loss_sum": torch.zeros(()), "correct": torch.zeros((), dtype=torch.int64), "n": 0}


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    train_step: TrainStep,
    *,
    step: int,
    sums: dict[str, Any] | None = None,
    on_step: Callable[[int, dict[str, Any]], bool | None] | None = None,
    kforces: KForces | None = None,
) -> dict[str, Any]:
    """Trains on ``batches`` (an epoch, or its rest after a resume), one ``train_step`` per batch from ``step`` on.

    Args:
        sums: the running sums to continue (a resumed partial epoch's), default :func:`new_sums`.
        on_step: called after each step with (global step, sums); returning True ends the epoch there.
        kforces: adds each step's LM-coefficient gradient and value to the sums (:class:`KForces`).

    Returns:
        ``step`` (global step after the last batch), ``batches`` (batches trained by this call), ``loss_sum`` and
        ``correct`` (device tensors, summed over samples: read them once), ``n`` (samples), ``stopped`` (True if
        ``on_step`` ended the epoch).
    """
    model.train()
    sums, first, stopped = sums or new_sums(), step, False
    for x, y in batches:
        k_before = kforces.before_step() if kforces else None
        loss, logits = train_step(model, x, y, step)
        if kforces and k_before is not None:
            kforces.after_step(sums, k_before)
        step += 1
        sums["loss_sum"] = sums["loss_sum"].to(loss.device) + loss.detach().float() * len(y)  # no sync
        sums["correct"] = sums["correct"].to(y.device) + (logits.argmax(1) == y).sum()
        sums["n"] += len(y)
        if on_step is not None and on_step(step, sums):
            stopped = True
            break
    return {"step": step, "batches": step - first, "stopped": stopped, **sums}


def batches_from(loader: Iterable[Any], start: int) -> Iterable[Any]:
    """The batches of ``loader`` from batch ``start`` on: its ``iter_from`` if it has one (ImageNetLoader: the skipped
    batches are not even read), else ``itertools.islice`` (CifarLoader: skipped batches are cheap)."""
    if start and hasattr(loader, "iter_from"):
        return loader.iter_from(start)
    return itertools.islice(loader, start, None)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    num_classes: int | None = None,
    env: DistEnv | None = None,
) -> dict[str, Any]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader`` (summed across ranks when distributed).

    Returns:
        ``loss``, ``acc`` (fraction), ``n``; with ``num_classes`` also ``per_class_acc`` (list, NaN for an absent
        class) and ``per_class_n``.
    """
    model.eval()
    k = num_classes or 0
    totals = None  # [loss_sum, correct, n, per-class correct (k), per-class count (k)] on the device
    for x, y in loader:
        with autocast():
            logits = model(x)
        totals = _eval_row(logits, y, k) if totals is None else totals + _eval_row(logits, y, k)
    if totals is None and env is not None and env.enabled:  # this rank's shard is empty; the others' are not
        totals = torch.zeros(3 + 2 * k, device=next(model.parameters()).device)
    if totals is None:
        raise ValueError("evaluate: the loader yielded no batches")
    totals = all_reduce_sum(totals, env or DistEnv()).double().cpu()  # the one sync of the evaluation
    out = {"loss": (totals[0] / totals[2]).item(), "acc": (totals[1] / totals[2]).item(), "n": int(totals[2])}
    if k:
        correct, count = totals[3 : 3 + k], totals[3 + k :]
        out["per_class_acc"] = (correct / count).tolist()  # 0 / 0 = NaN for a class absent from the subset
        out["per_class_n"] = count.long().tolist()
    return out


def _eval_row(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """[loss sum, correct, n, per-class correct (k), per-class count (k)] of one batch, on the device."""
    pred = logits.argmax(1)
    return torch.cat(
        [
            torch.stack(
                [
                    F.cross_entropy(logits.float(), y, reduction="sum"),
                    (pred == y).sum().float(),
                    torch.tensor(float(len(y)), device=y.device),
                ]
            ),
            torch.bincount(y[pred == y], minlength=k).float()[:k],
            torch.bincount(y, minlength=k).float()[:k],
        ]
    )
