"""Linear multistep schemes (data, no torch).

A linear s-step method with residual functions f_m = h g (step absorbed, as in the paper) reads

    sum_{j=0}^{s} alpha_j u_{n+j} = sum_{j=0}^{s} beta_j f_{n+j}(u_{n+j}),

coefficients listed from the oldest state (j = 0) to the newest (j = s), alpha_s = 1. Only explicit methods
(beta_s = 0) are networks: u_{n+s} = -sum_{j<s} alpha_j u_{n+j} + sum_{j<s} beta_j f_{n+j}(u_{n+j}).
The first s - 1 steps have no history and are taken by the one-step ``starter`` tableau, whose order should be at
least ``order - 1`` so that the starting error does not lower the global order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tableau import EULER, HEUN, ButcherTableau


@dataclass(frozen=True)
class LinearMultistep:
    """An explicit linear multistep method given by (alpha, beta).

    Args:
        name: short registry name.
        alpha: s + 1 state coefficients, oldest first, ``alpha[-1] == 1``.
        beta: s + 1 residual coefficients, oldest first, ``beta[-1] == 0`` (explicit).
        order: the order of accuracy.
        starter: the one-step scheme used for the first s - 1 steps.
    """

    name: str
    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    order: int
    starter: ButcherTableau = EULER

    def __post_init__(self) -> None:
        if len(self.alpha) != len(self.beta) or len(self.alpha) < 2:
            raise ValueError(f"multistep {self.name!r}: alpha and beta need the same length >= 2")
        if not math.isclose(self.alpha[-1], 1.0):
            raise ValueError(f"multistep {self.name!r}: normalise so that alpha_s = 1 (got {self.alpha[-1]})")
        if self.beta[-1] != 0:
            raise ValueError(f"multistep {self.name!r}: beta_s must be 0 (only explicit schemes are networks)")
        if not math.isclose(sum(self.alpha), 0.0, abs_tol=1e-9):
            raise ValueError(f"multistep {self.name!r}: inconsistent, sum(alpha) = {sum(self.alpha)} != 0")

    @property
    def steps(self) -> int:
        """The number of steps s (states of history the update reads)."""
        return len(self.alpha) - 1


# Adams-Bashforth 2: u_{n+2} = u_{n+1} + (3/2) f(u_{n+1}) - (1/2) f(u_n); order 2, started with Heun (order 2).
AB2 = LinearMultistep("ab2", alpha=(0.0, -1.0, 1.0), beta=(-1 / 2, 3 / 2, 0.0), order=2, starter=HEUN)
