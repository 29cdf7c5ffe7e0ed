"""Explicit Runge-Kutta schemes as Butcher tableaux (data, no torch).

A tableau (a, b, c) with s inner stages advances u_n by one step of an ODE u' = g(u) whose step h is absorbed into
the residual function f = h g (the paper's convention, Table 1):

    k_i     = f(u_n + sum_{j<i} a_ij k_j),   i = 1..s
    u_{n+1} = u_n + sum_i b_i k_i

With one residual function per step (weights shared by the inner stages) this is an ODE solver; with a distinct
function per inner stage it is the paper's FractalNet reading of 2nd-order Runge-Kutta.

The order is computed from the coefficients, never taken on trust: a tableau has order p when Butcher's order
conditions hold for every rooted tree t with at most p nodes,

    sum_i b_i Phi_i(t) = 1 / gamma(t),   Phi_i(leaf) = 1,   Phi_i([t_1, ..., t_m]) = prod_l (A Phi(t_l))_i,
    gamma(leaf) = 1,   gamma([t_1, ..., t_m]) = |t| prod_l gamma(t_l)

(Hairer, Norsett, Wanner, Solving ODEs I, Sec. II.2). A declared ``order`` that differs is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

_TOL = 1e-12
_ORDER_TOL = 1e-9

Tree = tuple["Tree", ...]
"""A rooted tree as the sorted tuple of its root's subtrees; the single node is ``()``."""


@cache
def rooted_trees(n: int) -> tuple[Tree, ...]:
    """The rooted trees with n nodes (1, 1, 2, 4, 9, 20, 48, ... of them), each in its canonical form."""
    if n < 1:
        raise ValueError(f"a rooted tree has at least one node, got {n}")
    return tuple(sorted(_forests(n - 1)))


@cache
def _forests(m: int) -> frozenset[Tree]:
    """The multisets (sorted tuples) of rooted trees with m nodes in all."""
    if m == 0:
        return frozenset({()})
    return frozenset(tuple(sorted((t, *f))) for k in range(1, m + 1) for t in rooted_trees(k) for f in _forests(m - k))


@cache
def _size_and_density(t: Tree) -> tuple[int, int]:
    """(|t|, gamma(t)): the node count and the density, gamma = |t| prod_l gamma(t_l)."""
    size, gamma = 1, 1
    for child in t:
        n, g = _size_and_density(child)
        size, gamma = size + n, gamma * g
    return size, gamma * size


def tableau_order(a: tuple[tuple[float, ...], ...], b: tuple[float, ...]) -> int:
    """The order of the explicit Runge-Kutta method (a, b): the largest p such that the order condition of every
    rooted tree with at most p nodes holds (module docstring); at most s, the number of stages."""
    s = len(b)

    def phi(t: Tree, memo: dict[Tree, list[float]]) -> list[float]:
        if t not in memo:
            v = [1.0] * s
            for child in t:
                ac = [sum(a[i][j] * x for j, x in enumerate(phi(child, memo))) for i in range(s)]
                v = [x * y for x, y in zip(v, ac)]
            memo[t] = v
        return memo[t]

    memo: dict[Tree, list[float]] = {}
    for p in range(1, s + 1):
        for t in rooted_trees(p):
            if not math.isclose(
                sum(bi * x for bi, x in zip(b, phi(t, memo))),
                1 / _size_and_density(t)[1],
                rel_tol=_ORDER_TOL,
                abs_tol=_ORDER_TOL,
            ):
                return p - 1
    return s


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method.

    Args:
        name: short registry name.
        a: s x s strictly lower-triangular coefficient matrix, as a tuple of rows.
        b: the s weights of the update.
        c: the s nodes; must equal the row sums of ``a`` (the usual consistency condition).
        order: the classical order of accuracy; None: computed from the coefficients (the order conditions). A value
            that differs from the computed order is refused. After construction it is always the computed order.
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int | None = None

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
        order = tableau_order(self.a, self.b)
        if self.order is not None and self.order != order:
            raise ValueError(
                f"tableau {self.name!r}: declared order {self.order}, but the order conditions of the rooted "
                f"trees give order {order}"
            )
        object.__setattr__(self, "order", order)

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
