"""The forces on the LM coefficients k_n over an epoch, as the optimizer sees them (issue 31's force balance).

SGD moves each k_n by the sum of two terms (``odearch.train.optim``): the loss gradient g_t = dL/dk at the step's
batch (augmented images, train-mode BatchNorm) and the weight-decay pull wd (k_t - c) toward the centre c (1 for the
official decay on kappa = 1 - k, 0 for decay on k; none without decay). Over an epoch of T steps this module records

    lm_k_grad  = (1/T) sum_t g_t                 (the mean loss gradient),
    lm_k_decay = wd ((1/T) sum_t k_t - c)        (the mean decay term, 0 without decay),

both per stage like ``lm_k``, in each epoch's ``metrics.jsonl`` row: where they cancel, k rests; the sign of their sum
says where k is pushed. The running sums live in the epoch's ``sums`` (so a partial epoch checkpoints them) and are
read once, at the end of the epoch: no host-device sync per step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..schemes.lm import lm_k_by_stage

__all__ = ["KFORCE_SUMS", "KForces"]

KFORCE_SUMS = ("lm_grad_sum", "lm_k_sum", "lm_steps")
"""The keys :class:`KForces` adds to an epoch's sums (kept with a partial epoch's checkpoint)."""


class KForces:
    """Accumulates g_t and k_t of every learnable ``lm_k`` of ``model`` (none: a no-op) into an epoch's sums.

    Args:
        model: the unwrapped model (its ``lm_k`` parameters are the optimizer's).
        optimizer: gives each coefficient's weight decay and centre (its parameter group).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.named = [(n.rsplit(".", 1)[0], p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "lm_k"]
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.decay = [(groups[id(p)]["weight_decay"], groups[id(p)].get("decay_center", 0.0)) for _, p in self.named]

    def __bool__(self) -> bool:
        return bool(self.named)

    def _flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1).double() for t in tensors])

    def before_step(self) -> torch.Tensor:
        """k_t, the coefficients the step's gradient and decay are taken at (flat, float64)."""
        return self._flat([p for _, p in self.named])

    def after_step(self, sums: dict[str, Any], k_before: torch.Tensor) -> None:
        """Adds the step's g_t (``p.grad``, left by the step) and k_t to ``sums["lm_grad_sum"]`` / ``["lm_k_sum"]``;
        a coefficient without a gradient this step (none of its blocks ran) adds 0."""
        grads = self._flat([p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self.named])
        sums["lm_grad_sum"] = sums["lm_grad_sum"].to(grads.device) + grads if "lm_grad_sum" in sums else grads
        sums["lm_k_sum"] = sums["lm_k_sum"].to(k_before.device) + k_before if "lm_k_sum" in sums else k_before
        sums["lm_steps"] = sums.get("lm_steps", 0) + 1

    def row(self, sums: dict[str, Any]) -> dict[str, Any]:
        """``lm_k_grad`` and ``lm_k_decay`` of the epoch (per stage), from its sums; {} before any step."""
        if not self.named or not sums.get("lm_steps"):
            return {}
        steps = sums["lm_steps"]
        grad, k = (sums["lm_grad_sum"] / steps).cpu(), (sums["lm_k_sum"] / steps).cpu()
        sizes = [p.numel() for _, p in self.named]
        wd, center = (
            torch.tensor([d[i] for d, n in zip(self.decay, sizes, strict=True) for _ in range(n)], dtype=torch.float64)
            for i in (0, 1)
        )
        return {"lm_k_grad": self._by_stage(grad), "lm_k_decay": self._by_stage(wd * (k - center))}

    def _by_stage(self, flat: torch.Tensor) -> dict[str, Any]:
        parts = flat.split([p.numel() for _, p in self.named])
        return lm_k_by_stage((name, part.reshape(p.shape)) for (name, p), part in zip(self.named, parts, strict=True))
