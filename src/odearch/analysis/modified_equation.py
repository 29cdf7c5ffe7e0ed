"""Modified equations of the network schemes, derived symbolically (sympy).

Setting: a scalar autonomous ODE u' = g(u), residual functions f = dt g (the paper's convention, its Table 1).
Two forms of the modified equation are derived, to a requested order p in dt:

* The **derivative form** (the paper's, Sec. "Modified equations"): apply the scheme to a smooth curve u(t) and
  Taylor-expand in dt. For a linear multistep method (alpha, beta), oldest state first, s steps, expanded about the
  newest known state t_n = t_{r}, r = s - 1 (the point where LM-ResNet evaluates f_n):

      (1/dt) sum_j alpha_j u(t + (j - r) dt) - sum_j beta_j [g(u(t + (j - r) dt)) - g(u(t))] = sigma(1) g(u),

  the left side expanded as sum_{m>=1} dt^(m-1)/m! C_m u^(m) - sum_{m>=1} dt^m/m! B_m (d/dt)^m g(u(t)), with
  C_m = sum_j alpha_j (j - r)^m and B_m = sum_j beta_j (j - r)^m, then divided by sigma(1) = sum_j beta_j so that the
  right side is g(u). This gives the paper's results: forward Euler u' + (dt/2) u'' = g(u); LM-ResNet
  (alpha = (-k, k - 1, 1), beta = (0, 1, 0)) (1 + k) u' + (1 - k)(dt/2) u'' = g(u). For an explicit Runge-Kutta
  tableau, (u(t + dt) - u(t))/dt = Psi(u(t)) with Psi(x) = (Phi_dt(x) - x)/dt the increment of one step Phi_dt,
  and the dt-corrections of Psi are moved to the left: sum_m dt^(m-1)/m! u^(m) - (Psi(u) - g(u)) = g(u).

* The **classical modified equation** (backward error analysis): the ODE u' = g_0 + dt g_1 + dt^2 g_2 + ... whose
  exact flow the numerical solution follows to order dt^(p+1) per step. For a one-step map Phi_dt it is found by
  matching the Taylor series of the exact flow phi_tau(x) = sum_m tau^m/m! D^m x (D = G d/dx, the Lie derivative of
  the modified field G) to Phi_dt(x) order by order: g_j = [Phi_dt]_{j+1} - [phi_dt with g_0..g_{j-1}]_{j+1}. For a
  linear multistep method the principal (non-parasitic) solution follows the flow of G with
  sum_j alpha_j phi_{j dt}(x) = dt sum_j beta_j g(phi_{j dt}(x)) to all orders; order dt^(j+1) is linear in g_j
  with factor rho'(1), so g_j = -[residual with g_0..g_{j-1}]_{j+1} / rho'(1) and g_0 = sigma(1)/rho'(1) g.
  Forward Euler: g_1 = -g' g / 2.

Internally every expression is a polynomial in plain symbols (g_n = n-th derivative of g at the state, u_m = m-th
time derivative of u), which keeps the expansions fast; :func:`modified_equation` converts the result to sympy
``Derivative`` objects of ``u(t)`` and ``g(u(t))`` (module constants :data:`T`, :data:`DT`, :data:`U`, :data:`G`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import sympy as sp

from ..schemes import ButcherTableau, LinearMultistep, LMScheme, PolyScheme, RevScheme, get_scheme

T = sp.Symbol("t")
"""Time t."""
DT = sp.Symbol("dt")
"""The step dt (the paper's Delta t)."""
K = sp.Symbol("k")
"""The LM coefficient k_n, used when an :class:`~odearch.schemes.LMScheme` has no ``fixed_k``."""
U = sp.Function("u")
"""The solution u, used as ``U(T)``."""
G = sp.Function("g")
"""The vector field g of u' = g(u)."""

MAX_ORDER = 6
"""The highest order in dt that :func:`modified_equation` and :func:`truncation_order` expand to (cost grows fast)."""

FORMS = ("derivative", "classical")

Series = list[sp.Expr]
"""A truncated power series in dt: element i is the coefficient of dt**i."""


@dataclass(frozen=True)
class SymbolicMultistep:
    """A linear multistep method whose coefficients may be sympy expressions (e.g. contain :data:`K`).

    sum_j alpha_j u_{n+j} = dt sum_j beta_j g(u_{n+j}), coefficients oldest first (j = 0..s).

    Args:
        name: a label.
        alpha: s + 1 state coefficients.
        beta: s + 1 residual coefficients; ``beta[-1] != 0`` is an implicit method (rejected by the analysis).
    """

    name: str
    alpha: tuple[sp.Expr, ...]
    beta: tuple[sp.Expr, ...]


def lm_multistep(k: sp.Expr | float = K) -> SymbolicMultistep:
    """The LM-ResNet step u_{n+1} = (1 - k) u_n + k u_{n-1} + dt g(u_n) as a multistep method.

    alpha = (-k, k - 1, 1), beta = (0, 1, 0): rho(xi) = xi^2 - (1 - k) xi - k, sigma(xi) = xi.

    Args:
        k: the coefficient, symbolic (default :data:`K`) or a number.
    """
    k = _exact(k)
    return SymbolicMultistep("lm", alpha=(-k, k - 1, sp.Integer(1)), beta=(sp.Integer(0), sp.Integer(1), sp.Integer(0)))


# ----------------------------------------------------------------------------------------------------------------
# Scheme normalisation: everything becomes an explicit RK (a, b) or an explicit multistep (alpha, beta), exact.


@dataclass(frozen=True)
class _RK:
    name: str
    a: tuple[tuple[sp.Expr, ...], ...]
    b: tuple[sp.Expr, ...]


@dataclass(frozen=True)
class _Multistep:
    name: str
    alpha: tuple[sp.Expr, ...]
    beta: tuple[sp.Expr, ...]

    @property
    def rho1_prime(self) -> sp.Expr:
        """rho'(1) = sum_j j alpha_j."""
        return sp.expand(sum(j * a for j, a in enumerate(self.alpha)))

    @property
    def sigma1(self) -> sp.Expr:
        """sigma(1) = sum_j beta_j."""
        return sp.expand(sum(self.beta))


def _exact(value: object) -> sp.Expr:
    """A float becomes the simplest nearby rational (1/6 stays 1/6), so that cancellations are exact."""
    if isinstance(value, float):
        return sp.nsimplify(value, rational=True, tolerance=1e-12)
    return sp.sympify(value)


def _no_scalar_equation(why: str) -> Callable[[Any, str], _RK | _Multistep]:
    def refuse(scheme: Any, name: str) -> _RK | _Multistep:
        raise ValueError(f"{name}: {why}")

    return refuse


def _as_multistep(scheme: Any, name: str) -> _Multistep:
    """An explicit multistep method (alpha, beta), exact."""
    return _check_multistep(_Multistep(name, tuple(map(_exact, scheme.alpha)), tuple(map(_exact, scheme.beta))))


def _as_rk(scheme: Any, name: str) -> _RK:
    """An explicit Runge-Kutta method (a, b), exact."""
    a = tuple(tuple(_exact(x) for x in row) for row in scheme.a)
    return _check_rk(_RK(name, a, tuple(map(_exact, scheme.b))))


def _lm_as_multistep(scheme: LMScheme, name: str) -> _Multistep:
    """The LM step as the multistep method of :func:`lm_multistep` (symbolic :data:`K` unless ``fixed_k``)."""
    return _as_multistep(lm_multistep(K if scheme.fixed_k is None else scheme.fixed_k), name)


_SYMBOLIC: dict[type, Callable[[Any, str], _RK | _Multistep]] = {
    PolyScheme: _no_scalar_equation(
        "PolyNet truncates the Neumann series of implicit backward Euler, (I - F)^-1 ~ I + F + F^2; F(F(u)) is not "
        "a function of the state's increment, so it has no scalar modified equation here"
    ),
    RevScheme: _no_scalar_equation("RevNet is forward Euler on a coupled two-field system, not a scalar scheme"),
    LMScheme: _lm_as_multistep,
    LinearMultistep: _as_multistep,
    SymbolicMultistep: _as_multistep,
    ButcherTableau: _as_rk,
}
"""Scheme type -> its exact symbolic method (or the reason it has no scalar modified equation)."""


def _method(scheme: object) -> _RK | _Multistep:
    """Normalise a scheme (name, tableau, multistep, LM scheme, or duck-typed object) and check it is analysable."""
    if isinstance(scheme, str):
        scheme = get_scheme(scheme)
    name = getattr(scheme, "name", type(scheme).__name__)
    for cls in type(scheme).__mro__:
        if cls in _SYMBOLIC:
            return _SYMBOLIC[cls](scheme, name)
    if hasattr(scheme, "alpha"):  # duck-typed: explicit (alpha, beta) or (a, b)
        return _as_multistep(scheme, name)
    if hasattr(scheme, "a") and hasattr(scheme, "b"):
        return _as_rk(scheme, name)
    raise ValueError(f"cannot analyse {name!r}: expected a Butcher tableau, a linear multistep method or an LM scheme")


def _check_rk(rk: _RK) -> _RK:
    s = len(rk.b)
    if s == 0 or len(rk.a) != s or any(len(row) != s for row in rk.a):
        raise ValueError(f"tableau {rk.name!r}: a must be {s}x{s} for {s} weights b")
    if any(rk.a[i][j] != 0 for i in range(s) for j in range(i, s)):
        raise ValueError(f"tableau {rk.name!r} is implicit (a not strictly lower triangular); only explicit schemes")
    if sp.simplify(sum(rk.b) - 1) != 0:
        raise ValueError(f"tableau {rk.name!r}: the weights sum to {sum(rk.b)}, not 1 (inconsistent scheme)")
    return rk


def _check_multistep(lmm: _Multistep) -> _Multistep:
    if len(lmm.alpha) != len(lmm.beta) or len(lmm.alpha) < 2:
        raise ValueError(f"multistep {lmm.name!r}: alpha and beta need the same length >= 2")
    if lmm.beta[-1] != 0:
        raise ValueError(f"multistep {lmm.name!r} is implicit (beta_s = {lmm.beta[-1]} != 0); only explicit schemes")
    if lmm.alpha[-1] == 0:
        raise ValueError(f"multistep {lmm.name!r}: alpha_s = 0, the newest state does not appear")
    if sp.simplify(sum(lmm.alpha)) != 0:
        raise ValueError(f"multistep {lmm.name!r}: rho(1) = sum(alpha) = {sum(lmm.alpha)} != 0 (inconsistent)")
    for label, value in (("rho'(1)", lmm.rho1_prime), ("sigma(1)", lmm.sigma1)):
        if sp.simplify(value) == 0:
            raise ValueError(f"multistep {lmm.name!r}: {label} = 0, the scheme approximates no first-order ODE")
    return lmm


def _check_order(order: object) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be an integer in [0, {MAX_ORDER}], got {order!r}")
    return order


# ----------------------------------------------------------------------------------------------------------------
# Truncated power series in dt with polynomial coefficients in the derivative symbols.


@cache
def _g(n: int) -> sp.Symbol:
    """The n-th derivative of g at the state x, as a plain symbol."""
    return sp.Symbol(f"_g{n}")


@cache
def _u(m: int) -> sp.Symbol:
    """The m-th time derivative of u at t, as a plain symbol."""
    return sp.Symbol(f"_u{m}")


def _zero(n: int) -> Series:
    return [sp.Integer(0)] * (n + 1)


def _add(a: Series, b: Series) -> Series:
    return [sp.expand(x + y) for x, y in zip(a, b, strict=True)]


def _scale(a: Series, c: sp.Expr) -> Series:
    return [sp.expand(c * x) for x in a]


def _shift(a: Series, m: int) -> Series:
    """Multiply by dt**m, keeping the length (the truncation order)."""
    return ([sp.Integer(0)] * m + a)[: len(a)]


def _mul(a: Series, b: Series) -> Series:
    n = len(a) - 1
    return [sp.expand(sum(a[i] * b[k - i] for i in range(k + 1))) for k in range(n + 1)]


def _d_dx(expr: sp.Expr) -> sp.Expr:
    """d/dx of a polynomial in g_n(x): chain rule, d g_n / dx = g_{n+1}."""
    gs = sorted((s for s in expr.free_symbols if s.name.startswith("_g")), key=lambda s: int(s.name[2:]))
    return sp.expand(sum(sp.diff(expr, s) * _g(int(s.name[2:]) + 1) for s in gs))


def _g_of(delta: Series) -> Series:
    """g(x + delta) = sum_n g_n delta^n / n! for an increment delta = O(dt) (delta[0] == 0)."""
    n = len(delta) - 1
    out, power = _zero(n), _zero(n)
    power[0] = sp.Integer(1)
    for order in range(n + 1):  # delta^order is O(dt^order): higher powers vanish at this truncation
        out = _add(out, _scale(power, _g(order) / math.factorial(order)))
        power = _mul(power, delta)
    return out


def _rk_increment(rk: _RK, n: int) -> Series:
    """Phi_dt(x) - x = sum_i b_i dt g(Y_i), Y_i = x + sum_{j<i} a_ij dt g(Y_j), to dt**n."""
    slopes: list[Series] = []  # dt g(Y_i)
    for row in rk.a:
        delta = _zero(n)
        for a_ij, slope in zip(row, slopes, strict=False):  # a_ij = 0 for j >= i: explicit
            delta = _add(delta, _scale(slope, a_ij))
        slopes.append(_shift(_g_of(delta), 1))
    increment = _zero(n)
    for b_i, slope in zip(rk.b, slopes, strict=True):
        increment = _add(increment, _scale(slope, b_i))
    return increment


def _flow_increment(field: Series, tau: sp.Expr, n: int) -> Series:
    """phi_{tau dt}(x) - x = sum_{m>=1} (tau dt)^m / m! D^m x for u' = field(x) (a dt-series), to dt**n.

    D^m x is built recursively, D^{m+1} x = field * d/dx (D^m x).
    """
    total, lie = _zero(n), list(field)  # lie = D^m x, starting at m = 1
    for m in range(1, n + 1):
        total = _add(total, _shift(_scale(lie, tau**m / math.factorial(m)), m))
        lie = _mul(field, [_d_dx(c) for c in lie])
    return total


def _field(terms: Sequence[sp.Expr], n: int) -> Series:
    """The dt-series g_0 + dt g_1 + ... from its known terms, padded to dt**n."""
    out = _zero(n)
    out[: len(terms)] = list(terms)[: n + 1]
    return out


def _multistep_residual(lmm: _Multistep, field: Series, n: int) -> Series:
    """sum_j alpha_j phi_{j dt}(x) - dt sum_j beta_j g(phi_{j dt}(x)) along the flow of ``field``, to dt**n.

    The sum_j alpha_j x part vanishes because rho(1) = 0.
    """
    residual = _zero(n)
    for j, (alpha_j, beta_j) in enumerate(zip(lmm.alpha, lmm.beta, strict=True)):
        delta = _flow_increment(field, sp.Integer(j), n)
        residual = _add(residual, _scale(delta, alpha_j))
        if beta_j != 0:
            residual = _add(residual, _scale(_shift(_g_of(delta), 1), -beta_j))
    return residual


def _is_zero(expr: sp.Expr) -> bool:
    return sp.cancel(sp.together(expr)) == 0


# ----------------------------------------------------------------------------------------------------------------
# The two forms, internal symbols.


def _classical_terms(method: _RK | _Multistep, order: int, stop_at_nonzero: bool = False) -> list[sp.Expr]:
    """[g_0, g_1, ..., g_order] of the classical modified equation u' = sum_j dt^j g_j (backward error analysis).

    With ``stop_at_nonzero`` the recursion stops at the first nonzero correction g_j, j >= 1.
    """
    if isinstance(method, _RK):
        terms = [_g(0)]  # sum b_i = 1: Phi_dt(x) = x + dt g(x) + O(dt^2)
        step = _rk_increment(method, order + 1)
    else:
        terms = [sp.cancel(method.sigma1 / method.rho1_prime) * _g(0)]
    for j in range(1, order + 1):
        if isinstance(method, _RK):
            # dt^(j+1): Phi_dt = phi_dt, and phi_dt contains dt^(j+1) g_j plus terms of g_0..g_{j-1}.
            known = _flow_increment(_field(terms, j + 1), sp.Integer(1), j + 1)
            g_j = step[j + 1] - known[j + 1]
        else:
            # dt^(j+1) of the multistep relation: rho'(1) g_j + (terms of g_0..g_{j-1}) = 0.
            known = _multistep_residual(method, _field(terms, j + 1), j + 1)
            g_j = -known[j + 1] / method.rho1_prime
        g_j = sp.expand(sp.cancel(g_j))
        terms.append(g_j)
        if stop_at_nonzero and not _is_zero(g_j):
            break
    return terms


def _time_derivative(expr: sp.Expr) -> sp.Expr:
    """d/dt along a curve u(t): d u_m/dt = u_{m+1}, d g_n(u)/dt = g_{n+1}(u) u_1."""
    out = sp.Integer(0)
    for s in expr.free_symbols:
        if s.name.startswith("_u"):
            out += sp.diff(expr, s) * _u(int(s.name[2:]) + 1)
        elif s.name.startswith("_g"):
            out += sp.diff(expr, s) * _g(int(s.name[2:]) + 1) * _u(1)
    return sp.expand(out)


def _derivative_lhs(method: _RK | _Multistep, order: int, about: int | None = None) -> sp.Expr:
    """The left side L of the derivative form L = g(u), in internal symbols, to dt**order."""
    if isinstance(method, _RK):
        shift = sum(DT ** (m - 1) / math.factorial(m) * _u(m) for m in range(1, order + 2))
        increment = _rk_increment(method, order + 1)  # Psi = increment / dt = g + dt (...) + ...
        corrections = sum(DT ** (i - 1) * increment[i] for i in range(2, order + 2))
        return sp.expand(shift - corrections)
    s = len(method.alpha) - 1
    r = s - 1 if about is None else about
    lhs = sp.Integer(0)
    g_derivative = _g(0)  # (d/dt)^m g(u(t))
    for m in range(1, order + 2):
        c_m = sum(a * (j - r) ** m for j, a in enumerate(method.alpha))
        lhs += DT ** (m - 1) / math.factorial(m) * c_m * _u(m)
        if m <= order:
            g_derivative = _time_derivative(g_derivative)
            b_m = sum(b * (j - r) ** m for j, b in enumerate(method.beta))
            lhs -= DT**m / math.factorial(m) * b_m * g_derivative
    return sp.expand(sp.cancel(lhs / method.sigma1))


# ----------------------------------------------------------------------------------------------------------------
# Conversion to sympy Derivative objects, and the public API.


def _to_sympy(expr: sp.Expr) -> sp.Expr:
    """Replace u_m by d^m u/dt^m and g_n by the n-th derivative of g at u(t)."""
    u = U(T)
    subs = {}
    for s in expr.free_symbols:
        if s.name.startswith("_u"):
            subs[s] = sp.Derivative(u, (T, int(s.name[2:])))
        elif s.name.startswith("_g"):
            n = int(s.name[2:])
            subs[s] = G(u) if n == 0 else sp.Derivative(G(u), (u, n))
    return expr.xreplace(subs)


def _dt_polynomial(expr: sp.Expr) -> sp.Expr:
    """Collect in powers of dt, each coefficient factored (readable: (1 - k) dt/2 u'' rather than an expanded sum)."""
    poly = sp.expand(expr)
    return sp.Add(*(sp.factor(poly.coeff(DT, i)) * DT**i for i in range(sp.degree(poly, DT) + 1)))


def modified_equation(scheme: object, order: int = 1, form: str = "derivative", about: int | None = None) -> sp.Eq:
    """The modified equation of a scheme for u' = g(u), to dt**order.

    Args:
        scheme: a scheme name (``"euler"``, ``"rk2"``, ``"midpoint"``, ``"rk4"``, ``"ab2"``, ``"lm"``), a
            :class:`~odearch.schemes.ButcherTableau`, a :class:`~odearch.schemes.LinearMultistep`, a
            :class:`SymbolicMultistep` (coefficients may be symbols, e.g. :func:`lm_multistep`), an
            :class:`~odearch.schemes.LMScheme` (symbolic :data:`K` unless ``fixed_k``), or any object with
            explicit ``a, b`` or ``alpha, beta``.
        order: the highest power of dt kept, 0..:data:`MAX_ORDER`.
        form: ``"derivative"``: sum_m c_m dt^(m-1) u^(m) (+ g-terms for RK / multi-beta methods) = g(u), the
            paper's form (module docstring); ``"classical"``: u' = g_0(u) + dt g_1(u) + ... (backward error
            analysis).
        about: multistep methods only, derivative form: the state index (oldest = 0) to expand about; default
            s - 1, the newest known state (the paper's t_n).

    Returns:
        ``Eq(lhs, rhs)`` in ``U(T)``, its t-derivatives and the u-derivatives of ``G(U(T))``.

    Raises:
        ValueError: implicit or inconsistent scheme, a scheme without a scalar modified equation (PolyNet, RevNet),
            an order outside 0..MAX_ORDER, or an unknown form.
    """
    order = _check_order(order)
    method = _method(scheme)
    if form == "derivative":
        if about is not None and isinstance(method, _RK):
            raise ValueError("'about' applies to multistep methods only")
        lhs = _derivative_lhs(method, order, about)
        return sp.Eq(_to_sympy(_dt_polynomial(lhs)), G(U(T)), evaluate=False)
    if form == "classical":
        terms = _classical_terms(method, order)
        rhs = sum(DT**j * sp.factor(term) for j, term in enumerate(terms))
        return sp.Eq(sp.Derivative(U(T), T), _to_sympy(rhs), evaluate=False)
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def classical_corrections(scheme: object, order: int = 1) -> list[sp.Expr]:
    """[g_0, g_1, ..., g_order] of the classical modified equation u' = sum_j dt^j g_j(u), in ``G(U(T))`` terms.

    Forward Euler: [g, -g' g / 2, ...]; the LM step: g_0 = g / (1 + k).
    """
    terms = _classical_terms(_method(scheme), _check_order(order))
    return [_to_sympy(sp.factor(term)) for term in terms]


def _truncation_order_multistep(lmm: _Multistep, max_order: int) -> int:
    """The first power of dt in the local truncation error of the derivative form.

    The error is L(u) - g(u) evaluated on the exact solution of the ODE the scheme is consistent with,
    rho'(1) u' = sigma(1) g(u), i.e. u^(m) = D^(m-1) (c g) with c = sigma(1)/rho'(1) and D = c g d/dx.
    """
    lhs = _derivative_lhs(lmm, max_order)
    c = sp.cancel(lmm.sigma1 / lmm.rho1_prime)
    exact, lie = {}, c * _g(0)
    for m in range(1, max_order + 2):
        exact[_u(m)] = lie
        lie = sp.expand(c * _g(0) * _d_dx(lie))
    error = sp.expand(lhs.xreplace(exact) - _g(0))
    for p in range(max_order + 1):
        if not _is_zero(error.coeff(DT, p)):
            return p
    raise ValueError(f"{lmm.name!r}: order exceeds max_order = {max_order}")


def truncation_order(scheme: object, max_order: int = MAX_ORDER) -> int:
    """The order of accuracy: the smallest j >= 1 with a nonzero dt^j term.

    Runge-Kutta: the first nonzero correction g_j of the classical modified equation. Multistep (and LM) methods:
    the first nonzero dt^j of the derivative form's local truncation error, measured against the ODE the scheme is
    consistent with (rho'(1) u' = sigma(1) g; for LM (1 + k) u' = g), so that LM at symbolic k has order 1.

    Raises:
        ValueError: as :func:`modified_equation`, or if the order exceeds ``max_order``.
    """
    max_order = _check_order(max_order)
    method = _method(scheme)
    if isinstance(method, _Multistep):
        return _truncation_order_multistep(method, max_order)
    terms = _classical_terms(method, max_order, stop_at_nonzero=True)
    if len(terms) > 1 and not _is_zero(terms[-1]):
        return len(terms) - 1
    raise ValueError(f"{method.name!r}: order exceeds max_order = {max_order}")


# ----------------------------------------------------------------------------------------------------------------
# Printing.


def _prime_symbols(expr: sp.Expr) -> sp.Expr:
    """Replace d^m u/dt^m by a symbol u', u'', ... and g^(n)(u(t)) by g(u), g'(u), ... (for printing only)."""
    u = U(T)

    def name(base: str, n: int) -> str:
        return base + ("'" * n if n <= 3 else f"^{{({n})}}")

    subs: dict[sp.Expr, sp.Expr] = {}
    for d in expr.atoms(sp.Derivative):
        if d.expr == u:
            subs[d] = sp.Symbol(name("u", d.derivative_count))
        elif d.expr == G(u):
            subs[d] = sp.Symbol(name("g", d.derivative_count) + "(u)")
    expr = expr.xreplace(subs)
    return expr.xreplace({G(u): sp.Symbol("g(u)"), u: sp.Symbol("u")})


def to_latex(eq: sp.Eq) -> str:
    """LaTeX of a modified equation with primes: ``u' \\left(k + 1\\right) + ... = g(u)``."""
    return f"{sp.latex(_prime_symbols(eq.lhs))} = {sp.latex(_prime_symbols(eq.rhs))}"


def to_text(eq: sp.Eq) -> str:
    """One-line plain text of a modified equation with primes: ``u' + dt*u''/2 = g(u)``."""
    return f"{sp.sstr(_prime_symbols(eq.lhs))} = {sp.sstr(_prime_symbols(eq.rhs))}"
