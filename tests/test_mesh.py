"""Depth as a mesh (issue 34): ``odearch.refine`` / ``odearch.coarsen``.

Shapes against the registry's deeper / shallower nets, exact round trips on every scheme family and on the shipped
weights, convergence of a refined stage to the ODE solution at a measured order, the parameter map an optimizer
follows, and the refusals.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import odearch
from odearch import Stage, coarsen, refine
from odearch.mesh import ScaledResidual, remesh
from odearch.models._pretrained import read_registry
from odearch.schemes import LMScheme

A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)  # a damped rotation, as tests/test_schemes.py
B = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
U0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
T = 1.0


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear(weight: torch.Tensor) -> nn.Linear:
    """f(u) = u W^T, a residual function whose last (only) layer takes the step size."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def linear_stage(scheme: object, n: int, g: torch.Tensor = A, per_step: int = 1) -> Stage:
    """A stage integrating u' = g u over [0, T] in ``n`` mesh steps, f = h g, after a first block f_0 = 0 (the
    first block stays one step under refinement, so it must not carry any of the interval)."""
    h = T / n
    zero = linear(torch.zeros_like(g))
    step = (lambda: tuple(linear(h * g) for _ in range(per_step))) if per_step > 1 else (lambda: linear(h * g))
    return Stage(scheme, [zero, *(step() for _ in range(n))])


def rev_stage(n: int) -> Stage:
    """X' = Y, Y' = -X on the two halves of a (1, 2) state, n mesh steps after a zero first step."""
    h = T / n

    def pair(a: float, b: float) -> tuple[nn.Linear, nn.Linear]:
        return linear(torch.tensor([[a]], dtype=torch.float64)), linear(torch.tensor([[b]], dtype=torch.float64))

    return Stage("rev", [pair(0.0, 0.0), *(pair(h, -h) for _ in range(n))])


def orders(errors: list[float]) -> list[float]:
    return [math.log2(e0 / e1) for e0, e1 in itertools.pairwise(errors)]


def refined_errors(stage: Stage, exact: torch.Tensor, factors=(1, 2, 4, 8)) -> list[float]:
    with torch.no_grad():
        return [torch.linalg.vector_norm(refine(stage, r)(U0) - exact).item() for r in factors]


# ------------------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize(
    ("shallow", "factor", "deep"),
    [
        ("lm_resnet20", 2, "lm_resnet32"),
        ("lm_resnet20", 4, "lm_resnet56"),
        ("preact_resnet20", 2, "preact_resnet32"),
        ("resnet20", 4, "resnet56"),
        ("rev_resnet20", 4, "rev_resnet56"),
    ],
)
def test_refine_gives_the_deeper_registered_net_and_coarsen_goes_back(shallow: str, factor: int, deep: str) -> None:
    """1 + 2 blocks a stage refined by 2 is 1 + 4 (ResNet-32), by 4 is 1 + 8 (ResNet-56): same keys, shapes and
    parameter count; coarsening the deep net gives the shallow one's."""
    small, big = odearch.create_model(shallow), odearch.create_model(deep)
    for made, target in ((refine(small, factor), big), (coarsen(big, factor), small)):
        got, want = made.state_dict(), target.state_dict()
        assert list(got) == list(want)
        assert all(got[k].shape == want[k].shape for k in want)
        assert count(made) == count(target)


