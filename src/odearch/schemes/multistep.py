"""Linear multistep schemes (data, no torch).

A linear s-step method with residual functions f_m = h g (step absorbed, as in the paper) reads

    sum_{j=0}^{s} alpha_j u_{n+j} = sum_{j=0}^{s} beta_j f_{n+j}(u_{n+j}),

coefficients listed from the oldest state (j = 0) to the newest (j = s), alpha_s = 1. Only explicit methods
(beta_s = 0) are networks: u_{n+s} = -sum_{j<s} alpha_j u_{n+j} + sum_{j<s} beta_j f_{n+j}(u_{n+j}).
The first s - 1 steps have no history and are taken by the one-step ``starter`` tableau, whose order should be at
least ``order - 1`` so that the starting error does not lower the global order.

With rho(xi) = sum_j alpha_j xi^j and sigma(xi) = sum_j beta_j xi^j, a method converges to the solution of u' = g(u)
iff it is consistent and zero-stable (Dahlquist), and both are checked at construction:

- consistency: rho(1) = 0 and rho'(1) = sigma(1) (with rho'(1) != sigma(1) the method converges, silently, to the
  solution of rho'(1) u' = sigma(1) g(u));
- zero-stability, the root condition: every root of rho has |xi| <= 1, and the roots with |xi| = 1 are simple
  (Dahlquist's 3rd-order alpha = (-5, 4, 1), beta = (2, 4, 0) has the root -5 and blows up).

The order is computed from the coefficients: p is the largest q with C_0 = ... = C_q = 0,
C_q = sum_j (j^q alpha_j - q j^(q-1) beta_j) (0^0 = 1); a declared ``order`` that differs is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .tableau import EULER, HEUN, ButcherTableau


@dataclass(frozen=True)
class LinearMultistep:
    """An explicit linear multistep method given by (alpha, beta).

    Args:
        name: short registry name.
        alpha: s + 1 state coefficients, oldest first, ``alpha[-1] == 1``.
        beta: s + 1 residual coefficients, oldest first, ``beta[-1] == 0`` (explicit).
        order: the order of accuracy; None: computed from the coefficients. A value that differs from the computed
            order is refused. After construction it is always the computed order.
        starter: the one-step scheme used for the first s - 1 steps.
    """

    name: str
    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    order: int | None = None
    starter: ButcherTableau = EULER

    def __post_init__(self) -> None:
        if len(self.alpha) != len(self.beta) or len(self.alpha) < 2:
            raise ValueError(f"multistep {self.name!r}: alpha and beta need the same length >= 2")
        if not math.isclose(self.alpha[-1], 1.0):
            raise ValueError(f"multistep {self.name!r}: normalise so that alpha_s = 1 (got {self.alpha[-1]})")
        if self.beta[-1] != 0:
            raise ValueError(f"multistep {self.name!r}: beta_s must be 0 (only explicit schemes are networks)")
        if not math.isclose(sum(self.alpha), 0.0, abs_tol=1e-9):
            raise ValueError(
                f"multistep {self.name!r}: inconsistent, the consistency condition rho(1) = 0 fails: "
                f"rho(1) = sum(alpha) = {sum(self.alpha)}"
            )
        rho1 = sum(j * a for j, a in enumerate(self.alpha))
        sigma1 = sum(self.beta)
        if not math.isclose(rho1, sigma1, rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(
                f"multistep {self.name!r}: inconsistent, the consistency condition rho'(1) = sigma(1) fails: "
                f"rho'(1) = sum_j j alpha_j = {rho1}, sigma(1) = sum(beta) = {sigma1} (the method would converge to "
                "the solution of rho'(1) u' = sigma(1) g(u), not of u' = g(u))"
            )
        bad = root_condition_violation(self.alpha)
        if bad:
            raise ValueError(f"multistep {self.name!r}: not zero-stable, the root condition fails: {bad}")
        order = multistep_order(self.alpha, self.beta)
        if self.order is not None and self.order != order:
            raise ValueError(
                f"multistep {self.name!r}: declared order {self.order}, but the order conditions C_q = "
                f"sum_j (j^q alpha_j - q j^(q-1) beta_j) = 0 hold up to q = {order}: order {order}"
            )
        object.__setattr__(self, "order", order)

    @property
    def steps(self) -> int:
        """The number of steps s (states of history the update reads)."""
        return len(self.alpha) - 1


def multistep_order(alpha: Sequence[float], beta: Sequence[float], tol: float = 1e-9) -> int:
    """The order p of the linear multistep method (alpha, beta): C_0 = ... = C_p = 0 != C_{p+1}, with
    C_q = sum_j (j^q alpha_j - q j^(q-1) beta_j) (0^0 = 1), each compared with the size of its terms."""
    p = -1
    for q in range(2 * len(alpha) + 1):
        terms = [j**q * a for j, a in enumerate(alpha)] + [-q * j ** (q - 1) * b for j, b in enumerate(beta) if q]
        if abs(math.fsum(terms)) > tol * max(1.0, max(abs(x) for x in terms)):
            break
        p = q
    return p


def root_condition_violation(alpha: Sequence[float], tol: float = 1e-6) -> str | None:
    """Why rho(xi) = sum_j alpha_j xi^j fails the root condition (a root with |xi| > 1, or a multiple root with
    |xi| = 1), or None when it holds. Roots from numpy (imported here, not at module import)."""
    import numpy as np

    coeffs = np.asarray(alpha[::-1], dtype=np.float64)  # highest degree first
    roots = np.roots(coeffs)
    d_coeffs = np.polyder(coeffs)
    for xi in roots:
        r = abs(xi)
        if r > 1 + tol:
            return f"rho has the root {complex(xi):.6g} with |xi| = {r:.6g} > 1"
        if abs(r - 1) <= tol and abs(np.polyval(d_coeffs, xi)) <= tol * max(1.0, float(np.abs(d_coeffs).max())):
            return f"rho has the multiple root {complex(xi):.6g} on the unit circle"
    return None


# Adams-Bashforth 2: u_{n+2} = u_{n+1} + (3/2) f(u_{n+1}) - (1/2) f(u_n); order 2, started with Heun (order 2).
AB2 = LinearMultistep("ab2", alpha=(0.0, -1.0, 1.0), beta=(-1 / 2, 3 / 2, 0.0), order=2, starter=HEUN)
