"""Stochastic training as stochastic dynamics: stochastic depth, noise injection, shake-shake.

Monte-Carlo checks use linear residual functions in float64, for which the training-time mean is exactly the
evaluation network; their tolerance is 4 standard errors of the sample mean (from the sample variance), so a
missing 1/p scaling, a biased draw or a wrong history would be off by many standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import odearch
from conftest import n_params
from odearch import Stage
from odearch.models import create_model
from odearch.nn import ShakeShake, drop_path, linear_survival, shake_shake
from odearch.nn.drop import DropPath
from odearch.nn.shake import shake_coefficients
from odearch.schemes import LMScheme

D = 4  # state width of the toy problems


def _linear(scale: float = 0.4) -> tuple[Tensor, callable]:
    a = scale * torch.randn(D, D, dtype=torch.float64) / math.sqrt(D)
    return a, (lambda u, a=a: u @ a.T)


def _linear_fns(scheme: str, n: int) -> list:
    """n linear residual functions per the scheme's step signature (a pair of half-width maps for rev)."""
    if scheme == "rev":
        out = []
        for _ in range(n):
            f, g = (0.5 * torch.randn(D // 2, D // 2, dtype=torch.float64) for _ in range(2))
            out.append(((lambda y, f=f: y @ f.T), (lambda x, g=g: x @ g.T)))
        return out
    return [_linear()[1] for _ in range(n)]


def _capture_output_grad(module: nn.Module, store: dict, key: object) -> None:
    """store[key] = the gradient reaching ``module``'s output in the next backward pass."""

    def hook(mod: nn.Module, inp: object, out: Tensor) -> None:
        out.register_hook(lambda g: store.__setitem__(key, g))

    module.register_forward_hook(hook)


def _assert_mc_mean(samples: Tensor, expected: Tensor) -> None:
    """|mean - expected| <= 4 standard errors, elementwise; samples: (M, ...) independent realisations."""
    m = samples.shape[0]
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(m)
    err = (mean - expected).abs()
    assert (err <= 4 * se + 1e-12).all(), f"max error / SE = {(err / (se + 1e-300)).max():.2f}"
    assert (se > 0).any()  # the test is not vacuous: the training passes were random


# ---------------------------------------------------------------------------------------------- linear decay rule
def test_linear_survival_rule() -> None:
    """p_i = 1 - i / (n - 1)(1 - p_L): first block 1, last p_L, equal steps (official LM-ResNet code)."""
    p = linear_survival(27, 0.8)
    assert len(p) == 27 and p[0] == 1.0 and p[-1] == pytest.approx(0.8)
    steps = torch.tensor(p, dtype=torch.float64).diff()
    assert torch.allclose(steps, torch.full((26,), -0.2 / 26, dtype=torch.float64))
    assert linear_survival(1, 0.5) == (0.5,) and linear_survival(5, 1.0) == (1.0,) * 5
    with pytest.raises(ValueError, match="p_last"):
        linear_survival(5, 0.0)


@pytest.mark.parametrize(("name", "n", "p_last"), [("lm_resnet56_sd", 27, 0.8), ("lm_resnet110_sd", 54, 0.5)])
def test_models_decay_over_the_whole_network(name: str, n: int, p_last: float) -> None:
    model = create_model(name)
    survival = [p for stage in model.stages for p in stage.survival]
    assert survival == list(linear_survival(n, p_last))
    assert all(stage.drop_mode == "batch" for stage in model.stages)


# -------------------------------------------------------------------------------- Monte-Carlo mean == evaluation
SCHEMES = ["euler", "lm", "lm_transition", "rk2", "ab2", "poly2", "rev", "dense"]


def _sd_stage(kind: str, drop_mode: str) -> Stage:
    n = 6
    survival = (1.0, 0.9, 0.5, 0.7, 0.4, 0.6)
    if kind == "lm_transition":  # u_1 = P(u_0) + f_0(u_0), history P(u_0); the transition itself may be dropped
        fns = _linear_fns("lm", n)
        p = _linear(1.0)[1]
        return Stage(LMScheme(fixed_k=-0.6), fns, shortcut=p, survival=(0.5, *survival[1:]), drop_mode=drop_mode)
    scheme = LMScheme(fixed_k=-0.6) if kind == "lm" else kind
    return Stage(scheme, _linear_fns(kind, n), survival=survival, drop_mode=drop_mode)


@pytest.mark.parametrize("kind", SCHEMES)
def test_stochastic_depth_per_batch_mean_is_the_eval_network(kind: str) -> None:
    """E[train output] = eval output for linear residual functions, one Bernoulli draw per block and pass.

    For LM this holds because f_n and the history enter linearly and eta_n is independent of u_n, u_{n-1}:
    E[u_{n+1}] = (1 - k) E[u_n] + k E[u_{n-1}] + A_n E[u_n], the evaluation recursion. (With nonlinear f_n the
    evaluation network is only the first-order mean dynamics.)
    """
    stage = _sd_stage(kind, "batch")
    u0 = torch.randn(3, D, dtype=torch.float64)
    expected = stage.eval()(u0)
    stage.train()
    samples = torch.stack([stage(u0) for _ in range(3000)])
    _assert_mc_mean(samples, expected)


@pytest.mark.parametrize("kind", SCHEMES)
def test_stochastic_depth_per_sample_mean_is_the_eval_network(kind: str) -> None:
    """Per-sample masks: each row of a batch of copies of u_0 is an independent realisation."""
    stage = _sd_stage(kind, "sample")
    u0 = torch.randn(1, D, dtype=torch.float64)
    expected = stage.eval()(u0)[0]
    samples = stage.train()(u0.expand(20_000, D))
    _assert_mc_mean(samples, expected)


def test_shake_shake_mean_is_the_eval_network() -> None:
    """E[alpha f1 + (1 - alpha) f2] = (f1 + f2) / 2 for linear branches, through an Euler and an LM stage."""
    torch.set_default_dtype(torch.float64)
    try:
        for scheme in ("euler", LMScheme(fixed_k=-0.5)):
            fns = [ShakeShake(nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False)) for _ in range(3)]
            stage = Stage(scheme, fns)
            u0 = torch.randn(1, D)
            with torch.no_grad():
                expected = stage.eval()(u0)[0]
                samples = stage.train()(u0.expand(20_000, D))
            _assert_mc_mean(samples, expected)
            assert samples.std(0).min() > 1e-3  # the branches really are shaken in training
    finally:
        torch.set_default_dtype(torch.float32)


# ----------------------------------------------------------------------------------- the exact stochastic updates
def test_lm_per_batch_update_is_the_papers_formula() -> None:
    """u_{n+1} = (1 - k) u_n + k u_{n-1} + (eta_n / p_n) f_n(u_n), eta_n from one CPU torch.rand(()) per block with
    p_n < 1, in step order; a dropped transition gives u_1 = P(u_0); the history is the real previous state."""
    k, survival = -0.6, (0.5, 0.5, 0.5, 0.5, 0.5)
    fns = [_linear()[1] for _ in survival]
    p = _linear(1.0)[1]
    stage = Stage(LMScheme(fixed_k=k), fns, shortcut=p, survival=survival)
    u0 = torch.randn(2, D, dtype=torch.float64)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        eta = [float(torch.rand(())) < q for q in survival]
        torch.manual_seed(seed)
        out, hist = stage.forward_with_history(u0)
        u_prev, u = p(u0), p(u0) + (fns[0](u0) / 0.5 if eta[0] else 0.0)
        for n in range(1, len(fns)):
            u_prev, u = u, (1 - k) * u + k * u_prev + (fns[n](u) / 0.5 if eta[n] else 0.0)
        assert torch.allclose(out, u, atol=1e-13) and torch.allclose(hist, u_prev, atol=1e-13)
        seen.update(eta)
    assert seen == {True, False}


def test_survival_frequency_matches_p() -> None:
    """Count evaluations of each residual function over many per-batch passes: Binomial(M, p_n), and p = 1 always."""
    survival = linear_survival(8, 0.3)
    counts = [0] * 8

    def counted(n: int):
        def f(u: Tensor) -> Tensor:
            counts[n] += 1
            return 0.1 * u

        return f

    stage = Stage("lm", [counted(n) for n in range(8)], shortcut=lambda u: u, survival=survival)
    m = 4000
    u = torch.zeros(1, D)
    with torch.no_grad():
        for _ in range(m):
            stage(u)
    assert counts[0] == m
    for c, p in zip(counts[1:], survival[1:]):
        assert abs(c / m - p) <= 4 * math.sqrt(p * (1 - p) / m), (c / m, p)
    stage.eval()
    counts[:] = [0] * 8
    stage(u)
    assert counts == [1] * 8  # evaluation runs every block


# ------------------------------------------------------------------------------------------------- noise injection
def test_noise_variance_is_sigma_squared_n_dt() -> None:
    """f = 0: u_N - u_0 = sigma sqrt(dt) sum_n xi_n, variance sigma^2 N dt with dt = Stage.NOISE_DT = 1."""
    sigma, n, m = 0.3, 5, 50_000
    stage = Stage("euler", [torch.zeros_like] * n, noise_sigma=sigma)
    u0 = torch.randn(m, dtype=torch.float64)
    du = stage(u0) - u0
    var = sigma**2 * n * Stage.NOISE_DT
    assert abs(du.var().item() / var - 1) < 5 * math.sqrt(2 / (m - 1))  # relative SE of a sample variance
    assert abs(du.mean().item()) < 4 * math.sqrt(var / m)
    assert torch.equal(stage.eval()(u0), u0)  # evaluation adds nothing


def test_lm_noise_is_the_same_additive_term() -> None:
    """u_{n+1} = (1 - k) u_n + k u_{n-1} + f_n(u_n) + sigma xi_n, xi_n = torch.randn_like per step, in order."""
    k, sigma = -0.4, 0.2
    fns = [_linear()[1] for _ in range(4)]
    stage = Stage(LMScheme(fixed_k=k), fns, noise_sigma=sigma, post_act=nn.Tanh())
    u0 = torch.randn(3, D, dtype=torch.float64)
    torch.manual_seed(5)
    xi = [torch.randn_like(u0) for _ in fns]
    torch.manual_seed(5)
    out = stage(u0)
    u_prev, u = u0, torch.tanh(u0 + fns[0](u0) + sigma * xi[0])  # noise enters before the post-activation
    for n in range(1, 4):
        u_prev, u = u, torch.tanh((1 - k) * u + k * u_prev + fns[n](u) + sigma * xi[n])
    assert torch.allclose(out, u, atol=1e-13)


# ---------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("scheme", ["euler", "lm", "rk2", "poly2", "rev", "dense"])
def test_per_batch_dropped_blocks_get_no_gradient(scheme: str) -> None:
    def block() -> nn.Module | tuple[nn.Module, nn.Module]:
        return (nn.Linear(D // 2, D // 2), nn.Linear(D // 2, D // 2)) if scheme == "rev" else nn.Linear(D, D)

    stage = Stage(scheme, [block() for _ in range(6)], survival=(0.5,) * 6)
    modules = [m for m in stage.modules() if isinstance(m, nn.Linear)]
    calls = dict.fromkeys(modules, 0)
    for m in modules:
        m.register_forward_hook(lambda mod, *_: calls.__setitem__(mod, calls[mod] + 1))
    outcomes = set()
    for _ in range(10):
        calls.update(dict.fromkeys(modules, 0))
        stage.zero_grad(set_to_none=True)
        stage(torch.randn(5, D)).square().sum().backward()
        for m in modules:
            kept = calls[m] > 0
            assert (m.weight.grad is not None and m.weight.grad.abs().sum() > 0) == kept
            outcomes.add(kept)
    assert outcomes == {True, False}


def test_per_sample_gradient_is_zero_for_dropped_samples() -> None:
    """The gradient reaching block n's output f_n(u) vanishes exactly on the rows its mask dropped."""
    p = 0.5
    stage = Stage("lm", [nn.Linear(D, D) for _ in range(4)], survival=(p,) * 4, drop_mode="sample")
    grads: dict[int, Tensor] = {}
    for n, m in enumerate(stage.blocks):
        _capture_output_grad(m, grads, n)
    b = 64
    u = torch.randn(b, D)
    torch.manual_seed(1)
    masks = [u.new_empty(b, 1).bernoulli_(p) for _ in range(4)]  # the Stage's draws, in step order
    torch.manual_seed(1)
    stage(u).square().sum().backward()
    for n in range(4):
        row_zero = (grads[n].abs().sum(1) == 0).float()
        assert torch.equal(row_zero, 1 - masks[n][:, 0]), n
        assert 0 < masks[n].sum() < b


# --------------------------------------------------------------------------------------------------- shake-shake
def test_shake_shake_backward_uses_beta() -> None:
    f1, f2 = torch.randn(6, 3, 2, 2, requires_grad=True), torch.randn(6, 3, 2, 2, requires_grad=True)
    alpha, beta = torch.rand(6, 1, 1, 1), torch.rand(6, 1, 1, 1)
    out = shake_shake(f1, f2, alpha, beta)
    assert torch.allclose(out, alpha * f1 + (1 - alpha) * f2)
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.allclose(f1.grad, beta * g) and torch.allclose(f2.grad, (1 - beta) * g)
    assert not torch.allclose(f1.grad, alpha * g)


def test_shake_module_draws_alpha_then_beta_per_sample() -> None:
    """Per sample: forward weight alpha, gradient split beta / (1 - beta) on the branch outputs; eval: 1/2."""
    block = ShakeShake(nn.Linear(D, D), nn.Linear(D, D))
    branch_grads: dict[int, Tensor] = {}
    for i, br in enumerate((block.branch1, block.branch2)):
        _capture_output_grad(br, branch_grads, i)
    u = torch.randn(8, D)
    f1, f2 = block.branch1(u).detach(), block.branch2(u).detach()
    torch.manual_seed(3)
    alpha, beta = shake_coefficients(f1)
    torch.manual_seed(3)
    out = block(u)
    assert alpha.shape == (8, 1) and torch.allclose(out, alpha * f1 + (1 - alpha) * f2, atol=1e-6)
    out.sum().backward()
    assert torch.allclose(branch_grads[0], beta.expand(8, D)) and torch.allclose(branch_grads[1], 1 - beta.expand(8, D))
    assert torch.allclose(block.eval()(u), (f1 + f2) / 2, atol=1e-6)
    assert torch.allclose(ShakeShake(block.branch1, block.branch2, shake=False).train()(u), (f1 + f2) / 2, atol=1e-6)


# ---------------------------------------------------------------------------------------------- models and options
def test_shake_resnet_counts() -> None:
    """Shake-Shake-26 2x32d: 2.92M parameters (Gastaldi 2017 prints 2.9M); the LM twin adds one k_n per LM step."""
    plain, lm = create_model("shake_resnet26_2x32d"), create_model("lm_shake_resnet26_2x32d")
    assert n_params(plain) == 2_923_162 and round(n_params(plain) / 1e6, 1) == 2.9
    assert n_params(lm) - n_params(plain) == 3 * 3
    even = create_model("shake_resnet26_2x32d", shake=False)
    assert not any(m.shake for m in even.modules() if isinstance(m, ShakeShake))


@pytest.mark.parametrize(
    ("name", "twin"),
    [
        ("lm_resnet56_sd", "lm_resnet56"),
        ("lm_resnet110_sd", "lm_resnet110"),
        ("preact_resnet56_sd", "preact_resnet56"),
        ("preact_resnet110_sd", "preact_resnet110"),
        ("resnet56_sd", "resnet56"),
        ("resnet110_sd", "resnet110"),
    ],
)
def test_sd_rows_are_their_twins_in_evaluation(name: str, twin: str) -> None:
    """Same parameters (counts and names) as the deterministic twin, and the same evaluation network."""
    sd, plain = create_model(name).eval(), create_model(twin).eval()
    assert list(sd.state_dict()) == list(plain.state_dict()) and n_params(sd) == n_params(plain)
    sd.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(sd(x), plain(x))


def test_p_last_kwarg_and_the_deterministic_path() -> None:
    model = create_model("lm_resnet20", p_last=0.8)
    assert [p for s in model.stages for p in s.survival] == list(linear_survival(9, 0.8))
    off = create_model("lm_resnet20", p_last=1.0, noise_sigma=0.0, drop_mode=None)  # None is pruned
    assert all(s.survival is None and s.noise_sigma is None for s in off.stages)
    plain = create_model("lm_resnet20")
    off.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(off.train()(x), plain.train()(x))  # nothing stochastic: today's code path in training


def test_per_batch_training_step_of_an_sd_model() -> None:
    """lm_resnet56_sd trains per batch: the blocks it ran get gradients, skipped ones none; evaluation is fixed."""
    model = create_model("lm_resnet56_sd")
    blocks = [b for s in model.stages for b in s.blocks]
    ran = set()
    for b in blocks:
        b.register_forward_hook(lambda mod, *_: ran.add(mod))
    torch.manual_seed(4)
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert 0 < len(ran) < len(blocks)
    for b in blocks:
        grad = b.conv1.weight.grad  # a skipped block gets zeros (every parameter has a gradient: DDP, timm)
        assert grad is not None and bool(grad.any()) == (b in ran)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x))


FAMILIES = ["preact_resnet20", "resnet20", "resnext29_8x64d", "shake_resnet26_2x32d"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p_last": 0.0}, "p_last"),
        ({"p_last": 1.5}, "p_last"),
        ({"drop_mode": "layer"}, "drop_mode"),
        ({"noise_sigma": -0.1}, "noise_sigma"),
    ],
)
def test_bad_stochastic_options_fail_in_the_constructor(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


def test_bad_stage_options() -> None:
    fns = [torch.tanh] * 3
    with pytest.raises(ValueError, match="one per step"):
        Stage("euler", fns, survival=(1.0, 0.5))
    with pytest.raises(ValueError, match=r"survival\[1\]"):
        Stage("euler", fns, survival=(1.0, 0.0, 0.5))
    with pytest.raises(ValueError, match="drop_mode"):
        Stage("euler", fns, drop_mode="batches")
    with pytest.raises(ValueError, match="noise_sigma"):
        Stage("euler", fns, noise_sigma=float("nan"))
    assert Stage("euler", fns, survival=(1.0,) * 3, noise_sigma=0.0).survival is None  # all-ones: off


def test_drop_path_function_and_module() -> None:
    x = torch.randn(1000, 3)
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    y = drop_path(x, 0.5, training=True)
    kept = (y != 0).all(1)
    assert torch.allclose(y[kept], 2 * x[kept]) and (y[~kept] == 0).all() and 0.4 < kept.float().mean() < 0.6
    z = drop_path(x, 0.5, training=True, mode="batch")
    assert torch.equal(z, 2 * x) or torch.equal(z, torch.zeros_like(x))
    module = DropPath(0.5).eval()
    assert torch.equal(module(x), x)
    with pytest.raises(ValueError, match="survival"):
        DropPath(0.0)


def test_sd_and_noise_train_under_bf16_autocast() -> None:
    """A training forward pass under bf16 autocast draws the same gates and noise as in float32 (same seed) and lands
    within bf16 rounding of the float32 output."""
    x = torch.randn(4, 3, 32, 32)
    for mode in ("batch", "sample"):
        model = odearch.create_model("lm_resnet20", p_last=0.5, drop_mode=mode, noise_sigma=1e-3).train()
        torch.manual_seed(3)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        torch.manual_seed(3)
        with torch.no_grad():
            ref = model(x)  # another seed's draws differ from it by 25-90 %
        assert out.dtype == torch.bfloat16 and ref.dtype == torch.float32
        assert float((out.float() - ref).norm() / ref.norm()) < 0.05, mode


def test_shake_shortcut_second_path_shifts_right_down() -> None:
    """Gastaldi's second shortcut path is SpatialZeroPadding(1, -1, 1, -1): shift(u)[i, j] = u[i - 1, j - 1], zero at
    i = 0 or j = 0, then a 1x1 pool of stride 2 (issue 14, item 6d: it used to shift up-left)."""
    from odearch.nn.shake import ShakeShortcut

    torch.manual_seed(0)
    sc = ShakeShortcut(4, 8, stride=2).eval()
    u = torch.randn(2, 4, 6, 6).abs()  # >= 0: the shortcut's ReLU leaves it unchanged
    shifted = torch.zeros_like(u)
    shifted[:, :, 1:, 1:] = u[:, :, :-1, :-1]
    expected = torch.cat((sc.conv1(u[:, :, ::2, ::2]), sc.conv2(shifted[:, :, ::2, ::2])), dim=1)
    assert torch.allclose(sc(u), sc.bn(expected), atol=1e-6)