def test_the_input_model_is_left_as_it_was_and_shares_nothing() -> None:
    model = odearch.create_model("lm_resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = refine(model, 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    old_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not old_ptrs & {p.data_ptr() for p in new.parameters()}


# ------------------------------------------------------------------------------------------------- round trips
ROUND_TRIP = [
    "resnet20",
    "preact_resnet20",
    "lm_resnet20",
    "rk2_resnet20",
    "rk4_resnet20",
    "fractal_resnet20",
    "ab2_resnet20",
    "poly2_resnet20",
    "rev_resnet20",
    "resnext29_8x64d",
    "shake_resnet26_2x32d",
]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_refine_then_coarsen_by_two_is_the_same_network_bit_for_bit(name: str) -> None:
    """Copies of f / 2 averaged and scaled by 2 are f again exactly (powers of two); BatchNorm statistics too."""
    torch.manual_seed(0)
    model = odearch.create_model(name, num_classes=10).eval()
    back = coarsen(refine(model, 2), 2).eval()
    assert list(back.state_dict()) == list(model.state_dict())
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_shipped_weights_refined_and_coarsened_back_compute_the_same_function() -> None:
    """On the trained LM-ResNet-20: factor 2 exactly; factor 3 (scales 1/3 and 3 round) to float tolerance. The
    refined net itself is a different network (a finer mesh), close to the trained one but not equal."""
    if "lm_resnet20.cifar10_s0" not in read_registry():
        pytest.skip("lm_resnet20.cifar10_s0 is not shipped")
    model = odearch.create_model("lm_resnet20.cifar10_s0", pretrained=True).eval()
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(coarsen(refine(model, 2), 2).eval()(x), out)
        torch.testing.assert_close(coarsen(refine(model, 3), 3).eval()(x), out, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(refine(model, 2).eval()(x), out, atol=1e-3)


def test_lm_k_is_copied_and_averaged() -> None:
    torch.manual_seed(0)
    model = odearch.create_model("lm_resnet56")
    k = odearch.lm_coefficients(model)
    fine = odearch.lm_coefficients(refine(model, 2))
    assert all(fine[s] == [v for v in k[s] for _ in range(2)] for s in k)
    coarse = odearch.lm_coefficients(coarsen(model, 2))
    for s in k:
        want = torch.tensor(k[s]).view(-1, 2).mean(1)
        torch.testing.assert_close(torch.tensor(coarse[s]), want, rtol=0, atol=1e-7)
    per_channel = Stage("lm_channel", [nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)], channels=4)
    assert refine(per_channel, 3).lm_k.shape == (6, 4)
    assert torch.equal(refine(per_channel, 3).lm_k[3:6], per_channel.lm_k[1].expand(3, 4))


def test_survival_is_copied_and_averaged() -> None:
    stage = Stage("euler", [nn.Linear(2, 2) for _ in range(5)], survival=(1.0, 0.9, 0.8, 0.7, 0.6))
    assert refine(stage, 2).survival == (1.0, 0.9, 0.9, 0.8, 0.8, 0.7, 0.7, 0.6, 0.6)
    assert coarsen(stage, 2).survival == pytest.approx((1.0, 0.85, 0.65))


def test_torchvision_resnet_converted_to_lm_refines_with_its_names() -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    lm = odearch.to_lm(tv.models.resnet18(num_classes=10), k_init=(-0.1, 0.0)).eval()
    fine = refine(lm, 2).eval()
    assert "layer1.2.conv1.weight" in fine.state_dict() and "layer1.3.conv1.weight" not in fine.state_dict()
    assert fine.layer2.lm_k.shape == (2,) and torch.equal(fine.layer2.lm_k, lm.layer2.lm_k.repeat(2))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(coarsen(fine, 2).eval()(x), lm(x))


# --------------------------------------------------------------------------------------------- the step size
def test_a_function_without_a_last_affine_layer_is_wrapped_and_unwrapped() -> None:
    """f = tanh(W u) ends in a non-linearity: the step size is an explicit h (ScaledResidual), removed again when
    coarsening brings h back to 1."""
    torch.manual_seed(0)
    f0, f1 = nn.Sequential(nn.Linear(3, 3), nn.Tanh()), nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    stage = Stage("euler", [f0, f1])
    fine = refine(stage, 2)
    assert [type(f) for f in fine.step_fns] == [nn.Sequential, ScaledResidual, ScaledResidual]
    u = torch.randn(4, 3)
    with torch.no_grad():
        u1 = u + f0(u)
        u2 = u1 + 0.5 * f1(u1)
        torch.testing.assert_close(fine(u), u2 + 0.5 * f1(u2), rtol=0, atol=1e-6)
        back = coarsen(fine, 2)
        assert type(back.step_fns[1]) is nn.Sequential and torch.equal(back(u), stage(u))


def test_the_scale_lands_on_the_last_layer_conv_or_batchnorm() -> None:
    """Pre-activation blocks end in a convolution, post-activation ones in a BatchNorm: that layer is scaled."""
    torch.manual_seed(0)
    pre, post = odearch.create_model("preact_resnet20"), odearch.create_model("resnet20")
    fine_pre, fine_post = refine(pre, 2), refine(post, 2)
    torch.testing.assert_close(fine_pre.stages[1].blocks[1].conv2.weight, pre.stages[1].blocks[1].conv2.weight / 2)
    assert torch.equal(fine_pre.stages[1].blocks[1].conv1.weight, pre.stages[1].blocks[1].conv1.weight)
    b_old, b_new = post.stages[1].blocks[1].bn2, fine_post.stages[1].blocks[2].bn2
    assert torch.equal(b_new.weight, b_old.weight / 2) and torch.equal(b_new.bias, b_old.bias / 2)


def test_tied_residual_functions_stay_tied() -> None:
    """A function shared by every step (a weight-tied ODE net) stays shared; untied ones give independent copies."""
    shared = nn.Linear(2, 2)
    fine = refine(Stage("euler", [nn.Linear(2, 2), shared, shared]), 2)
    assert len({id(f) for f in fine.step_fns[1:]}) == 1
    fine = refine(Stage("euler", [nn.Linear(2, 2), nn.Linear(2, 2)]), 3)
    assert len({id(f) for f in fine.step_fns[1:]}) == 3


# ----------------------------------------------------------------------------------------------- convergence
EXACT = torch.linalg.matrix_exp(A * T) @ U0.view(2)


@pytest.mark.parametrize(
    ("scheme", "per_step", "order"),
    [("euler", 1, 1), ("rk2", 1, 2), ("rk2", 2, 2), ("rk4", 1, 4), ("poly2", 1, 1), ("ab2", 1, 1)],
)
def test_a_refined_stage_converges_to_the_ode_solution_at_the_scheme_order(
    scheme: str, per_step: int, order: int
) -> None:
    """u' = A u over [0, 1] in 4 steps, refined by 1, 2, 4, 8: the error falls at the scheme's order (rk2 with one
    function per inner stage is FractalNet). ab2 is first order here: the mesh inherits the first block's f_0 = 0
    as its history, a first-order start that no refinement of the mesh removes."""
    errs = refined_errors(linear_stage(scheme, 4, per_step=per_step), EXACT)
    assert abs(orders(errs)[-1] - order) < 0.2, (errs, orders(errs))
    assert errs[-1] < errs[0] / 2 ** (2 * order)


@pytest.mark.parametrize("k", [-0.5, 0.3])
def test_refined_lm_keeps_the_leading_coefficient_of_its_modified_equation(k: float) -> None:
    """Fixed k copied to every new step: the refined stage converges at first order to (1 + k) u' = A u, the
    equation the coarse stage approximates, not to u' = A u."""
    exact = torch.linalg.matrix_exp(A * T / (1 + k)) @ U0.view(2)
    errs = refined_errors(linear_stage(LMScheme(fixed_k=k), 8), exact, factors=(8, 16, 32, 64))
    assert abs(orders(errs)[-1] - 1) < 0.1 and errs[-1] < 0.03, errs
    with torch.no_grad():
        assert torch.linalg.vector_norm(refine(linear_stage(LMScheme(fixed_k=k), 8), 64)(U0) - EXACT) > 10 * errs[-1]


def test_a_refined_revnet_converges_to_the_coupled_flow() -> None:
    exact = torch.linalg.matrix_exp(torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64) * T) @ U0.view(2)
    errs = refined_errors(rev_stage(8), exact)
    assert all(abs(o - 1) < 0.15 for o in orders(errs)), errs


