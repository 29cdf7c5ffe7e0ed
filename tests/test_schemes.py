"""The architectures *are* these schemes: observed convergence orders on a linear ODE with a closed-form solution.

u' = A u, u(0) = u0, exact u(T) = expm(A T) u0. A Stage of N steps with f_n(u) = h A u, h = T / N, integrates it;
the observed order is log2(err(N) / err(2N)).
"""

import itertools
import math

import numpy as np
import pytest
import torch

from doctext import doc_text
from odearch import Stage
from odearch.schemes import AB2, EULER, HEUN, MIDPOINT, RK4, ButcherTableau, LinearMultistep, LMScheme, get_scheme
from odearch.schemes.lm import lm_k_by_stage

A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)  # a damped rotation
U0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
T = 1.0


def _integrate(scheme, n: int) -> torch.Tensor:
    h = T / n
    f = lambda u: h * (u @ A.T)  # noqa: E731  (f = h g, as the paper absorbs the step)
    return Stage(scheme, [f] * n)(U0.clone())


def _observed_orders(scheme, exact: torch.Tensor, ns=(16, 32, 64, 128)) -> list[float]:
    errs = [torch.linalg.vector_norm(_integrate(scheme, n) - exact).item() for n in ns]
    return [math.log2(e0 / e1) for e0, e1 in itertools.pairwise(errs)]


EXACT = torch.linalg.matrix_exp(A * T) @ U0


@pytest.mark.parametrize(
    ("scheme", "order"),
    [("euler", 1), ("rk2", 2), ("midpoint", 2), ("rk4", 4), ("ab2", 2)],
)
def test_observed_order(scheme: str, order: int) -> None:
    orders = _observed_orders(scheme, EXACT)
    assert abs(orders[-1] - order) < 0.15, orders


def test_user_tableau_ralston() -> None:
    ralston = ButcherTableau("ralston", a=((0, 0), (2 / 3, 0)), b=(1 / 4, 3 / 4), c=(0, 2 / 3), order=2)
    assert abs(_observed_orders(ralston, EXACT)[-1] - 2) < 0.15


def test_user_multistep_ab3_started_with_rk4() -> None:
    ab3 = LinearMultistep("ab3", alpha=(0, 0, -1, 1), beta=(5 / 12, -16 / 12, 23 / 12, 0), order=3, starter=RK4)
    assert abs(_observed_orders(ab3, EXACT, ns=(32, 64, 128, 256))[-1] - 3) < 0.2


@pytest.mark.parametrize("k", [-0.5, -0.2, 0.3])
def test_lm_converges_to_the_rescaled_ode(k: float) -> None:
    """The LM step with a fixed k is consistent with (1 + k) u' = g(u): it converges to expm(A T / (1 + k)) u0."""
    exact = torch.linalg.matrix_exp(A * T / (1 + k)) @ U0
    scheme = LMScheme(fixed_k=k)
    errs = [torch.linalg.vector_norm(_integrate(scheme, n) - exact).item() for n in (32, 64, 128, 256, 512)]
    orders = [math.log2(e0 / e1) for e0, e1 in itertools.pairwise(errs)]
    assert errs[-1] < 0.03 and abs(orders[-1] - 1) < 0.1, (errs, orders)  # first order, as LM is
    unscaled = torch.linalg.vector_norm(_integrate(scheme, 512) - EXACT).item()
    assert unscaled > 10 * errs[-1]  # it is *not* the solution of u' = g(u)


def test_lm_with_k_zero_is_forward_euler() -> None:
    assert torch.equal(_integrate(LMScheme(fixed_k=0.0), 20), _integrate("euler", 20))


def test_poly2_approximates_backward_euler() -> None:
    """u + F + F^2 is (I - F)^{-1} u to O(h^3) per step; as a method it is first order."""
    assert abs(_observed_orders("poly2", EXACT)[-1] - 1) < 0.15
    for n, tol in ((10, 2e-2), (100, 2e-5)):
        h = T / n
        one_step = Stage("poly2", [lambda u, h=h: h * (u @ A.T)])(U0.clone())
        backward = torch.linalg.solve(torch.eye(2, dtype=torch.float64) - h * A, U0)
        assert torch.linalg.vector_norm(one_step - backward).item() < tol


def test_rev_inverse_reconstructs_input_to_roundoff() -> None:
    torch.manual_seed(1)
    w = [torch.randn(3, 3, dtype=torch.float64) for _ in range(8)]
    fns = [(lambda y, a=w[2 * i]: torch.tanh(y @ a), lambda x, b=w[2 * i + 1]: torch.sin(x @ b)) for i in range(4)]
    stage = Stage("rev", fns)
    u0 = torch.randn(5, 6, dtype=torch.float64)
    u_n = stage(u0)
    assert not torch.allclose(u_n, u0)
    assert torch.allclose(stage.inverse(u_n), u0, rtol=0, atol=1e-13)


