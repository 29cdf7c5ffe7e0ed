"""Stage semantics inside networks: transitions, LM history, coefficients, errors."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import odearch
from odearch import Stage
from odearch.nn import PreActBasicBlock, PreActProjection, lm_coefficients
from odearch.nn.drop import Gate
from odearch.nn.stage import STEP_RUNNERS, StepFns, StepRunner, register_step_runner, step_runner
from odearch.schemes import LMScheme


def _f(scale: float):
    return lambda u: scale * torch.tanh(u)


def test_lm_transition_step_is_plain_and_resets_history_to_projection() -> None:
    """u_1 = P(u_0) + f_0(u_0); u_2 = (1 - k) u_1 + k P(u_0) + f_1(u_1) (the paper's official code)."""
    p = lambda u: 2.0 * u  # noqa: E731
    f0, f1, f2 = _f(0.3), _f(-0.2), _f(0.5)
    stage = Stage(LMScheme(fixed_k=-0.4), [f0, f1, f2], shortcut=p)
    u0 = torch.randn(4, dtype=torch.float64)
    u1 = p(u0) + f0(u0)
    u2 = 1.4 * u1 - 0.4 * p(u0) + f1(u1)
    u3 = 1.4 * u2 - 0.4 * u1 + f2(u2)
    out, hist = stage.forward_with_history(u0)
    assert torch.allclose(out, u3, atol=1e-15) and torch.allclose(hist, u2, atol=1e-15)


def test_lm_first_step_without_transition_is_euler_with_history_u0() -> None:
    f0, f1 = _f(0.3), _f(-0.2)
    stage = Stage(LMScheme(fixed_k=0.25), [f0, f1])
    u0 = torch.randn(3, dtype=torch.float64)
    u1 = u0 + f0(u0)
    assert torch.allclose(stage(u0), 0.75 * u1 + 0.25 * u0 + f1(u1), atol=1e-15)


def test_history_shortcut_projects_the_one_step_back_state() -> None:
    """u_2 = (1 - k) u_1 + k Q(u_0) + f_1(u_1): the history of u_1 is u_0 (projected by Q instead of P), not the
    previous stage's u_{N-1}, which would be two steps back (issue 14, item 1)."""
    p, q = (lambda u: 2.0 * u), (lambda u: -3.0 * u)
    f0, f1 = _f(0.3), _f(0.1)
    stage = Stage(LMScheme(fixed_k=-0.5), [f0, f1], shortcut=p, history_shortcut=q)
    u0 = torch.randn(3, dtype=torch.float64)
    u1 = p(u0) + f0(u0)
    out, _ = stage.forward_with_history(u0)
    assert torch.allclose(out, 1.5 * u1 - 0.5 * q(u0) + f1(u1), atol=1e-15)


def test_post_activation_follows_each_update() -> None:
    f = _f(1.0)
    stage = Stage("euler", [f, f], post_act=nn.ReLU())
    u = torch.randn(10, dtype=torch.float64)
    u1 = torch.relu(u + f(u))
    assert torch.equal(stage(u), torch.relu(u1 + f(u1)))


def test_lm_coefficients_are_learnable_named_and_initialised_as_the_paper() -> None:
    stage = Stage("lm", [PreActBasicBlock(16, 16) for _ in range(9)])
    assert isinstance(stage.lm_k, nn.Parameter) and stage.lm_k.shape == (8,)  # steps 1..8; step 0 is the starter
    assert (stage.lm_k <= 0).all() and (stage.lm_k >= -0.1).all()
    per_channel = Stage("lm_channel", [PreActBasicBlock(16, 16) for _ in range(3)], channels=16)
    assert per_channel.lm_k.shape == (2, 16)
    out = per_channel(torch.randn(2, 16, 8, 8))
    out.sum().backward()
    assert per_channel.lm_k.grad is not None and per_channel.lm_k.grad.abs().sum() > 0


def test_per_channel_lm_needs_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        Stage("lm_channel", [PreActBasicBlock(4, 4) for _ in range(2)])


def test_lm_coefficients_reads_every_lm_stage() -> None:
    model = odearch.create_model("lm_resnet20")
    ks = lm_coefficients(model)
    assert list(ks) == ["stages.0", "stages.1", "stages.2"]
    assert [len(v) for v in ks.values()] == [2, 2, 2]
    assert lm_coefficients(odearch.create_model("preact_resnet20")) == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "euler", "fns": []}, "at least one"),
        ({"scheme": "rk2", "fns": [(_f(1), _f(1), _f(1))]}, "3 functions for 2 inner stages"),
        ({"scheme": "rev", "fns": [_f(1)]}, "pair"),
        ({"scheme": "lm", "fns": [(_f(1), _f(1))]}, "one residual function per step"),
        ({"scheme": "lm", "fns": [_f(1)], "history_shortcut": nn.Identity()}, "needs a shortcut"),
        ({"scheme": "euler", "fns": [(_f(1),)], "shortcut": nn.Identity()}, "single residual function"),
        ({"scheme": "rk3", "fns": [_f(1)]}, "unknown scheme"),
    ],
)
def test_bad_stages_fail_in_the_constructor(kwargs: dict, message: str) -> None:
    scheme, fns = kwargs.pop("scheme"), kwargs.pop("fns")
    with pytest.raises(ValueError, match=message):
        Stage(scheme, fns, **kwargs)


