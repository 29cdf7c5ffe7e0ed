"""The stochastic-training options of a whole network as one validated value (:class:`StochasticDepth`).

A :class:`~odearch.nn.Stage` takes one survival probability per block; a network takes this value, which every model
family accepts as ``stochastic=`` and the registered models also as the loose keywords ``p_last=``, ``drop_mode=``,
``noise_sigma=`` (folded by :func:`fold_stochastic`, so the config's ``model_kwargs`` and the CLI flags keep working).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .drop import check_drop_mode, check_survival, linear_survival

__all__ = ["STOCHASTIC_KEYWORDS", "StochasticDepth", "check_noise_sigma", "fold_stochastic"]


def check_noise_sigma(sigma: float | None) -> None:
    """Raise ``ValueError`` unless ``sigma`` is None or a finite standard deviation >= 0."""
    if sigma is not None and not (math.isfinite(sigma) and sigma >= 0.0):
        raise ValueError(f"noise_sigma must be a finite standard deviation >= 0, got {sigma}")


@dataclass(frozen=True)
class StochasticDepth:
    """Stochastic depth (Huang et al. 2016, https://arxiv.org/abs/1603.09382) and noise injection for a network.

    Block i of all n blocks of the network (0-based, over every stage) survives with
    p_i = 1 - i / (n - 1) (1 - p_L) (:func:`~odearch.nn.drop.linear_survival`), and in training a step becomes
    u_{n+1} = u_n + (eta_n / p_n) f_n(u_n), eta_n ~ Bernoulli(p_n), plus sigma sqrt(dt) xi_n with noise. The
    default value is off. Checked once, here: a bad value fails when it is made, with a ``ValueError``.

    Args:
        p_last: survival probability p_L of the network's last block, 0 < p_L <= 1; None or 1 turns it off.
        drop_mode: ``"batch"`` (one draw per mini-batch; dropped blocks are skipped) or ``"sample"``.
        noise_sigma: standard deviation sigma of the noise injected after every block in training; None or 0: off.
    """

    p_last: float | None = None
    drop_mode: str = "batch"
    noise_sigma: float | None = None

    def __post_init__(self) -> None:
        check_drop_mode(self.drop_mode)
        check_noise_sigma(self.noise_sigma)
        if self.p_last is not None:
            check_survival(self.p_last, "p_last")

    def stage_kwargs(self, layers: Sequence[int]) -> list[dict[str, Any]]:
        """The :class:`~odearch.nn.Stage` keywords (``survival``, ``drop_mode``, ``noise_sigma``) of each stage of a
        network with ``layers[s]`` blocks in stage s: the network-wide linear decay cut into one slice per stage."""
        probs = None if self.p_last is None or self.p_last == 1.0 else linear_survival(sum(layers), self.p_last)
        out, start = [], 0
        for n in layers:
            survival = None if probs is None else probs[start : start + n]
            out.append({"survival": survival, "drop_mode": self.drop_mode, "noise_sigma": self.noise_sigma})
            start += n
        return out


STOCHASTIC_KEYWORDS = tuple(f.name for f in dataclasses.fields(StochasticDepth))


def fold_stochastic(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the loose keywords ``p_last`` / ``drop_mode`` / ``noise_sigma`` replaced by one
    ``stochastic=`` value: they update the ``stochastic`` given (default off), so ``lm_resnet56_sd`` with
    ``drop_mode="sample"`` keeps its p_L = 0.8."""
    loose = {k: kwargs[k] for k in STOCHASTIC_KEYWORDS if k in kwargs}
    if not loose:
        return kwargs
    out = {k: v for k, v in kwargs.items() if k not in loose}
    out["stochastic"] = dataclasses.replace(kwargs.get("stochastic") or StochasticDepth(), **loose)
    return out