def test_rev_is_forward_euler_on_the_coupled_system() -> None:
    """X' = F(Y), Y' = G(X) with linear F, G: rev converges at first order to the coupled flow."""
    b = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)  # (X, Y)' = (Y, -X) on scalar halves
    exact = torch.linalg.matrix_exp(b * T) @ U0
    errs = []
    for n in (64, 128, 256):
        h = T / n
        fns = [(lambda y, h=h: h * y, lambda x, h=h: -h * x)] * n
        errs.append(torch.linalg.vector_norm(Stage("rev", fns)(U0.view(1, 2)).view(2) - exact).item())
    assert all(0.4 < e1 / e0 < 0.6 for e0, e1 in itertools.pairwise(errs)), errs


def test_fractal_reading_uses_a_function_per_inner_stage() -> None:
    f1 = lambda u: 0.1 * u**2  # noqa: E731
    f2 = lambda u: torch.sin(u)  # noqa: E731
    u = torch.tensor([0.3, -1.2], dtype=torch.float64)
    expected = u + 0.5 * f1(u) + 0.5 * f2(u + f1(u))  # Heun: k1 = f1(u), k2 = f2(u + k1)
    assert torch.allclose(Stage("rk2", [(f1, f2)])(u), expected, rtol=0, atol=1e-15)


def test_tableau_validation() -> None:
    with pytest.raises(ValueError, match="strictly lower triangular"):
        ButcherTableau("implicit", a=((0.5,),), b=(1.0,), c=(0.5,), order=1)
    with pytest.raises(ValueError, match="sum to"):
        ButcherTableau("bad_b", a=((0, 0), (1, 0)), b=(0.5, 0.6), c=(0, 1), order=2)
    with pytest.raises(ValueError, match="row 1"):
        ButcherTableau("bad_c", a=((0, 0), (1, 0)), b=(0.5, 0.5), c=(0, 0.5), order=2)
    with pytest.raises(ValueError, match="explicit"):
        LinearMultistep("implicit", alpha=(-1, 1), beta=(0.5, 0.5), order=2)
    with pytest.raises(ValueError, match="zero-stable"):
        LMScheme(fixed_k=-1.0)


def test_get_scheme_suggests_close_names() -> None:
    assert get_scheme("rk4") is RK4 and get_scheme(AB2) is AB2
    with pytest.raises(ValueError, match="rk4"):
        get_scheme("rk5")


def test_schemes_are_hashable_data() -> None:
    assert len({EULER, HEUN, MIDPOINT, RK4, AB2, LMScheme()}) == 6


# ------------------------------------------------------------------------------ validation from the coefficients
def test_dahlquist_unstable_method_is_refused() -> None:
    """alpha = (-5, 4, 1), beta = (2, 4, 0): consistent, 3rd-order by its order conditions, but rho = (xi - 1)(xi + 5)
    has the root -5, so its parasitic solution grows like 5^n. The root condition refuses it."""
    with pytest.raises(ValueError, match=r"not zero-stable, the root condition fails: rho has the root -5"):
        LinearMultistep("dahlquist", alpha=(-5, 4, 1), beta=(2, 4, 0))


def test_multiple_root_on_the_unit_circle_is_refused() -> None:
    # rho = (xi - 1)(xi + 1)^2, sigma(1) = rho'(1) = 4: consistent, but -1 is a double root
    with pytest.raises(ValueError, match=r"root condition fails: rho has the multiple root -1"):
        LinearMultistep("double_root", alpha=(-1, -1, 1, 1), beta=(0, 0, 4, 0))
    # leapfrog: simple roots +1 and -1 on the unit circle, zero-stable (weakly), order 2
    assert LinearMultistep("leapfrog", alpha=(-1, 0, 1), beta=(0, 2, 0)).order == 2


def test_rho_prime_one_must_equal_sigma_one() -> None:
    """u_{n+2} = u_{n+1} + 2 f(u_{n+1}): rho'(1) = 1, sigma(1) = 2, which would converge to u' = 2 g(u)."""
    with pytest.raises(ValueError, match=r"consistency condition rho'\(1\) = sigma\(1\) fails"):
        LinearMultistep("twice", alpha=(0, -1, 1), beta=(0, 2, 0))
    with pytest.raises(ValueError, match=r"consistency condition rho\(1\) = 0 fails"):
        LinearMultistep("drift", alpha=(0, -0.5, 1), beta=(0, 1, 0))


