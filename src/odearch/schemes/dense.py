"""DenseResNet's learnable multistep scheme over the whole history of a stage (data, no torch).

    u_{n+1} = (sum_{j<=n} k_{nj} u_j) / (sum_{j<=n} k_{nj}) + f_n(u_n)        (official code, ``DenseBlock``)

Every state u_0, ..., u_n of the stage enters step n with a learned weight w_{nj} = k_{nj} / sum_j k_{nj}; the
weights of a step always sum to one. k_{nj} ~ U[-0.1, 0] at initialisation (the official code), so every k of a
row has one sign and the weights are a convex combination of the states. On a down-sampling stage u_0 is replaced
by the shortcut's projection P(u_0), and step 0 is the plain step u_1 = P(u_0) + f_0(u_0) (a row of one weight,
k_{00} / k_{00} = 1, which the official code stores and which never changes anything); so the learnable k are
those of the steps n = 1 .. N-1, n + 1 per step, N(N + 1)/2 - 1 for a stage of N steps, kept in one flat vector,
row by row: k_{nj} is entry n(n + 1)/2 - 1 + j (:func:`dense_k_index`). The official ``DenseBlock`` allocates N^2
(its ``layers * layers``), of which N(N - 1)/2 are never read.

Frozen at its learned weights, step n is a linear (n + 1)-step method: with f_n = h g,

    alpha = (-w_{n0}, ..., -w_{nn}, 1),   beta = (0, ..., 0, 1, 0),

rho(xi) = xi^(n + 1) - sum_j w_{nj} xi^j, sigma(xi) = xi^n. rho(1) = 1 - sum_j w_{nj} = 0 by construction, but the
second consistency condition rho'(1) = sigma(1) = 1 holds only where sum_j (n - j) w_{nj} = 0 (e.g. all weight on
u_n: forward Euler): in general the step is a consistent discretisation of c_n u' = g(u) with
c_n = rho'(1) = 1 + sum_j (n - j) w_{nj}, as LM's (1 + k_n) u' = g(u) (LM is the dense step with w = (k_n, 1 - k_n)
on (u_{n-1}, u_n)). Convex weights give c_n >= 1 (a shorter effective step dt / c_n) and a zero-stable rho: a root
with |xi| > 1 would need |xi|^(n+1) <= sum_j w_j |xi|^j <= |xi|^n, and one on the unit circle is simple, since
|rho'(xi)| >= n + 1 - sum_j j w_j >= 1. Order and zero-stability of each frozen step are computed from its
coefficients (:func:`dense_step`, with :mod:`.multistep`'s checks).

A row whose k sum to (nearly) zero is the normalisation's singularity: w = k / sum k grows without bound. The
official init cannot produce one (every k of a row has the same sign), a learned k can cross zero. The library keeps
the forward pass finite: the denominator is sign(s) max(|s|, ``min_abs_sum``), s the row sum (1e-3 by default), so
a row within ``min_abs_sum`` of zero no longer sums to one; ``odearch analyze`` flags such rows (``clamped``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .lm import coefficient_arrays
from .multistep import multistep_order, root_condition_violation

DenseRows = list[list[float]]
"""The k (or weights) of one dense stage as plain floats, one row per step n = 1 .. N-1 (n + 1 values, oldest
state first)."""


@dataclass(frozen=True)
class DenseScheme:
    """DenseResNet's scheme: each step combines every earlier state of the stage with learned normalised weights.

    Args:
        name: registry name.
        k_init: every k_{nj} is initialised from U[k_init[0], k_init[1]] (the official U[-0.1, 0]); a range that
            contains both signs is refused (a row could sum to zero at initialisation).
        fixed_k: if set, the k of steps 1 .. N-1 as constants, not learnable (for ODE experiments): one row per step
            n, with n + 1 values, oldest state first; normalised like learned k.
        min_abs_sum: the smallest |sum_j k_{nj}| the normalisation divides by (module docstring).
    """

    name: str = "dense"
    k_init: tuple[float, float] = (-0.1, 0.0)
    fixed_k: tuple[tuple[float, ...], ...] | None = None
    min_abs_sum: float = 1e-3

    def __post_init__(self) -> None:
        lo, hi = self.k_init
        if lo > hi:
            raise ValueError(f"dense scheme: k_init must be (low, high) with low <= high, got {self.k_init}")
        if lo < 0.0 < hi:
            raise ValueError(f"dense scheme: k_init {self.k_init} holds both signs, so a row of k could sum to 0")
        if not self.min_abs_sum > 0.0:
            raise ValueError(f"dense scheme: min_abs_sum must be > 0, got {self.min_abs_sum}")
        for n, row in enumerate(self.fixed_k or (), start=1):
            if len(row) != n + 1:
                raise ValueError(f"dense scheme: fixed_k row {n} (step {n}) needs {n + 1} values, got {len(row)}")
            if abs(math.fsum(row)) < self.min_abs_sum:
                raise ValueError(f"dense scheme: fixed_k row {n} sums to {math.fsum(row)}, within min_abs_sum of 0")


def dense_k_count(steps: int) -> int:
    """The number of learnable k of a stage of ``steps`` steps: n + 1 for each step n = 1 .. N-1."""
    return max(steps * (steps + 1) // 2 - 1, 0)


def dense_k_index(n: int, j: int) -> int:
    """The position of k_{nj} (step n >= 1, state j <= n) in a stage's flat k vector."""
    if not (n >= 1 and 0 <= j <= n):
        raise ValueError(f"k_{{nj}} exists for n >= 1 and 0 <= j <= n, got n = {n}, j = {j}")
    return n * (n + 1) // 2 - 1 + j


