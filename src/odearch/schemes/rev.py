"""RevNet's scheme: forward Euler on a coupled system (data, no torch).

The state is split along channels into halves u = (X, Y), and each step uses two residual functions F, G
(paper Table 1, row 4; Gomez et al. 2017):

    X_{n+1} = X_n + F(Y_n)
    Y_{n+1} = Y_n + G(X_{n+1})

the forward-Euler-type discretisation of X' = F(Y), Y' = G(X). The step is exactly invertible:
Y_n = Y_{n+1} - G(X_{n+1}), X_n = X_{n+1} - F(Y_n).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RevScheme:
    """Coupled forward Euler on channel halves, with an exact inverse."""

    name: str = "rev"
    split_dim: int = 1
    order: int = 1
