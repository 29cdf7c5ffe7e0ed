"""Stochastic depth and additive noise: the random parts of stochastic training (timm's ``layers/drop.py`` shape).

Stochastic depth (Huang et al. 2016, https://arxiv.org/abs/1603.09382) multiplies the residual of block n by
eta_n / p_n with eta_n ~ Bernoulli(p_n), the block's survival probability:

    X_{n+1} = X_n + (eta_n / p_n) f_n(X_n) = X_n + f_n + (eta_n / p_n - 1) f_n

whose mean is the deterministic network that evaluation runs. Before the 1/p_n rescaling this is the paper's
reading (Lu et al. 2018, "Stochastic training as stochastic dynamics"): X_{n+1} = X_n + p_n f + (eta_n - p_n) f, a
weak approximation of the SDE dX = p(t) f(X) dt + sqrt(p(t)(1 - p(t)) dt) f(X) dB. Training divides a kept
residual by p_n, as the official LM-ResNet code does, so that test time needs no rescaling.

Two granularities:

- per batch (``"batch"``; Huang et al. and the official LM-ResNet code): one Bernoulli draw per block and
  mini-batch, on the CPU with the global torch RNG (no device sync, and identical seeds keep data-parallel ranks in
  step); a dropped block is not evaluated at all, which is where the training speed-up comes from. Under
  torch.compile / export / tracing the draw is a device tensor (:func:`batch_gate_tensor`) and every block runs.
- per sample (``"sample"``; timm's ``DropPath``): a (B, 1, ..., 1) Bernoulli mask; every block is evaluated.

Noise injection adds sigma sqrt(dt) xi_n, xi_n ~ N(0, I), to a step: the Euler-Maruyama step of
dX = f(X) dt + sigma dB with dt = 1 per residual block (:func:`add_noise`). It is zero-mean, so the mean of the
training network is the evaluation network. This differs from the official LM-ResNet code, whose noise is uniform,
U(0, sigma), added after the later blocks only: its mean sigma / 2 shifts the training network away from the
evaluation one (which adds nothing).

The :class:`~odearch.nn.Stage` uses these helpers as options of every scheme: it draws every step's gate before
the first step and skips a dropped block, so it does not call :func:`drop_path`. :func:`drop_path` and
:class:`DropPath` are timm's stand-alone function + module pair, for a residual branch outside a Stage; the module
is imported from here (``odearch.nn.drop.DropPath``), no odearch model uses it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DROP_MODES = ("batch", "sample")

# What a step multiplies its residual by in training: None (kept, unscaled: p = 1 or no stochastic depth),
# a float (per batch: 1 / p when kept, 0.0 when dropped) or a (B, 1, ..., 1) tensor eta / p (per sample).
Gate = float | Tensor | None


def linear_survival(n_blocks: int, p_last: float) -> tuple[float, ...]:
    """Survival probabilities p_0 .. p_{n-1} decaying linearly from 1 (first block) to ``p_last`` (last block).

    Block i of n (0-based, counted over the whole network, not per stage) dies with probability
    i / (n - 1) * (1 - p_L), i.e. p_i = 1 - i / (n - 1) * (1 - p_L): the official LM-ResNet code's rule
    (``death_rates = [i / (n - 1) * (1 - PL) ...]``) and the paper's p_l = 1 - (l / L)(1 - p_L) (Lu et al. 2018),
    the linear decay of Huang et al. 2016 (https://arxiv.org/abs/1603.09382). Huang et al. count l = 1..L, so their
    first block already has p_1 = 1 - (1 - p_L) / L; the 0-based rule here keeps the first block always.
    A lone block is the last block: ``(p_last,)``.

    Args:
        n_blocks: number of residual blocks of the whole network (steps of all its stages).
        p_last: survival probability p_L of the last block, 0 < p_L <= 1.
    """
    check_survival(p_last, "p_last")
    if n_blocks < 1:
        raise ValueError(f"linear_survival needs at least one block, got {n_blocks}")
    if n_blocks == 1:
        return (float(p_last),)
    return tuple(1.0 - i / (n_blocks - 1) * (1.0 - p_last) for i in range(n_blocks))


def check_survival(p: float, name: str = "survival") -> None:
    """Raise ``ValueError`` unless 0 < p <= 1."""
    if not 0.0 < float(p) <= 1.0:
        raise ValueError(f"{name} must be a survival probability in (0, 1], got {p} (1 turns stochastic depth off)")


def check_drop_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is ``"batch"`` or ``"sample"``."""
    if mode not in DROP_MODES:
        raise ValueError(f"drop_mode must be one of {DROP_MODES} (one draw per mini-batch or per sample), got {mode!r}")


def batch_gate(p: float) -> float:
    """One per-batch draw: 1 / p if the block survives, else 0.0.

    Drawn on the CPU from the global torch RNG, so no GPU work and no sync; every data-parallel rank seeded alike
    drops the same blocks.
    """
    return 1.0 / p if float(torch.rand(())) < p else 0.0


def batch_gate_tensor(x: Tensor, p: float) -> Tensor:
    """One per-batch draw as a 0-d tensor eta / p, eta ~ Bernoulli(p), on ``x``'s device and dtype.

    The graph-friendly twin of :func:`batch_gate` (used under torch.compile, torch.export and tracing): the block
    is always evaluated and multiplied by the gate, so one graph serves every draw, with no ``.item()`` and no
    recompilation. Same distribution, different random stream (the device RNG, not the CPU global generator).
    """
    return x.new_empty(()).bernoulli_(p).div_(p)


def sample_gate(x: Tensor, p: float) -> Tensor:
    """Per-sample eta / p, eta ~ Bernoulli(p), shaped (B, 1, ..., 1) like ``x``'s batch, on its device and dtype."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return x.new_empty(shape).bernoulli_(p).div_(p)


def drop_path(x: Tensor, survival: float = 1.0, training: bool = False, mode: str = "sample") -> Tensor:
    """eta x / p (training) or x (evaluation, the expectation): stochastic depth of a residual ``x``.

    Args:
        x: a residual f(u), batch first.
        survival: p, the probability of keeping the residual.
        training: draw (True) or return ``x`` unchanged (False).
        mode: ``"sample"`` (one draw per sample, timm's DropPath) or ``"batch"`` (one draw for the batch; here the
            residual is already computed, so :class:`~odearch.nn.Stage` is the place to save its evaluation).
    """
    check_survival(survival)
    check_drop_mode(mode)
    if not training or survival == 1.0:
        return x
    if mode == "batch":
        gate = batch_gate(survival)
        return x * gate if gate else torch.zeros_like(x)
    return x * sample_gate(x, survival)


class DropPath(nn.Module):
    """Module form of :func:`drop_path`: stochastic depth of a residual in training, identity in evaluation."""

    def __init__(self, survival: float = 1.0, mode: str = "sample") -> None:
        super().__init__()
        check_survival(survival)
        check_drop_mode(mode)
        self.survival = survival
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.survival, self.training, self.mode)

    def extra_repr(self) -> str:
        return f"survival={self.survival}, mode={self.mode}"


def add_noise(u: Tensor, sigma: float, dt: float = 1.0) -> Tensor:
    """u + sigma sqrt(dt) xi, xi ~ N(0, I) elementwise: one Euler-Maruyama increment of sigma dB."""
    return torch.add(u, torch.randn_like(u), alpha=sigma * math.sqrt(dt))