def dense_steps(count: int) -> int:
    """The number of steps N of a stage whose flat k vector has ``count`` entries (inverse of :func:`dense_k_count`).

    Raises:
        ValueError: no N gives ``count``.
    """
    steps = (math.isqrt(8 * (count + 1) + 1) - 1) // 2
    if count < 1 or dense_k_count(steps) != count:
        raise ValueError(f"{count} dense coefficients: not N(N + 1)/2 - 1 for any number of steps N >= 2")
    return steps


def dense_rows(flat: Sequence[float]) -> DenseRows:
    """A stage's flat k vector as rows, row n - 1 holding k_{n0} .. k_{nn} of step n."""
    steps = dense_steps(len(flat))
    return [[float(flat[dense_k_index(n, j)]) for j in range(n + 1)] for n in range(1, steps)]


def denominator(row_sum: float, min_abs_sum: float = 1e-3) -> float:
    """sign(s) max(|s|, min_abs_sum): what the normalisation divides a row of k by (s = +-0 counts as +-)."""
    return math.copysign(max(abs(row_sum), min_abs_sum), row_sum)


def dense_weights(row: Sequence[float], min_abs_sum: float = 1e-3) -> list[float]:
    """w_{nj} = k_{nj} / sum_j k_{nj} for one row of k (the denominator guarded by :func:`denominator`)."""
    d = denominator(math.fsum(row), min_abs_sum)
    return [k / d for k in row]


def dense_step(row: Sequence[float], min_abs_sum: float = 1e-3) -> dict[str, Any]:
    """The frozen linear multistep method of one step n from its row of k (module docstring).

    Returns:
        ``weights`` (w_{n0} .. w_{nn}), ``alpha``, ``beta``, ``row_sum`` (sum_j k_{nj}), ``clamped`` (|row_sum| <
        ``min_abs_sum``: the weights no longer sum to one), ``rho1`` (rho(1)), ``c`` (rho'(1): the step is consistent
        with c u' = g(u)), ``consistent`` (rho(1) = 0 and rho'(1) = sigma(1) = 1), ``order`` (for u' = g(u); 0 when
        only rho(1) = 0 holds, -1 when not even that), ``max_abs_root`` (of rho), ``zero_stable`` (root condition)
        and ``stability`` (why not, or "").
    """
    import numpy as np

    row_sum = math.fsum(row)
    w = dense_weights(row, min_abs_sum)
    n = len(w) - 1
    alpha = (*(-x for x in w), 1.0)
    beta = (*(0.0,) * n, 1.0, 0.0)
    rho1 = math.fsum(alpha)
    c = math.fsum(j * a for j, a in enumerate(alpha))
    why = root_condition_violation(alpha) or ""
    return {
        "weights": w,
        "alpha": alpha,
        "beta": beta,
        "row_sum": row_sum,
        "clamped": abs(row_sum) < min_abs_sum,
        "rho1": rho1,
        "c": c,
        "consistent": math.isclose(rho1, 0.0, abs_tol=1e-9) and math.isclose(c, 1.0),
        "order": multistep_order(alpha, beta),
        "max_abs_root": float(np.abs(np.roots(alpha[::-1])).max()),
        "zero_stable": not why,
        "stability": why,
    }


def dense_k_by_stage(items: Iterable[tuple[str, Any]], suffix: str = "") -> dict[str, DenseRows]:
    """``(key, k)`` pairs -> {stage name: k as rows} for the keys ending in ``suffix`` (the stage name is the key
    without it), order kept; ``k``: a stage's flat vector (a tensor, detached and read as float32, or anything
    ``numpy.asarray`` takes).

    Raises:
        ValueError: a ``k`` that is not one flat vector of N(N + 1)/2 - 1 values.
    """
    out: dict[str, DenseRows] = {}
    for key, stage, array in coefficient_arrays(items, suffix):
        if array.ndim != 1:
            raise ValueError(f"{key}: expected one flat vector of dense coefficients, got shape {array.shape}")
        try:
            out[stage] = dense_rows(array.tolist())
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from None
    return out
