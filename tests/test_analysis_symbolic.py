"""Symbolic modified equations: the paper's first-order results, orders of accuracy, cross-checks between the two
forms and against the exact linear theory, and a numerical check of the LM modified equation."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import sympy as sp

from doctext import doc_text
from odearch.analysis import (
    DT,
    G,
    K,
    SymbolicMultistep,
    T,
    U,
    classical_corrections,
    lm_multistep,
    modified_equation,
    to_latex,
    to_text,
    truncation_order,
)
from odearch.schemes import AB2, EULER, HEUN, RK4, ButcherTableau, LinearMultistep, LMScheme, PolyScheme, RevScheme

u = U(T)
du = [u] + [sp.Derivative(u, (T, m)) for m in range(1, 8)]  # du[m] = u^(m)
lam = sp.Symbol("lambda")

RALSTON = ButcherTableau("ralston", a=((0, 0), (2 / 3, 0)), b=(1 / 4, 3 / 4), c=(0, 2 / 3), order=2)
KUTTA3 = ButcherTableau(
    "kutta3", a=((0, 0, 0), (1 / 2, 0, 0), (-1, 2, 0)), b=(1 / 6, 2 / 3, 1 / 6), c=(0, 1 / 2, 1), order=3
)
AB3 = LinearMultistep("ab3", alpha=(0, 0, -1, 1), beta=(5 / 12, -16 / 12, 23 / 12, 0), order=3)


def same(a: sp.Expr, b: sp.Expr) -> bool:
    """Exact equality; the cheap canonical form first, sympy.simplify as the fallback."""
    difference = a - b
    return sp.expand(sp.cancel(difference)) == 0 or sp.simplify(difference) == 0


def gprime(n: int) -> sp.Expr:
    """The n-th derivative of g at u(t), as the module writes it."""
    return sp.Derivative(G(u), (u, n))


# ---- the paper's first-order results ------------------------------------------------------------------------


def test_forward_euler_derivative_form_is_the_papers() -> None:
    eq = modified_equation("euler", order=1)
    assert same(eq.lhs, du[1] + DT / 2 * du[2])
    assert eq.rhs == G(u)


@pytest.mark.parametrize("scheme", ["lm", LMScheme(), lm_multistep()], ids=["name", "LMScheme", "lm_multistep"])
def test_lm_derivative_form_is_the_papers(scheme: object) -> None:
    eq = modified_equation(scheme, order=1)
    assert same(eq.lhs, (1 + K) * du[1] + (1 - K) * DT / 2 * du[2])
    assert eq.rhs == G(u)


def test_lm_second_order_derivative_form() -> None:
    # u(t+dt) - (1-k) u(t) - k u(t-dt) = (1+k) dt u' + (1-k) dt^2/2 u'' + (1+k) dt^3/6 u''' + ...
    eq = modified_equation("lm", order=2)
    assert same(eq.lhs, (1 + K) * du[1] + (1 - K) * DT / 2 * du[2] + (1 + K) * DT**2 / 6 * du[3])


def test_lm_expanded_about_the_older_state() -> None:
    # about t_{n-1}: u(t+2dt) - (1-k) u(t+dt) - k u(t) = (1+k) dt u' + (k+3) dt^2/2 u'' + ..., and
    # g(u(t+dt)) - g(u(t)) = dt g'(u) u' + ... moves to the left side
    eq = modified_equation("lm", order=1, about=0)
    assert same(eq.lhs, (1 + K) * du[1] + (K + 3) * DT / 2 * du[2] - DT * gprime(1) * du[1])
    with pytest.raises(ValueError, match="about"):
        modified_equation("euler", about=0)


def test_lm_at_k_zero_is_forward_euler() -> None:
    for form in ("derivative", "classical"):
        lm = modified_equation(LMScheme(fixed_k=0.0), order=3, form=form)
        euler = modified_equation(EULER, order=3, form=form)
        assert same(lm.lhs - lm.rhs, euler.lhs - euler.rhs)


def test_forward_euler_classical_correction() -> None:
    g0, g1, g2 = classical_corrections("euler", order=2)
    assert g0 == G(u)
    assert same(g1, -gprime(1) * G(u) / 2)
    assert same(g2, G(u) * (gprime(1) ** 2 / 3 + G(u) * gprime(2) / 12))  # Hairer-Lubich-Wanner IX.1
    eq = modified_equation("euler", order=1, form="classical")
    assert eq.lhs == du[1]
    assert same(eq.rhs, G(u) - DT / 2 * gprime(1) * G(u))


def test_lm_classical_leading_term_and_correction() -> None:
    g0, g1 = classical_corrections(LMScheme(), order=1)
    assert same(g0, G(u) / (1 + K))  # consistent with (1 + k) u' = g
    # from the derivative form: u' = g/(1+k) - (1-k) dt/(2(1+k)) u'', u'' = g' g/(1+k)^2
    assert same(g1, -(1 - K) / (2 * (1 + K) ** 3) * gprime(1) * G(u))


def test_heun_derivative_form_has_the_g_correction() -> None:
    # Heun: Psi(u) = g + (dt/2) g' g + O(dt^2), moved to the left side
    eq = modified_equation(HEUN, order=1)
    assert same(eq.lhs, du[1] + DT / 2 * du[2] - DT / 2 * gprime(1) * G(u))


# ---- orders of accuracy -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "order"),
    [
        ("euler", 1),
        ("rk2", 2),
        ("midpoint", 2),
        ("rk4", 4),
        ("ab2", 2),
        (RALSTON, 2),
        (KUTTA3, 3),
        (AB3, 3),
        ("lm", 1),
        (LMScheme(fixed_k=-0.3), 1),
        # k = 1: u_{n+1} = u_{n-1} + dt g(u_n), the leapfrog scheme for 2 u' = g: order 2
        (lm_multistep(sp.Integer(1)), 2),
    ],
    ids=lambda p: p if isinstance(p, (str, int)) else getattr(p, "name", str(p)),
)
def test_truncation_order(scheme: object, order: int) -> None:
    assert truncation_order(scheme) == order


def test_truncation_order_matches_the_declared_order_of_every_registered_scheme() -> None:
    for scheme in (EULER, HEUN, RK4, AB2, RALSTON, KUTTA3, AB3):
        assert truncation_order(scheme) == scheme.order, scheme.name


@pytest.mark.parametrize("scheme", ["ab2", "lm", AB3])
def test_multistep_order_from_both_forms_agrees(scheme: object) -> None:
    p = truncation_order(scheme)
    terms = classical_corrections(scheme, order=p)
    assert all(same(term, 0) for term in terms[1:p])
    assert not same(terms[p], 0)


# ---- cross-checks -------------------------------------------------------------------------------------------


def time_derivatives(field: sp.Expr, count: int) -> list[sp.Expr]:
    """[u, u', u'', ...] along u' = field(u(t)), differentiated by sympy itself."""
    out = [u, field]
    for _ in range(count - 1):
        out.append(sp.expand(sp.diff(out[-1], T).xreplace({du[1]: field})))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("scheme", "p"), [("euler", 3), ("rk2", 2), ("midpoint", 2), ("ab2", 2), ("lm", 2)])
def test_classical_flow_satisfies_the_derivative_form(scheme: str, p: int) -> None:
    """Along the classical modified ODE, the derivative form holds up to O(dt^(p+1))."""
    field = modified_equation(scheme, order=p, form="classical").rhs
    lhs = modified_equation(scheme, order=p).lhs
    derivs = time_derivatives(field, p + 1)
    lhs = lhs.xreplace({du[m]: derivs[m] for m in range(1, p + 2)})  # exact atoms: u'' is not touched by u'
    residual = sp.expand(lhs - G(u))
    for j in range(p + 1):
        assert same(residual.coeff(DT, j), 0), (scheme, j)


def linear(expr: sp.Expr) -> sp.Expr:
    """Substitute g(u) = lambda u."""
    x = sp.Symbol("x")
    return sp.expand(expr.replace(G, sp.Lambda(x, lam * x)).doit())


def stability_function(tableau: ButcherTableau) -> sp.Expr:
    z = sp.Symbol("z")
    a = sp.Matrix([[sp.nsimplify(x, rational=True) for x in row] for row in tableau.a])
    b = sp.Matrix([sp.nsimplify(x, rational=True) for x in tableau.b])
    one = sp.ones(len(tableau.b), 1)
    return (1 + z * (b.T * (sp.eye(len(tableau.b)) - z * a).inv() * one)[0]).subs(z, lam * DT)


@pytest.mark.slow
@pytest.mark.parametrize("tableau", [EULER, HEUN, RK4, KUTTA3], ids=lambda t: t.name)
def test_classical_form_matches_the_exact_linear_theory(tableau: ButcherTableau) -> None:
    """For g = lambda u the modified ODE is exact: u' = (ln R(lambda dt) / dt) u, R the stability function."""
    p = 4
    rhs = linear(modified_equation(tableau, order=p, form="classical").rhs) / u
    exact = sp.series(sp.log(stability_function(tableau)) / DT, DT, 0, p + 1).removeO()
    assert same(rhs, exact)


def test_lm_classical_form_follows_the_principal_root() -> None:
    """For g = lambda u the LM step has principal root xi_1 of xi^2 - (1 - k + z) xi - k; u' = (ln xi_1 / dt) u."""
    k, p = sp.Rational(-3, 10), 3
    z = lam * DT
    xi = (1 - k + z + sp.sqrt((1 - k + z) ** 2 + 4 * k)) / 2  # the root that is 1 at z = 0 (for k > -1)
    exact = sp.series(sp.log(xi) / DT, DT, 0, p + 1).removeO()
    rhs = linear(modified_equation(lm_multistep(k), order=p, form="classical").rhs) / u
    assert same(rhs, exact)


# ---- the numerical check (paper, "Modified equations") ------------------------------------------------------


def lm_trajectory(lam_: float, k: float, dt: float, steps: int) -> np.ndarray:
    """LM two-step scheme on u' = lam u, u_0 = 1, first step forward Euler (u_{-1} := u_0, as the network does)."""
    us = np.empty(steps + 1)
    prev, cur = 1.0, 1.0
    us[0] = cur
    for n in range(steps):
        prev, cur = cur, (1 - k) * cur + k * prev + dt * lam_ * cur
        us[n + 1] = cur
    return us


def predicted_rate(lam_: float, k: float, dt: float, order: int | None) -> float:
    """The growth rate r of u = exp(r t) that the modified equation of the given order predicts (None: the
    unmodified (1 + k) u' = lam u); for the characteristic polynomial, the root nearest lam/(1 + k)."""
    if order is None:
        return lam_ / (1 + k)
    r = sp.Symbol("r")
    lhs = modified_equation(LMScheme(fixed_k=k), order=order).lhs
    for m in range(order + 1, 0, -1):
        lhs = lhs.subs(du[m], r**m)  # u = exp(r t): u^(m) = r^m u; u cancels, set to 1
    poly = sp.Poly(sp.expand(lhs.subs(DT, sp.nsimplify(dt)) - lam_), r)
    roots = np.roots([float(c) for c in poly.all_coeffs()])
    return float(min(roots, key=lambda root: abs(root - lam_ / (1 + k))).real)


def rate_errors(dt: float, lam_: float = -1.0, k: float = -0.3, horizon: float = 4.0) -> dict[int | None, float]:
    """|measured drift rate - predicted rate|; the rate is measured over the second half of [0, horizon], where the
    parasitic mode (-k)^n has died out and the start-up amplitude error cancels in the ratio."""
    steps = round(horizon / dt)
    us = lm_trajectory(lam_, k, dt, steps)
    half = steps // 2
    measured = math.log(us[steps] / us[half]) / ((steps - half) * dt)
    return {order: abs(measured - predicted_rate(lam_, k, dt, order)) for order in (None, 1, 2)}


def test_modified_equation_predicts_the_lm_drift() -> None:
    dts = [0.05, 0.025, 0.0125]
    errors = [rate_errors(dt) for dt in dts]
    ratios = [e[None] / e[1] for e in errors]
    assert all(ratio >= 5 for ratio in ratios), ratios
    # unmodified O(dt), first-order modified O(dt^2), second-order modified O(dt^3): halving dt divides by 2, 4, 8
    for coarse, fine in itertools.pairwise(errors):
        assert 1.8 < coarse[None] / fine[None] < 2.4
        assert 3.5 < coarse[1] / fine[1] < 5.0
        assert coarse[2] / fine[2] > 6.5
        assert fine[2] < fine[1] < fine[None]
    assert ratios[1] > 1.7 * ratios[0] and ratios[2] > 1.7 * ratios[1]


def test_drift_ratio_is_modified_against_unmodified_not_lm_against_euler() -> None:
    """The ratio e[None] / e[1] above is |measured LM rate - unmodified prediction| over |measured LM rate - first-order
    modified prediction|: 64 / 142 / 298 at dt = 0.05 / 0.025 / 0.0125, growing as 1 / dt (O(dt) over O(dt^2)). The
    same ratio for forward Euler (measured rate log(1 + dt lam) / dt; unmodified lam; modified r + (dt/2) r^2 = lam)
    is 55 / 115 / 235: it says how much the modified equation adds, not that LM drifts less than Euler. The README
    quotes both."""
    lam_ = -1.0
    lm, euler = [], []
    for dt in (0.05, 0.025, 0.0125):
        e = rate_errors(dt, lam_=lam_)
        lm.append(round(e[None] / e[1]))
        measured = math.log(1 + dt * lam_) / dt
        modified = (-1 + math.sqrt(1 + 2 * dt * lam_)) / dt  # the root of (dt/2) r^2 + r - lam near lam
        euler.append(round(abs(measured - lam_) / abs(measured - modified)))
    assert lm == [64, 142, 298] and euler == [55, 115, 235]
    readme = doc_text()
    assert "64 / 142 / 298 times more accurately than the unmodified" in readme
    assert "not LM with forward Euler (the same ratio for forward Euler" in readme and "is 55 / 115 / 235" in readme


# ---- printing and errors ------------------------------------------------------------------------------------


def test_text_and_latex() -> None:
    assert to_text(modified_equation("euler")) == "dt*u''/2 + u' = g(u)"
    latex = to_latex(modified_equation("lm"))
    assert "u''" in latex and "u'" in latex and latex.endswith("= g(u)")
    assert "g'(u)" in to_text(modified_equation("euler", form="classical"))


@pytest.mark.parametrize(
    "scheme",
    [
        SimpleNamespace(name="implicit_euler", a=((1,),), b=(1,)),  # backward Euler
        SymbolicMultistep("trapezoid", alpha=(-1, 1), beta=(sp.Rational(1, 2), sp.Rational(1, 2))),
        SimpleNamespace(name="bad_weights", a=((0,),), b=(sp.Rational(1, 2),)),
        SymbolicMultistep("bad_rho", alpha=(1, 1), beta=(1, 0)),
        PolyScheme(),
        RevScheme(),
        42,
    ],
    ids=["implicit_rk", "implicit_multistep", "inconsistent_rk", "inconsistent_multistep", "poly", "rev", "int"],
)
def test_unanalysable_schemes_are_rejected(scheme: object) -> None:
    with pytest.raises(ValueError):
        modified_equation(scheme)


@pytest.mark.parametrize("order", [-1, 99, 1.5, True, "1"])
def test_bad_order_is_rejected(order: object) -> None:
    with pytest.raises(ValueError, match="order"):
        modified_equation("euler", order=order)


def test_bad_form_and_unknown_scheme_are_rejected() -> None:
    with pytest.raises(ValueError, match="form"):
        modified_equation("euler", form="integral")
    with pytest.raises(ValueError, match="unknown scheme"):
        modified_equation("eulr")
    with pytest.raises(ValueError, match="max_order"):
        truncation_order("rk4", max_order=3)
