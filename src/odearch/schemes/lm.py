"""The LM-architecture's linear two-step scheme (data, no torch).

    u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)                     (paper, Sec. 2.2, LM-ResNet)

with one learnable k_n per block (or per channel). As a linear multistep method it has alpha = (-k_n, k_n - 1, 1),
beta = (0, 1, 0): rho(xi) = xi^2 - (1 - k_n) xi - k_n, sigma(xi) = xi, so rho'(1) = 1 + k_n and the scheme is a
consistent discretisation of (1 + k_n) u' = g(u) when f_n = h g. Zero-stable for -1 < k_n <= 1 (roots 1, -k_n).
k_n = 0 is forward Euler (ResNet).

Per-channel coefficients (``per_channel=True``, one k_n per channel of the state) come in two registered forms:

- ``lm_channel``: k_n^c ~ U[-0.1, 0], the per-block initialisation of LM-ResNet applied to each channel (odearch's
  choice; zero-stable at initialisation, roots 1 and -k_n^c);
- ``lm_channel_mresnetc``: the initialisation of the official code's per-channel ``MResNetC``, which draws the
  coefficient of u_n, 1 - k_n^c, from U[-0.1, 0]: k_n^c ~ U[1.0, 1.1], on (k = 1) or beyond (k > 1, root -k_n^c
  outside the unit circle) the zero-stability boundary at initialisation. Provided to reproduce that code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

MRESNETC_K_INIT = (1.0, 1.1)
"""k_n^c ~ U[1.0, 1.1]: the official ``MResNetC`` draws the coefficient of u_n, 1 - k_n^c, from U[-0.1, 0]."""


@dataclass(frozen=True)
class LMScheme:
    """The LM two-step scheme with learnable coefficients.

    Args:
        name: registry name.
        k_init: k_n is initialised from U[k_init[0], k_init[1]]; the paper's U[-0.1, 0] (its code stores
            1 - k_n ~ U[1.0, 1.1], the same thing).
        per_channel: one k per channel instead of one scalar per block (the official ``MResNetC`` has one, but
            initialised differently: see the module docstring, ``lm_channel`` against ``lm_channel_mresnetc``).
        fixed_k: if set, k_n is this constant and not learnable (for ODE experiments).
    """

    name: str = "lm"
    k_init: tuple[float, float] = (-0.1, 0.0)
    per_channel: bool = False
    fixed_k: float | None = None
    order: int = 1

    def __post_init__(self) -> None:
        lo, hi = self.k_init
        if lo > hi:
            raise ValueError(f"lm scheme: k_init must be (low, high) with low <= high, got {self.k_init}")
        if self.fixed_k is not None and not -1.0 < self.fixed_k <= 1.0:
            raise ValueError(f"lm scheme: fixed_k = {self.fixed_k} is not zero-stable (need -1 < k <= 1)")


KValues = list[float] | list[list[float]]
"""The k_n of one LM stage as plain floats: one per step (n,), or one per step and channel (n, C)."""


def lm_k_by_stage(items: Iterable[tuple[str, Any]], suffix: str = "") -> dict[str, KValues]:
    """The one read-out of LM coefficients: ``(key, k)`` pairs -> {stage name: k as nested float lists}.

    Used for a model's ``lm_k`` (:func:`odearch.nn.lm_coefficients`), a state dict and a safetensors checkpoint
    (:mod:`odearch.analysis`). Only keys ending in ``suffix`` are read, the stage name being the key without it;
    order is kept. ``k``: a tensor (detached, moved to the CPU and cast to float32 first: no torch import here) or
    anything ``numpy.asarray`` takes; values are exact (float32 -> float64 -> Python float).

    Raises:
        ValueError: a ``k`` whose shape is not (n,) or (n, C).
    """
    out: dict[str, KValues] = {}
    for key, stage, array in coefficient_arrays(items, suffix):
        if array.ndim not in (1, 2):
            raise ValueError(f"{key}: expected shape (n,) or (n, C), got {array.shape}")
        out[stage] = array.tolist()
    return out


def coefficient_arrays(items: Iterable[tuple[str, Any]], suffix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(key, stage name, float64 numpy array) for each ``(key, value)`` whose key ends in ``suffix`` (the stage name
    is the key without it), in order; a tensor value is detached, moved to the CPU and read as float32 first."""
    import numpy as np

    for key, value in items:
        if not key.endswith(suffix):
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().float()
        yield key, key[: len(key) - len(suffix)], np.asarray(value, dtype=np.float64)