@pytest.mark.parametrize(
    ("scheme", "order"),
    [
        (LinearMultistep("ab1", alpha=(-1, 1), beta=(1, 0)), 1),
        (LinearMultistep("ab3", alpha=(0, 0, -1, 1), beta=(5 / 12, -16 / 12, 23 / 12, 0)), 3),
        (LinearMultistep("ab4", alpha=(0, 0, 0, -1, 1), beta=(-9 / 24, 37 / 24, -59 / 24, 55 / 24, 0)), 4),
        (ButcherTableau("euler2", a=((0, 0), (1, 0)), b=(1, 0), c=(0, 1)), 1),
        (
            ButcherTableau(
                "kutta3", a=((0, 0, 0), (1 / 2, 0, 0), (-1, 2, 0)), b=(1 / 6, 2 / 3, 1 / 6), c=(0, 1 / 2, 1)
            ),
            3,
        ),
        (
            ButcherTableau(
                "rule38",
                a=((0, 0, 0, 0), (1 / 3, 0, 0, 0), (-1 / 3, 1, 0, 0), (1, -1, 1, 0)),
                b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
                c=(0, 1 / 3, 2 / 3, 1),
            ),
            4,
        ),
        # order 3 on a linear ODE (b 1 = 1, b c = 1/2, b A c = 1/6 hold), order 2 in general: b c^2 = 1/2 != 1/3
        (
            ButcherTableau(
                "linear3", a=((0, 0, 0), (1, 0, 0), (1 / 3, 2 / 3, 0)), b=(1 / 2, 1 / 4, 1 / 4), c=(0, 1, 1)
            ),
            2,
        ),
        (EULER, 1),
        (HEUN, 2),
        (MIDPOINT, 2),
        (RK4, 4),
        (AB2, 2),
    ],
    ids=lambda x: getattr(x, "name", str(x)),
)
def test_order_is_computed_from_the_coefficients(scheme, order: int) -> None:
    assert scheme.order == order


def test_a_wrong_declared_order_is_refused() -> None:
    with pytest.raises(ValueError, match=r"declared order 3, but the order conditions .* order 2"):
        LinearMultistep("ab2", alpha=(0.0, -1.0, 1.0), beta=(-1 / 2, 3 / 2, 0.0), order=3)
    with pytest.raises(ValueError, match=r"declared order 2, but the order conditions .* order 1"):
        ButcherTableau("euler2", a=((0, 0), (1, 0)), b=(1, 0), c=(0, 1), order=2)


def test_poly2_is_consistent_only_where_g_of_0_is_0() -> None:
    """On u' = cos u (g(0) = 1) poly2 converges, at first order, to the solution of u' = cos u + 1, whose closed
    form is u(T) = 2 atan(T + tan(u0 / 2)), and not to that of u' = cos u, u(T) = gd(T + gd^-1(u0)); README says so."""
    u0 = torch.tensor([0.3], dtype=torch.float64)
    shifted = 2 * math.atan(T + math.tan(0.3 / 2))
    true = 2 * math.atan(math.tanh((T + math.asinh(math.tan(0.3))) / 2))  # gd(x) = 2 atan(tanh(x / 2))
    errs = []
    for n in (32, 64, 128, 256):
        u = Stage("poly2", [lambda u, h=T / n: h * torch.cos(u)] * n)(u0.clone()).item()
        errs.append(abs(u - shifted))
        assert abs(u - true) > 0.3
    assert all(1.8 < e0 / e1 < 2.2 for e0, e1 in itertools.pairwise(errs)), errs  # first order
    readme = doc_text()
    assert "poly2's first order needs g(0) = 0" in readme and "u' = cos u + 1" in readme


def test_lm_k_read_out_is_exact_keeps_order_and_checks_shapes() -> None:
    """The one k_n read-out (model, state dict and checkpoint all use it): float32 values come back exactly."""
    k = torch.tensor([-0.1, -0.03], requires_grad=True)  # float32: -0.1 is -0.10000000149011612
    per_channel = np.array([[1.05, 1.0]], dtype=np.float32)
    items = [("stages.1.lm_k", k), ("stages.1.blocks.0.conv1.weight", torch.zeros(3)), ("stages.0.lm_k", per_channel)]
    out = lm_k_by_stage(items, suffix=".lm_k")
    assert list(out) == ["stages.1", "stages.0"]
    assert out["stages.1"] == [float(x) for x in k.detach()] and out["stages.1"][0] != -0.1
    assert out["stages.0"] == [[float(x) for x in per_channel[0]]]
    assert list(lm_k_by_stage([("layer1", k)])) == ["layer1"]  # no suffix: the names as given
    with pytest.raises(ValueError, match=r"stages.2.lm_k: expected shape \(n,\) or \(n, C\)"):
        lm_k_by_stage([("stages.2.lm_k", torch.zeros(2, 2, 2))], suffix=".lm_k")
