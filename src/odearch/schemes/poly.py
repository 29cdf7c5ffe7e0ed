"""PolyNet's scheme: a truncated Neumann series of backward Euler (data, no torch).

Backward Euler u_{n+1} = u_n + F(u_{n+1}) for a linear F gives u_{n+1} = (I - F)^{-1} u_n, and
(I - F)^{-1} ~ I + F + F^2 + ... + F^d. PolyNet's "poly-2" module is the d = 2 truncation
(paper Table 1, row 2):

    u_{n+1} = u_n + F(u_n) + F(F(u_n))

one residual function F applied twice (shared weights).

As an ODE scheme with F = h g it is consistent with u' = g(u) only where g(0) = 0: F(F(u)) = h g(h g(u)) =
h g(0) + O(h^2), so the increment is h (g(u) + g(0)) + O(h^2) and the scheme converges, at first order, to the
solution of u' = g(u) + g(0) (on u' = cos u, to that of u' = cos u + 1). On a linear u' = A u it is first order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolyScheme:
    """u_{n+1} = u_n + sum_{j=1}^{degree} F^j(u_n), F^j the j-fold composition."""

    name: str = "poly2"
    degree: int = 2
    order: int = 1

    def __post_init__(self) -> None:
        if self.degree < 1:
            raise ValueError(f"poly scheme: degree must be >= 1, got {self.degree}")