def test_copying_a_time_dependent_field_is_first_order_even_for_rk4() -> None:
    """g(t, u) = (A + t B) u sampled at each coarse step's t_n: refining rk4 stops improving at the interpolation
    error of the coarse mesh (a plateau), and that plateau halves when the coarse mesh doubles (first order)."""
    ref = _rk4_reference(lambda t: A + t * B, 4096)

    def coarse(n: int) -> Stage:
        h = T / n
        return Stage("rk4", [linear(torch.zeros_like(A)), *(linear(h * (A + (i * h) * B)) for i in range(n))])

    plateau = refined_errors(coarse(8), ref, factors=(4, 8, 16))
    assert plateau[-1] / plateau[0] > 0.9, plateau  # no gain from refining further
    by_base = [refined_errors(coarse(n), ref, factors=(16,))[0] for n in (8, 16, 32)]
    assert all(abs(o - 1) < 0.15 for o in orders(by_base)), by_base


def _rk4_reference(a_of_t, n: int) -> torch.Tensor:
    u, h = U0.view(2).clone(), T / n
    for i in range(n):
        t = i * h
        k1 = a_of_t(t) @ u
        k2 = a_of_t(t + h / 2) @ (u + h / 2 * k1)
        k3 = a_of_t(t + h / 2) @ (u + h / 2 * k2)
        k4 = a_of_t(t + h) @ (u + h * k3)
        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return u


# ---------------------------------------------------------------------------------------------- parameter map
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("lm_resnet20", "refine"),
        ("lm_resnet56", "coarsen"),
        ("rev_resnet56", "coarsen"),
        ("fractal_resnet20", "refine"),
    ],
)
def test_the_parameter_map_rebuilds_every_new_parameter_from_the_old(name: str, kind: str) -> None:
    """For every parameter of the new model, map.combine(old parameters) is its value: the linear map an optimizer's
    momentum follows (odearch train --refine-at)."""
    torch.manual_seed(0)
    model = odearch.create_model(name)
    new, maps = remesh(model, 2, kind)
    assert set(maps) == set(new.parameters())
    old = set(model.parameters())
    for p, m in maps.items():
        assert set(m.sources) <= old
        assert torch.equal(m.combine([s.detach() for s in m.sources]), p.detach()), p.shape


# ------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: refine(odearch.create_model("lm_resnet20"), 0), "factor must be an integer >= 1"),
        (lambda: refine(odearch.create_model("lm_resnet20"), 1.5), "factor must be an integer >= 1"),
        (lambda: coarsen(odearch.create_model("lm_resnet20"), 4), "2 mesh steps .* not divisible by 4"),
        (lambda: refine(odearch.create_model("dense_resnet20"), 2), "dense stage"),
        (lambda: refine(nn.Linear(2, 2), 2), "has no odearch Stage"),
        (lambda: refine(Stage("euler", [nn.Linear(2, 2)]), 2), "one step only"),
        (lambda: remesh(odearch.create_model("resnet20"), 2, "halve"), "kind must be one of"),
    ],
)
def test_bad_requests_are_refused_in_one_sentence(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
