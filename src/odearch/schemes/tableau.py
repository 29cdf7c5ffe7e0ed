"""Explicit Runge-Kutta schemes as Butcher tableaux (data, no torch).

A tableau (a, b, c) with s inner stages advances u_n by one step of an ODE u' = g(u) whose step h is absorbed into
the residual function f = h g (the paper's convention, Table 1):

    k_i     = f(u_n + sum_{j<i} a_ij k_j),   i = 1..s
    u_{n+1} = u_n + sum_i b_i k_i

With one residual function per step (weights shared by the inner stages) this is an ODE solver; with a distinct
function per inner stage it is the paper's FractalNet reading of 2nd-order Runge-Kutta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_TOL = 1e-12


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method.

    Args:
        name: short registry name.
        a: s x s strictly lower-triangular coefficient matrix, as a tuple of rows.
        b: the s weights of the update.
        c: the s nodes; must equal the row sums of ``a`` (the usual consistency condition).
        order: the classical order of accuracy.
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self) -> None:
        s = len(self.b)
        if s == 0:
            raise ValueError(f"tableau {self.name!r}: needs at least one stage")
        if len(self.a) != s or any(len(row) != s for row in self.a) or len(self.c) != s:
            raise ValueError(f"tableau {self.name!r}: a must be {s}x{s} and c of length {s}")
        for i, row in enumerate(self.a):
            if any(abs(x) > _TOL for x in row[i:]):
                raise ValueError(f"tableau {self.name!r}: a must be strictly lower triangular (explicit scheme)")
            if not math.isclose(sum(row), self.c[i], abs_tol=1e-9):
                raise ValueError(f"tableau {self.name!r}: row {i} of a sums to {sum(row)}, but c[{i}] = {self.c[i]}")
        if not math.isclose(sum(self.b), 1.0, abs_tol=1e-9):
            raise ValueError(f"tableau {self.name!r}: the weights b sum to {sum(self.b)}, not 1 (inconsistent)")
        if self.order < 1:
            raise ValueError(f"tableau {self.name!r}: order must be >= 1")

    @property
    def stages(self) -> int:
        """Number of inner stages s (residual-function evaluations per step)."""
        return len(self.b)


# Forward Euler: u_{n+1} = u_n + f(u_n); order 1. ResNet / ResNeXt (paper Table 1, row 1).
EULER = ButcherTableau("euler", a=((0.0,),), b=(1.0,), c=(0.0,), order=1)

# Heun's method (explicit trapezoid): k1 = f(u), k2 = f(u + k1), u_{n+1} = u + (k1 + k2) / 2; order 2.
# With distinct f1, f2 per step it is the FractalNet reading (paper Table 1, row 3).
HEUN = ButcherTableau("rk2", a=((0.0, 0.0), (1.0, 0.0)), b=(1 / 2, 1 / 2), c=(0.0, 1.0), order=2)

# Explicit midpoint: k1 = f(u), k2 = f(u + k1 / 2), u_{n+1} = u + k2; order 2.
MIDPOINT = ButcherTableau("midpoint", a=((0.0, 0.0), (1 / 2, 0.0)), b=(0.0, 1.0), c=(0.0, 1 / 2), order=2)

# The classical 4th-order Runge-Kutta method (Kutta 1901); order 4.
RK4 = ButcherTableau(
    "rk4",
    a=(
        (0.0, 0.0, 0.0, 0.0),
        (1 / 2, 0.0, 0.0, 0.0),
        (0.0, 1 / 2, 0.0, 0.0),
        (0.0, 0.0, 1.0, 0.0),
    ),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0.0, 1 / 2, 1 / 2, 1.0),
    order=4,
)
