"""The optimizer: SGD with a choice of weight decay on the LM coefficients k_n (``TrainConfig.lm_weight_decay``).

SGD with momentum mu, learning rate lr and L2 weight decay wd updates every parameter p as

    d_t = grad L(p_t) + wd (p_t - c),   b_t = mu b_{t-1} + d_t (b_1 = d_1),   p_{t+1} = p_t - lr b_t

with the decay centre c = 0 for every weight. The official LM-ResNet code learns kappa_n = 1 - k_n and decays
kappa_n (c = 0 for kappa), which in terms of k_n is the centre c = 1: weight decay pulls k_n toward 1, where
u_{n+1} = u_{n-1} + f_n(u_n) is the leapfrog (midpoint) scheme; decaying k_n itself (c = 0) pulls it toward forward
Euler. The two are opposite priors on k_n (under the 160-epoch recipe, weight decay alone takes the official k from
-0.05 to about 0.96 and a k-decayed one to about -0.002). ``lm_weight_decay`` picks one:

- ``"kappa"``: the official code, d = grad + wd (k - 1) (the paper's rows, ``configs/*/lm_*.yaml``);
- ``"k"``: d = grad + wd k, every parameter in one group, exactly the optimizer odearch built before the option
  existed (a run directory whose ``config.yaml`` has no ``lm_weight_decay`` key is read as ``"k"``, so it resumes
  bitwise as before);
- ``"none"``: d = grad, no decay on the LM coefficients, as timm does for 1-D parameters.

A model without learnable LM coefficients gets the same single-group ``torch.optim.SGD`` whatever the option.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["LEGACY_LM_WEIGHT_DECAY", "LM_WEIGHT_DECAY", "CenteredSGD", "build_optimizer", "lm_parameters"]

LM_WEIGHT_DECAY: dict[str, float | None] = {"kappa": 1.0, "k": 0.0, "none": None}
"""``lm_weight_decay`` choice -> decay centre c of the LM coefficients (None: no decay on them)."""

LEGACY_LM_WEIGHT_DECAY = "k"
"""What a ``config.yaml`` written before the option existed meant: k_n decayed like every weight."""


def lm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable LM coefficients (every parameter named ``lm_k``, one per LM stage) of ``model``, in order."""
    return [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "lm_k"]


class CenteredSGD(torch.optim.SGD):
    """``torch.optim.SGD`` whose weight decay pulls a parameter group toward a centre c, given by the group key
    ``decay_center`` (default 0: plain SGD): d = grad + wd (p - c).

    For the step, the gradient of each such parameter is replaced by grad - wd c (after a GradScaler has unscaled
    it), ``torch.optim.SGD`` adds wd p, and the original gradient is put back: ``p.grad`` is left as it was.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            shift = group["weight_decay"] * group.get("decay_center", 0.0)
            if shift:
                for p in group["params"]:
                    if p.grad is not None:
                        saved.append((p, p.grad))
                        p.grad = p.grad - shift
        try:
            super().step()
        finally:
            for p, grad in saved:
                p.grad = grad
        return loss


def build_optimizer(
    model: nn.Module, *, lr: float, momentum: float, nesterov: bool, weight_decay: float, lm_weight_decay: str
) -> torch.optim.SGD:
    """SGD over ``model.parameters()`` with the LM coefficients decayed as ``lm_weight_decay`` says (module doc).

    ``"k"``, and any model without learnable LM coefficients, give ``torch.optim.SGD(model.parameters(), ...)``: one
    group in parameter order, the optimizer state layout of every run made before the option. ``"kappa"`` and
    ``"none"`` give a :class:`CenteredSGD` with two groups, every other parameter first, then the LM coefficients
    (weight decay wd toward 1, or 0).
    """
    if lm_weight_decay not in LM_WEIGHT_DECAY:
        raise ValueError(f"lm_weight_decay must be one of {', '.join(LM_WEIGHT_DECAY)}; got {lm_weight_decay!r}")
    kw = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
    lm = lm_parameters(model)
    center = LM_WEIGHT_DECAY[lm_weight_decay]
    if not lm or center == 0.0:
        return torch.optim.SGD(model.parameters(), **kw)  # type: ignore[arg-type]
    ids = {id(p) for p in lm}
    rest = [p for p in model.parameters() if id(p) not in ids]
    lm_group = {"params": lm, "weight_decay": 0.0 if center is None else weight_decay, "decay_center": center or 0.0}
    return CenteredSGD([{"params": rest}, lm_group], **kw)  # type: ignore[arg-type]