def test_mixing_modules_and_callables_is_refused() -> None:
    with pytest.raises(TypeError, match="mix"):
        Stage("euler", [PreActBasicBlock(4, 4), _f(1)])


def test_inverse_only_for_rev() -> None:
    with pytest.raises(ValueError, match="only the rev scheme"):
        Stage("euler", [_f(1)]).inverse(torch.zeros(2))


def test_transition_stage_with_modules() -> None:
    stage = Stage("lm", [PreActBasicBlock(16, 32, 2), PreActBasicBlock(32, 32)], shortcut=PreActProjection(16, 32, 2))
    assert stage(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


@pytest.mark.parametrize("k_shape", [(), (6, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_lm_velocity_backward_matches_autograd_of_the_formula(k_shape: tuple, channels_last: bool) -> None:
    """The hand-written LM backward (t, -k t, -<t, v>) is the derivative of the velocity update r - k v."""
    from odearch.nn.lm_combine import LMVelocity

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return (t.contiguous(memory_format=fmt) if t.dim() == 4 else t).requires_grad_()

    r, v = leaf(2, 6, 3, 3), leaf(2, 6, 3, 3)
    k = leaf(*k_shape) if k_shape else torch.randn((), generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(LMVelocity.apply, (r, v, k))
    assert torch.autograd.gradcheck(lambda a, b: LMVelocity.apply(None, a, b), (v, k))
    g = torch.randn(2, 6, 3, 3, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
    ours = torch.autograd.grad(LMVelocity.apply(r, v, k), (r, v, k), g)
    ref = torch.autograd.grad(r - k * v, (r, v, k), g)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("post_act", [False, True])
@pytest.mark.parametrize("transition", ["none", "P", "P and Q"])
def test_lm_velocity_form_is_the_two_state_update(transition: str, post_act: bool) -> None:
    """The stage's u_{n+1} = u_n + v_{n+1}, v_{n+1} = r_n - k_n v_n is (1 - k_n) u_n + k_n u_{n-1} + r_n written
    out with both states: outputs, history and every gradient (k included), with or without a transition
    (history P(u_0) or Q(u_0)) and a post-activation (where v is re-formed as u_{n+1} - u_n)."""
    torch.manual_seed(0)
    p, q = nn.Conv2d(4, 6, 1).double(), nn.Conv2d(4, 6, 1).double()
    blocks = [
        nn.Sequential(
            nn.Tanh(),
            nn.Conv2d(
                4 if (i == 0 and transition != "none") else 6 if transition != "none" else 4,
                6 if transition != "none" else 4,
                3,
                padding=1,
            ),
        ).double()
        for i in range(4)
    ]
    act = nn.Tanh() if post_act else None
    stage = Stage(
        "lm",
        blocks,
        shortcut=p if transition != "none" else None,
        history_shortcut=q if transition == "P and Q" else None,
        post_act=act,
    ).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    out, hist = stage(x, return_history=True)
    k = stage.lm_k
    sig = act if post_act else (lambda t: t)
    if transition == "none":
        u_prev, u = x, sig(x + blocks[0](x))
    else:
        u_prev, u = (p(x) if transition == "P" else q(x)), sig(p(x) + blocks[0](x))
    for m in (1, 2, 3):
        u_prev, u = u, sig((1 - k[m - 1]) * u + k[m - 1] * u_prev + blocks[m](u))
    assert torch.allclose(out, u, atol=1e-12) and torch.allclose(hist, u_prev, atol=1e-12)
    w = torch.randn_like(out)
    params = [x, *stage.parameters()]
    ours = torch.autograd.grad((out * w).sum() + hist.sum(), params)
    ref = torch.autograd.grad((u * w).sum() + u_prev.sum(), params)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "transition P",
        "transition P and Q",
        "post-act",
        "noise",
        "stochastic depth",
        "per channel",
        "first step dropped",
    ],
)
def test_the_fused_lm_path_agrees_with_the_reference_update(case: str) -> None:
    """LMRunner.run (velocity form, odearch.nn.lm_combine) against LMRunner.run_reference (the paper's update as
    written): float64 outputs, history and every gradient, dk included, to 1e-12, with the same random draws."""
    from odearch.nn.stage import LMRunner

    torch.manual_seed(0)
    transition = case.startswith("transition")
    c_in, c = (4, 6) if transition else (6, 6)
    blocks = [nn.Sequential(nn.Tanh(), nn.Conv2d(c_in if i == 0 else c, c, 3, padding=1)) for i in range(4)]
    kwargs: dict = {"shortcut": nn.Conv2d(c_in, c, 1)} if transition else {}
    if case == "transition P and Q":
        kwargs["history_shortcut"] = nn.Conv2d(c_in, c, 1)
    kwargs |= {
        "post-act": {"post_act": nn.Tanh()},
        "noise": {"noise_sigma": 0.1},
        "stochastic depth": {"survival": (0.9, 0.5, 0.7, 0.5)},
        "per channel": {"channels": c},
        "first step dropped": {"survival": (0.5, 1.0, 1.0, 1.0)},
    }.get(case, {})
    scheme = LMScheme(name="lm_channel", per_channel=True) if case == "per channel" else "lm"
    stage = Stage(scheme, blocks, **kwargs).double()
    with torch.no_grad():
        stage.lm_k.uniform_(-0.6, 0.4)
    x = torch.randn(2, c_in, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, c, 5, 5, dtype=torch.float64)

    def run(fused: bool, seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)  # the same stochastic-depth and noise draws on both paths
        old, LMRunner.fused = LMRunner.fused, fused
        try:
            out, hist = stage(x, return_history=True)
        finally:
            LMRunner.fused = old
        return [out, hist, *torch.autograd.grad((out * w).sum() + hist.sum(), [x, *stage.parameters()])]

    for seed in range(3 if case in ("stochastic depth", "first step dropped", "noise") else 1):
        for a, b in zip(run(True, seed), run(False, seed), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_lm_network_gradients_match_the_formula_in_channels_last() -> None:
    """A whole LM stage of real blocks: the k_n gradient equals that of the update written out with autograd."""
    torch.manual_seed(0)
    blocks = [PreActBasicBlock(8, 8) for _ in range(3)]
    stage = Stage("lm", blocks).double().to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    stage(x).square().sum().backward()
    ours = stage.lm_k.grad.clone()
    k = stage.lm_k.detach().clone().requires_grad_()
    u_prev, u = x, x + blocks[0](x)
    for m in (1, 2):
        u_prev, u = u, (1 - k[m - 1]) * u + k[m - 1] * u_prev + blocks[m](u)
    (g,) = torch.autograd.grad(u.square().sum(), k)
    assert torch.allclose(ours, g, rtol=1e-10)


def test_per_channel_init_is_ours_or_the_official_mresnetc() -> None:
    """``lm_channel``: k ~ U[-0.1, 0] per channel (odearch's choice); ``lm_channel_mresnetc``: the official MResNetC,
    whose coefficient of u_n, 1 - k, is drawn from U[-0.1, 0], so k ~ U[1.0, 1.1] (issue 14, item 4)."""
    torch.manual_seed(0)
    ours = Stage("lm_channel", [PreActBasicBlock(16, 16) for _ in range(3)], channels=16)
    assert ours.lm_k.shape == (2, 16) and (ours.lm_k >= -0.1).all() and (ours.lm_k <= 0).all()
    official = Stage("lm_channel_mresnetc", [PreActBasicBlock(16, 16) for _ in range(3)], channels=16)
    assert official.lm_k.shape == (2, 16) and (official.lm_k >= 1.0).all() and (official.lm_k <= 1.1).all()
    assert official.lm_k.std() > 0.01  # a draw, not a constant
    model = odearch.create_model("preact_resnet20", scheme="lm_channel_mresnetc")
    ks = torch.cat([s.lm_k.flatten() for s in model.stages])
    assert ks.numel() == 2 * (16 + 32 + 64) and ks.min() >= 1.0 and ks.max() <= 1.1


@pytest.mark.parametrize("k_dtype", [torch.float32, torch.bfloat16])
def test_lm_velocity_dk_sums_bf16_terms_without_bf16_accumulation(k_dtype: torch.dtype) -> None:
    """dk = -<t, v> over 4096 bf16 terms: a bf16 running sum stalls at 256 (256 + 1 rounds back to 256); ours is
    within 2^-8 sum |t v| of the exact sum of the products (the bound of their own bf16 rounding), in k's dtype."""
    from odearch.nn.lm_combine import LMVelocity

    v = torch.ones(2, 8, 16, 16, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    t = torch.ones_like(v)
    t[0, 0, 0, 0], v[0, 0, 0, 0] = 1.9, -1.9
    assert v.numel() == 4096
    terms = -(t.double() * v.double())
    k = torch.tensor(-0.05, dtype=k_dtype, requires_grad=True)
    (dk,) = torch.autograd.grad(LMVelocity.apply(None, v.requires_grad_(), k), (k,), t)
    assert dk.dtype == k_dtype
    bound = 2**-8 * terms.abs().sum() + (abs(terms.sum()) * 2**-8 if k_dtype == torch.bfloat16 else 0)
    assert abs(dk.double() - terms.sum()) <= bound, (dk.item(), terms.sum().item())
    assert abs(dk.double() + 256) > bound  # what a bf16 running sum would give is outside it


@pytest.mark.parametrize("k_shape", [(), (8, 1, 1)])
def test_lm_velocity_dk_bf16_matches_float64(k_shape: tuple) -> None:
    """Random bf16 states (channels_last, as under CPU autocast): dk agrees with a float64 reduction of the same
    values to float32 accuracy of the accumulation (bf16 rounding of each product only), and comes back in k's
    float32, not rounded to bf16."""
    from odearch.nn.lm_combine import LMVelocity

    gen = torch.Generator().manual_seed(0)

    def bf(*shape: int) -> torch.Tensor:
        t = torch.randn(*shape, generator=gen).to(torch.bfloat16)
        return t.contiguous(memory_format=torch.channels_last)

    v, r, t = bf(16, 8, 16, 16), bf(16, 8, 16, 16), bf(16, 8, 16, 16)
    k = torch.full(k_shape, -0.05, requires_grad=True)
    dk = torch.autograd.grad(LMVelocity.apply(r, v.requires_grad_(), k), (k,), t)[0]
    terms = -(t.double() * v.double())
    ref = terms.sum_to_size(k_shape) if k_shape else terms.sum()
    scale = terms.abs().sum_to_size(k_shape) if k_shape else terms.abs().sum()
    assert dk.dtype == torch.float32
    assert ((dk.double() - ref).abs() <= 2**-8 * scale).all(), (dk, ref)


@pytest.mark.slow
def test_lm_stage_compiles_without_graph_break_and_matches_eager() -> None:
    """torch.compile traces the LM Function's forward and backward in one graph (channels_last states, whose
    strides the traced backward must not rely on) and gives the eager gradients, dk included."""
    torch.manual_seed(0)
    stage = Stage("lm", [PreActBasicBlock(4, 4) for _ in range(3)]).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)

    def loss(model: torch.nn.Module) -> torch.Tensor:
        return model(x).square().sum()

    explained = torch._dynamo.explain(loss)(stage)
    assert explained.graph_break_count == 0
    grads = []
    for model in (stage, torch.compile(stage)):
        stage.zero_grad()
        loss(model).backward()
        grads.append([p.grad.clone() for p in stage.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


# ---- scheme dispatch: one table from scheme type to a step runner ------------------------------------------------
@dataclass(frozen=True)
class DampedEuler:
    """A scheme family odearch does not know, defined here as data: u_{n+1} = u_n + c f_n(u_n)."""

    name: str = "damped_euler"
    c: float = 0.5
    order: int = 1


class DampedEulerRunner(StepRunner):
    """u_{n+1} = u_n + c (eta_n / p_n) f_n(u_n): the family's one runner."""

    scheme: DampedEuler

    def step(self, u: torch.Tensor, fn: StepFns, gate: Gate = None) -> torch.Tensor:
        return u + self.scheme.c * (fn(u) if gate is None else gate * fn(u))  # type: ignore[operator]


@pytest.fixture
def damped_euler() -> Iterator[type]:
    register_step_runner(DampedEuler, DampedEulerRunner)  # the family's one table entry
    yield DampedEuler
    del STEP_RUNNERS[DampedEuler]


def test_a_new_scheme_family_is_one_dataclass_one_runner_one_entry(damped_euler: type) -> None:
    """A Stage integrates a family it learns from STEP_RUNNERS alone: plain steps, a transition step (shared by
    every family) and stochastic depth, numbers checked against the update written out."""
    f0, f1, f2 = _f(0.3), _f(-0.2), _f(0.5)
    u0 = torch.randn(5, dtype=torch.float64)
    stage = Stage(damped_euler(c=0.25), [f0, f1, f2])
    u1 = u0 + 0.25 * f0(u0)
    u2 = u1 + 0.25 * f1(u1)
    assert torch.equal(stage(u0), u2 + 0.25 * f2(u2))
    p = lambda u: 2.0 * u  # noqa: E731
    stage = Stage(damped_euler(c=0.75), [f0, f1], shortcut=p, post_act=nn.Tanh())
    v1 = torch.tanh(p(u0) + f0(u0))  # the transition u_1 = P(u_0) + f_0(u_0), not the family's step
    out, history = stage.forward_with_history(u0)
    assert torch.equal(out, torch.tanh(v1 + 0.75 * f1(v1))) and history is None
    stage = Stage(damped_euler(c=0.5), [f0, f1], survival=(1.0, 0.5), drop_mode="sample").train()
    torch.manual_seed(0)
    out = stage(u0)
    torch.manual_seed(0)
    eta = torch.empty(5, dtype=torch.float64).bernoulli_(0.5).div_(0.5)  # sample_gate's draw for step 1
    w1 = u0 + 0.5 * f0(u0)
    assert torch.equal(out, w1 + 0.5 * (eta * f1(w1)))
    assert stage.runner.branches == 1 and not stage.runner.has_k and not stage.runner.invertible
    with pytest.raises(ValueError, match="one residual function per step"):
        Stage(damped_euler(), [(f0, f1)])
    with pytest.raises(ValueError, match="already has the step runner"):
        register_step_runner(damped_euler, DampedEulerRunner)


def test_a_scheme_family_without_a_runner_is_refused() -> None:
    with pytest.raises(TypeError, match="no step runner for DampedEuler"):
        Stage(DampedEuler(), [_f(1)])
    with pytest.raises(TypeError, match="scheme dataclass"):
        Stage(object(), [_f(1)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("scheme", "answers"),
    [
        ("euler", {"branches": 1, "accepts_tuple": True, "is_euler": True}),
        ("rk4", {"branches": 4, "split": 1, "accepts_tuple": True, "is_euler": False}),
        ("midpoint", {"branches": 2, "is_euler": False}),
        ("rev", {"branches": 2, "split": 2, "accepts_tuple": True, "invertible": True}),
        ("lm", {"has_k": True, "needs_channels": False, "accepts_tuple": False, "invertible": False}),
        ("lm_channel", {"has_k": True, "needs_channels": True}),
        ("ab2", {"has_k": False, "branches": 1, "accepts_tuple": False, "is_euler": False}),
        ("poly2", {"has_k": False, "split": 1, "accepts_tuple": False}),
        ("dense", {"has_k": False, "branches": 1, "accepts_tuple": False, "invertible": False}),
    ],
)
def test_step_runner_answers_what_builders_ask(scheme: str, answers: dict) -> None:
    """What make_stage / convert / memory read from the table instead of asking the scheme's type."""
    runner = step_runner(scheme)
    assert {key: getattr(runner, key) for key in answers} == answers


@pytest.mark.parametrize("bf16, most", [(False, 63), (True, 87)])
def test_lm_step_dispatches_few_extra_ops(bf16: bool, most: int) -> None:
    """aten ops dispatched by a forward + backward pass of lm_resnet20 beyond its plain twin's (6 LM steps): one
    unbind of lm_k per stage (not a select, select_backward and gradient accumulation per step), addcmul with
    value=-1 (no negation of k), k cast once. 3d90721 dispatched 90 (fp32) and 120 (bf16 autocast) extra ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.n += 1
            return func(*args, **(kwargs or {}))

    def ops(name: str) -> int:
        torch.manual_seed(0)
        m = odearch.create_model(name).to(memory_format=torch.channels_last)
        x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
        with Count() as c:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = m(x)
            out.float().sum().backward()
        return c.n

    assert ops("lm_resnet20") - ops("preact_resnet20") <= most
