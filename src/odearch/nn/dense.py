"""DenseResNet's step runner: every step combines the whole history of the stage with learned weights.

    u_{n+1} = (sum_{j<=n} k_{nj} u_j) / (sum_{j<=n} k_{nj}) + (eta_n / p_n) f_n(u_n)     (official ``DenseBlock``)

Step 0 is the plain step u_1 = u_0 + f_0(u_0), or on a down-sampling stage the transition u_1 = P(u_0) + f_0(u_0)
with P(u_0) in place of u_0 in the history (the official code; :class:`odearch.nn.stage.Start`). The learnable k of
steps 1 .. N-1 are one flat parameter ``dense_k`` per stage (:mod:`odearch.schemes.dense` gives its layout, the
normalisation's guard near a zero row sum and the reading of each step as a linear multistep method), drawn like
LM's ``lm_k`` from a copy of the global RNG (:func:`odearch.nn.stage.lm_k_draw`), so a dense network shares every
other initial weight with its plain twin built after the same seed.

Stochastic depth and noise as for LM: the history holds the real states, a dropped step gives
u_{n+1} = sum_j w_{nj} u_j. Memory: the stage keeps its N + 1 states until its last step. In training with the
default ``"store"`` mode autograd keeps them anyway (each block's first BatchNorm saves its input u_n, and
w_{nj} u_j saves u_j by reference), so the history costs no activation memory but P(u_0) of each transition,
whatever the depth (tensors saved for backward, batch 8: ``dense_resnet110`` 71.9 MiB, ``preact_resnet110``
71.5 MiB, ``lm_resnet110`` 86.4 MiB); under ``"recompute"`` the kept states are the checkpointed block inputs, the
same tensors. Without autograd (evaluation) a plain stage holds
one state at a time and a dense stage all N + 1: memory linear in the depth of the stage (for ``dense_resnet110``,
19 states of a stage instead of 1, 1.2 MiB per 32 x 32 image in its first stage in float32). The combination costs
n + 1 multiply-adds over the state at step n, N(N + 1)/2 - 1 per stage (171 for 18 steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..schemes.dense import DenseRows, DenseScheme, dense_k_by_stage, dense_k_count, dense_k_index
from .drop import Gate
from .stage import (
    Stage,
    Start,
    StepFns,
    StepGate,
    StepRunner,
    axpy,
    draw_lm_k,
    is_dropped,
    register_step_runner,
    step_gate,
)


def weighted_sum(states: Sequence[Tensor], weights: Sequence[Tensor]) -> Tensor:
    """sum_j w_j u_j, oldest state first (``weights``: 0-d tensors; one multiply-add per state, no stacked copy).

    ``weights`` is indexed, never iterated: under fx it is a Proxy of a tuple."""
    out = torch.mul(states[0], weights[0])
    for j in range(1, len(states)):
        out = torch.addcmul(out, states[j], weights[j])
    return out


class DenseRunner(StepRunner):
    """u_{n+1} = (sum_{j<=n} k_{nj} u_j) / (sum_{j<=n} k_{nj}) + (eta_n / p_n) f_n(u_n); step 0 without a transition
    is forward Euler (the official row k_{00} u_0 / k_{00} = u_0)."""

    scheme: DenseScheme

    def init_params(self, stage: Stage, n_steps: int, channels: int | None) -> None:
        """``dense_k``: the k_{nj} of steps 1 .. N-1, one flat vector (a buffer with ``fixed_k``)."""
        count = dense_k_count(n_steps)
        if count == 0:
            return
        fixed = self.scheme.fixed_k
        if fixed is None:
            stage.dense_k = nn.Parameter(draw_lm_k((count,), *self.scheme.k_init))
            return
        if len(fixed) != n_steps - 1:
            raise ValueError(f"dense scheme: fixed_k has {len(fixed)} rows for the {n_steps - 1} steps 1..N-1")
        stage.register_buffer("dense_k", torch.tensor([k for row in fixed for k in row], dtype=torch.float64))

    def weights(self, stage: Stage, steps: int) -> list[Tensor]:
        """w_n = k_n / sum_j k_{nj} of the steps n = 1 .. steps-1 (item n - 1: a vector of n + 1 weights), the
        denominator sign(s) max(|s|, ``min_abs_sum``) (:func:`odearch.schemes.dense.denominator`)."""
        k, out = stage.dense_k, []
        for n in range(1, steps):
            row = k[dense_k_index(n, 0) : dense_k_index(n, n) + 1]
            s = row.sum()
            out.append(row / s.abs().clamp_min(self.scheme.min_abs_sum).copysign(s))
        return out

    def run(
        self, stage: Stage, fns: list[StepFns], start: Start, gates: list[StepGate] | None, noisy: bool
    ) -> tuple[Tensor, None]:
        u = start.u
        if start.first == 0:  # the starter: u_1 = u_0 + f_0(u_0), history [u_0]
            history = [u]
            u = stage.end_step(_euler(u, fns[0], step_gate(gates, 0)), noisy)
        else:  # after the transition u_1 = P(u_0) + f_0(u_0): history [P(u_0)]
            assert start.history is not None
            history = [start.history]
        weights = self.weights(stage, len(fns)) if len(fns) > 1 else []
        for n in range(1, len(fns)):
            history.append(u)
            mix = weighted_sum(history, weights[n - 1].unbind(0))
            u = stage.end_step(_euler(mix, fns[n], step_gate(gates, n), read=u), noisy)
        return u, None


def _euler(base: Tensor, fn: StepFns, gate: Gate, read: Tensor | None = None) -> Tensor:
    """base + (eta / p) f(read) (``read`` defaults to ``base``; base alone for a dropped step)."""
    if is_dropped(gate):
        return base
    return axpy(base, 1.0, fn(base if read is None else read), gate)  # type: ignore[operator]


def dense_coefficients(model: nn.Module) -> dict[str, DenseRows]:
    """The k_{nj} of every dense stage of ``model`` as rows (row n - 1: k_{n0} .. k_{nn} of step n), keyed by the
    stage's module name."""
    stages = ((name, m.dense_k) for name, m in model.named_modules() if isinstance(m, Stage) and hasattr(m, "dense_k"))
    return dense_k_by_stage(stages)


register_step_runner(DenseScheme, DenseRunner)
