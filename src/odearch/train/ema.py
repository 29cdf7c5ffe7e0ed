"""An exponential moving average of the weights, timm's ``ModelEmaV3`` rule (``odearch train --ema-decay D``).

After every optimizer step, every floating tensor of the model's state (parameters and BatchNorm statistics) moves
the average: ema <- d_t ema + (1 - d_t) w, with the warm-up d_t = min(D, 1 - (1 + t)^(-2/3)) of timm (t: the EMA's
own update count), so early averages are not dominated by the random initialisation; integer buffers are copied.
The EMA model is evaluated beside the raw one every epoch (``ema_test_acc`` ... in metrics.jsonl; the best epoch is
chosen on it), saved with the training state of every checkpoint and restored on resume, bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .epoch import TrainStep

__all__ = ["EmaStep", "ema_decay_at"]

WARMUP_POWER = 2 / 3  # timm ModelEmaV3's default warmup_power (warmup_gamma 1)


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of the ``updates``-th update (1-based): min(decay, 1 - (1 + updates)^(-2/3))."""
    return min(decay, 1.0 - (1.0 + updates) ** -WARMUP_POWER)


@dataclass
class EmaStep(TrainStep):
    """:class:`TrainStep` that also moves an EMA copy of ``model`` (the bare model, not a DDP or compile wrapper)."""

    model: nn.Module | None = None
    decay: float = 0.9998
    updates: int = 0
    ema: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        if self.model is None:
            raise ValueError("EmaStep needs the bare model (model=)")
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)

    def update(self, loss: torch.Tensor) -> None:
        """The optimizer step, then ema <- d ema + (1 - d) w over the state's floating tensors."""
        super().update(loss)
        self.updates += 1
        d = ema_decay_at(self.decay, self.updates)
        with torch.no_grad():
            for e, w in zip(self.ema.state_dict().values(), self.model.state_dict().values(), strict=True):
                if e.is_floating_point():
                    e.lerp_(w.to(e.dtype), 1.0 - d)
                else:
                    e.copy_(w)

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """The raw model (key ``""``) and the EMA (``"ema_"``), as evaluation sees them."""
        return {"": model, "ema_": self.ema}

    def state_dict(self) -> dict[str, Any]:
        return {"ema": {k: v.detach().clone() for k, v in self.ema.state_dict().items()}, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.ema.load_state_dict(state["ema"])
            self.updates = int(state["updates"])
